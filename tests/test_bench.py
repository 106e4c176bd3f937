"""`avatarcam bench`: the JSON report is complete and consistent, on a real driving video."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

from avatarcam_cli import main
from streamer.core.metrics import STAGES as SERVICE_STAGES
from streamer.core.metrics import percentiles
from streamer.pipeline.session import AvatarSession
from streamer.tools import bench
from streamer.tools.bench import STAGES, BenchError, BenchOptions, Encoder
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
    sessions: list[AvatarSession] = []
    encoded: list[int] = []

    def recording(*args: Any) -> dict[str, float]:
        stamps = one_frame(*args)
        recorded.append(stamps)
        return stamps

    class Recorded(AvatarSession):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            sessions.append(self)

    class CountingSink(bench.EncodeSink):
        def deliver(self, frame: Any) -> None:
            super().deliver(frame)
            encoded.append(frame.index)

    monkeypatch.setattr(bench, "_one_frame", recording)
    monkeypatch.setattr(bench, "AvatarSession", Recorded)
    monkeypatch.setattr(bench, "EncodeSink", CountingSink)
    args = ["bench", str(tiny_avatar), "--backend", backend, "--device", "cpu", "--frames", "12", "--warmup", "4"]
    assert main([*args, "--mode", "both", "--video", str(driver_video), "--threads", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    required = {"backend", "device", "resolution", "pipeline", "sequential", "tracker_baseline_ms", "camera"}
    assert required | {"peak_rss_mb", "peak_gpu_mb", "avatar", "network", "versions"} <= set(report)
    assert (report["backend"], report["device"], report["resolution"]) == (backend, "cpu", 64)
    assert report["avatar"] == tiny_avatar.name
    assert report["peak_gpu_mb"] is None and report["peak_rss_mb"] > 100
    assert {"torch", "python", "av"} <= set(report["versions"])
    baseline = report["tracker_baseline_ms"]
    assert 0 < baseline["p50"] <= baseline["p99"]

    # The pipeline's figures are the live session's own statistics (what /metrics and the
    # dashboard show), over the frames it made after the warm-up.
    live = report["pipeline"]
    assert len(sessions) == 1
    stats = sessions[0].stats
    assert live["frames"] == stats.frames and 12 <= stats.frames <= 14, "the warm-up frames are not excluded"
    assert live["sinks"] == ["encode"] and encoded, "the encoding sink never ran"
    assert set(live["stages_ms"]) == set(SERVICE_STAGES) and set(live["dropped"]) == set(SERVICE_STAGES)
    assert live["stages_ms"] == {name: percentiles(stats.stages[name]) for name in SERVICE_STAGES}
    assert live["e2e_ms"] == percentiles(stats.end_to_end)
    assert len(stats.stages["infer"]) == stats.frames
    made = list(stats.produced_at)
    assert live["source_fps"] == 30 and live["fps"] == pytest.approx((len(made) - 1) / (made[-1] - made[0]), abs=0.01)
    # A frame's capture-to-sink time holds its own stages.
    assert min(stats.end_to_end) > min(stats.stages["infer"])
    # ... and its engine-to-sink share, which starts after the frame's infer and compose.
    assert live["handoff_ms"] == percentiles(stats.handoffs) and len(stats.handoffs) == len(stats.end_to_end)
    assert all(0 < h < e for h, e in zip(stats.handoffs, stats.end_to_end, strict=True))

    # The sequential figures are exactly the statistics of the frames that ran, and the stages
    # partition each frame's time.
    seq = report["sequential"]
    timed = recorded[4:]  # after the warm-up
    assert len(timed) == seq["frames"] == 12
    for frame in timed:
        assert sum(frame[s] for s in STAGES) == pytest.approx(frame["total"], rel=1e-9)
    total_ms = np.array([f["total"] for f in timed]) * 1000
    assert seq["total_ms"]["p50"] == pytest.approx(np.percentile(total_ms, 50), abs=0.006)
    assert seq["total_ms"]["p99"] == pytest.approx(np.percentile(total_ms, 99), abs=0.006)
    assert seq["fps"] == pytest.approx(1000 / total_ms.mean(), abs=0.006)
    assert set(seq["stages_ms"]) == set(STAGES)
    for name, stage in seq["stages_ms"].items():
        assert stage["p50"] == pytest.approx(np.percentile([f[name] * 1000 for f in timed], 50), abs=0.006)

    # The virtual camera's stage, at each webcam size, on the pipeline's published frames.
    assert set(report["camera"]) == set(bench.CAMERA_SIZES)
    for row in report["camera"].values():
        assert row["frames"] == min(len(encoded), bench.CAMERA_FRAMES) and row["resampler"] == "cubic"
        for name in ("cubic", "lanczos", "linear"):
            assert 0 < row[name]["p50"] <= row[name]["p99"]


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


def test_unpaced_pipeline_takes_frames_as_fast_as_it_goes(tiny_avatar: Path, driver_video: Path) -> None:
    """`--source-fps 0`: the source is read only when the drive stage took the last frame, so
    nothing is dropped before tracking however fast the file decodes."""
    import asyncio

    from models.avatar import load_avatar

    options = BenchOptions(tiny_avatar, backend="onnx", frames=12, warmup=2, video=driver_video, source_fps=0)
    options.validate()
    live = asyncio.run(bench.run_pipeline(options, load_avatar(tiny_avatar), []))
    assert live["source_fps"] == 0 and live["frames"] >= 12
    assert live["dropped"]["track"] == 0, "an unpaced source outran the drive stage: no back-pressure"
    assert live["fps"] > 0
    with pytest.raises(BenchError, match="--source-fps"):
        BenchOptions(tiny_avatar, video=driver_video, source_fps=-1).validate()
