"""Held-out LPIPS at each checkpoint, next to the mean-training-frame baseline.

`avatarcam train --heldout-frames N` measures the EMA generator on N evenly spaced frames of the
dataset's test split (mean temporal code, centred window: as every engine runs it) with
LPIPS(alex), and the mean training frame on the same frames: the constant picture an avatar has
to beat. Each checkpoint appends one line to `RUN/logs/heldout.jsonl`:
{"step", "seconds" (of training, resumes included), "lpips", "baseline_lpips", "frames"}.
This is the quick curve the /create page draws while a run trains; `avatarcam evaluate` stays
the full report.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.evaluation.metrics.lpips import LPIPSNet, load_lpips
from models.networks.selfieavatar import SelfieAvatarGenerator
from models.training.data import FrameSet

LOG = Path("logs") / "heldout.jsonl"


class HeldOut:
    """LPIPS of a generator and of the mean training frame on a few test frames.

    Args:
        data: the prepared dataset (its test split is measured).
        train: the training frames (their mean is the baseline).
        count: test frames to measure, evenly spaced over the split.
        device: where the generator runs.
    """

    def __init__(self, data: Path, train: FrameSet, count: int, device: torch.device) -> None:
        size = train.size
        test = FrameSet(data, "test", size)
        picks = torch.linspace(0, len(test) - 1, min(count, len(test))).round().long().unique()
        self.frames = test
        self.picks = picks
        self.device = device
        self.net: LPIPSNet = load_lpips().to(device)
        real = test.image[picks].float() / 255  # [N, 3, H, W]
        mean = train.image.sum(dim=0, dtype=torch.float32) / (255 * len(train))  # [3, H, W]
        self.baseline = self._lpips(mean.expand_as(real), real)

    @torch.no_grad()
    def _lpips(self, fake: torch.Tensor, real: torch.Tensor) -> float:
        return float(self.net(fake.to(self.device), real.to(self.device)).mean().item())

    @torch.no_grad()
    def measure(self, generator: SelfieAvatarGenerator) -> float:
        """LPIPS of `generator` on the picked test frames (lower is better)."""
        was_training = generator.training
        generator.eval()
        batch = self.frames.batch(self.picks, generator.config.canvas_size, self.device, random_window=False)
        out = generator(batch.uv, batch.shaded, None, batch.window, noise_mode="const")
        generator.train(was_training)
        return self._lpips(((out.image.float().clamp(-1, 1) + 1) / 2), batch.image.float())

    def record(self, run: Path, step: int, seconds: float, generator: SelfieAvatarGenerator) -> dict[str, float]:
        """Measure and append one line to RUN/logs/heldout.jsonl; returns the line."""
        line = {
            "step": step,
            "seconds": round(seconds, 2),
            "lpips": round(self.measure(generator), 5),
            "baseline_lpips": round(self.baseline, 5),
            "frames": len(self.picks),
        }
        path = run / LOG
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        return line
