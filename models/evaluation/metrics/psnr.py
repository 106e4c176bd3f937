"""PSNR: 10 log10(1 / MSE) per frame, images in [0, 1], averaged over frames."""

from __future__ import annotations

import torch
from torch import Tensor

from models.evaluation.metrics.base import FrameMean, MetricWeights, check_pair, register


def psnr(fake: Tensor, real: Tensor) -> Tensor:
    """fake, real [N, 3, H, W] in [0, 1] -> [N] PSNR in dB (capped at 100 dB for identical frames)."""
    check_pair(fake, real)
    mse = (fake.double().clamp(0, 1) - real.double().clamp(0, 1)).square().mean(dim=(1, 2, 3))
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


@register("psnr")
class PSNR:
    name = "psnr"
    higher_is_better = True

    def __init__(self, weights: MetricWeights, device: torch.device) -> None:
        self._frames = FrameMean()

    def update(self, fake: Tensor, real: Tensor, boxes: Tensor | None = None) -> Tensor:
        return self._frames.add(psnr(fake, real))

    def result(self) -> float:
        return self._frames.mean()
