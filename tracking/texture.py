"""The person's own face in UV space: the training frames back-projected through their UV renders.

Every face pixel of a UV render names the texel (u, v) it shows, so each frame contributes one
colour sample per face pixel. Samples are weighted by how squarely the surface faces the camera
(pixels whose UV footprint is large are at grazing angles, or stretched across a mesh edge) and the
rim of the face is dropped (background bleeds into it). Each texel takes the weighted median of its
samples, which ignores what only a few frames show (a blink, an open mouth, a hand), and texels no
frame saw are filled from coarser levels of a push-pull pyramid.

The result seeds the generator's neural texture (`models/networks/selfieavatar.py`), so the texture rendering
shows the person's face from the first training step instead of a flat albedo.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

RIM = 2
"""Pixels of the face's outer edge left out: they mix face and background."""
MIN_WEIGHT = 1e-3


@dataclass(frozen=True)
class PhotoTexture:
    """A back-projected texture.

    Attributes:
        rgb: [3, T, T] float32 in [0, 1]; u runs along the width, v down the height.
        coverage: [T, T] float32: the summed sample weight of each texel before filling (0: unseen).
    """

    rgb: Tensor
    coverage: Tensor


def _footprint_weight(uv: Tensor, size: int) -> Tensor:
    """[N, H, W] weight in [0, 1]: about one per pixel where one pixel covers at most one texel,
    falling off as a pixel's footprint in the texture grows (grazing angles)."""
    u, v = uv[:, 0] * size, uv[:, 1] * size
    du_dx, du_dy = torch.gradient(u, dim=(2, 1))
    dv_dx, dv_dy = torch.gradient(v, dim=(2, 1))
    area = (du_dx * dv_dy - du_dy * dv_dx).abs()  # texels per pixel
    return (1.0 / area.clamp(min=1.0)).clamp(max=1.0)


def _face_interior(face: Tensor) -> Tensor:
    """[N, H, W] bool: the face mask eroded by RIM pixels."""
    outside = (~face).float().unsqueeze(1)
    grown = F.max_pool2d(outside, 2 * RIM + 1, stride=1, padding=RIM)
    return (grown[:, 0] == 0) & face


def _weighted_median(texel: Tensor, value: Tensor, weight: Tensor, texels: int) -> Tensor:
    """Per texel, the weighted median of `value` (uint8 levels as int64) -> [texels] float."""
    order = torch.argsort(texel * 256 + value)
    texel, value, weight = texel[order], value[order], weight[order]
    total = torch.zeros(texels, dtype=torch.float64).index_add_(0, texel, weight)
    running = torch.cumsum(weight, 0)
    start = torch.cumsum(total, 0) - total  # running weight before each texel's first sample
    below = running - start[texel]  # cumulative weight within the texel, inclusive
    past_half = below >= total[texel] / 2
    # The first sample of each texel whose cumulative weight reaches half the texel's total.
    first = torch.full((texels,), value.numel(), dtype=torch.long)
    first.scatter_reduce_(0, texel[past_half], torch.nonzero(past_half)[:, 0], reduce="amin")
    seen = total > 0
    out = torch.zeros(texels, dtype=torch.float32)
    out[seen] = value[first[seen]].to(torch.float32)
    return out


def _push_pull(rgb: Tensor, weight: Tensor) -> Tensor:
    """Fills texels of zero weight from coarser weighted averages. rgb [3, T, T], weight [T, T]."""
    if min(rgb.shape[-2:]) <= 1 or bool((weight > 0).all()):
        return rgb
    w = (weight > 0).float()[None, None]
    coarse_w = F.avg_pool2d(w, 2, ceil_mode=True)
    coarse = F.avg_pool2d(rgb[None] * w, 2, ceil_mode=True) / coarse_w.clamp(min=1e-8)
    filled = _push_pull(coarse[0], coarse_w[0, 0])
    up = F.interpolate(filled[None], size=rgb.shape[-2:], mode="bilinear", align_corners=False)[0]
    return torch.where(w[0] > 0, rgb, up)


def back_project(
    frames: Tensor,  # [N, 3, H, W] uint8 RGB frames
    uv: Tensor,  # [N, 3, H, W] float UV renders in [0, 1]: u, v, region code (0 off the face)
    person: Tensor | None = None,  # [N, 1, H, W] uint8 person masks; None: every face pixel counts
    size: int = 256,
) -> PhotoTexture:
    """The weighted-median texture of `frames` at size x size texels."""
    n, _, h, w = frames.shape
    if uv.shape != (n, 3, h, w):
        raise ValueError(f"uv renders {tuple(uv.shape)} do not match frames {tuple(frames.shape)}")
    uv = uv.float()
    keep = _face_interior(uv[:, 2] > 0)
    if person is not None:
        keep &= person[:, 0] >= 128
    weight = _footprint_weight(uv, size) * keep
    mask = weight > MIN_WEIGHT
    tu = (uv[:, 0] * size).long().clamp(0, size - 1)
    tv = (uv[:, 1] * size).long().clamp(0, size - 1)
    texel = (tv * size + tu)[mask]  # [S]
    wsel = weight[mask].double()
    texels = size * size
    rgb = torch.stack([_weighted_median(texel, frames[:, c][mask].long(), wsel, texels) for c in range(3)]).reshape(
        3, size, size
    )
    coverage = torch.zeros(texels, dtype=torch.float64).index_add_(0, texel, wsel).reshape(size, size).float()
    return PhotoTexture(_push_pull(rgb / 255.0, coverage).clamp(0, 1), coverage)
