"""The recording coach: what the person recording their selfie video should do next.

The page sends a few preview frames a second while it records (`streamer.create.preview`); each
one goes through `Coach.feed`, which tracks the face with the live service's tracker and answers
with framing advice, how much of the head-pose map and of each expression the recording has
covered so far, and whether it is enough. Every threshold comes from `tracking.recording`, the
module `prepare`'s warnings use, so a recording the coach calls enough is one `prepare` does not
warn about (rotation, expression, framing), and the two cannot drift apart.

Pure: no I/O, no clock (the caller passes each frame's time). Not thread-safe: one coach per
recording, fed from one thread at a time.
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import Any

import numpy as np
import numpy.typing as npt

from tracking import recording
from tracking.crop import portrait_side
from tracking.tracker import BLENDSHAPE_NAMES, FaceTracker, face_size

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]

MOVE_BACK = "move back"
MORE_LIGHT = "move into the light"
ONE_FACE = "only one face, please"
NO_FACE = "no face: look at the camera"
MOVE_CLOSER = "move closer"

# The pose map: yaw x pitch cells around the middle of the range the head has covered. Its outer
# columns (rows) start at COVERAGE_MARGIN x half of prepare's minimum yaw (pitch) range, so they
# fill only when the range is 1.2x what prepare asks: the margin absorbs the difference between
# these few samples a second and prepare's every frame.
COVERAGE_MARGIN = 1.2
CELL_SAMPLES = 2  # samples a cell needs to count as covered: one could be a tracking blip
RECENT = 4  # framing advice follows the median of this many latest samples (1 s at 4 fps): no flicker
HISTORY = 4096  # samples kept for the range checks (17 minutes at 4 fps)

# Each expression bar: the largest of its groups' means (left and right sides move together).
# Single samples count: a blink (100-300 ms) is shorter than the preview's sampling period.
EXPRESSIONS: dict[str, tuple[tuple[str, ...], ...]] = {
    "jawOpen": (("jawOpen",),),
    "smile": (("mouthSmileLeft", "mouthSmileRight"),),
    "blink": (("eyeBlinkLeft", "eyeBlinkRight"),),
    "brows": (("browInnerUp",), ("browOuterUpLeft", "browOuterUpRight")),
    "lips": (("mouthPucker",), ("mouthFunnel",)),
}
_COLUMNS = {
    name: [[BLENDSHAPE_NAMES.index(c) for c in group] for group in groups] for name, groups in EXPRESSIONS.items()
}


def expression_target(name: str) -> float:
    """The peak an expression bar fills at. jawOpen: prepare's minimum 95th percentile. The
    others: the spread prepare calls expressive (MIN_EXPRESSIVE), asked of each kind of
    expression, so the avatar sees smiles, blinks, brows and lips, not just one of them."""
    return recording.MIN_JAW_OPEN if name == "jawOpen" else recording.MIN_EXPRESSIVE


def coverage_edges() -> tuple[list[float], list[float]]:
    """(yaw edges [6], pitch edges [4]) in degrees from the middle of the covered range: five
    columns (far left, left, centre, right, far right) and three rows (up, level, down). Values
    beyond the outer edges count in the outer cells."""
    yaw = COVERAGE_MARGIN * recording.MIN_YAW_RANGE / 2
    pitch = COVERAGE_MARGIN * recording.MIN_PITCH_RANGE / 2
    return [-2 * yaw, -yaw, -yaw / 3, yaw / 3, yaw, 2 * yaw], [-2 * pitch, -pitch, pitch, 2 * pitch]


def coverage(pitch_yaw: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """[pitch rows, yaw columns] 0/1 cells covered by [N, 2] (pitch, yaw) samples.

    The map sits around the middle of the samples' 5th-95th percentile range (where the person's
    neutral sits relative to the camera does not matter to prepare, only the range), so the 5th
    and 95th percentiles reach the outer columns exactly when the yaw range is at least twice
    their inner edge (1.2x prepare's minimum); the outer cells count only then, even if a few
    samples went there. So a full map means prepare's rotation check passes on these samples.
    """
    yaw_edges, pitch_edges = coverage_edges()
    counts = np.zeros((len(pitch_edges) - 1, len(yaw_edges) - 1), np.int64)
    if not len(pitch_yaw):
        return counts
    lo, hi = np.percentile(pitch_yaw, recording.RANGE_PERCENTILES, axis=0)
    centred = pitch_yaw - (lo + hi) / 2
    rows = np.digitize(centred[:, 0], pitch_edges[1:-1])
    cols = np.digitize(centred[:, 1], yaw_edges[1:-1])
    np.add.at(counts, (rows, cols), 1)
    filled = (counts >= CELL_SAMPLES).astype(np.int64)
    pitch_range, yaw_range = hi - lo
    if yaw_range < 2 * yaw_edges[-2]:
        filled[:, [0, -1]] = 0
    if pitch_range < 2 * pitch_edges[-2]:
        filled[[0, -1], :] = 0
    return filled


class Coach:
    """Coaches one recording from its preview frames.

    Args:
        tracker: a VIDEO-mode tracker looking for two faces (to notice a second person); made
            here when None, and closed by `close` either way.
        recording_height: the height (pixels) of the video being recorded, when the preview is
            scaled down from it; "move closer" (prepare's minimum face size) is advised only
            when it is known, since a preview's pixels say nothing about the recording's.
        max_seconds: a recording this long is enough whatever it covers.
    """

    def __init__(
        self,
        tracker: FaceTracker | None = None,
        *,
        recording_height: int | None = None,
        max_seconds: float = recording.MAX_SECONDS,
    ) -> None:
        self.tracker = tracker if tracker is not None else FaceTracker(mode="video", max_faces=2)
        self.recording_height = recording_height
        self.max_seconds = max_seconds
        self._start: float | None = None
        self._poses: deque[tuple[float, float]] = deque(maxlen=HISTORY)
        self._blends: deque[F32] = deque(maxlen=HISTORY)
        self._recent: deque[tuple[float, float, float]] = deque(maxlen=RECENT)  # crop, face, luma
        self._peaks = dict.fromkeys(EXPRESSIONS, 0.0)

    def __enter__(self) -> Coach:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.tracker.close()

    def feed(self, rgb: U8, t: float) -> dict[str, Any]:
        """Coach on one [H, W, 3] uint8 RGB preview frame taken at `t` (seconds, increasing).

        Returns the coach message: {"t", "face", "faces", "framing": [advice], "coverage":
        {"yaw_bins", "pitch_bins": edges in degrees, "filled": [pitch row][yaw column] 0/1},
        "fraction": covered share of the cells, "expressions": {bar: 0..1 of its target,
        never falling}, "enough", "elapsed": seconds since the first frame}. Both edge lists
        ascend: pitch > 0 is looking down (row 0 is looking up), yaw > 0 is the face turned
        towards the image's right (the person's left; column 0 is turned to their right).
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an [H, W, 3] uint8 RGB frame, got {rgb.shape} {rgb.dtype}")
        if self._start is None:
            self._start = t
        elapsed = t - self._start
        track = self.tracker(rgb, round(t * 1000))
        framing: list[str] = []
        if track is None:
            framing.append(NO_FACE)
        else:
            pitch, yaw, _ = track.pose.euler_degrees()
            self._poses.append((pitch, yaw))
            self._blends.append(track.blendshapes)
            for name, groups in _COLUMNS.items():
                value = max(float(track.blendshapes[g].mean()) for g in groups)
                self._peaks[name] = max(self._peaks[name], value)
            framing += self._framing(rgb, track.landmarks, track.faces)
        filled = coverage(np.array(self._poses, dtype=np.float64).reshape(-1, 2))
        fraction = float(filled.mean())
        bars = {name: min(1.0, peak / expression_target(name)) for name, peak in self._peaks.items()}
        complete = fraction >= 1.0 and min(bars.values()) >= 1.0 and self._prepare_satisfied()
        yaw_edges, pitch_edges = coverage_edges()
        return {
            "t": t,
            "face": track is not None,
            "faces": 0 if track is None else track.faces,
            "framing": framing,
            "coverage": {"yaw_bins": yaw_edges, "pitch_bins": pitch_edges, "filled": filled.tolist()},
            "fraction": fraction,
            "expressions": bars,
            "enough": complete or elapsed >= self.max_seconds,
            "elapsed": elapsed,
        }

    def _framing(self, rgb: U8, landmarks: F32, faces: int) -> list[str]:
        height, width = rgb.shape[:2]
        size = face_size(landmarks)
        # Shares of the frame, not pixels: a browser may change the preview's size mid-stream.
        luma = recording.face_luma(rgb, landmarks)
        self._recent.append((portrait_side(size) / min(width, height), size / height, luma))
        side, face, luma = (statistics.median(v) for v in zip(*self._recent, strict=True))
        advice = []
        if faces > 1:
            advice.append(ONE_FACE)
        if not recording.crop_fits(side * min(width, height), width, height):
            advice.append(MOVE_BACK)
        elif self.recording_height is not None and recording.face_too_small(face * self.recording_height):
            advice.append(MOVE_CLOSER)
        if recording.too_dark(luma):
            advice.append(MORE_LIGHT)
        return advice

    def _prepare_satisfied(self) -> bool:
        """Whether prepare's rotation and expression checks pass on the samples so far."""
        yaw_range, pitch_range = recording.rotation_ranges(np.array(self._poses, dtype=np.float64))
        jaw, expressive = recording.expression_ranges(np.stack(self._blends))
        return recording.enough_rotation(yaw_range, pitch_range) and recording.enough_expression(jaw, expressive)
