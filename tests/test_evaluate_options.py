"""`avatarcam evaluate`'s options on the tiny avatar: `--video` (another recording instead of
the test split), `--region`, and the driver's neutral (`--calibrate-frame`, `--calibrate-seconds`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from avatarcam_cli import main
from tests.media import first_frames, one_torch_thread, write_video
from tracking.neutral import driver_neutral
from tracking.tracker import FaceTracker
from tracking.video import read_frames

pytestmark = pytest.mark.slow
_threads = pytest.fixture(autouse=True, scope="module")(one_torch_thread)


def _evaluate(tiny_avatar: Path, data: Path, out: Path, *extra: str) -> dict[str, Any]:
    assert main(["evaluate", str(tiny_avatar), "--data", str(data), "-o", str(out), *extra]) == 0
    return json.loads((out / "metrics.json").read_text())  # type: ignore[no-any-return]


def test_video_self_reenacts_another_recording(
    tiny_avatar: Path, tiny_avatar_root: Path, cap13: Path, tmp_path: Path
) -> None:
    video = write_video(tmp_path / "cap13.mp4", first_frames(cap13, 12))
    extra = ["--video", str(video), "--max-frames", "3", "--metrics", "psnr", "--region", "full"]
    metrics = _evaluate(tiny_avatar, tiny_avatar_root / "data", tmp_path / "r", *extra)
    assert metrics["mode"] == "self" and metrics["evaluated_on"] == str(video) and metrics["frames"] == 3
    assert metrics["region"] == "full" and "masked" not in metrics and np.isfinite(metrics["psnr"])
    assert "baselines" not in metrics  # the dataset's baselines belong to its own test split
    per_frame = json.loads((tmp_path / "r" / "per_frame.json").read_text())
    assert per_frame["frame"] == [0, 6, 11]  # the recording's frames, evenly spaced, not the test split's


def test_region_picks_what_is_compared(tiny_avatar: Path, tiny_avatar_root: Path, tmp_path: Path) -> None:
    data, argv = tiny_avatar_root / "data", ("--max-frames", "2", "--metrics", "psnr,ssim")
    both = _evaluate(tiny_avatar, data, tmp_path / "both", *argv)
    masked = _evaluate(tiny_avatar, data, tmp_path / "masked", *argv, "--region", "masked")
    full = _evaluate(tiny_avatar, data, tmp_path / "full", *argv, "--region", "full")
    assert both["region"] == "full" and set(both["masked"]) == {"psnr", "ssim"}
    assert masked["region"] == "masked" and "masked" not in masked and "masked" not in full
    for name in ("psnr", "ssim"):
        assert masked[name] == both["masked"][name] and full[name] == both[name]
    # Masking both images leaves each pixel's error scaled by the person mask (<= 1), and zero off
    # the person: the masked PSNR is above the full one whenever the background is not perfect.
    assert masked["psnr"] > full["psnr"] + 0.1, (masked, full)


@pytest.fixture(scope="module")
def late_face_driver(driver_video: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 frames of an empty wall, then 15 of the driver's face."""
    faces = first_frames(driver_video, 15)
    wall = [np.full_like(faces[0], 90) for _ in range(5)]
    return write_video(tmp_path_factory.mktemp("driver") / "late.mp4", wall + faces)


def test_driver_neutral_is_the_calmest_early_frame_or_the_given_one(late_face_driver: Path) -> None:
    expression: dict[int, float] = {}
    with FaceTracker() as tracker:
        for index, t, rgb in read_frames(late_face_driver):
            track = tracker(rgb, round(t * 1000))
            if track is not None:
                expression[index] = float(track.blendshapes[1:].sum())
    assert min(expression) == 5, "the wall frames have no face"
    calmest = min(expression, key=expression.__getitem__)
    blend, pose, index = driver_neutral(late_face_driver, 1.0, None)
    assert index == calmest and blend.shape == (52,) and pose.shape == (7,)
    assert driver_neutral(late_face_driver, 0.4, None)[2] == min(expression, key=lambda i: (i > 9, expression[i]))
    assert driver_neutral(late_face_driver, 1.0, 12)[2] == 12


def test_calibrate_frame_reaches_the_driver_neutral(
    tiny_avatar: Path,
    tiny_avatar_root: Path,
    late_face_driver: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["evaluate", str(tiny_avatar), "--data", str(tiny_avatar_root / "data"), "--driver", str(late_face_driver)]
    assert main([*argv, "-o", str(tmp_path / "a"), "--max-frames", "2", "--calibrate-frame", "2"]) == 2
    err = capsys.readouterr().err
    assert "no face in frame 2" in err and "--calibrate-frame" in err
    extra = ["--driver", str(late_face_driver), "--max-frames", "2", "--calibrate-frame", "8"]
    metrics = _evaluate(tiny_avatar, tiny_avatar_root / "data", tmp_path / "b", *extra)
    assert metrics["mode"] == "cross" and metrics["options"]["calibrate_frame"] == 8
