"""SSIM (Wang et al. 2004): 11-tap Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, data range
1, population statistics, averaged over the valid (unpadded) positions and the RGB channels;
the same definition as scikit-image's ``structural_similarity(..., gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1)``, which the tests compare against."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from models.evaluation.metrics.base import FrameMean, MetricWeights, check_pair, register

SIGMA = 1.5
RADIUS = 5  # scipy's gaussian_filter radius: int(truncate 3.5 * sigma + 0.5)
K1, K2 = 0.01, 0.03


def _window(dtype: torch.dtype, device: torch.device) -> Tensor:
    x = torch.arange(-RADIUS, RADIUS + 1, dtype=dtype, device=device)
    g = torch.exp(-(x**2) / (2 * SIGMA**2))
    return g / g.sum()


def _blur(x: Tensor, g: Tensor) -> Tensor:
    """Separable Gaussian, 'valid' positions only: [B, 1, H, W] -> [B, 1, H - 10, W - 10]."""
    x = F.conv2d(x, g.view(1, 1, 1, -1))
    return F.conv2d(x, g.view(1, 1, -1, 1))


def ssim(fake: Tensor, real: Tensor) -> Tensor:
    """fake, real [N, 3, H, W] in [0, 1] (H, W >= 11) -> [N] mean SSIM."""
    n = check_pair(fake, real)
    if min(fake.shape[-2:]) < 2 * RADIUS + 1:
        raise ValueError(f"SSIM needs images of at least {2 * RADIUS + 1} px, got {tuple(fake.shape[-2:])}")
    a = fake.double().clamp(0, 1).reshape(n * 3, 1, *fake.shape[-2:])
    b = real.double().clamp(0, 1).reshape(n * 3, 1, *real.shape[-2:])
    g = _window(a.dtype, a.device)
    mu_a, mu_b = _blur(a, g), _blur(b, g)
    var_a = _blur(a * a, g) - mu_a**2
    var_b = _blur(b * b, g) - mu_b**2
    cov = _blur(a * b, g) - mu_a * mu_b
    c1, c2 = K1**2, K2**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.reshape(n, -1).mean(dim=1)


@register("ssim")
class SSIM:
    name = "ssim"
    higher_is_better = True

    def __init__(self, weights: MetricWeights, device: torch.device) -> None:
        self._frames = FrameMean()

    def update(self, fake: Tensor, real: Tensor, boxes: Tensor | None = None) -> Tensor:
        return self._frames.add(ssim(fake, real))

    def result(self) -> float:
        return self._frames.mean()
