"""The driver's neutral: the frame that cross-reenactment (evaluate, reenact) calibrates to."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from tracking.tracker import FaceTracker
from tracking.video import VideoError, probe, read_frames

F32 = npt.NDArray[np.float32]


class NoNeutralFace(VideoError):
    """The driver shows no face where its neutral was looked for; the message says what to pass."""


def driver_neutral(driver: Path, seconds: float, frame: int | None) -> tuple[F32, npt.NDArray[np.float64], int]:
    """The driver's neutral (blendshapes, pose vector, frame): the given frame, or the frame with
    the least expression among the first `seconds`."""
    fps = probe(driver).fps
    last = frame if frame is not None else max(round(seconds * fps), 1) - 1
    best: tuple[float, F32, npt.NDArray[np.float64], int] | None = None
    with FaceTracker() as tracker:
        for index, t, rgb in read_frames(driver, last + 1):
            track = tracker(rgb, round(t * 1000))
            if track is None or (frame is not None and index != frame):
                continue
            expression = float(track.blendshapes[1:].sum())
            if best is None or expression < best[0]:
                best = (expression, track.blendshapes, track.pose.as_vector(), index)
    if best is None:
        where = f"frame {frame}" if frame is not None else f"the first {seconds:g} s"
        raise NoNeutralFace(f"{driver}: no face in {where}; pass --calibrate-frame N with a frame that shows the face")
    return best[1], best[2], best[3]
