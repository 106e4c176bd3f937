"""Sinks: where avatar frames go (`virtualcam`, `file:OUT.mp4`, `null`; WebRTC is in webrtc.py).

`send` never blocks the pipeline: each sink keeps a one-frame slot (a slow sink drops its
oldest frame, counted) and delivers from its own task, with blocking work in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from streamer.clock import Clock, Pacer
from streamer.compose import Background, Layers
from streamer.frames import U8, Frame
from streamer.framing import Framer, FramingConfig, card
from streamer.queues import Closed, DropQueue

log = logging.getLogger(__name__)

Report = Callable[[Frame, float, float], None]
"""Called after a delivery with (frame, seconds the delivery took, clock time it finished)."""


class SinkError(RuntimeError):
    """A sink cannot start; the message says what to do."""


@dataclass(frozen=True)
class SinkSpec:
    """A parsed `--sink` value: kind "virtualcam", "webrtc", "file" (with a path) or "null"."""

    kind: str
    target: str = ""

    @classmethod
    def parse(cls, text: str) -> SinkSpec:
        kind, _, target = text.partition(":")
        if kind in ("virtualcam", "webrtc", "null") and not target:
            return cls(kind)
        if kind == "file" and target:
            return cls(kind, target)
        raise SinkError(f"--sink {text!r}: use virtualcam, webrtc, file:OUT.mp4 or null")

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}" if self.target else self.kind


class Sink(Protocol):
    """Takes the session's avatar frames; `report` is set by the session to time deliveries."""

    name: str
    report: Report | None

    def send(self, frame: Frame) -> bool: ...

    async def close(self) -> None: ...


class QueuedSink:
    """Base of the sinks: a latest-frame slot drained by one task into `deliver` (in a thread)."""

    name = "sink"

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.report: Report | None = None
        self._slot: DropQueue[Frame] = DropQueue(1)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-sink")
        self._task: asyncio.Task[None] | None = None

    @property
    def dropped(self) -> int:
        return self._slot.dropped

    def send(self, frame: Frame) -> bool:
        """Queue `frame`; False when an undelivered older frame was dropped for it."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain(), name=f"{self.name}-sink")
        return self._slot.put(frame)

    def deliver(self, frame: Frame) -> None:
        """Publish one frame (runs in the sink's worker thread)."""
        raise NotImplementedError

    def finish(self) -> None:
        """Release what `deliver` opened (runs in the sink's worker thread)."""

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = await self._slot.get()
            except Closed:
                return
            start = self.clock.now()
            await loop.run_in_executor(self._executor, self.deliver, frame)
            end = self.clock.now()
            if self.report is not None:
                self.report(frame, end - start, end)

    async def close(self) -> None:
        self._slot.close()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5.0)
            except TimeoutError:
                self._task.cancel()
        await asyncio.get_running_loop().run_in_executor(self._executor, self.finish)
        self._executor.shutdown(wait=True)


class NullSink(QueuedSink):
    """Discards frames (benchmarks, headless runs)."""

    name = "null"

    def deliver(self, frame: Frame) -> None:
        pass


class FileSink(QueuedSink):
    """Writes an H.264 mp4 with PyAV; timestamps follow capture times, so the file plays in real time.

    With `identity` (the avatar's identity record) the recording goes to `NAME.recording.mp4`
    first and, when the sink closes, lands at `path` with a signed C2PA manifest naming the
    avatar's subject and consent (`streamer.credentials`; the local key unless `signing_key`).
    """

    name = "file"

    def __init__(
        self, path: Path, clock: Clock, fps: float = 30.0, *, identity: Any = None, signing_key: Any = None
    ) -> None:
        super().__init__(clock)
        if not path.parent.is_dir():
            raise SinkError(f"cannot write {path}: folder {path.parent} does not exist")
        self.path = path
        self.fps = fps
        self.identity = identity
        self.signing_key = signing_key
        if identity is not None:
            from streamer.credentials import CredentialsError, local_key

            try:
                import c2pa  # noqa: F401  - refuse at start, not when the recording ends
            except ImportError:
                raise SinkError("the file sink signs content credentials: install c2pa-python (`make setup`)") from None
            try:
                self.signing_key = signing_key or local_key()
            except CredentialsError as exc:
                raise SinkError(str(exc)) from None
        self._recording = path.with_name(path.stem + ".recording.mp4") if identity is not None else path
        self._container: Any = None
        self._stream: Any = None
        self._t0: float | None = None
        self._last_pts = -1

    def deliver(self, frame: Frame) -> None:
        import av

        if self._container is None:
            self._container = av.open(str(self._recording), "w")
            stream = self._container.add_stream("libx264", rate=round(self.fps))
            stream.width, stream.height = frame.image.shape[1], frame.image.shape[0]
            stream.pix_fmt = "yuv420p"
            stream.time_base = Fraction(1, 1000)
            # The encoder's own clock too: at 1/fps, two frames less than a period apart (a
            # jittery WebRTC arrival) would share a timestamp and the muxer refuses the second.
            stream.codec_context.time_base = Fraction(1, 1000)
            stream.options = {"preset": "veryfast", "tune": "zerolatency"}
            self._stream = stream
            self._t0 = frame.captured
        assert self._t0 is not None
        video_frame = av.VideoFrame.from_ndarray(frame.image, format="rgb24")
        pts = max(round((frame.captured - self._t0) * 1000), self._last_pts + 1)
        video_frame.pts, video_frame.time_base = pts, Fraction(1, 1000)
        self._last_pts = pts
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)

    def finish(self) -> None:
        if self._container is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None
            if self.identity is not None:
                self._sign()

    def _sign(self) -> None:
        from streamer.credentials import CredentialsError, sign_mp4

        try:
            sign_mp4(self._recording, self.path, self.identity, self.signing_key)
        except CredentialsError:
            log.exception("file sink: %s is kept without content credentials", self.path)
            self._recording.replace(self.path)
        else:
            self._recording.unlink()


def virtualcam_help() -> str:
    """How to make a virtual camera device on this platform."""
    if sys.platform.startswith("linux"):
        return (
            "create one with v4l2loopback: sudo apt install v4l2loopback-dkms && "
            "sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=avatarcam"
        )
    return "install OBS Studio and start its virtual camera once (Tools > Start Virtual Camera), then close OBS"


class VirtualCamSink:
    """A system webcam other programs (Zoom, Meet, OBS) can open, through pyvirtualcam.

    It publishes on its own absolute deadlines (start + n / fps), whatever the pipeline does:
    a "starting" card from the moment it opens (the meeting app sees a live device while the
    avatar loads), then each new avatar frame framed into the camera picture (`Framer`: 16:9
    by default, background extended, badge and watermark at camera size), the last picture
    again on a tick without a new frame, and a "waiting" card when no frame has come for
    `stale_seconds`. Framing and sending run in the sink's worker thread.

    Args:
        framing: the camera format and how the avatar fills it.
        fps: the device's frame rate.
        clock: where deadlines come from.
        backend: a pyvirtualcam backend name; None picks the platform's.
        stale_seconds: show the waiting card after this long without an avatar frame.
    """

    name = "virtualcam"

    def __init__(
        self,
        framing: FramingConfig,
        fps: float,
        clock: Clock,
        backend: str | None = None,
        *,
        stale_seconds: float = 2.0,
    ) -> None:
        import pyvirtualcam

        self.framer = Framer(framing)
        self.size = framing.size
        self.fps = fps
        self.clock = clock
        self.stale_seconds = stale_seconds
        self.report: Report | None = None
        self.sent = 0  # pictures handed to the device
        self.cards = 0  # of which status cards
        self.dropped = 0  # avatar frames replaced by a newer one before their tick
        self._latest: Frame | None = None
        self._fresh = False
        self._last_frame_at: float | None = None
        self._picture: U8 | None = None
        self._started_at = clock.now()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="virtualcam-sink")
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.pacer = Pacer(fps, clock)
        w, h = framing.size.width, framing.size.height
        try:
            self.camera = pyvirtualcam.Camera(w, h, fps, fmt=pyvirtualcam.PixelFormat.RGB, backend=backend)
        except RuntimeError as exc:
            raise SinkError(f"no virtual camera device: {exc}; {virtualcam_help()}") from None
        log.info("virtual camera %s (%dx%d at %g fps)", self.camera.device, w, h, fps)

    @property
    def device(self) -> str:
        return str(self.camera.device)

    def start(self) -> None:
        """Start publishing (the starting card until the first avatar frame); needs a running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._publish(), name="virtualcam-sink")

    def send(self, frame: Frame) -> bool:
        """Take the newest avatar frame; False when an unpublished older one was dropped for it."""
        self.start()
        dropped = self._fresh
        self.dropped += dropped
        self._latest, self._fresh = frame, True
        return not dropped

    def _render(self, frame: Frame | None, now: float) -> tuple[U8, bool]:
        """(the picture for this tick, whether it is a status card); in the worker thread."""
        if frame is not None:
            layers = frame.layers or Layers(frame.image, _opaque(frame.image), Background.LEARNED, False, None)
            self._picture = self.framer(layers)
            self._last_frame_at = now
        if self._last_frame_at is None:
            return card(self.size, "avatarcam", "starting the avatar...", now - self._started_at), True
        if now - self._last_frame_at > self.stale_seconds or self._picture is None:
            return card(self.size, "avatarcam", "waiting for the avatar...", now - self._started_at), True
        return self._picture, False

    def _deliver(self, frame: Frame | None, now: float) -> None:
        picture, is_card = self._render(frame, now)
        self.camera.send(picture)
        # Counted here, in the worker: a close that cancels the publisher while this picture is on
        # its way would otherwise leave one handed to the device and not counted.
        self.sent += 1
        self.cards += is_card

    async def _publish(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            deadline = await self.pacer.wait()
            if self._closed:
                break
            frame, self._fresh = (self._latest if self._fresh else None), False
            start = self.clock.now()
            try:
                await loop.run_in_executor(self._executor, self._deliver, frame, deadline)
            except Exception:
                log.exception("virtual camera: a frame failed")
                continue
            end = self.clock.now()
            if frame is not None and self.report is not None:
                self.report(frame, end - start, end)

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self._executor, self.camera.close)
        self._executor.shutdown(wait=True)


def _opaque(image: U8) -> U8:
    """A mask that keeps all of `image` (a frame composed without layers)."""
    return np.full(image.shape[:2], 255, np.uint8)
