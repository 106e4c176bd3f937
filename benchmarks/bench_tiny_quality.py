"""Held-out PSNR of a short `tiny` run beside three baselines measured in the same run.

    .venv/bin/python benchmarks/bench_tiny_quality.py [--steps 300] [--frames 60]

Prepares the first N frames of cap12 at 64 px (last 20% held out), trains `tiny` with every
loss, and prints PSNR on the held-out frames for the trained generator and its EMA, the
untrained network, the mean-colour image and the mean training frame.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from models.networks.presets import Preset, get_preset
from models.networks.selfieavatar import SelfieAvatarGenerator
from models.training import checkpoint as ckpt
from models.training.data import FrameSet
from models.training.train import TrainOptions, heldout_psnr, psnr, run
from tracking.prepare import PrepareConfig
from tracking.prepare import run as prepare

VIDEO = Path(__file__).resolve().parents[2] / "shared" / "data" / "512" / "cap12_512.mp4"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--frames", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "data", Path(tmp) / "run"
        prepare(PrepareConfig(video=VIDEO, out=data, size=64, max_frames=args.frames))
        summary = run(TrainOptions(data=data, out=out, preset="tiny", steps=args.steps, sample_every=10**9))
        loaded = ckpt.load(ckpt.latest(out))  # type: ignore[arg-type]
        preset = Preset.from_dict(loaded.meta["preset"])
        train, test = FrameSet(data, "train", 64), FrameSet(data, "test", 64)
        result: dict[str, float] = {}
        for which in ("generator", "ema"):
            g = SelfieAvatarGenerator(preset.network, loaded.meta["num_frames"])
            g.load_state_dict(loaded.tensors[which])
            result[f"{which}_db"] = heldout_psnr(g, test)
        torch.manual_seed(0)
        result["untrained_db"] = heldout_psnr(SelfieAvatarGenerator(get_preset("tiny").network, len(train)), test)
        real = test.image.float() / 255
        colour = train.image.float().mean(dim=(0, 2, 3)).div(255).view(1, 3, 1, 1).expand_as(real)
        result["mean_colour_db"] = psnr(colour, real)
        result["mean_frame_db"] = psnr((train.image.float().mean(dim=0, keepdim=True) / 255).expand_as(real), real)
    report = {"train_frames": len(train), "test_frames": len(test), "steps": args.steps}
    report |= {k: round(v, 2) for k, v in result.items()}
    report["seconds_per_step"] = round(summary["seconds_per_step"], 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
