"""Training frames from a prepared dataset (see tracking/prepare.py for the layout).

Frames are decoded once into compact uint8/uint16 tensors in memory (a 1-3 minute video at 256
px is ~1 GB), so a training step costs no PNG decoding. Sliding-window augmentation pads each
frame to the preset's canvas and cuts a random image-size window: the head moves against a
fixed background, and `valid` marks the pixels that came from the real frame.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


class DatasetError(RuntimeError):
    """The dataset folder is unusable; the message says what to run."""


@dataclass(frozen=True)
class Batch:
    """One training batch (all [0, 1] floats on the training device).

    Attributes:
        image: [N, 3, H, W] real frames.
        person: [N, 1, H, W] person mask (1 - I_back).
        uv: [N, 3, H, W] UV renders (u, v, region code).
        shaded: [N, 3, H, W] texture renders.
        valid: [N, 1, H, W] 1 where the pixel came from the real frame (not sliding-window padding).
        frame: [N] long indices into the per-frame codes.
        window: [N, 2] long (top, left) of each window in the canvas.
    """

    image: Tensor
    person: Tensor
    uv: Tensor
    shaded: Tensor
    valid: Tensor
    frame: Tensor
    window: Tensor


def _read(path: Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    image = cv2.imread(str(path), flags)
    if image is None:
        raise DatasetError(f"{path} is missing or unreadable; re-run `avatarcam prepare` to repair the dataset")
    return image


class FrameSet:
    """All frames of one split of a prepared dataset, resized to `size` if needed.

    Args:
        root: the dataset folder (with manifest.json).
        split: "train" or "test".
        size: the network's image size; UV renders are resized with nearest-neighbour so
            region codes stay exact.
        limit: keep only the first N frames (quick runs and tests).
    """

    def __init__(self, root: Path, split: str, size: int, limit: int | None = None) -> None:
        manifest = root / "manifest.json"
        if not manifest.exists():
            raise DatasetError(f"{root} is not a finished dataset (no manifest.json); run `avatarcam prepare` first")
        self.manifest = json.loads(manifest.read_text())
        folder = root / split
        tracking = folder / "tracking.npz"
        if not tracking.exists():
            raise DatasetError(f"{root} has no '{split}' split; prepare with --test-fraction > 0 or --test-video")
        with np.load(tracking) as data:
            self.source_frames = data["frame"][:limit].tolist()
        self.size = size
        names = [f"{i:06d}.png" for i in self.source_frames]
        area = cv2.INTER_AREA

        def rgb(kind: str, name: str) -> np.ndarray:
            return cv2.resize(_read(folder / kind / name)[..., ::-1], (size, size), interpolation=area)

        self.image = torch.from_numpy(np.stack([rgb("frames", n) for n in names])).permute(0, 3, 1, 2).contiguous()
        self.shaded = torch.from_numpy(np.stack([rgb("render", n) for n in names])).permute(0, 3, 1, 2).contiguous()
        masks = [cv2.resize(_read(folder / "mask" / n), (size, size), interpolation=area) for n in names]
        self.person = torch.from_numpy(np.stack(masks)).unsqueeze(1).contiguous()
        uvs = [
            cv2.resize(_read(folder / "uv" / n)[..., ::-1], (size, size), interpolation=cv2.INTER_NEAREST)
            for n in names
        ]
        self.uv = torch.from_numpy(np.stack(uvs).astype(np.int32)).permute(0, 3, 1, 2).contiguous()
        self.background = torch.from_numpy(
            cv2.resize(_read(folder / "background.png")[..., ::-1], (size, size), interpolation=area).copy()
        ).permute(2, 0, 1)

    def __len__(self) -> int:
        return len(self.source_frames)

    def batch(
        self,
        indices: Tensor,
        canvas: int,
        device: torch.device,
        generator: torch.Generator | None = None,
        random_window: bool = True,
    ) -> Batch:
        """Frames `indices` as a Batch; with a canvas larger than the image and `random_window`,
        each frame sits at a random offset in a padded canvas and the window is cut around it."""
        n, size = len(indices), self.size
        margin = canvas - size
        if random_window and margin > 0:
            window = torch.randint(0, margin + 1, (n, 2), generator=generator)
        else:
            window = torch.full((n, 2), margin // 2, dtype=torch.long)
        # The frame's placement inside the window is the opposite of the window's offset in the
        # canvas (which is centred on the frame): shift = centre offset - window offset.
        shift = (margin // 2 - window).tolist()

        def place(x: Tensor, mode: str) -> Tensor:
            out = []
            for sample, (dy, dx) in zip(x, shift, strict=True):
                out.append(_shift(sample, dy, dx, mode))
            return torch.stack(out)

        image = self.image[indices].float() / 255
        uv = self.uv[indices].float() / 65535
        return Batch(
            image=place(image, "replicate").to(device),
            person=place(self.person[indices].float() / 255, "replicate").to(device),
            uv=place(uv, "zeros").to(device),
            shaded=place(self.shaded[indices].float() / 255, "zeros").to(device),
            valid=place(torch.ones(n, 1, size, size), "zeros").to(device),
            frame=indices.to(device),
            window=window.to(device),
        )


def _shift(x: Tensor, dy: int, dx: int, mode: str) -> Tensor:
    """Translate a [C, H, W] image by (dy, dx) pixels, filling with zeros or the border."""
    if dy == 0 and dx == 0:
        return x
    h, w = x.shape[-2:]
    pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))
    padded = F.pad(x.unsqueeze(0), pad, mode="replicate" if mode == "replicate" else "constant").squeeze(0)
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[:, top : top + h, left : left + w]
