"""What a selfie recording needs to make a good avatar: every threshold, in one place.

`prepare` warns when a finished recording misses one (`tracking.prepare.check_tracking`,
`tracking.crop.portrait_crop`); the page's live coach (`streamer.create.coach`) tells the person
while they record. Both call the functions below, which read these constants when called, so the
two cannot drift apart.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from tracking.tracker import BLENDSHAPE_NAMES

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]

RANGE_PERCENTILES = (5.0, 95.0)  # a range is measured between these, so a few odd frames do not count
MIN_YAW_RANGE = 20.0  # degrees of head turn (left-right) the recording should span
MIN_PITCH_RANGE = 10.0  # degrees of head nod (up-down)
MIN_JAW_OPEN = 0.2  # jawOpen's 95th percentile: the mouth opened wide in at least 5% of frames
MIN_EXPRESSIVE = 0.4  # the widest 5th-95th percentile spread of any one blendshape
MIN_FACE_PX = 128.0  # median face height in the recording (pixels, `tracker.face_size`)
MAX_FACE_LOST = 0.10  # fraction of frames without a tracked face
MAX_SEVERAL_FACES = 0.05  # fraction of tracked frames that show another face
# Mean luma (0-255) of the face's middle. The shared clips' faces sit at 79-167 (their 5th
# percentiles: 81 for the dimmest, cap13, a webcam in a dim room). Darkening cap12 to half (face
# luma 48, noise of 2 code values added) doubles the landmark error against the original frames
# (0.13% -> 0.25% of the face) and leaves the face about 50 code values for the avatar's texture.
MIN_FACE_LUMA = 50.0
MAX_SECONDS = 180.0  # a recording longer than this adds little: the coach calls it enough
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # BT.601, of RGB


def rotation_ranges(pitch_yaw: F64) -> tuple[float, float]:
    """(yaw range, pitch range) in degrees of [N, 2] (pitch, yaw) head poses."""
    lo, hi = np.percentile(pitch_yaw, RANGE_PERCENTILES, axis=0)
    return float(hi[1] - lo[1]), float(hi[0] - lo[0])


def enough_rotation(yaw_range: float, pitch_range: float) -> bool:
    return yaw_range >= MIN_YAW_RANGE and pitch_range >= MIN_PITCH_RANGE


def expression_ranges(blendshapes: F32) -> tuple[float, float]:
    """(jawOpen's 95th percentile, the widest spread of any blendshape) of [N, 52] coefficients."""
    lo, hi = np.percentile(blendshapes[:, 1:], RANGE_PERCENTILES, axis=0)  # column 0 is `_neutral`
    jaw = float(np.percentile(blendshapes[:, BLENDSHAPE_NAMES.index("jawOpen")], RANGE_PERCENTILES[1]))
    return jaw, float(hi.max() - lo.min())


def enough_expression(jaw: float, expressive: float) -> bool:
    return jaw >= MIN_JAW_OPEN and expressive >= MIN_EXPRESSIVE


def face_too_small(face_px: float) -> bool:
    return face_px < MIN_FACE_PX


def face_lost_too_often(lost_fraction: float) -> bool:
    return lost_fraction > MAX_FACE_LOST


def several_faces_too_often(fraction: float) -> bool:
    return fraction > MAX_SEVERAL_FACES


def crop_fits(side: float, width: int, height: int) -> bool:
    """Whether a square portrait crop of `side` pixels fits a `width` x `height` frame. The crop
    may move (`tracking.crop.portrait_crop` keeps it inside the frame), it may not shrink."""
    return side <= min(width, height)


def face_luma(rgb: U8, landmarks: F32) -> float:
    """Mean luma (0-255) of the middle half of the face's box (eyes, nose, cheeks: skin, little
    hair or background) in an [H, W, 3] RGB frame, given the face's [N, 2+] pixel landmarks."""
    (x0, y0), (x1, y1) = landmarks[:, :2].min(axis=0), landmarks[:, :2].max(axis=0)
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 4, (y1 - y0) / 4
    rows = slice(max(int(cy - h), 0), max(int(cy + h), 1))
    cols = slice(max(int(cx - w), 0), max(int(cx + w), 1))
    middle = rgb[rows, cols]
    if middle.size == 0:  # the face is off the frame
        return 0.0
    return float((middle.reshape(-1, 3).astype(np.float32) @ _LUMA).mean())


def too_dark(luma: float) -> bool:
    return luma < MIN_FACE_LUMA
