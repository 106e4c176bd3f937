"""`avatarcam reenact`: frame count, frame rate, side-by-side width and the driver's audio."""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest

from avatarcam_cli import main
from tests.media import first_frames, one_torch_thread, shared_video, write_video

_threads = pytest.fixture(autouse=True, scope="module")(one_torch_thread)


def _streams(path: Path) -> tuple[int, float, int, int, int]:
    """(video frames decoded, fps, width, height, audio packets) of an mp4."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        fps = float(video.average_rate)
        width, height = video.codec_context.width, video.codec_context.height
        frames = sum(1 for _ in container.decode(video))
    with av.open(str(path)) as container:
        streams = list(container.streams.audio)
        audio = sum(1 for p in container.demux(*streams) if p.dts is not None) if streams else 0
    return frames, fps, width, height, audio


@pytest.mark.slow
def test_side_by_side_with_the_drivers_audio(
    tiny_avatar: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    driver = shared_video("drv_aoc_512.mp4")  # has an AAC track
    out = tmp_path / "aoc.mp4"
    assert main(["reenact", str(tiny_avatar), str(driver), "-o", str(out), "--side-by-side", "--max-frames", "20"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    frames, fps, width, height, audio = _streams(out)
    with av.open(str(driver)) as source:
        driver_fps = float(source.streams.video[0].average_rate)
    assert frames == 20 == summary["frames"] and fps == pytest.approx(driver_fps)
    assert (width, height) == (128, 64)  # driver (512 x 512 scaled to 64) | avatar 64
    assert audio > 0 and summary["audio"] == "aac"
    with av.open(str(out)) as container:
        seconds = float(container.streams.audio[0].duration * container.streams.audio[0].time_base)
    assert seconds == pytest.approx(20 / driver_fps, abs=0.1)  # audio trimmed to the driven part


@pytest.mark.slow
def test_whole_silent_driver_keeps_its_frame_count(tiny_avatar: Path, cap13: Path, tmp_path: Path) -> None:
    driver = write_video(tmp_path / "driver.mp4", first_frames(cap13, 12), fps=15)
    out = tmp_path / "out.mp4"
    assert main(["reenact", str(tiny_avatar), str(driver), "-o", str(out)]) == 0
    frames, fps, width, height, audio = _streams(out)
    assert (frames, fps, width, height, audio) == (12, 15.0, 64, 64, 0)


def test_bad_driver_is_one_line(tiny_avatar: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reenact", str(tiny_avatar), str(tmp_path / "none.mp4"), "-o", str(tmp_path / "o.mp4")]) == 2
    assert capsys.readouterr().err.startswith("avatarcam: error: ")
