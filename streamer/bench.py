"""`avatarcam bench`: per-stage latency of the whole live pipeline on a real driving video.

One frame = track (FaceLandmarker on a 640x480 camera frame) -> render (smoothing,
retargeting into the avatar, conditioning renders) -> infer (the engine) -> compose (learned
background + the "synthetic" badge, as published) -> encode (VP8 or H.264 with PyAV at
real-time settings, as a WebRTC peer's encoder would). Stages run one after another on the
calling thread, so `fps` is the sequential rate: a pipelined service overlaps stages and does
better on throughput, never on latency. Decoding and letterboxing the video is not timed.

`camera` reports the virtual camera's own stage (it runs in the camera sink's thread, beside
the pipeline): framing the engine's outputs of this run into each webcam size — upscaling with
the quality resampler (Lanczos), the background around the crop, badge and watermark — with
bilinear upscaling timed on the same frames as the baseline.
"""

from __future__ import annotations

import contextlib
import itertools
import platform
import resource
import sys
import time
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
from models.engines.base import U8
from tracking.live import LiveDriver
from tracking.render import FaceRenderer
from tracking.tracker import FaceTrack, FaceTracker
from tracking.video import read_frames

STAGES = ("track", "render", "infer", "compose", "encode")
CAMERA_SIZES = ("640x480", "1280x720", "1920x1080")
CAMERA_FRAMES = 60  # engine outputs kept for timing the camera stage
DEFAULT_DRIVER = Path(__file__).resolve().parents[2] / "shared" / "data" / "512" / "drv_lp_d10_512.mp4"
Network = Literal["auto", "teacher", "student"]
Codec = Literal["vp8", "h264"]


class BenchError(RuntimeError):
    """The benchmark cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class BenchOptions:
    """Options of `avatarcam bench`.

    Attributes:
        avatar: the .avatar file.
        device: "cpu" or "cuda[:i]" (engine and renderer).
        backend: an engine backend name (models.engines.ENGINES).
        frames: timed frames (after `warmup` untimed ones); the video loops if shorter.
        warmup: untimed frames first (allocations, graph capture, caches).
        video: the driving video; default: a driver from ../shared/data beside the checkout.
        network: "student" or "teacher" to pick from an avatar carrying both; "auto" runs the
            student when present.
        codec: the encoder of the encode stage.
        threads: torch / onnxruntime intra-op threads (default: torch's current setting).
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

    def validate(self) -> None:
        if self.frames < 1 or self.warmup < 0:
            raise BenchError("--frames must be >= 1 and --warmup >= 0")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BenchError("--device cuda: no CUDA device is visible here; use --device cpu")
        video = self.video or DEFAULT_DRIVER
        if not video.is_file():
            raise BenchError(f"driving video {video} not found; pass --video PATH")


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


def compositor(resolution: int) -> Callable[[U8, U8], U8]:
    """The live service's compose stage with its defaults (learned background, badge on)."""
    from streamer.compose import ComposeConfig, Compositor

    return Compositor(ComposeConfig(), resolution)


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"ms_p50": round(float(np.percentile(ms, 50)), 2), "ms_p99": round(float(np.percentile(ms, 99)), 2)}


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
    if options.threads:
        torch.set_num_threads(options.threads)
    avatar = pick_network(load_avatar(options.avatar), options.network)
    resolution = avatar.network.image_size
    frames = camera_frames(options.video or DEFAULT_DRIVER, options.frames + options.warmup)
    first = next(frames)  # fail on an unreadable video before building anything
    engine = create_engine(options.backend, avatar, options.device)
    tracker = TimedTracker(mode="video")
    driver = LiveDriver(avatar.expression, avatar.crop, FaceRenderer(tracker.mesh, resolution, options.device), tracker)
    composer = compositor(resolution)
    outputs: list[tuple[U8, U8]] = []  # the engine's own arrays (no copy): the camera stage's input

    def compose(image: U8, mask: U8) -> U8:
        if len(outputs) < CAMERA_FRAMES:
            outputs.append((image, mask))
        return composer(image, mask)

    encode = Encoder(options.codec, resolution)
    if options.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times: dict[str, list[float]] = {name: [] for name in (*STAGES, "total")}
    try:
        for i, camera in enumerate(itertools.chain([first], frames)):
            stamps = _one_frame(camera, i / 30, driver, tracker, engine, compose, encode)
            if i >= options.warmup:
                for name, seconds in stamps.items():
                    times[name].append(seconds)
    finally:
        tracker.close()
        engine.close()
    total = times.pop("total")
    return {
        "backend": options.backend,
        "device": options.device,
        "resolution": resolution,
        **percentiles(total),
        "fps": round(len(total) / sum(total), 2),
        "stages": {name: percentiles(times[name]) for name in STAGES},
        "camera": camera_costs(outputs, avatar),
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if options.device.startswith("cuda")
        else None,
        "frames": len(total),
        "avatar": options.avatar.name,
        "network": "student" if avatar.student is not None else "teacher",
        "threads": options.threads or torch.get_num_threads(),
        "codec": options.codec,
        "video": (options.video or DEFAULT_DRIVER).name,
        "versions": versions(),
    }


def camera_costs(outputs: list[tuple[U8, U8]], avatar: Avatar) -> dict[str, dict[str, Any]]:
    """Per webcam size: ms per frame of the virtual camera's framing (`streamer.framing`) with
    the quality resampler, and with bilinear upscaling as the baseline, on the same frames."""
    from streamer.compose import Background, Layers
    from streamer.framing import CameraSize, Framer, FramingConfig, Resampler
    from streamer.watermark import maybe_watermark

    mark = maybe_watermark(avatar.identity)
    report: dict[str, dict[str, Any]] = {}
    for text in CAMERA_SIZES:
        size = CameraSize.parse(text)
        row: dict[str, Any] = {}
        for resampler in (Resampler.LANCZOS, Resampler.LINEAR):
            framer = Framer(FramingConfig(size=size, resampler=resampler))
            seconds = []
            for image, mask in outputs:
                layers = Layers(image, mask, Background.LEARNED, True, mark)
                start = time.perf_counter()
                framer(layers)
                seconds.append(time.perf_counter() - start)
            row[resampler.value] = percentiles(seconds) if seconds else None
        row["resampler"] = Resampler.LANCZOS.value
        row["frames"] = len(outputs)
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
