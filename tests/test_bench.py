"""`avatarcam bench`: the JSON report is complete and consistent, on a real driving video."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from avatarcam_cli import main
from models.bench import STAGES, BenchError, BenchOptions, Encoder
from tests.media import first_frames, one_torch_thread

_threads = pytest.fixture(autouse=True, scope="module")(one_torch_thread)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_bench_json_is_complete(
    backend: str,
    tiny_avatar: Path,
    driver_video: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("AVATARCAM_HOME", str(tmp_path))
    args = ["bench", str(tiny_avatar), "--backend", backend, "--device", "cpu", "--frames", "12", "--warmup", "2"]
    assert main([*args, "--video", str(driver_video), "--threads", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    required = {"backend", "device", "resolution", "ms_p50", "ms_p99", "fps", "stages", "peak_rss_mb", "peak_gpu_mb"}
    assert required | {"frames", "avatar", "versions"} <= set(report)
    assert (report["backend"], report["device"], report["resolution"]) == (backend, "cpu", 64)
    assert report["frames"] == 12 and report["avatar"] == tiny_avatar.name
    assert report["peak_gpu_mb"] is None and report["peak_rss_mb"] > 100
    assert set(report["stages"]) == set(STAGES)
    for stage in report["stages"].values():
        assert 0 < stage["ms_p50"] <= stage["ms_p99"]
    assert 0 < report["ms_p50"] <= report["ms_p99"]
    stage_sum = sum(s["ms_p50"] for s in report["stages"].values())
    assert report["ms_p50"] == pytest.approx(stage_sum, rel=0.5)  # stages partition each frame
    assert report["fps"] == pytest.approx(1000 / report["ms_p50"], rel=0.5)
    assert {"torch", "python", "av"} <= set(report["versions"])


def test_bench_rejects_what_it_cannot_run(tiny_avatar: Path, tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="--video"):
        BenchOptions(tiny_avatar, video=tmp_path / "absent.mp4").validate()
    assert main(["bench", str(tiny_avatar), "--network", "student", "--frames", "1"]) == 2


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_encoder_produces_packets(codec: str, driver_video: Path) -> None:
    encode = Encoder("vp8" if codec == "vp8" else "h264", 64)
    for frame in first_frames(driver_video, 5):
        encode(frame[:64, :64].copy())
    assert encode.bytes > 0
