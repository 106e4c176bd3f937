"""The live driving path on a real driver video: smoothing, face loss, calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.media import first_frames
from tracking.crop import Crop
from tracking.expression import ExpressionModel
from tracking.live import LiveConfig, LiveDriver
from tracking.pose import Pose, repose
from tracking.render import FaceRenderer
from tracking.tracker import FaceTracker

pytestmark = pytest.mark.slow
FPS = 30.0


@pytest.fixture(scope="module")
def avatar(cap12: Path) -> tuple[ExpressionModel, Crop]:
    frames = first_frames(cap12, 60)
    with FaceTracker(mode="video") as tracker:
        tracks = [t for i, f in enumerate(frames) if (t := tracker(f, i * 40)) is not None]
    model = ExpressionModel.fit(
        np.stack([t.shape for t in tracks]),
        np.stack([t.blendshapes for t in tracks]),
        np.stack([t.pose.as_vector() for t in tracks]),
    )
    return model, Crop(0.0, 0.0, 512.0, 256)


def _driver(avatar: tuple[ExpressionModel, Crop], config: LiveConfig) -> LiveDriver:
    model, crop = avatar
    tracker = FaceTracker(mode="video")
    return LiveDriver(model, crop, FaceRenderer(tracker.mesh, crop.size), tracker, config)


def test_lost_face_holds_then_eases_to_neutral_then_recovers_smoothly(
    avatar: tuple[ExpressionModel, Crop], driver_video: Path
) -> None:
    config = LiveConfig(hold_seconds=0.3, ease_seconds=0.3)
    driver = _driver(avatar, config)
    frames = first_frames(driver_video, 40)
    blank = np.full_like(frames[0], 40)
    t = 0.0
    try:
        for f in frames[:30]:
            out = driver(f, t)
            t += 1 / FPS
        assert out.face_found
        last, last_pose = out.blendshapes.copy(), out.pose.copy()
        lost_at = t - 1 / FPS  # the last frame with a face
        reference = driver.retarget.reference
        assert np.abs(reference.pose - last_pose).max() > 1.0, "the driver should not sit at neutral already"
        # Hold: expression and pose stay exactly as last shown, up to the end of the hold.
        for after in (0.1, config.hold_seconds - 0.02):
            held = driver(blank, lost_at + after)
            assert not held.face_found
            np.testing.assert_allclose(held.blendshapes, last, atol=1e-6)
            np.testing.assert_allclose(held.pose, last_pose, atol=1e-9)
        # Ease: a smoothstep from what was shown to the avatar's neutral over ease_seconds.
        for fraction in (0.25, 0.5, 0.75):
            eased = driver(blank, lost_at + config.hold_seconds + fraction * config.ease_seconds)
            alpha = fraction * fraction * (3 - 2 * fraction)
            np.testing.assert_allclose(eased.blendshapes, last + alpha * (reference.blendshapes - last), atol=1e-5)
            np.testing.assert_allclose(eased.pose, last_pose + alpha * (reference.pose - last_pose), atol=1e-6)
        eased = driver(blank, lost_at + config.hold_seconds + config.ease_seconds)
        np.testing.assert_allclose(eased.blendshapes, reference.blendshapes, atol=1e-6)
        np.testing.assert_allclose(eased.pose, reference.pose, atol=1e-6)
        t = lost_at + config.hold_seconds + config.ease_seconds
        # The face returns: the first frame moves from what was shown, not straight to the raw.
        now = t + 1 / FPS
        back = driver(frames[30], now)
        assert back.face_found and driver._raw is not None
        raw_blend = driver._raw[0]
        step = np.abs(back.blendshapes - eased.blendshapes).max()
        jump = np.abs(raw_blend - eased.blendshapes).max()
        assert step < jump
    finally:
        driver.tracker.close()


def test_calibrated_driver_neutral_renders_the_avatar_neutral(
    avatar: tuple[ExpressionModel, Crop], driver_video: Path
) -> None:
    driver = _driver(avatar, LiveConfig())
    frame = first_frames(driver_video, 1)[0]
    try:
        assert not driver.calibrate()  # nothing seen yet
        driver(frame, 0.0)
        assert driver.calibrate()
        out = driver(frame, 1 / FPS)  # same face again: exactly the calibrated neutral
        model, crop = avatar
        neutral = repose(model.shape(model.neutral_blendshapes), Pose.from_vector(model.neutral_pose))
        np.testing.assert_allclose(out.landmarks, crop.points(neutral), atol=0.5)
        assert out.conditioning.face_mask.sum() > 1000
    finally:
        driver.tracker.close()
