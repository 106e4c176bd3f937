"""The portrait crop: a square around the head, enlarged 1.5x to keep hair, shoulders and
background (SelfieAvatar), fixed for a whole video so the background stays still."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from tracking import recording

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

HEAD_PER_FACE = 1.6  # head with hair, as a multiple of the landmarks' extent (brow to chin)
ENLARGE = 1.5  # the method's enlargement around the head
DROP = 0.1  # shift the centre down by this fraction of the face: more shoulders, less ceiling


@dataclass(frozen=True)
class Crop:
    """A square region of the source frame, resampled to `size` x `size`.

    Attributes:
        x0, y0: top-left corner in source pixels.
        side: side in source pixels.
        size: output side in pixels.
    """

    x0: float
    y0: float
    side: float
    size: int

    @property
    def scale(self) -> float:
        return self.size / self.side

    def points(self, landmarks: F32) -> F32:
        """[N, 3] source-pixel landmarks -> output pixels (z scaled like x)."""
        out = landmarks.astype(np.float32).copy()
        out[:, 0] = (out[:, 0] - self.x0) * self.scale
        out[:, 1] = (out[:, 1] - self.y0) * self.scale
        out[:, 2] *= self.scale
        return out

    def image(self, frame: U8) -> U8:
        """Resample the crop; pixels outside the frame repeat its border."""
        k = self.scale
        matrix = np.array([[k, 0, -self.x0 * k], [0, k, -self.y0 * k]], dtype=np.float64)
        flags = cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
        out = cv2.warpAffine(frame, matrix, (self.size, self.size), flags=flags, borderMode=cv2.BORDER_REPLICATE)
        return np.asarray(out, dtype=np.uint8)

    def to_dict(self) -> dict[str, float]:
        return {"x0": self.x0, "y0": self.y0, "side": self.side, "size": self.size}


def portrait_side(face_px: float) -> float:
    """Side (pixels) of the portrait crop around a face `face_px` tall (`tracker.face_size`)."""
    return ENLARGE * HEAD_PER_FACE * face_px


def portrait_crop(
    centres: F32, face_sizes: F32, frame_width: int, frame_height: int, size: int
) -> tuple[Crop, list[str]]:
    """One crop for a whole video from per-frame face centres [N, 2] and sizes [N] (pixels).

    Medians make it robust to a few bad frames. Returns the crop and warnings for the user.
    """
    warnings: list[str] = []
    face = float(np.median(face_sizes))
    cx, cy = (float(v) for v in np.median(centres, axis=0))
    side = portrait_side(face)
    limit = float(min(frame_width, frame_height))
    if not recording.crop_fits(side, frame_width, frame_height):
        warnings.append(
            f"the face fills the frame: a {ENLARGE}x portrait crop needs {side:.0f} px but the frame has "
            f"{limit:.0f}; hair and shoulders will be cut. Record from further away."
        )
        side = limit
    cy += DROP * face
    x0 = float(np.clip(cx - side / 2, 0, frame_width - side))
    y0 = float(np.clip(cy - side / 2, 0, frame_height - side))
    return Crop(x0, y0, side, size), warnings
