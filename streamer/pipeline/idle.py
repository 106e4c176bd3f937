"""The idle pose: what the avatar does while nobody drives it.

When the driver's face is lost, or the driver pauses, `LiveDriver` holds the last expression
and then eases to the avatar's neutral. A neutral that never moves reads as a frozen camera,
so `IdleDriver` lays a small idle motion over the eased state, weighted by how far the ease
has gone (none while holding, all of it at neutral): the eyes blink every few seconds (fully,
past the avatar's tracked eyeBlink range) and the head rises and falls slightly with a slow
breath and sways. When the face returns, the driver's One Euro
filters continue from what was shown, so nothing jumps.

A session with no driver frames at all (paused, or the source silent) asks for idle ticks:
`IdleDriver.idle(now)` runs the same path on a blank picture, where the tracker finds no face.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tracking.crop import Crop
from tracking.expression import ExpressionModel, Retargeter
from tracking.live import DriveResult, LiveConfig, LiveDriver, ease_weight
from tracking.render import FaceRenderer
from tracking.tracker import BLENDSHAPE_NAMES, FaceTracker

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
BLINKS = (BLENDSHAPE_NAMES.index("eyeBlinkLeft"), BLENDSHAPE_NAMES.index("eyeBlinkRight"))
PITCH, ROLL = 0, 2  # in the pose vector [pitch, yaw, roll (deg), tx, ty, tz, scale]


@dataclass(frozen=True)
class IdleConfig:
    """The idle motion.

    Attributes:
        after_seconds: a session whose source has sent nothing for this long (or that is
            paused) makes idle ticks itself, at the camera's rate.
        blink_every: mean seconds between blinks (the gaps vary by +-30%, deterministically).
        blink_seconds: how long one blink takes, closing and opening.
        breath_seconds: one breath's period.
        breath_degrees: head pitch amplitude of a breath.
        sway_degrees: head roll amplitude (a slower sway).
    """

    after_seconds: float = 0.25
    blink_every: float = 3.5
    blink_seconds: float = 0.3
    breath_seconds: float = 4.5
    breath_degrees: float = 1.2
    sway_degrees: float = 0.6

    def validate(self) -> None:
        if self.after_seconds <= 0 or self.blink_seconds <= 0 or self.breath_seconds <= 0:
            raise ValueError("idle after_seconds, blink_seconds and breath_seconds must be > 0")
        if self.blink_every < 2 * self.blink_seconds:
            raise ValueError("idle blink_every must be at least twice blink_seconds")


def blink_at(t: float, config: IdleConfig) -> float:
    """Eye closure 0..1 at time `t` (seconds): a smooth bump of `blink_seconds` once per gap,
    with the gaps varied by a fixed pseudo-random sequence, so blinks do not tick like a clock."""
    period = config.blink_every
    n = math.floor(t / period)
    jitter = (math.sin(n * 12.9898) * 43758.5453) % 1.0  # a fixed hash of the gap's number
    start = n * period + (0.2 + 0.6 * jitter) * (period - config.blink_seconds)
    x = (t - start) / config.blink_seconds
    return math.sin(math.pi * x) ** 2 if 0.0 <= x <= 1.0 else 0.0


def idle_motion(t: float, config: IdleConfig) -> tuple[float, float, float]:
    """(eye closure 0..1, pitch degrees, roll degrees) of the idle motion at time `t`."""
    breath = math.sin(2 * math.pi * t / config.breath_seconds)
    sway = math.sin(2 * math.pi * t / (config.breath_seconds * 2.7) + 1.0)
    return blink_at(t, config), config.breath_degrees * breath, config.sway_degrees * sway


class _BlinkRetargeter(Retargeter):
    """A Retargeter that lays the idle blink over the retargeted coefficients, after the
    filters: the blink is not part of the driver's expression, so the One Euro filters never
    see it (blinks may close fully past the avatar's tracked range: `FREE_TOP`)."""

    blink = 0.0  # this frame's idle eye closure, 0..1

    def coefficients(self, blendshapes: F32) -> F32:
        out = super().coefficients(blendshapes)
        if self.blink > 0:
            for i in BLINKS:
                out[i] = max(out[i], out[i] + self.blink * (1.0 - out[i]))
        return out


class IdleDriver(LiveDriver):
    """A `LiveDriver` whose face-lost state eases into an idle pose that blinks and breathes.

    Args:
        model, crop, renderer, tracker, config: as `LiveDriver`.
        idle: the idle motion.
    """

    def __init__(
        self,
        model: ExpressionModel,
        crop: Crop,
        renderer: FaceRenderer,
        tracker: FaceTracker,
        config: LiveConfig | None = None,
        idle: IdleConfig | None = None,
    ) -> None:
        super().__init__(model, crop, renderer, tracker, config)
        self.retarget = self._blinking = _BlinkRetargeter(model)
        self.idle_config = idle or IdleConfig()
        self.idle_config.validate()
        self.last_seen: float | None = None
        self._blank = np.full((64, 64, 3), 16, np.uint8)
        self._last_now = -math.inf

    def idle_weight(self, now: float) -> float:
        """0 while the last expression is held, rising to 1 as the ease to neutral completes."""
        c = self.config
        lost_for = now - self.last_seen if self.last_seen is not None else c.hold_seconds + c.ease_seconds
        return ease_weight(lost_for, c)

    def _eased(self, now: float) -> tuple[F32, F64]:
        blend, pose = super()._eased(now)
        weight = self.idle_weight(now)
        if weight <= 0:
            return blend, pose
        closure, pitch, roll = idle_motion(now, self.idle_config)
        self._blinking.blink = weight * closure  # not in `blend`: the filters never see a blink
        pose = pose.copy()
        pose[PITCH] += weight * pitch
        pose[ROLL] += weight * roll
        return blend, pose

    def __call__(self, rgb: npt.NDArray[np.uint8], now: float) -> DriveResult:
        now = max(now, self._last_now + 1e-3)  # the tracker needs increasing timestamps
        self._last_now = now
        self._blinking.blink = 0.0
        result = super().__call__(rgb, now)
        if result.face_found:
            self.last_seen = now
        return result

    def idle(self, now: float) -> DriveResult:
        """A frame without a driver picture (paused, or the source silent): the idle pose."""
        return self(self._blank, now)
