"""`avatarcam bench`: the JSON report is complete and consistent, on a real driving video."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

from avatarcam_cli import main
from streamer import bench
from streamer.bench import STAGES, BenchError, BenchOptions, Encoder
from tests.media import first_frames, one_torch_thread

_threads = pytest.fixture(autouse=True, scope="module")(one_torch_thread)

pytestmark = pytest.mark.slow
one_frame = bench._one_frame


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
    recorded: list[dict[str, float]] = []

    def recording(*args: Any) -> dict[str, float]:
        stamps = one_frame(*args)
        recorded.append(stamps)
        return stamps

    monkeypatch.setattr(bench, "_one_frame", recording)
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
    # The report's figures are exactly the statistics of the frames that ran, and the stages
    # partition each frame's time.
    timed = recorded[2:]  # after the warm-up
    assert len(timed) == 12
    for frame in timed:
        assert sum(frame[s] for s in STAGES) == pytest.approx(frame["total"], rel=1e-9)
    total_ms = np.array([f["total"] for f in timed]) * 1000
    assert report["ms_p50"] == pytest.approx(np.percentile(total_ms, 50), abs=0.006)
    assert report["ms_p99"] == pytest.approx(np.percentile(total_ms, 99), abs=0.006)
    assert report["fps"] == pytest.approx(1000 / total_ms.mean(), abs=0.006)
    for name, stage in report["stages"].items():
        assert stage["ms_p50"] == pytest.approx(np.percentile([f[name] * 1000 for f in timed], 50), abs=0.006)
    assert {"torch", "python", "av"} <= set(report["versions"])
    # The virtual camera's stage, at each webcam size, on this run's engine outputs (warm-up too).
    assert set(report["camera"]) == set(bench.CAMERA_SIZES)
    for row in report["camera"].values():
        assert row["frames"] == 14 and row["resampler"] == "lanczos"
        for name in ("lanczos", "linear"):
            assert 0 < row[name]["ms_p50"] <= row[name]["ms_p99"]


def test_bench_rejects_what_it_cannot_run(tiny_avatar: Path, tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="--video"):
        BenchOptions(tiny_avatar, video=tmp_path / "absent.mp4").validate()
    assert main(["bench", str(tiny_avatar), "--network", "student", "--frames", "1"]) == 2


class _KeepPackets:
    """Wraps the encoder's codec context to keep what it emits (the bench discards packets)."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.packets: list[Any] = []

    def encode(self, frame: Any) -> list[Any]:
        out = list(self.context.encode(frame))
        self.packets += out
        return out


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_encoder_produces_packets(codec: Literal["vp8", "h264"], driver_video: Path) -> None:
    """A packet per frame (no look-ahead, as a real-time sender must), that decodes back to the frames."""
    import av

    encode = Encoder(codec, 64)
    kept = _KeepPackets(encode._context)
    encode._context = kept
    pictures = [np.ascontiguousarray(f[200:264, 220:284]) for f in first_frames(driver_video, 5)]
    for i, picture in enumerate(pictures):
        encode(picture)
        assert len(kept.packets) == i + 1, "the encoder held a frame back: it is not configured for real time"
    assert encode.bytes == sum(p.size for p in kept.packets) > 0
    decoder = av.CodecContext.create({"vp8": "libvpx", "h264": "h264"}[codec], "r")
    decoded = [f.to_ndarray(format="rgb24") for p in kept.packets for f in decoder.decode(p)]
    decoded += [f.to_ndarray(format="rgb24") for f in decoder.decode(None)]
    assert len(decoded) == 5
    for got, sent in zip(decoded, pictures, strict=True):
        mse = np.mean((got.astype(np.float64) - sent) ** 2)
        assert 10 * np.log10(255**2 / mse) > 25, "the decoded frame does not look like the one sent"
