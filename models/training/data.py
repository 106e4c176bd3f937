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
        self.folder = folder

    def photo_texture(self) -> Tensor:
        """[3, T, T] float in [0, 1]: the split's back-projected face (prepare's texture.png)."""
        path = self.folder / "texture.png"
        if not path.exists():
            raise DatasetError(
                f"{path} is missing (a dataset from an older avatarcam); re-run the same `avatarcam prepare` "
                "command: it keeps the finished frames and adds the texture"
            )
        return torch.from_numpy(_read(path)[..., ::-1].copy()).permute(2, 0, 1).float() / 255

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


def detail_boxes(face: Tensor, size: int, generator: torch.Generator | None = None) -> Tensor:
    """[N, 2] long (top, left) of a size x size box per sample, centred on the face mask's centre
    ([N, 1, H, W], > 0 on the face) with a random shift of up to a quarter of the box, inside
    the image. Samples without a face get a random box."""
    n, _, h, w = face.shape
    on = face[:, 0] > 0  # [N, H, W]
    ys = torch.arange(h, dtype=torch.float32, device=face.device).view(1, h, 1)
    xs = torch.arange(w, dtype=torch.float32, device=face.device).view(1, 1, w)
    count = on.sum(dim=(1, 2)).float()
    centre_y = torch.where(count > 0, (on * ys).sum(dim=(1, 2)) / count.clamp(min=1), torch.full_like(count, h / 2))
    centre_x = torch.where(count > 0, (on * xs).sum(dim=(1, 2)) / count.clamp(min=1), torch.full_like(count, w / 2))
    jitter = (torch.rand(n, 2, generator=generator) * 2 - 1) * (size / 4)
    top = (centre_y.cpu() - size / 2 + jitter[:, 0]).round().long().clamp(0, h - size)
    left = (centre_x.cpu() - size / 2 + jitter[:, 1]).round().long().clamp(0, w - size)
    return torch.stack([top, left], dim=1)


def cut(x: Tensor, boxes: Tensor, size: int) -> Tensor:
    """[N, C, H, W] -> [N, C, size, size]: each sample's box (top, left) from `detail_boxes`."""
    return torch.stack([x[i, :, t : t + size, s : s + size] for i, (t, s) in enumerate(boxes.tolist())])


def face_crops(images: Tensor, face: Tensor, size: int, margin: float = 0.1) -> Tensor:
    """[N, C, H, W] -> [N, C, size, size]: a square around each sample's face mask ([N, 1, H, W],
    > 0 on the face) with `margin` of its side added on every side, resized. This is the crop an
    identity network expects (FaceNet: the face plus about 10 %); a sample without a face gets
    the whole image."""
    out = []
    h, w = images.shape[-2:]
    for image, mask in zip(images, face[:, 0] > 0, strict=True):
        rows, cols = torch.nonzero(mask.any(dim=1))[:, 0], torch.nonzero(mask.any(dim=0))[:, 0]
        if rows.numel() == 0:
            crop = image
        else:
            top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            side = min(round(max(bottom - top, right - left) * (1 + 2 * margin)), h, w)
            cy, cx = (top + bottom) // 2, (left + right) // 2
            y0 = min(max(cy - side // 2, 0), h - side)
            x0 = min(max(cx - side // 2, 0), w - side)
            crop = image[:, y0 : y0 + side, x0 : x0 + side]
        out.append(F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True))
    return torch.cat(out)
