"""`prepare`'s warnings and refusals, from `check_tracking` (a pure function of the tracks) and
`portrait_crop`: each one fires on the recording flaw it names, and only then. Also `--dry-run`,
`--size 512` and `--test-fraction`."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import avatarcam_cli
from tracking.crop import portrait_crop
from tracking.pose import Pose
from tracking.prepare import MIN_TRACKED, PrepareConfig, PrepareError, TrackedVideo, check_tracking, run
from tracking.tracker import BLENDSHAPE_NAMES, FaceTrack
from tracking.video import VideoInfo

FRAMES = 100
JAW = BLENDSHAPE_NAMES.index("jawOpen")


def _track(i: int, *, yaw: float, pitch: float, jaw: float, face_px: float, faces: int = 1) -> FaceTrack:
    """A tracked face: a landmark cloud `face_px` tall, a head pose and an expression."""
    unit = np.random.default_rng(i).uniform(0, 1, (478, 3)).astype(np.float32)
    unit[0, :2], unit[1, :2] = 0, 1  # the bounding box spans exactly face_px
    landmarks = unit * np.float32(face_px) + np.float32(100)
    blendshapes = np.zeros(52, np.float32)
    blendshapes[JAW] = jaw
    blendshapes[BLENDSHAPE_NAMES.index("mouthSmileLeft")] = jaw
    pose = Pose.from_vector(np.array([pitch, yaw, 0.0, 0.0, 0.0, 0.0, 10.0]))
    return FaceTrack(landmarks, blendshapes, np.eye(4, dtype=np.float32), pose, unit, faces)


def _video(
    *,
    lost: int = 0,
    yaw: float = 30.0,
    pitch: float = 15.0,
    jaw: float = 0.6,
    face_px: float = 200.0,
    crowded: int = 0,
    luma: float = 120.0,
) -> TrackedVideo:
    """FRAMES frames that sweep yaw over ±yaw, pitch over ±pitch and jawOpen over [0, jaw];
    the first `lost` have no face and the next `crowded` show a second face; the face's middle
    has a mean luma of `luma`."""
    tracks: list[FaceTrack | None] = []
    for i in range(FRAMES):
        phase = np.sin(2 * np.pi * i / FRAMES)
        track = _track(
            i,
            yaw=yaw * phase,
            pitch=pitch * np.cos(2 * np.pi * i / FRAMES),
            jaw=jaw * (phase + 1) / 2,
            face_px=face_px,
            faces=2 if lost <= i < lost + crowded else 1,
        )
        tracks.append(None if i < lost else track)
    info = VideoInfo(Path("selfie.mp4"), 640, 480, 25.0, FRAMES, FRAMES / 25)
    lumas = [luma for t in tracks if t is not None]
    return TrackedVideo(info, [i / 25 for i in range(FRAMES)], tracks, lumas)


def test_a_good_recording_has_no_warnings() -> None:
    assert check_tracking(_video()) == []


@pytest.mark.parametrize(
    ("flaw", "video", "says"),
    [
        ("face lost in 15% of frames", _video(lost=15), "lost in 15% of frames"),
        ("another face in 10% of frames", _video(crowded=10), "another face is visible in 10%"),
        ("yaw within 5 degrees", _video(yaw=5.0), "little head rotation"),
        ("pitch within 2 degrees", _video(pitch=2.0), "little head rotation"),
        ("mouth barely opens", _video(jaw=0.1), "little expression range"),
        ("face 100 px tall", _video(face_px=100.0), "only 100 px tall"),
        ("face in the dark", _video(luma=30.0), "the face is dark (luma 30 of 255)"),
    ],
)
def test_each_flaw_gives_its_own_warning(flaw: str, video: TrackedVideo, says: str) -> None:
    warnings = check_tracking(video)
    assert len(warnings) == 1 and says in warnings[0], (flaw, warnings)
    assert warnings[0].startswith("selfie.mp4: ")


def test_thresholds_are_where_the_readme_puts_them() -> None:
    """More than 10% lost warns, 10% does not; 128 px is the smallest face without a warning, 50
    the darkest face luma."""
    assert check_tracking(_video(lost=10)) == []
    assert len(check_tracking(_video(lost=11))) == 1
    assert check_tracking(_video(face_px=128.0)) == []
    assert len(check_tracking(_video(face_px=120.0))) == 1
    assert check_tracking(_video(luma=50.0)) == []
    assert len(check_tracking(_video(luma=49.0))) == 1


def test_unusable_tracks_are_refused() -> None:
    info = VideoInfo(Path("selfie.mp4"), 640, 480, 25.0, 0, 0.0)
    with pytest.raises(PrepareError, match="no frames could be decoded"):
        check_tracking(TrackedVideo(info, [], []))
    with pytest.raises(PrepareError, match="no face found in 100 frames"):
        check_tracking(_video(lost=FRAMES))
    with pytest.raises(PrepareError, match=f"only {MIN_TRACKED - 1} of 100 frames"):
        check_tracking(_video(lost=FRAMES - MIN_TRACKED + 1))
    just_enough = check_tracking(_video(lost=FRAMES - MIN_TRACKED))  # trains, with warnings
    assert any("lost in 84% of frames" in w for w in just_enough)


def test_portrait_crop_warns_when_the_face_fills_the_frame() -> None:
    centres = np.full((10, 2), 240.0, np.float32)
    crop, warnings = portrait_crop(centres, np.full(10, 120.0, np.float32), 640, 480, 256)
    assert warnings == [] and crop.side < 480
    crop, warnings = portrait_crop(centres, np.full(10, 400.0, np.float32), 640, 480, 256)
    assert crop.side == 480 and len(warnings) == 1 and "fills the frame" in warnings[0]


def test_dry_run_prints_the_resolved_options_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "data"
    argv = ["prepare", str(tmp_path / "any.mp4"), "-o", str(out), "--size", "512", "--test-fraction", "0.3"]
    assert avatarcam_cli.main([*argv, "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["size"], printed["test_fraction"], printed["out"]) == (512, 0.3, str(out))
    assert not out.exists()


@pytest.mark.slow
def test_size_512_and_test_fraction_hold_out_the_tail(cap12: Path, tmp_path: Path) -> None:
    """At 512 px cap12's portrait crop (from 400x300 footage, upscaled) is smaller than the
    output, which the manifest warns about; --test-fraction holds out the last quarter."""
    out = tmp_path / "data"
    manifest = run(PrepareConfig(video=cap12, out=out, size=512, test_fraction=0.25, max_frames=24))
    assert manifest["size"] == 512 and (manifest["train_frames"], manifest["test_frames"]) == (18, 6)
    assert any("upscaled to 512" in w for w in manifest["warnings"]), manifest["warnings"]
    with np.load(out / "test" / "tracking.npz") as arrays:
        assert arrays["frame"].tolist() == list(range(18, 24))
    with np.load(out / "train" / "tracking.npz") as arrays:
        assert arrays["frame"].tolist() == list(range(18))
    for kind in ("frames", "uv", "render", "mask"):
        image = cv2.imread(str(out / "test" / kind / "000018.png"), cv2.IMREAD_UNCHANGED)
        assert image.shape[:2] == (512, 512), kind
