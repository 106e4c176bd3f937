"""`avatarcam prepare` on real video: the dataset, resuming, and the errors a user sees."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import avatarcam_cli
from tests.media import first_frames, write_video
from tracking import prepare as prepare_module
from tracking.prepare import PrepareConfig, run

pytestmark = pytest.mark.slow

FRAMES = 40


@pytest.fixture(scope="module")
def dataset(cap12: Path, cap13: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "cap12"
    run(PrepareConfig(video=cap12, out=out, test_video=cap13, max_frames=FRAMES))
    return out


def test_manifest_has_the_contract_fields(dataset: Path) -> None:
    manifest = json.loads((dataset / "manifest.json").read_text())
    for key in (
        "frames_total",
        "frames_tracked",
        "train_frames",
        "test_frames",
        "size",
        "fps",
        "seconds",
        "warnings",
    ):
        assert key in manifest
    assert manifest["frames_total"] == 2 * FRAMES
    assert manifest["train_frames"] == FRAMES and manifest["test_frames"] == FRAMES
    assert manifest["size"] == 256 and manifest["fps"] == pytest.approx(25.0)
    assert any("60 s" in w or "s long" in w for w in manifest["warnings"])  # cap12 is 53 s


def test_every_written_frame_is_complete_and_aligned(dataset: Path) -> None:
    for split in ("train", "test"):
        folder = dataset / split
        with np.load(folder / "tracking.npz") as data:
            frames, landmarks = data["frame"], data["landmarks"]
        assert len(frames) == FRAMES
        inside = []
        for index, points in zip(frames, landmarks, strict=True):
            name = f"{int(index):06d}.png"
            uv = cv2.imread(str(folder / "uv" / name), cv2.IMREAD_UNCHANGED)
            mask = cv2.imread(str(folder / "mask" / name), cv2.IMREAD_UNCHANGED)
            assert uv.shape == (256, 256, 3) and uv.dtype == np.uint16
            assert cv2.imread(str(folder / "frames" / name)).shape == (256, 256, 3)
            assert cv2.imread(str(folder / "render" / name)).shape == (256, 256, 3)
            xy = np.clip(points[:468, :2].round().astype(int), 0, 255)
            inside.append((mask[xy[:, 1], xy[:, 0]] > 127).mean())
            # The rendered face (UV region code > 0) lies on the person too.
            face = uv[..., 0] > 0  # OpenCV order: channel 0 is the region code
            assert (mask[face] > 127).mean() > 0.97
        assert np.mean(inside) > 0.97
        assert (folder / "background.png").exists()
    assert (dataset / "contact_sheet.png").stat().st_size > 10_000
    assert (dataset / "tracking_plot.png").stat().st_size > 10_000
    assert (dataset / "expression.npz").exists()


def test_rerun_reuses_finished_work(dataset: Path, cap12: Path, cap13: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {p: p.stat().st_mtime_ns for p in (dataset / "train" / "frames").iterdir()}

    def no_tracking(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished video must not be tracked again")

    monkeypatch.setattr(prepare_module.FaceTracker, "__call__", no_tracking)
    manifest = run(
        PrepareConfig(video=cap12, out=dataset, test_video=cap13, max_frames=FRAMES),
    )
    assert manifest["train_frames"] == FRAMES
    after = {p: p.stat().st_mtime_ns for p in (dataset / "train" / "frames").iterdir()}
    assert after == before


def test_killed_run_leaves_no_manifest_and_resumes(
    cap12: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "data"
    original = prepare_module._Worker.__call__
    calls = {"n": 0}

    def dies_midway(self: prepare_module._Worker, *args: object) -> object:
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt
        return original(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(prepare_module._Worker, "__call__", dies_midway)
    config = PrepareConfig(video=cap12, out=out, max_frames=FRAMES, workers=1)
    with pytest.raises(KeyboardInterrupt):
        run(config)
    assert not (out / "manifest.json").exists()
    assert not list(out.rglob("*.partial"))
    done = len(list((out / "train" / "mask").glob("*.png")))
    assert 0 < done < FRAMES

    monkeypatch.setattr(prepare_module._Worker, "__call__", original)
    manifest = run(config)
    assert manifest["train_frames"] + manifest["test_frames"] == FRAMES


def _cli_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = avatarcam_cli.main(["prepare", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("avatarcam: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_not_a_video(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 100)
    assert "not a readable video" in _cli_error([str(fake), "-o", str(tmp_path / "d")], capsys)


def test_empty_and_missing_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.mp4"
    empty.touch()
    assert "empty" in _cli_error([str(empty), "-o", str(tmp_path / "d")], capsys)
    assert "no such file" in _cli_error([str(tmp_path / "nope.mp4"), "-o", str(tmp_path / "d")], capsys)


def test_video_without_a_face(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    frames = [cv2.GaussianBlur(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8), (9, 9), 3) for _ in range(24)]
    video = write_video(tmp_path / "wall.mp4", frames)
    assert "no face found" in _cli_error([str(video), "-o", str(tmp_path / "d")], capsys)
    assert not (tmp_path / "d" / "manifest.json").exists()


def test_too_few_tracked_frames(cap12: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    faces = first_frames(cap12, 5)
    blank = [np.full_like(faces[0], 90) for _ in range(30)]
    video = write_video(tmp_path / "brief.mp4", blank[:15] + faces + blank[15:])
    assert "only 5 of 35" in _cli_error([str(video), "-o", str(tmp_path / "d")], capsys)
