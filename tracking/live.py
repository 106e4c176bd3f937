"""The live driving path: camera frame -> smoothed, retargeted face -> avatar conditioning.

Same tracker, retargeting and renderer as `prepare`, plus what live use needs: One Euro
smoothing (jitter removed, fast turns kept), neutral calibration, and a face that goes missing
handled gracefully: hold the last state, then ease to the avatar's neutral, and when the face
returns continue from what is on screen rather than jumping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tracking.crop import Crop
from tracking.expression import ExpressionModel, Retargeter
from tracking.filters import OneEuroFilter
from tracking.render import Conditioning, FaceRenderer
from tracking.tracker import FaceTracker

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class LiveConfig:
    """Smoothing and face-loss behaviour.

    Attributes:
        hold_seconds: after the face is lost, keep the last expression and pose this long.
        ease_seconds: then move to the avatar's neutral over this long.
        blend_min_cutoff, blend_beta: One Euro parameters for blendshapes (units: 0..1). 4 Hz and
            10 let a blink or a mouth opening through (correlation with the raw signal 0.97-0.99 on
            the shared drivers, against 0.85-0.95 at 2 Hz and 1) for a quarter more frame-to-frame
            tremble at rest (benchmarks/bench_blend_filter.py).
        pose_min_cutoff, pose_beta: One Euro parameters for the pose vector (degrees, pixels).
    """

    hold_seconds: float = 0.5
    ease_seconds: float = 1.0
    blend_min_cutoff: float = 4.0
    blend_beta: float = 10.0
    pose_min_cutoff: float = 1.0
    pose_beta: float = 0.05


@dataclass(frozen=True)
class DriveResult:
    """One live frame's output.

    Attributes:
        conditioning: renders for the generator, in the avatar's crop.
        landmarks: [478, 3] the avatar's landmarks in its crop pixels.
        face_found: whether the driver's face was tracked in this frame.
        blendshapes: [52] the driver coefficients used (smoothed or eased).
        pose: [7] the driver pose vector used.
    """

    conditioning: Conditioning
    landmarks: F32
    face_found: bool
    blendshapes: F32
    pose: F64


def ease_weight(lost_for: float, config: LiveConfig) -> float:
    """How far a lost face has eased from its held expression to neutral after `lost_for`
    seconds: 0 while it is held (`hold_seconds`), then a smoothstep up to 1 over `ease_seconds`."""
    x = min(max((lost_for - config.hold_seconds) / max(config.ease_seconds, 1e-6), 0.0), 1.0)
    return x * x * (3 - 2 * x)


class LiveDriver:
    """Drives one avatar from one camera. Not thread-safe: one driver per stream.

    Args:
        model: the avatar's personal expression model.
        crop: the avatar's portrait crop (its training frames' geometry).
        renderer: renders at the avatar's resolution.
        tracker: a VIDEO-mode tracker owned by this driver.
        config: smoothing and face-loss behaviour.
    """

    def __init__(
        self,
        model: ExpressionModel,
        crop: Crop,
        renderer: FaceRenderer,
        tracker: FaceTracker,
        config: LiveConfig | None = None,
    ) -> None:
        self.config = config or LiveConfig()
        self.retarget = Retargeter(model)
        self.crop = crop
        self.renderer = renderer
        self.tracker = tracker
        c = self.config
        self._blend_filter = OneEuroFilter(c.blend_min_cutoff, c.blend_beta)
        self._pose_filter = OneEuroFilter(c.pose_min_cutoff, c.pose_beta)
        self._raw: tuple[F32, F64] | None = None
        self._last_seen: float | None = None
        self._lost_from: tuple[F32, F64] = (self.retarget.reference.blendshapes, self.retarget.reference.pose)

    def calibrate(self) -> bool:
        """Take the driver's latest tracked face as their neutral; False if none was seen yet."""
        if self._raw is None:
            return False
        self.retarget.calibrate(*self._raw)
        return True

    def _eased(self, now: float) -> tuple[F32, F64]:
        """Expression and pose while the face is missing: hold, then ease to neutral."""
        c = self.config
        lost_for = now - (self._last_seen if self._last_seen is not None else now - c.hold_seconds)
        alpha = ease_weight(lost_for, c)
        ref = self.retarget.reference
        blend, pose = self._lost_from
        return (
            (blend + alpha * (ref.blendshapes - blend)).astype(np.float32),
            pose + alpha * (ref.pose - pose),
        )

    def __call__(self, rgb: U8, now: float) -> DriveResult:
        """Process one camera frame taken at `now` (seconds, increasing)."""
        track = self.tracker(rgb, round(now * 1000))
        if track is not None:
            self._raw = (track.blendshapes, track.pose.as_vector())
            self._last_seen = now
            blend = self._blend_filter(track.blendshapes, now).astype(np.float32)
            pose = self._pose_filter(track.pose.as_vector(), now)
            self._lost_from = (blend, pose)
        else:
            blend, pose = self._eased(now)
            # Keep the filters on what is shown, so a returning face continues from here.
            self._blend_filter(blend, now)
            self._pose_filter(pose, now)
        landmarks = self.crop.points(self.retarget(blend, pose))
        return DriveResult(self.renderer(landmarks), landmarks, track is not None, blend, pose)
