"""Training step time and memory per preset, with all losses and with L1 + mask only.

    .venv/bin/python benchmarks/bench_train.py [--presets tiny cpu-256] [--steps 12] [--device cpu] [--recipes]

The L1 + mask configuration is the baseline measured in the same run: the ratio shows what
ID-MRF (VGG19), the identity loss (FaceNet) and the GAN cost per step. Medians skip the first
two steps (allocation, caches). With --recipes, cpu-256 with every loss on is also timed as the
classic recipe (fp32, whole-frame ID-MRF and D; see bench_quality_budget.py) and as the fast
recipe with bf16 off, beside the fast one. Memory: peak resident set of the process so far (CPU; presets
run in order, so a later preset's figure is at least an earlier one's) or peak allocated (CUDA).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from models.training.data import FrameSet
from models.training.train import Trainer, TrainOptions
from tracking.prepare import PrepareConfig
from tracking.prepare import run as prepare

VIDEO = Path(__file__).resolve().parents[2] / "shared" / "data" / "512" / "cap12_512.mp4"
QUICK = (("mrf", 0.0), ("cos", 0.0), ("gan_g", 0.0), ("gan_d", 0.0), ("r1_gamma", 0.0))


def time_steps(
    data: Path, preset_name: str, steps: int, device: torch.device, losses: tuple, overrides: tuple = ()
) -> dict[str, float]:
    preset = TrainOptions(data=data, out=data, preset=preset_name, losses=losses, overrides=overrides).resolved_preset()
    frames = FrameSet(data, "train", preset.network.image_size)
    trainer = Trainer.build(preset, frames, device, seed=0, rank=0, world=1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step(trainer.generator)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    memory = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {"ms_per_step_p50": round(statistics.median(times[2:]) * 1000, 1), "peak_mb": round(memory)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", nargs="+", default=["tiny", "cpu-256"])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--recipes", action="store_true", help="also time cpu-256 as the classic and fp32 recipes")
    args = parser.parse_args()
    device = torch.device(args.device)
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        datasets: dict[int, Path] = {}
        for name in args.presets:
            size = TrainOptions(data=Path(tmp), out=Path(tmp), preset=name).resolved_preset().network.image_size
            if size not in datasets:
                datasets[size] = Path(tmp) / f"d{size}"
                prepare(PrepareConfig(video=VIDEO, out=datasets[size], size=max(size, 64), max_frames=40))
            # Baseline first: CPU peak memory is the process's high-water mark, so the larger
            # configuration must come second for both figures to be its own.
            base = time_steps(datasets[size], name, args.steps, device, QUICK)
            full = time_steps(datasets[size], name, args.steps, device, ())
            report[name] = {
                "all_losses": full,
                "baseline_l1_mask": base,
                "ratio": round(full["ms_per_step_p50"] / base["ms_per_step_p50"], 2),
            }
            if args.recipes and name == "cpu-256":
                from bench_quality_budget import CLASSIC

                for label, overrides in (("classic", CLASSIC), ("fast_fp32", {"train.bf16": "false"})):
                    report[name][label] = time_steps(
                        datasets[size], name, args.steps, device, (), tuple(overrides.items())
                    )
    print(json.dumps({"device": args.device, "threads": torch.get_num_threads(), "presets": report}, indent=2))


if __name__ == "__main__":
    main()
