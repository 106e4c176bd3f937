"""The status card: the one picture shown where there is no avatar frame yet (starting,
waiting, connect's reconnecting)."""

from __future__ import annotations

import cv2
import numpy as np

from streamer.core.frames import U8
from streamer.stages.framing import CameraSize


def card(size: CameraSize, title: str, line: str, t: float) -> U8:
    """A status card ("starting", "waiting") for the camera while there is no avatar frame: a
    dark gradient, the title, one line of text and a bar that moves with `t` (seconds), so a
    meeting app sees a live picture."""
    w, h = size.width, size.height
    shade = np.linspace(48, 20, h, dtype=np.float32)[:, None, None] * np.array([0.55, 0.65, 1.0], np.float32)
    out = np.ascontiguousarray(np.broadcast_to(shade, (h, w, 3)).round().astype(np.uint8))
    font = cv2.FONT_HERSHEY_SIMPLEX
    for text, scale, y in ((title, h / 360, 0.45), (line, h / 900, 0.58)):
        thickness = max(1, round(scale * 2))
        (tw, _), _ = cv2.getTextSize(text, font, scale, thickness)
        cv2.putText(out, text, ((w - tw) // 2, round(h * y)), font, scale, (235, 235, 240), thickness, cv2.LINE_AA)
    bar_w, bar_h = w // 4, max(2, h // 120)
    x0, y0 = (w - bar_w) // 2, round(h * 0.66)
    out[y0 : y0 + bar_h, x0 : x0 + bar_w] = (60, 70, 95)
    phase = (t * 0.8) % 1.0
    lit = slice(x0 + round(phase * bar_w * 0.75), x0 + round(phase * bar_w * 0.75) + bar_w // 4)
    out[y0 : y0 + bar_h, lit] = (120, 170, 255)
    return out
