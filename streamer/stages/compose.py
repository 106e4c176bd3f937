"""Compose: the avatar frame as published — background mode and the "synthetic" badge.

The generator already paints a background (its learned one, G_b). Replacing or blurring it uses
the predicted person mask I_FM as alpha. The badge is always drawn for avatars whose identity
demands it (the shipped demo) and on by default for all others: every published frame says
it is synthetic. Last comes the invisible watermark (`streamer.provenance.watermark`), which carries the
same message where the badge is cropped away or covered: on by default, and always on for
avatars that require the badge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from streamer.core.frames import Background, Layers, Mark

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ComposeConfig:
    """Compose options.

    Attributes:
        background: the initial background mode (switchable while running).
        image: replacement background picture for Background.IMAGE (any size; it is cover-fitted).
        blur_sigma: Gaussian sigma of Background.BLUR, as a fraction of the frame side.
        badge: draw the visible "SYNTHETIC" badge (forced on for avatars that require it).
        watermark: embed the invisible watermark (forced on for avatars that require the badge).
    """

    background: Background = Background.LEARNED
    image: Path | None = None
    blur_sigma: float = 0.03
    badge: bool = True
    watermark: bool = True

    def validate(self) -> None:
        if self.background is Background.IMAGE and self.image is None:
            raise ValueError("background 'image' needs a picture: pass --background-image PATH")
        if self.image is not None and not self.image.is_file():
            raise ValueError(f"background image {self.image} does not exist")
        if not 0 < self.blur_sigma < 0.5:
            raise ValueError(f"blur_sigma must be in (0, 0.5), got {self.blur_sigma}")


BADGE_TEXT = "SYNTHETIC"


def _cover(picture: U8, size: int) -> U8:
    """Scale and centre-crop `picture` to fill size x size."""
    h, w = picture.shape[:2]
    k = size / min(h, w)
    resized = cv2.resize(picture, (max(size, round(w * k)), max(size, round(h * k))), interpolation=cv2.INTER_AREA)
    y = (resized.shape[0] - size) // 2
    x = (resized.shape[1] - size) // 2
    return np.ascontiguousarray(resized[y : y + size, x : x + size])


def badge_patch(size: int, width: int | None = None) -> tuple[tuple[slice, slice], F32, U8]:
    """The badge's region in the bottom-right corner of a size x width frame (width: size), its
    alpha [h, w, 1] and its colours [h, w, 3], drawn once. Its scale follows the frame's height."""
    width = size if width is None else width
    scale = max(size / 640, 0.3)
    thickness = max(1, round(size / 320))
    (tw, th), base = cv2.getTextSize(BADGE_TEXT, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = max(2, round(size / 128))
    h, w = th + base + 2 * pad, tw + 2 * pad
    colour = np.zeros((h, w, 3), np.uint8)
    cv2.putText(colour, BADGE_TEXT, (pad, pad + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness)
    alpha = np.full((h, w, 1), 0.6, np.float32)  # a dark plate behind the text
    alpha[colour[..., :1] > 0] = 1.0
    margin = pad
    region = (slice(size - margin - h, size - margin), slice(width - margin - w, width - margin))
    return region, alpha, colour


def draw_badge(out: U8, badge: tuple[tuple[slice, slice], F32, U8]) -> None:
    """Blend a `badge_patch` into `out` in place."""
    region, alpha, colour = badge
    patch = out[region].astype(np.float32)
    out[region] = (patch + alpha * (colour - patch)).round().astype(np.uint8)


class Compositor:
    """Turns the engine's (image, mask) into the published frame. One per stream; not thread-safe.

    Args:
        config: compose options (validated here).
        resolution: side of the square frames it will receive.
        badge_required: the avatar demands the badge (the shipped demo); overrides config.badge.
        watermark: the avatar's invisible mark, added last (`streamer.provenance.watermark.watermark_for`).
    """

    def __init__(
        self,
        config: ComposeConfig,
        resolution: int,
        *,
        badge_required: bool = False,
        watermark: Mark | None = None,
    ) -> None:
        config.validate()
        self.resolution = resolution
        self.background = config.background
        self.badge = config.badge or badge_required
        self._blur_sigma = config.blur_sigma * resolution
        self._picture: U8 | None = None
        if config.image is not None:
            bgr = cv2.imread(str(config.image), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError(f"cannot read background image {config.image}")
            self._picture = _cover(np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), np.uint8), resolution)
        self._badge = badge_patch(resolution)
        self.watermark = watermark

    def set_background(self, mode: Background) -> None:
        """Switch the background mode (e.g. from the control API)."""
        if mode is Background.IMAGE and self._picture is None:
            raise ValueError("no background image was given to this stream (--background-image)")
        self.background = mode

    def layers(self, image: U8, mask: U8) -> Layers:
        """The inputs of `__call__` and the current settings, for sinks that compose again."""
        return Layers(image, mask, self.background, self.badge, self.watermark)

    def __call__(self, image: U8, mask: U8) -> U8:
        """image: [H, W, 3] uint8 RGB, mask: [H, W] uint8 person mask -> [H, W, 3] uint8 RGB."""
        r = self.resolution
        if image.shape != (r, r, 3) or mask.shape != (r, r):
            raise ValueError(f"compose expects [{r}, {r}, 3] and [{r}, {r}], got {image.shape} and {mask.shape}")
        out = image
        if self.background is not Background.LEARNED:
            if self.background is Background.BLUR:
                behind = cv2.GaussianBlur(image, (0, 0), self._blur_sigma)
            else:
                assert self._picture is not None
                behind = self._picture
            alpha = mask[..., None].astype(np.float32) * np.float32(1 / 255)
            out = (behind + alpha * (image.astype(np.float32) - behind)).round().astype(np.uint8)
        if self.badge:
            out = out.copy() if out is image else out
            draw_badge(out, self._badge)
        if self.watermark is not None:
            out = self.watermark(out, inplace=out is not image)
        return out
