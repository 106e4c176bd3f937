"""`avatarcam bench` of two checkouts, alternately, in one run: medians against a baseline.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_ab.py --baseline-checkout ../base [--rounds 3]
        [--variant "NAME=CHECKOUT|BENCH ARGS" ...] [--json OUT.json] -- BENCH ARGS

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


def run_bench(checkout: Path, args: list[str]) -> dict[str, Any]:
    """One `avatarcam bench ... --json` from `checkout`; its report plus the load around it."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    before = os.getloadavg()[0]
    done = subprocess.run(
        [sys.executable, str(checkout / "avatarcam_cli.py"), "bench", *args, "--json"],
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
    parser.add_argument("--json", type=Path, help="write every run's summary and the medians here")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then the common `avatarcam bench` args")
    args = parser.parse_args()
    common = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
    if not common:
        raise SystemExit("give the common bench arguments after --, e.g. -- assets/demo/cap12.avatar --backend onnx")
    variants = [parse_variant(v, args.baseline_checkout) for v in args.variant or ["base=base|", "new=new|"]]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in variants}
    for round_ in range(args.rounds):
        for name, checkout, extra in variants:
            row = summary(run_bench(checkout, [*common, *extra]))
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
