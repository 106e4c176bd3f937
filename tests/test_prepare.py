"""`avatarcam prepare` on real video: the dataset, resuming, and the errors a user sees."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import avatarcam_cli
from tests.media import first_frames, write_video
from tracking import prepare as prepare_module
from tracking.prepare import PrepareConfig, run

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

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
        for index, points in list(zip(frames, landmarks, strict=True))[:3]:
            _assert_render_and_image_follow_the_landmarks(folder, int(index), points)
    assert (dataset / "contact_sheet.png").stat().st_size > 10_000
    assert (dataset / "tracking_plot.png").stat().st_size > 10_000
    assert (dataset / "expression.npz").exists()


def _assert_render_and_image_follow_the_landmarks(folder: Path, index: int, points: np.ndarray) -> None:
    """The UV render covers exactly the mesh the stored landmarks describe (filled here with
    OpenCV, independently of the project's rasterizer), and the stored landmarks sit on the face
    in the stored frame (re-tracked here from the written crop): a render or a crop shifted by a
    few pixels fails both."""
    from tracking.mesh import N_MESH_VERTICES, load_canonical_mesh
    from tracking.tracker import FaceTracker

    name = f"{index:06d}.png"
    face = cv2.imread(str(folder / "uv" / name), cv2.IMREAD_UNCHANGED)[..., 0] > 0
    filled = np.zeros(face.shape, np.uint8)
    corners = (points[:N_MESH_VERTICES, :2] - 0.5) * 16  # pixel centres at +0.5; 4 fractional bits
    cv2.fillPoly(filled, list(corners[load_canonical_mesh().triangles].round().astype(np.int32)), 1, shift=4)
    filled_mask = filled > 0
    iou = (face & filled_mask).sum() / (face | filled_mask).sum()
    assert iou > 0.97, (name, iou)
    centre = np.argwhere(face).mean(axis=0) - np.argwhere(filled_mask).mean(axis=0)
    assert np.abs(centre).max() < 0.3, (name, centre)
    rgb = cv2.imread(str(folder / "frames" / name))[..., ::-1].copy()
    with FaceTracker(mode="image") as tracker:
        track = tracker(rgb)
    assert track is not None, name
    error = np.linalg.norm(track.landmarks[:N_MESH_VERTICES, :2] - points[:N_MESH_VERTICES, :2], axis=1)
    assert np.median(error) < 2.5, (name, np.median(error))


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
    """A prepare process killed with SIGKILL in the middle of writing frames leaves no manifest
    and no torn file; the re-run skips the tracking pass and every frame already written."""
    out = tmp_path / "data"
    frames = 48
    command = [sys.executable, "-m", "avatarcam_cli", "prepare", str(cap12), "-o", str(out), "--size", "64"]
    command += ["--max-frames", str(frames), "--workers", "1"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(list((out / "train" / "mask").glob("*.png"))) < 5:
            assert proc.poll() is None, "prepare finished before it could be killed"
            assert time.monotonic() < deadline, "no frame written within 300 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (out / "manifest.json").exists()
    written = {p: p.stat().st_mtime_ns for p in (out / "train").glob("*/*.png")}
    finished = {p.name for p in (out / "train" / "mask").glob("*.png")}
    finished = {n for n in finished if all((out / "train" / k / n).exists() for k in ("frames", "uv", "render"))}
    assert 0 < len(finished) < frames
    for path in written:  # everything that landed is whole: files arrive by rename
        assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED) is not None, path
    # A frame missing one of its files (here its mask, as if killed between two renames) is redone.
    redo = min(finished)
    (out / "train" / "mask" / redo).unlink()
    finished.discard(redo)

    def no_tracking(*args: object, **kwargs: object) -> None:
        raise AssertionError("the tracking pass was finished: it must come from the cache")

    monkeypatch.setattr(prepare_module.FaceTracker, "__call__", no_tracking)
    manifest = run(PrepareConfig(video=cap12, out=out, size=64, max_frames=frames, workers=1))
    assert manifest["train_frames"] + manifest["test_frames"] == frames
    for path, mtime in written.items():
        if path.name in finished:
            assert path.stat().st_mtime_ns == mtime, f"{path} was written again"
    assert not [p for p in out.rglob("*") if ".partial" in p.name]
    for kind in ("frames", "uv", "render", "mask"):
        assert len(list((out / "train" / kind).glob("*.png"))) == manifest["train_frames"]


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
