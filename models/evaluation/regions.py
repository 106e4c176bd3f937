"""Where in the frame the avatar is good or bad: six disjoint regions of a tracked frame, and
PSNR / LPIPS measured inside each of them.

The regions partition the image (every pixel belongs to exactly one), from the tracked mesh's
UV render (its region code: skin, lips, eye, iris, mouth opening; `tracking.render`) and the
real frame's person mask:

- ``face``: the mesh's skin and lips (the face inside the mesh, without eyes and mouth);
- ``eyes``: the mesh's eye openings (eye white and iris);
- ``mouth``: the mesh's mouth opening, between the inner lips (empty when the mouth is shut);
- ``hair``: the person off the mesh above the chin line: hair, forehead above the mesh, ears,
  the sides of the head;
- ``neck``: the person off the mesh below the chin line: neck, collar, shoulders;
- ``background``: everything else (off the mesh and off the person mask).

The chin line passes through the chin landmark (MediaPipe 152) at right angles to the face's
up direction (chin -> top of the forehead, landmark 10), so a tilted head splits at its own
chin, not at an image row.

Region PSNR is 10 log10(1 / MSE) over the region's pixels of a frame. Region LPIPS averages the
spatial LPIPS map (`LPIPSNet.spatial`, the `lpips` package's ``spatial=True``) over the region's
pixels: the network sees the whole frame, so the value is measured in context, one forward pass
serves all six regions, and a region smaller than AlexNet's receptive field (the mouth, ~20 px)
still gets a value. The price: the deeper layers are coarse (8 px to 16 px cells at 256 px,
upsampled bilinearly), so errors just outside a small region leak into it.
"""

from __future__ import annotations

import heapq
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from tracking.mesh import Region

U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]
F32 = npt.NDArray[np.float32]
B = npt.NDArray[np.bool_]

REGIONS = ("face", "eyes", "mouth", "hair", "neck", "background")
CHIN, FOREHEAD = 152, 10  # MediaPipe face-mesh landmarks: the chin's tip, the top of the forehead
MIN_FRACTION = 16 / 256**2  # a region counts in a frame from 16 pixels (at 256 px) on
PERSON_THRESHOLD = 128  # person-mask value (of 255) from which a pixel is the person's
N_CODES = len(Region)


def region_codes(uv: U16) -> npt.NDArray[np.int64]:
    """[..., H, W, 3] uint16 UV renders (u, v, code) -> [..., H, W] int64 `Region` per pixel."""
    return np.asarray(np.rint(uv[..., 2].astype(np.float64) * (N_CODES - 1) / 65535), dtype=np.int64)


def region_masks(uv: U16, person: U8, landmarks: F32) -> B:
    """The six regions of each frame.

    Args:
        uv: [N, H, W, 3] uint16 UV renders of the tracked mesh (RGB order: u, v, region code).
        person: [N, H, W] uint8 person masks (255 = person).
        landmarks: [N, 478, >=2] float32 tracked landmarks in pixels of these images.

    Returns:
        [N, len(REGIONS), H, W] bool, disjoint, their union every pixel.
    """
    h, w = person.shape[1:]
    code = region_codes(uv)  # [N, H, W]
    on_mesh = code > Region.BACKGROUND
    is_person = person >= PERSON_THRESHOLD
    chin = landmarks[:, CHIN, :2].astype(np.float64)  # [N, 2]
    up = landmarks[:, FOREHEAD, :2].astype(np.float64) - chin
    up /= np.linalg.norm(up, axis=1, keepdims=True) + 1e-9
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)  # [H, W]
    height = (xs[None] - chin[:, 0, None, None]) * up[:, 0, None, None]
    height += (ys[None] - chin[:, 1, None, None]) * up[:, 1, None, None]  # [N, H, W]: > 0 above the chin line
    off = ~on_mesh & is_person
    masks = np.stack(
        [
            (code == Region.SKIN) | (code == Region.LIPS),
            (code == Region.EYE) | (code == Region.IRIS),
            code == Region.MOUTH,
            off & (height > 0),
            off & (height <= 0),
            ~on_mesh & ~is_person,
        ],
        axis=1,
    )
    return np.asarray(masks, dtype=np.bool_)


def region_psnr(fake: Tensor, real: Tensor, masks: Tensor) -> Tensor:
    """fake, real [N, 3, H, W] in [0, 1]; masks [N, R, H, W] bool -> [N, R] PSNR in dB over each
    region's pixels (NaN for an empty region; 100 dB cap as `metrics.psnr`)."""
    error = (fake.double().clamp(0, 1) - real.double().clamp(0, 1)).square().mean(dim=1)  # [N, H, W]
    weight = masks.double()
    count = weight.sum(dim=(2, 3))  # [N, R]
    mse = (error[:, None] * weight).sum(dim=(2, 3)) / count.clamp_min(1)
    value = 10 * torch.log10(1.0 / mse.clamp_min(1e-10))
    return torch.where(count > 0, value, torch.full_like(value, float("nan")))


def region_mean(values: Tensor, masks: Tensor) -> Tensor:
    """values [N, H, W] (a spatial LPIPS map); masks [N, R, H, W] bool -> [N, R] mean per region
    (NaN for an empty region)."""
    weight = masks.double()
    count = weight.sum(dim=(2, 3))
    mean = (values.double()[:, None] * weight).sum(dim=(2, 3)) / count.clamp_min(1)
    return torch.where(count > 0, mean, torch.full_like(mean, float("nan")))


@dataclass
class RegionScores:
    """Per-frame region figures of one image source (the avatar or a baseline), accumulated.

    `add(psnr, lpips, present)`: [N, R] values and [N, R] bool (the region counts in that frame).
    A frame's value enters a region's mean only where the region is present.
    """

    psnr: list[npt.NDArray[np.float64]] = field(default_factory=list)
    lpips: list[npt.NDArray[np.float64]] = field(default_factory=list)

    def add(self, psnr: Tensor | None, lpips: Tensor | None, present: B) -> None:
        for store, values in ((self.psnr, psnr), (self.lpips, lpips)):
            if values is not None:
                array = values.detach().double().cpu().numpy()
                store.append(np.where(present, array, np.nan))

    def per_frame(self, metric: str) -> npt.NDArray[np.float64]:
        """[frames, R] values (NaN where the region is absent)."""
        store = self.psnr if metric == "psnr" else self.lpips
        return np.concatenate(store) if store else np.zeros((0, len(REGIONS)))

    def results(self) -> dict[str, dict[str, float | None]]:
        """{region: {metric: mean over the frames where it is present, or None}}."""
        out: dict[str, dict[str, float | None]] = {name: {} for name in REGIONS}
        for metric, store in (("psnr", self.psnr), ("lpips", self.lpips)):
            if not store:
                continue
            table = self.per_frame(metric)
            for r, name in enumerate(REGIONS):
                column = table[:, r][np.isfinite(table[:, r])]
                out[name][metric] = float(column.mean()) if column.size else None
        return out


def presence(masks: B) -> tuple[B, npt.NDArray[np.float64]]:
    """masks [N, R, H, W] -> ([N, R] whether each region counts in each frame, [N, R] fractions)."""
    fraction = masks.mean(axis=(2, 3), dtype=np.float64)
    return fraction >= MIN_FRACTION, fraction


def summarise(
    avatar: RegionScores, baselines: dict[str, RegionScores], fractions: list[npt.NDArray[np.float64]]
) -> dict[str, dict[str, Any]]:
    """metrics.json's ``regions``: {region: {psnr, lpips, pixels, frames, baselines: {name: {psnr,
    lpips}}, beats_baselines: {metric: bool}}}; `pixels` is the region's mean fraction of the image
    over every evaluated frame, `frames` how many frames it was present in."""
    mine = avatar.results()
    theirs = {b: scores.results() for b, scores in baselines.items()}
    share = np.concatenate(fractions) if fractions else np.zeros((0, len(REGIONS)))
    present = share >= MIN_FRACTION
    out: dict[str, dict[str, Any]] = {}
    for r, name in enumerate(REGIONS):
        row: dict[str, Any] = dict(mine[name])
        row["pixels"] = float(share[:, r].mean()) if len(share) else 0.0
        row["frames"] = int(present[:, r].sum())
        if theirs:
            row["baselines"] = {b: values[name] for b, values in theirs.items()}
            beats: dict[str, bool] = {}
            for metric, value in mine[name].items():
                others = [values[name].get(metric) for values in theirs.values()]
                if value is None or any(o is None for o in others):
                    continue
                lower = metric == "lpips"
                beats[metric] = all(value < o if lower else value > o for o in others if o is not None)
            row["beats_baselines"] = beats
        out[name] = row
    return out


# ---------------------------------------------------------------------------------- report

OUTLINE = (0, 255, 255)  # RGB cyan


def outlined(image: U8, mask: B) -> U8:
    """[H, W, 3] uint8 RGB with the region's outline drawn over it."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.ascontiguousarray(image.copy())
    cv2.drawContours(out, contours, -1, OUTLINE, 1)
    return out


@dataclass(order=True)
class _Worst:
    lpips: float
    frame: int
    image: U8 = field(compare=False)


class WorstByRegion:
    """The frames with the highest region LPIPS, per region, as (real | avatar) thumbnails with
    the region outlined; `html()` writes them under out/frames and returns the report section."""

    def __init__(self, count: int = 3) -> None:
        self.count = count
        self.heaps: dict[str, list[_Worst]] = {name: [] for name in REGIONS}

    def add(self, frames: list[int], real: U8, fake: U8, masks: B, lpips: Tensor) -> None:
        """frames [N]; real, fake [N, H, W, 3]; masks [N, R, H, W]; lpips [N, R] (NaN = absent)."""
        if self.count <= 0:
            return
        values = lpips.detach().cpu().numpy()
        for r, name in enumerate(REGIONS):
            heap = self.heaps[name]
            for i, frame in enumerate(frames):
                value = float(values[i, r])
                if not np.isfinite(value) or (len(heap) == self.count and value <= heap[0].lpips):
                    continue
                tiles = [outlined(real[i], masks[i, r]), outlined(fake[i], masks[i, r])]
                gap = np.full((real.shape[1], 2, 3), 255, np.uint8)
                item = _Worst(value, frame, np.concatenate([tiles[0], gap, tiles[1]], axis=1))
                if len(heap) < self.count:
                    heapq.heappush(heap, item)
                else:
                    heapq.heapreplace(heap, item)

    def html(self, out: Path) -> str:
        parts = ["<h2>Worst frames per region (real | avatar, region outlined, by region LPIPS)</h2>"]
        for name in REGIONS:
            worst = sorted(self.heaps[name], reverse=True)
            if not worst:
                continue
            parts.append(f"<h3>{html.escape(name)}</h3><div>")
            for item in worst:
                path = f"frames/region-{name}-{item.frame:06d}.png"
                cv2.imwrite(str(out / path), item.image[..., ::-1])
                caption = f"frame {item.frame}: LPIPS {item.lpips:.4g}"
                parts.append(
                    f"<figure style='display:inline-block;margin-right:8px'><img src='{path}' alt='{caption}'>"
                    f"<figcaption>{caption}</figcaption></figure>"
                )
            parts.append("</div>")
        return "\n".join(parts)


def table_html(regions: dict[str, dict[str, Any]]) -> str:
    """The region table: pixels, the avatar's PSNR / LPIPS and each baseline's beside them."""
    names = list(next(iter(regions.values())).get("baselines", {})) if regions else []
    head = "<tr><th>region</th><th>pixels</th><th>frames</th><th>PSNR</th><th>LPIPS</th>"
    head += "".join(f"<th>{html.escape(b)} PSNR</th><th>{html.escape(b)} LPIPS</th>" for b in names) + "</tr>"

    def cell(value: float | None, digits: str) -> str:
        return f"<td>{'-' if value is None else format(value, digits)}</td>"

    rows = []
    for name, row in regions.items():
        beats = row.get("beats_baselines", {})
        mark = {m: "" if beats.get(m, True) else " style='background:#fdd'" for m in ("psnr", "lpips")}
        cells = f"<td>{row['pixels']:.1%}</td><td>{row['frames']}</td>"
        cells += cell(row.get("psnr"), ".2f").replace("<td>", f"<td{mark['psnr']}>", 1)
        cells += cell(row.get("lpips"), ".4f").replace("<td>", f"<td{mark['lpips']}>", 1)
        for b in names:
            cells += cell(row["baselines"][b].get("psnr"), ".2f") + cell(row["baselines"][b].get("lpips"), ".4f")
        rows.append(f"<tr><th style='text-align:left'>{html.escape(name)}</th>{cells}</tr>")
    note = "<p>Red: the avatar does not beat both baselines on that figure.</p>" if names else ""
    return f"<h2>By region</h2><table>{head}{''.join(rows)}</table>{note}"
