"""`avatarcam bench` of two checkouts, alternately, in one run: medians against a baseline.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_ab.py --baseline-checkout ../base [--rounds 3]
        [--variant "NAME=CHECKOUT|BENCH ARGS" ...] [--glass] [--json OUT.json] -- BENCH ARGS

With `--glass` each run is the checkout's own `benchmarks/bench_glass.py BENCH ARGS` (headless
Chromium against that checkout's service) instead, summarised as glass-to-glass p50/p90/p99, the
split's segments and stages, and `connect`'s figures when `--connect` is among the arguments.

Each round runs every variant once, in turn (base, new, base, new, ...), so a change in the
machine's load hits every variant alike. A variant is a checkout (`base`: --baseline-checkout,
`new`: this one) and extra `avatarcam bench` arguments appended to the common ones after `--`.
The default variants are `base` and `new` with no extra arguments. Each run is the checkout's own
CLI in a fresh process (PYTHONPATH pointing at it), with this virtualenv.

Printed per variant: each run's unpaced or paced pipeline fps, capture-to-sink p50 and p99, the
sequential fps and ms a frame, and the stages' p50; the medians over the rounds; the load average
around each run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]


def parse_variant(text: str, baseline: Path) -> tuple[str, Path, list[str]]:
    """'NAME=CHECKOUT|ARGS' -> (name, checkout, args); CHECKOUT is `base`, `new` or a path."""
    name, _, rest = text.partition("=")
    where, _, args = rest.partition("|")
    checkout = {"base": baseline, "new": HERE}.get(where, Path(where))
    if not name or not (checkout / "avatarcam_cli.py").is_file():
        raise SystemExit(f"--variant {text!r}: want NAME=base|ARGS, NAME=new|ARGS or NAME=/path/to/checkout|ARGS")
    return name, checkout, args.split()


def run_bench(checkout: Path, args: list[str], glass: bool = False) -> dict[str, Any]:
    """One `avatarcam bench ... --json` (or `bench_glass.py ...`) from `checkout`; its report plus
    the load around it."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    before = os.getloadavg()[0]
    command = (
        [str(checkout / "benchmarks" / "bench_glass.py"), *args]
        if glass
        else [str(checkout / "avatarcam_cli.py"), "bench", *args, "--json"]
    )
    done = subprocess.run(
        [sys.executable, *command],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"bench in {checkout} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(done.stdout)
    report["load_average_1m"] = [round(before, 2), round(os.getloadavg()[0], 2)]
    return report


def glass_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The figures compared, from one bench_glass.py report."""
    split = report["split_ms"]
    row: dict[str, Any] = {"load": report["load_average_1m"], "page_fps": report.get("page_received_fps_median")}
    row.update({f"glass_{k}": v for k, v in report["glass_ms"].items() if k in ("p50", "p90", "p99")})
    for name in ("uplink", "server", "downlink", "track", "render", "infer"):
        if name in split:
            row[f"{name}_p50"], row[f"{name}_p99"] = split[name]["p50"], split[name]["p99"]
    connect = report.get("connect")
    if isinstance(connect, dict) and "glass_ms" in connect:
        row["connect_glass_p50"], row["connect_glass_p99"] = connect["glass_ms"]["p50"], connect["glass_ms"]["p99"]
        row["connect_server_p50"] = connect.get("split_ms", {}).get("server", {}).get("p50")
    return row


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The figures compared, from one bench report."""
    row: dict[str, Any] = {"threads": report["threads"], "load": report["load_average_1m"]}
    if "pipeline" in report:
        live = report["pipeline"]
        row.update(
            pipeline_fps=live["fps"],
            e2e_p50=live["e2e_ms"]["p50"],
            e2e_p99=live["e2e_ms"]["p99"],
            **{f"pipeline_{k}_p50": v["p50"] for k, v in live["stages_ms"].items()},
        )
    if "sequential" in report:
        seq = report["sequential"]
        row.update(
            sequential_fps=seq["fps"],
            sequential_ms_p50=seq["total_ms"]["p50"],
            **{f"sequential_{k}_p50": v["p50"] for k, v in seq["stages_ms"].items()},
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-checkout", type=Path, required=True, help="the baseline's checkout (e.g. main)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", action="append", default=[], help="NAME=CHECKOUT|EXTRA BENCH ARGS")
    parser.add_argument("--glass", action="store_true", help="run each checkout's bench_glass.py instead")
    parser.add_argument("--json", type=Path, help="write every run's summary and the medians here")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then the common `avatarcam bench` args")
    args = parser.parse_args()
    common = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
    if not common and not args.glass:
        raise SystemExit("give the common bench arguments after --, e.g. -- assets/demo/cap12.avatar --backend onnx")
    variants = [parse_variant(v, args.baseline_checkout) for v in args.variant or ["base=base|", "new=new|"]]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in variants}
    for round_ in range(args.rounds):
        for name, checkout, extra in variants:
            report = run_bench(checkout, [*common, *extra], glass=args.glass)
            row = glass_summary(report) if args.glass else summary(report)
            runs[name].append(row)
            print(f"round {round_ + 1} {name}: {json.dumps(row)}", flush=True)
    medians = {
        name: {
            key: round(statistics.median(r[key] for r in rows), 2)
            for key in rows[0]
            if all(isinstance(r.get(key), (int, float)) for r in rows)
        }
        for name, rows in runs.items()
    }
    print(json.dumps({"medians": medians}, indent=2))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "common_args": common,
                    "variants": {name: {"checkout": str(c), "args": extra} for name, c, extra in variants},
                    "cpu_count": len(os.sched_getaffinity(0)),
                    "runs": runs,
                    "medians": medians,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
