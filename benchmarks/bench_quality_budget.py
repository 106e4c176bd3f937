"""Quality against a wall-clock training budget: the classic recipe against the fast one.

    .venv/bin/python benchmarks/bench_quality_budget.py --data data/cap12 -o reports/budget \\
        [--budgets 20 60] [--recipes classic fast] [--ablate] [--frames 100] [--threads N]

Every recipe trains the `cpu-256` networks with every loss on, for the same budgets
(`avatarcam train --minutes`), one run after another on this machine, and each run is then
evaluated on the same evenly spaced test frames (teacher network, full and masked PSNR / SSIM /
LPIPS), beside the two baselines `avatarcam evaluate` measures in the same run (the mean
training frame, the nearest training frame by head pose + expression).

Recipes (preset overrides, see `avatarcam train --set`):
- classic: the `cpu-256` recipe before the budget work: G_f / G_b from random weights, flat-albedo
  renders only, ID-MRF and D on whole frames shrunk to 128 px, fp32.
- fast: today's `cpu-256`: photo texture and background plate seed direct Laplacian pyramids,
  S_2 refines RGB features, ID-MRF and D on full-resolution crops around the face, bf16.
- with --ablate, the fast recipe with each ingredient switched off in turn.

Writes OUT/results.json, OUT/table.md and OUT/lpips_vs_minutes.png.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

CLASSIC = {
    "network.direct_levels": "0",
    "network.rgb_skip": "false",
    "train.photo_texture": "false",
    "train.detail_crop": "0",
    "train.bf16": "false",
    "train.freeze_static_fraction": "0",
    "train.lr_decay_fraction": "0",
}
ABLATIONS = {
    "fast - photo seed": {"train.photo_texture": "false"},
    "fast - direct pyramids": {"network.direct_levels": "0", "train.photo_texture": "false"},
    "fast - rgb skip": {"network.rgb_skip": "false"},
    "fast - detail crops": {"train.detail_crop": "0"},
    "fast - bf16": {"train.bf16": "false"},
}
RECIPES: dict[str, dict[str, str]] = {"classic": CLASSIC, "fast": {}, **ABLATIONS}


def train_and_evaluate(
    data: Path, out: Path, recipe: str, minutes: float, frames: int, baselines: bool
) -> dict[str, Any]:
    from models.evaluation.evaluate import EvaluateOptions
    from models.evaluation.evaluate import run as evaluate
    from models.training.train import TrainOptions
    from models.training.train import run as train

    run_dir = out / "runs" / f"{recipe.replace(' ', '')}-{minutes:g}min"
    options = TrainOptions(
        data=data,
        out=run_dir,
        preset="cpu-256",
        device="cpu",
        minutes=minutes,
        resume=run_dir.exists(),
        overrides=tuple(RECIPES[recipe].items()),
        checkpoint_every=1000,
        sample_every=1000,
    )
    began = time.perf_counter()
    summary = train(options)
    trained = time.perf_counter() - began
    report = evaluate(
        EvaluateOptions(
            source=run_dir,
            data=data,
            out=out / "reports" / run_dir.name,
            max_frames=frames,
            metrics=("psnr", "ssim", "lpips"),
            network="teacher",
            baselines=baselines,
        )
    )
    return {
        "recipe": recipe,
        "minutes": minutes,
        "steps": summary["step"],
        "train_seconds": round(trained, 1),
        "full": {k: report[k] for k in ("psnr", "ssim", "lpips")},
        "masked": report["masked"],
        "baselines": report.get("baselines"),
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| recipe | minutes | steps | full PSNR | full SSIM | full LPIPS | masked PSNR | masked SSIM | masked LPIPS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def line(name: str, minutes: str, steps: str, full: dict[str, float], masked: dict[str, float]) -> str:
        values = [full["psnr"], full["ssim"], full["lpips"], masked["psnr"], masked["ssim"], masked["lpips"]]
        return f"| {name} | {minutes} | {steps} | " + " | ".join(f"{v:.3f}" for v in values) + " |"

    for r in rows:
        lines.append(line(r["recipe"], f"{r['minutes']:g}", str(r["steps"]), r["full"], r["masked"]))
    first = next((r["baselines"] for r in rows if r.get("baselines")), None)
    for name, values in (first or {}).items():
        lines.append(line(f"baseline: {name.replace('_', ' ')}", "-", "-", values["full"], values["masked"]))
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, region in zip(axes, ("full", "masked"), strict=True):
        for recipe in dict.fromkeys(r["recipe"] for r in rows):
            points = sorted((r["minutes"], r[region]["lpips"]) for r in rows if r["recipe"] == recipe)
            ax.plot(*zip(*points, strict=True), marker="o", label=recipe)
        base = next((r["baselines"] for r in rows if r.get("baselines")), None)
        for name, values in (base or {}).items():
            ax.axhline(values[region]["lpips"], linestyle="--", color="grey", linewidth=1)
            ax.annotate(name.replace("_", " "), (0, values[region]["lpips"]), fontsize=7, color="grey")
        ax.set_xlabel("training budget (minutes, this machine)")
        ax.set_ylabel(f"{region} LPIPS (lower is better)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a prepared dataset with a test split")
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--budgets", type=float, nargs="+", default=[20.0, 60.0], help="minutes per run")
    parser.add_argument("--recipes", nargs="+", default=["classic", "fast"], choices=list(RECIPES))
    parser.add_argument("--ablate", action="store_true", help="also run the fast recipe without each ingredient")
    parser.add_argument("--frames", type=int, default=100, help="evenly spaced test frames per evaluation")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    recipes = list(args.recipes) + (list(ABLATIONS) if args.ablate else [])
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    rows: list[dict[str, Any]] = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {(r["recipe"], r["minutes"]) for r in rows}
    for recipe in recipes:
        for minutes in args.budgets:
            if (recipe, minutes) in done:
                continue  # a rerun after an interruption keeps the finished measurements
            rows.append(train_and_evaluate(args.data, args.out, recipe, minutes, args.frames, baselines=not rows))
            results_path.write_text(json.dumps(rows, indent=2) + "\n")
            (args.out / "table.md").write_text(table(rows))
            plot(rows, args.out / "lpips_vs_minutes.png")
            print(table(rows), flush=True)


if __name__ == "__main__":
    main()
