"""`avatarcam bench`: the live pipeline's latency and throughput on a real driving video.

**pipeline** (the default, and what the service does): the real `streamer.pipeline.session.AvatarSession`
with a file source paced as a 640x480 camera on absolute deadlines (or unpaced, `--source-fps 0`:
each frame read as soon as the drive stage took the last, so the pipeline's ceiling shows), and an encoding sink (VP8 or
H.264, as a WebRTC peer's encoder; `--peer` adds a real aiortc peer over loopback). Tracking and
rendering overlap generation in the session's two threads, with latest-frame slots between the
stages. The report holds the figures the service exports at `/metrics` and on the dashboard:
per-stage p50/p99 (track, render, infer, compose, sink), capture-to-sink p50/p99, engine-to-sink
(`handoff_ms`: from the avatar frame leaving the compositor to the sink handing it on), frames made,
frames dropped per stage, and the sustained frame rate.

**sequential** (`--mode sequential|both`): the same stages one after another on the calling
thread (track -> render -> infer -> compose -> encode), with no overlap and no drops: the
baseline the pipeline's overlap is measured against, and the per-frame cost of each stage alone.

Beside both, in the same run, the bare FaceLandmarker call on the same camera frames: the floor of
any tracker-driven avatar.

`camera` reports the virtual camera's own stage (it runs in the camera sink's thread, beside the
pipeline): framing this run's avatar frames into each webcam size with each resampler (bicubic,
the default; Lanczos; and bilinear as the baseline), on the same frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
import resource
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, cast

import cv2
import numpy as np
import torch

from models.avatar import Avatar, load_avatar
from models.engines import create_engine
from models.engines.base import U8, live_threads
from streamer.core.clock import Clock, MonotonicClock
from streamer.core.frames import Frame, Layers
from streamer.core.metrics import STAGES as SERVICE_STAGES
from streamer.core.metrics import Metrics, SessionStats, percentiles
from streamer.pipeline.session import AvatarEntry, AvatarSession, SessionConfig, State
from streamer.sinks.base import QueuedSink
from streamer.sources.file import FileSource
from tracking.live import LiveDriver
from tracking.render import FaceRenderer
from tracking.tracker import FaceTrack, FaceTracker
from tracking.video import read_frames

STAGES = ("track", "render", "infer", "compose", "encode")
"""The sequential mode's stages, in order."""
CAMERA_SIZES = ("640x480", "1280x720", "1920x1080")
CAMERA_FRAMES = 60  # avatar frames kept for timing the camera stage
BASELINE_FRAMES = 60  # camera frames of the bare-tracker baseline
DEFAULT_DRIVER = Path(__file__).resolve().parents[3] / "shared" / "data" / "512" / "drv_lp_d10_512.mp4"
Network = Literal["auto", "teacher", "student"]
Codec = Literal["vp8", "h264"]
Mode = Literal["pipeline", "sequential", "both"]


class BenchError(RuntimeError):
    """The benchmark cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class BenchOptions:
    """Options of `avatarcam bench`.

    Attributes:
        avatar: the .avatar file.
        device: "cpu" or "cuda[:i]" (engine and renderer).
        backend: an engine backend name (models.engines.ENGINES).
        frames: timed avatar frames of each mode (after `warmup` untimed ones); the video loops.
        warmup: untimed frames first (allocations, graph capture, caches).
        video: the driving video; default: a driver from ../shared/data beside the checkout.
        network: "student" or "teacher" to pick from an avatar carrying both; "auto" runs the
            student when present.
        codec: the encoder of the encode stage (sequential) and the encoding sink (pipeline).
        threads: torch / onnxruntime intra-op threads (default: as `serve`, every core but one).
        mode: "pipeline" (the live session), "sequential" (stage after stage), or "both".
        source_fps: the paced source's frame rate in the pipeline mode (the camera's); 0: unpaced,
            each frame read as soon as the drive stage took the last (back-pressure, no drops at
            the source), so the pipeline's own ceiling shows.
        peer: in the pipeline mode, also stream to a real aiortc peer over loopback.
    """

    avatar: Path
    device: str = "cpu"
    backend: str = "torch"
    frames: int = 300
    warmup: int = 10
    video: Path | None = None
    network: Network = "auto"
    codec: Codec = "vp8"
    threads: int | None = None
    mode: Mode = "pipeline"
    source_fps: float = 30.0
    peer: bool = False

    def validate(self) -> None:
        if self.frames < 1 or self.warmup < 0:
            raise BenchError("--frames must be >= 1 and --warmup >= 0")
        if self.source_fps < 0:
            raise BenchError("--source-fps must be > 0, or 0 for an unpaced source")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BenchError("--device cuda: no CUDA device is visible here; use --device cpu")
        if not self.driver.is_file():
            raise BenchError(f"driving video {self.driver} not found; pass --video PATH")

    @property
    def driver(self) -> Path:
        return self.video or DEFAULT_DRIVER


class TimedTracker(FaceTracker):
    """A FaceTracker that records how long its last call took (the track stage)."""

    last_seconds: float = 0.0

    def __call__(self, rgb: U8, timestamp_ms: int = 0) -> FaceTrack | None:
        start = time.perf_counter()
        try:
            return super().__call__(rgb, timestamp_ms)
        finally:
            self.last_seconds = time.perf_counter() - start


class Encoder:
    """Encodes composed frames like a WebRTC sender: VP8 (libvpx: realtime deadline, cpu-used -6,
    one thread, as aiortc configures it for frames this small) or H.264 (libx264 veryfast +
    zerolatency, one thread); packets only, no container.

    One thread matters on a shared 2-core machine: libvpx's default threading took ~80 ms per
    256 px frame there under load, against ~2 ms single-threaded."""

    def __init__(self, codec: Codec, size: int, fps: int = 30, bitrate: int = 1_000_000) -> None:
        import av

        name = {"vp8": "libvpx", "h264": "libx264"}[codec]
        options = (
            {"deadline": "realtime", "cpu-used": "-6", "lag-in-frames": "0", "threads": "1"}
            if codec == "vp8"
            else {"preset": "veryfast", "tune": "zerolatency", "threads": "1"}
        )
        self._context = cast(Any, av.CodecContext.create(name, "w"))
        self._context.width = self._context.height = size
        self._context.pix_fmt = "yuv420p"
        self._context.framerate = Fraction(fps, 1)
        self._context.time_base = Fraction(1, fps)
        self._context.bit_rate = bitrate
        self._context.options = options
        self._pts = 0
        self.bytes = 0

    def __call__(self, rgb: U8) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts = self._pts
        self._pts += 1
        for packet in self._context.encode(frame):
            self.bytes += packet.size


def letterbox(rgb: U8) -> U8:
    """[H, W, 3] -> [480, 640, 3]: scaled to fit and centred, as a webcam delivers frames."""
    h, w = rgb.shape[:2]
    scale = min(640 / w, 480 / h)
    fitted = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((480, 640, 3), np.uint8)
    top, left = (480 - fitted.shape[0]) // 2, (640 - fitted.shape[1]) // 2
    canvas[top : top + fitted.shape[0], left : left + fitted.shape[1]] = fitted
    return canvas


def camera_frames(path: Path, count: int) -> Iterator[U8]:
    """`count` letterboxed frames of `path`, decoded one at a time (so they do not count towards
    peak memory), looping the video when it is shorter."""
    produced = 0
    while produced < count:
        before = produced
        for _, _, rgb in read_frames(path, count - produced):
            yield letterbox(rgb)
            produced += 1
        if produced == before:
            raise BenchError(f"{path}: no frames decoded")


def pick_network(avatar: Avatar, network: Network) -> Avatar:
    """The avatar as the engine should see it for `network`."""
    if network == "teacher":
        return replace(avatar, student=None)
    if network == "student" and avatar.student is None:
        raise BenchError("this avatar carries no student; make one with `avatarcam distill`")
    return avatar


def versions() -> dict[str, str]:
    import av

    found = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "av": av.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": str(len(_affinity())),
    }
    for module in ("onnxruntime", "mediapipe"):
        with contextlib.suppress(ImportError):
            found[module] = __import__(module).__version__
    if torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name()
        found["cuda"] = str(torch.version.cuda)
    return found


def _affinity() -> set[int]:
    getter = getattr(__import__("os"), "sched_getaffinity", None)
    return set(getter(0)) if getter else set(range(torch.get_num_threads()))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB); ru_maxrss is KB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)


def run(options: BenchOptions) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-able report."""
    options.validate()
    torch.set_num_threads(options.threads or live_threads())
    avatar = pick_network(load_avatar(options.avatar), options.network)
    next(camera_frames(options.driver, 1))  # fail on an unreadable video before building anything
    if options.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    report: dict[str, Any] = {
        "backend": options.backend,
        "device": options.device,
        "resolution": avatar.network.image_size,
        "avatar": options.avatar.name,
        "network": "student" if avatar.student is not None else "teacher",
        "threads": options.threads or torch.get_num_threads(),
        "codec": options.codec,
        "video": options.driver.name,
        "tracker_baseline_ms": tracker_baseline(options.driver),
    }
    layers: list[Layers] = []
    if options.mode in ("pipeline", "both"):
        report["pipeline"] = asyncio.run(run_pipeline(options, avatar, layers))
    if options.mode in ("sequential", "both"):
        report["sequential"] = run_sequential(options, avatar, layers)
    report["camera"] = camera_costs(layers[:CAMERA_FRAMES], avatar)
    report["peak_rss_mb"] = peak_rss_mb()
    report["peak_gpu_mb"] = (
        round(torch.cuda.max_memory_allocated() / 2**20, 1) if options.device.startswith("cuda") else None
    )
    report["versions"] = versions()
    return report


def tracker_baseline(video: Path) -> dict[str, float] | None:
    """{p50, p99} ms of FaceLandmarker alone (video mode) on the first letterboxed camera frames."""
    seconds = []
    tracker = TimedTracker(mode="video", max_faces=1)
    try:
        for i, camera in enumerate(camera_frames(video, BASELINE_FRAMES + 5)):
            tracker(camera, round(i * 1000 / 30))
            if i >= 5:
                seconds.append(tracker.last_seconds)
    finally:
        tracker.close()
    return percentiles(seconds)


class CameraFile(FileSource):
    """The driving video as a webcam: letterboxed into 640x480, looping, paced at the source's
    frame rate on absolute deadlines."""

    def _next_image(self) -> U8 | None:
        image = super()._next_image()
        return None if image is None else letterbox(image)


class EncodeSink(QueuedSink):
    """Encodes each avatar frame as a WebRTC sender would (`Encoder`), in the sink's thread; keeps
    the first CAMERA_FRAMES frames' layers in `layers` (the camera stage's input)."""

    name = "encode"

    def __init__(self, clock: Clock, codec: Codec, size: int, layers: list[Layers]) -> None:
        super().__init__(clock)
        self._encode = Encoder(codec, size)
        self._layers = layers

    def deliver(self, frame: Frame) -> None:
        self._encode(frame.image)
        if frame.layers is not None and len(self._layers) < CAMERA_FRAMES:
            self._layers.append(frame.layers)


async def run_pipeline(options: BenchOptions, avatar: Avatar, layers: list[Layers]) -> dict[str, Any]:
    """The live session, as the service runs it, until it has made `options.frames` avatar frames
    after `options.warmup` untimed ones; its own metrics, as `/metrics` and the dashboard show them."""
    clock = MonotonicClock()
    entry = AvatarEntry(options.avatar.stem, options.avatar, avatar)
    paced = options.source_fps > 0
    source = CameraFile(options.driver, clock, loop=True, fps=options.source_fps or None, paced=paced)
    config = SessionConfig(options.backend, options.device, backpressure=not paced)
    session = AvatarSession("bench", entry, source, config, clock, Metrics())
    session.add_sink(EncodeSink(clock, options.codec, entry.resolution, layers))
    peer = await _loopback_peer(session, clock) if options.peer else None
    try:
        await session.start()
        await _until_frames(session, options.warmup, 60.0)
        metrics = Metrics()  # measure from here, every frame (no rolling window)
        session.stats = SessionStats(
            metrics,
            stages={name: deque() for name in SERVICE_STAGES},
            end_to_end=deque(),
            glass=deque(),
            handoffs=deque(),
            produced_at=deque(),
        )
        await _until_frames(session, options.frames, 60.0 + 10 * options.frames / (options.source_fps or 30.0))
    finally:
        await session.stop()  # no frame is made after this; the sinks deliver what they hold
        if peer is not None:
            await peer.close()
    snapshot = session.stats.snapshot()
    made = list(session.stats.produced_at)
    frames = int(metrics.registry.get_sample_value("avatarcam_frames_total") or 0)
    dropped = {
        stage: int(metrics.registry.get_sample_value("avatarcam_frames_dropped_total", {"stage": stage}) or 0)
        for stage in SERVICE_STAGES
    }
    return {
        "source_fps": options.source_fps,
        "sinks": [sink.name for sink in session.sinks],
        "frames": frames,
        "fps": round((len(made) - 1) / (made[-1] - made[0]), 2) if len(made) > 1 else None,
        "dropped": dropped,
        "e2e_ms": snapshot["e2e_ms"],
        "handoff_ms": snapshot["handoff_ms"],
        "stages_ms": snapshot["stages_ms"],
    }


async def _until_frames(session: AvatarSession, count: int, timeout: float) -> None:
    """Wait until the session's current stats count `count` frames made."""
    deadline = time.monotonic() + timeout
    while session.stats.frames < count:
        if session.state is State.ENDED:
            raise BenchError(f"the session ended after {session.stats.frames} frames; its log says why")
        if time.monotonic() > deadline:
            raise BenchError(
                f"the session made {session.stats.frames} of {count} frames in {timeout:.0f} s; lower --frames"
            )
        await asyncio.sleep(0.01)


async def _loopback_peer(session: AvatarSession, clock: Clock) -> Any:
    """An aiortc receiver connected over loopback to a sender of this session's frames: the WebRTC
    sink's encoder, packetiser and pacing, as a browser peer gets them."""
    from aiortc import RTCConfiguration, RTCPeerConnection
    from aiortc.contrib.media import MediaBlackhole

    from streamer.sinks.webrtc import AvatarTrack

    track = AvatarTrack(clock)
    session.add_sink(track)
    sender, receiver = RTCPeerConnection(RTCConfiguration([])), RTCPeerConnection(RTCConfiguration([]))
    sender.addTrack(track)
    blackhole = MediaBlackhole()
    receiver.on("track", blackhole.addTrack)
    await sender.setLocalDescription(await sender.createOffer())
    await receiver.setRemoteDescription(sender.localDescription)
    await receiver.setLocalDescription(await receiver.createAnswer())
    await sender.setRemoteDescription(receiver.localDescription)
    await blackhole.start()

    class Pair:
        async def close(self) -> None:
            await blackhole.stop()
            await sender.close()
            await receiver.close()

    return Pair()


def run_sequential(options: BenchOptions, avatar: Avatar, layers: list[Layers]) -> dict[str, Any]:
    """The stages one after another on this thread; appends the avatar frames' layers to `layers`
    (up to CAMERA_FRAMES) when it is empty."""
    from streamer.stages.compose import ComposeConfig, Compositor

    resolution = avatar.network.image_size
    engine = create_engine(options.backend, avatar, options.device)
    tracker = TimedTracker(mode="video", max_faces=1)  # as the live session tracks (one face: no detector per frame)
    driver = LiveDriver(avatar.expression, avatar.crop, FaceRenderer(tracker.mesh, resolution, options.device), tracker)
    composer = Compositor(ComposeConfig(), resolution)
    keep = not layers

    def compose(image: U8, mask: U8) -> U8:
        if keep and len(layers) < CAMERA_FRAMES:
            layers.append(composer.layers(image, mask))
        return composer(image, mask)

    encode = Encoder(options.codec, resolution)
    times: dict[str, list[float]] = {name: [] for name in (*STAGES, "total")}
    try:
        for i, camera in enumerate(camera_frames(options.driver, options.frames + options.warmup)):
            stamps = _one_frame(camera, i / 30, driver, tracker, engine, compose, encode)
            if i >= options.warmup:
                for name, seconds in stamps.items():
                    times[name].append(seconds)
    finally:
        tracker.close()
        engine.close()
    total = times.pop("total")
    return {
        "frames": len(total),
        "fps": round(len(total) / sum(total), 2),
        "total_ms": percentiles(total),
        "stages_ms": {name: percentiles(times[name]) for name in STAGES},
    }


def camera_costs(layers: list[Layers], avatar: Avatar) -> dict[str, dict[str, Any]]:
    """Per webcam size: ms per frame of the virtual camera's framing (`streamer.stages.framing`) with
    each resampler (bicubic, the default; Lanczos; bilinear, the baseline), on the same frames."""
    from streamer.provenance.identity import maybe_watermark
    from streamer.stages.framing import CameraSize, Framer, FramingConfig, Resampler

    mark = maybe_watermark(avatar.identity)
    report: dict[str, dict[str, Any]] = {}
    for text in CAMERA_SIZES:
        size = CameraSize.parse(text)
        row: dict[str, Any] = {}
        for resampler in Resampler:
            framer = Framer(FramingConfig(size=size, resampler=resampler))
            seconds = []
            for layer in layers:
                marked = replace(layer, watermark=mark)
                start = time.perf_counter()
                framer(marked)
                seconds.append(time.perf_counter() - start)
            row[resampler.value] = percentiles(seconds)
        row["resampler"] = FramingConfig().resampler.value
        row["frames"] = len(layers)
        report[text] = row
    return report


def _one_frame(
    camera: U8,
    now: float,
    driver: LiveDriver,
    tracker: TimedTracker,
    engine: Any,
    compose: Callable[[U8, U8], U8],
    encode: Encoder,
) -> dict[str, float]:
    """Seconds per stage (and the total) of one frame through the pipeline."""
    t0 = time.perf_counter()
    conditioning = driver(camera, now).conditioning
    uv, shaded = conditioning.uv_u16()[None], conditioning.shaded_u8()[None]  # [1, H, W, 3] each
    t1 = time.perf_counter()
    out = engine(uv, shaded)
    t2 = time.perf_counter()
    frame = compose(out.image[0], out.mask[0])
    t3 = time.perf_counter()
    encode(frame)
    t4 = time.perf_counter()
    track = tracker.last_seconds
    return {
        "track": track,
        "render": t1 - t0 - track,
        "infer": t2 - t1,
        "compose": t3 - t2,
        "encode": t4 - t3,
        "total": t4 - t0,
    }
