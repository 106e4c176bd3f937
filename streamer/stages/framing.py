"""Framing: the avatar's square crop as a webcam picture (16:9 by default) for meeting apps.

A meeting app expects a webcam: 1280x720 (or 1920x1080, 640x480), a person framed head and
shoulders, centred. The avatar's crop already is head and shoulders (the portrait enlarged
1.5x); it is scaled with a quality resampler to `zoom` of the camera's height, centred
horizontally and standing on the bottom edge. Around it, the camera is filled from the stream's
background, never with black bars:

- learned: the generator's own background, extended. The person is removed from it (a
  push-pull fill from the background pixels around them), the result mirrored outwards and
  blurred more the further it is from the avatar's crop, so the mirror is not seen as one.
- blur: that extended background, strongly blurred, behind the person.
- image: the picture, cover-fitted to the whole camera, behind the person.

The background around the crop changes slowly (G_b is static), so it is rebuilt only every
`refresh_frames` frames, at the avatar's scale; each frame then costs one upscale of the
image and the mask, one blend of the crop's square and the badge and watermark at camera size.
The mark is embedded here, at the size the meeting app receives (it does not survive rescaling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import cv2
import numpy as np

from streamer.core.frames import U8, Background, Layers
from streamer.stages.compose import F32, badge_patch, draw_badge


class Resampler(StrEnum):
    """How the avatar's crop is scaled up to the camera.

    Bicubic is the default: on 256 px crops of a real 720p video scaled back to 720 px
    (`benchmarks/bench_upscale.py`, 12 frames) it scored LPIPS 0.051 against Lanczos-4's 0.053 and
    bilinear's 0.066 (PSNR 38.5 / 38.7 / 37.2 dB), at 0.29 ms per frame against Lanczos' 2.9 ms
    on 2 cores (OpenCV's Lanczos is not vectorised)."""

    CUBIC = "cubic"  # bicubic (4x4 taps): the default
    LANCZOS = "lanczos"  # Lanczos-4 (8x8 taps): a little higher PSNR, 10x the cost
    LINEAR = "linear"  # bilinear: soft; the cheapest

    @property
    def cv2_flag(self) -> int:
        return {"lanczos": cv2.INTER_LANCZOS4, "cubic": cv2.INTER_CUBIC, "linear": cv2.INTER_LINEAR}[self.value]


@dataclass(frozen=True)
class CameraSize:
    """A webcam format, width x height pixels (both even: what YUV 4:2:0 devices need)."""

    width: int = 1280
    height: int = 720

    @classmethod
    def parse(cls, text: str) -> CameraSize:
        """ "1280x720" -> CameraSize(1280, 720); a clear ValueError otherwise."""
        w, sep, h = text.lower().partition("x")
        if not sep or not w.isdigit() or not h.isdigit():
            raise ValueError(f"camera size {text!r}: write WIDTHxHEIGHT, e.g. 1280x720, 1920x1080 or 640x480")
        size = cls(int(w), int(h))
        size.validate()
        return size

    def validate(self) -> None:
        if not (160 <= self.width <= 3840 and 120 <= self.height <= 2160):
            raise ValueError(f"camera size {self}: width 160..3840 and height 120..2160")
        if self.width % 2 or self.height % 2:
            raise ValueError(f"camera size {self}: width and height must be even")

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class FramingConfig:
    """How the avatar fills the virtual camera.

    Attributes:
        size: the camera's format.
        zoom: the avatar crop's height as a fraction of the camera's height (0.5..1); below 1
            there is background above the head too.
        resampler: the upscaler of the avatar crop.
        image: the background picture of Background.IMAGE (cover-fitted to the whole camera).
        blur_sigma: Gaussian sigma of Background.BLUR, as a fraction of the crop's side.
        refresh_frames: rebuild the background around the crop every this many frames.
        feather: width of the seam between crop and extension, as a fraction of the crop's side.
    """

    size: CameraSize = CameraSize()
    zoom: float = 1.0
    resampler: Resampler = Resampler.CUBIC
    image: Path | None = None
    blur_sigma: float = 0.03
    refresh_frames: int = 30
    feather: float = 0.04

    def validate(self) -> None:
        self.size.validate()
        if not 0.5 <= self.zoom <= 1.0:
            raise ValueError(f"framing zoom must be in [0.5, 1], got {self.zoom}")
        if self.image is not None and not self.image.is_file():
            raise ValueError(f"background image {self.image} does not exist")
        if self.refresh_frames < 1 or not 0 <= self.feather < 0.25 or not 0 < self.blur_sigma < 0.5:
            raise ValueError("refresh_frames must be >= 1, feather in [0, 0.25), blur_sigma in (0, 0.5)")


@dataclass(frozen=True)
class Placement:
    """Where the avatar's crop lands in the camera picture: a side x side square at (x, y)."""

    x: int
    y: int
    side: int

    @classmethod
    def of(cls, size: CameraSize, zoom: float) -> Placement:
        side = min(round(size.height * zoom), size.width)
        return cls((size.width - side) // 2, size.height - side, side)


def fill_holes(image: F32, weight: F32) -> F32:
    """Push-pull fill: [h, w, 3] colours where `weight` [h, w] (0..1) is low are replaced by
    the weighted average of the known colours around them, coarse to fine. Cheap at 256 px.
    With no known pixel at all, the picture comes back unchanged."""
    if float(weight.sum()) < 1.0:
        return image
    return _push_pull(image, weight)


def _push_pull(image: F32, weight: F32) -> F32:
    h, w = image.shape[:2]
    if min(h, w) <= 4:
        mean = (image * weight[..., None]).sum(axis=(0, 1)) / max(float(weight.sum()), 1e-6)
        return np.asarray(image + (1 - weight[..., None]) * (mean - image), np.float32)
    half = ((w + 1) // 2, (h + 1) // 2)
    weighted = cv2.resize(image * weight[..., None], half, interpolation=cv2.INTER_AREA)
    coarse_w = np.asarray(cv2.resize(weight, half, interpolation=cv2.INTER_AREA), np.float32)
    coarse = np.asarray(weighted / np.maximum(coarse_w, 1e-6)[..., None], np.float32)
    filled = _push_pull(coarse, np.minimum(coarse_w * 4, 1.0))
    up = cv2.resize(filled, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.asarray(up + weight[..., None] * (image - up), np.float32)


def cover(picture: U8, width: int, height: int) -> U8:
    """Scale and centre-crop `picture` to fill width x height."""
    h, w = picture.shape[:2]
    k = max(width / w, height / h)
    size = (max(width, math.ceil(w * k)), max(height, math.ceil(h * k)))
    resized = cv2.resize(picture, size, interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC)
    y, x = (resized.shape[0] - height) // 2, (resized.shape[1] - width) // 2
    return np.ascontiguousarray(resized[y : y + height, x : x + width])


def read_picture(path: Path) -> U8:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read background image {path}")
    return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), np.uint8)


class Framer:
    """Turns a frame's `Layers` into the camera picture. One per camera; not thread-safe.

    Args:
        config: the camera format and framing (validated here).
    """

    def __init__(self, config: FramingConfig) -> None:
        config.validate()
        self.config = config
        self.size = config.size
        self.place = Placement.of(config.size, config.zoom)
        self._picture = read_picture(config.image) if config.image is not None else None
        self._badge = badge_patch(config.size.height, config.size.width)
        self._behind: dict[Background, U8] = {}
        self._resolution = 0
        self._count = 0
        self._ramp: F32 = np.ones((1, 1), np.float32)
        self._seams: list[tuple[slice, slice]] = []

    def _geometry(self, resolution: int) -> None:
        """Per input size: the seam ramp (1 inside the crop, 0 at its edges that meet the
        extension), and the strips of the crop where it is below 1 (the seams)."""
        self._resolution = resolution
        side, p = self.place.side, self.place
        width = max(1, round(self.config.feather * side))
        ramp = np.ones(side, np.float32)
        ramp[:width] = np.linspace(0, 1, width, endpoint=False, dtype=np.float32)
        ramp[side - width :] = ramp[:width][::-1]
        horizontal = ramp if p.x > 0 else np.ones(side, np.float32)
        vertical = ramp.copy() if p.y > 0 else np.ones(side, np.float32)
        vertical[side // 2 :] = 1.0  # the bottom edge is the camera's own
        self._ramp = np.ascontiguousarray(np.minimum(vertical[:, None], horizontal[None, :]))
        everything = slice(0, side)
        self._seams = [(slice(0, width), everything)] if p.y > 0 else []
        rows = slice(width, side) if p.y > 0 else everything
        if p.x > 0:
            self._seams += [(rows, slice(0, width)), (rows, slice(side - width, side))]
        self._behind.clear()

    def _extended(self, layers: Layers) -> U8:
        """The learned background without the person, mirrored out to the whole camera, at the
        avatar's scale ([h, w, 3] with h = r / zoom)."""
        r = layers.image.shape[0]
        background = cv2.erode((layers.mask < 32).astype(np.uint8), np.ones((5, 5), np.uint8))  # off the soft edge
        weight = background.astype(np.float32)  # no background pixel at all: the frame as it is
        plate = fill_holes(layers.image.astype(np.float32), weight)
        k = r / self.place.side
        height, width = round(self.size.height * k), round(self.size.width * k)
        x, y = round(self.place.x * k), height - r
        right = max(0, width - r - x)
        pads = (min(y, r - 1), min(x, r - 1), min(right, r - 1))
        canvas = cv2.copyMakeBorder(plate, pads[0], 0, pads[1], pads[2], cv2.BORDER_REFLECT)
        canvas = cv2.copyMakeBorder(canvas, y - pads[0], 0, x - pads[1], right - pads[2], cv2.BORDER_REPLICATE)
        # Blur grows with the distance from the crop, so the mirrored copy reads as out of focus.
        soft = cv2.GaussianBlur(canvas, (0, 0), max(1.0, 0.05 * r))
        cols = np.arange(width, dtype=np.float32)
        dx = np.maximum(np.maximum(x - cols, cols - (x + r - 1)), 0) / max(1.0, max(x, right))
        rows = np.arange(height, dtype=np.float32)
        dy = np.maximum(y - rows, 0) / max(1.0, y)
        far = np.minimum(np.maximum(dx[None, :], dy[:, None]) * 1.5, 1.0)[..., None]
        return np.asarray(np.clip(canvas + far * (soft - canvas), 0, 255).round(), np.uint8)

    def _background(self, layers: Layers) -> U8:
        """The camera-sized picture behind the person, rebuilt every `refresh_frames` frames."""
        mode = layers.background
        if mode is Background.IMAGE and self._picture is not None:
            if mode not in self._behind:
                self._behind[mode] = cover(self._picture, self.size.width, self.size.height)
            return self._behind[mode]
        if mode not in self._behind or self._count % self.config.refresh_frames == 0:
            small = self._extended(layers)
            if mode is Background.BLUR:
                small = np.asarray(cv2.GaussianBlur(small, (0, 0), self.config.blur_sigma * layers.image.shape[0]))
            size = (self.size.width, self.size.height)
            self._behind[mode] = np.ascontiguousarray(cv2.resize(small, size, interpolation=cv2.INTER_LINEAR))
        return self._behind[mode]

    def __call__(self, layers: Layers) -> U8:
        """A frame's layers ([r, r, 3] image, [r, r] mask) -> [H, W, 3] uint8 RGB camera picture."""
        r = layers.image.shape[0]
        if layers.image.shape != (r, r, 3) or layers.mask.shape != (r, r):
            raise ValueError(f"framing expects [r, r, 3] and [r, r], got {layers.image.shape} and {layers.mask.shape}")
        if r != self._resolution:
            self._geometry(r)
        behind = self._background(layers)
        self._count += 1
        p = self.place
        flag = self.config.resampler.cv2_flag
        image = cv2.resize(layers.image, (p.side, p.side), interpolation=flag)
        alpha = cv2.resize(layers.mask, (p.side, p.side), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        alpha *= np.float32(1 / 255)
        out = behind.copy()
        region = out[p.y : p.y + p.side, p.x : p.x + p.side]
        if layers.background is Background.LEARNED or (layers.background is Background.IMAGE and self._picture is None):
            # The generated background inside, feathered into the extension: alpha is
            # max(mask, ramp), which is 1 wherever the ramp is, so only the seams need a blend.
            seams = [(rows, cols, region[rows, cols].copy()) for rows, cols in self._seams]
            region[:] = image
            for rows, cols, under in seams:
                a = np.maximum(alpha[rows, cols], self._ramp[rows, cols])
                region[rows, cols] = cv2.blendLinear(image[rows, cols], under, a, 1 - a)
        else:
            alpha = np.minimum(alpha, self._ramp)  # only the person; cut softly where it meets the crop's edge
            region[:] = cv2.blendLinear(image, np.ascontiguousarray(region), alpha, 1 - alpha)
        if layers.badge:
            draw_badge(out, self._badge)
        if layers.watermark is not None:
            out = layers.watermark(out, inplace=True)
        return out
