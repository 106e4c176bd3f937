"""Sources: where live frames come from (`camera:N`, `file:PATH`, a WebRTC peer's camera).

Each source has one coroutine, `recv()`, that returns the next `Frame` or raises `SourceEnded`;
blocking capture and decoding run in the source's own worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from streamer import stamp
from streamer.clock import Clock, Pacer
from streamer.frames import U8, Frame
from streamer.queues import Closed, DropQueue
from tracking.video import VideoError, probe, read_frames

log = logging.getLogger(__name__)


class SourceError(RuntimeError):
    """A source cannot start; the message says what to do."""


class SourceEnded(Exception):
    """The source has no more frames (end of file, camera gone for good, peer left)."""


class Source(Protocol):
    """A stream of frames."""

    name: str

    async def recv(self) -> Frame: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class SourceSpec:
    """A parsed `--source` value.

    Attributes:
        kind: "camera", "file" or "webrtc".
        target: the camera index or the file path; "" for webrtc.
    """

    kind: str
    target: str

    @classmethod
    def parse(cls, text: str) -> SourceSpec:
        kind, _, target = text.partition(":")
        if kind == "webrtc" and not target:
            return cls(kind, "")
        if kind == "camera" and target.isdigit():
            return cls(kind, target)
        if kind == "file" and target:
            return cls(kind, target)
        raise SourceError(f"--source {text!r}: use camera:N (e.g. camera:0), file:PATH or webrtc")

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}" if self.target else self.kind


class FileSource:
    """A video file played in real time at its own frame rate (`loop`: start over at the end).

    Frames are decoded one ahead in a worker thread, then released on absolute deadlines.
    """

    def __init__(self, path: Path, clock: Clock, *, loop: bool = False, fps: float | None = None) -> None:
        try:
            info = probe(path)
        except VideoError as exc:
            raise SourceError(str(exc)) from None
        self.name = f"file:{path}"
        self.path = path
        self.loop = loop
        self.clock = clock
        self.fps = fps or info.fps
        self._pacer = Pacer(self.fps, clock)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="file-source")
        self._frames: Iterator[tuple[int, float, U8]] | None = None
        self._count = 0

    def _next_image(self) -> U8 | None:
        for _ in range(2):  # at the end of a looping file, reopen once
            if self._frames is None:
                self._frames = read_frames(self.path)
            try:
                return next(self._frames)[2]
            except StopIteration:
                self._frames = None
                if not self.loop:
                    return None
        return None

    async def recv(self) -> Frame:
        loop = asyncio.get_running_loop()
        try:
            image = await loop.run_in_executor(self._executor, self._next_image)
        except VideoError as exc:
            log.warning("file source %s stopped: %s", self.path, exc)
            raise SourceEnded from exc
        if image is None:
            raise SourceEnded
        await self._pacer.wait()
        self._count += 1
        return Frame(image, self.clock.now(), self._count - 1)

    async def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class CameraSource:
    """An OpenCV camera read continuously in a thread; `recv` returns the newest frame.

    A camera that stops delivering (unplugged) is reopened every second; after
    `give_up_seconds` without frames the source ends.
    """

    def __init__(self, index: int, clock: Clock, *, give_up_seconds: float = 30.0) -> None:
        import cv2

        self.name = f"camera:{index}"
        self.index = index
        self.clock = clock
        self.give_up_seconds = give_up_seconds
        capture = cv2.VideoCapture(index)
        if not capture.isOpened():
            raise SourceError(
                f"camera {index} cannot be opened: check that it is plugged in and not used by another "
                "program, or pick another index (ls /dev/video*)"
            )
        self._capture = capture
        self._slot: DropQueue[Frame] = DropQueue(1)
        self._stop = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"camera-{index}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import cv2

        count = 0
        last_ok = self.clock.now()
        capture = self._capture
        while not self._stop.is_set():
            ok, bgr = capture.read()
            now = self.clock.now()
            if ok:
                last_ok = now
                rgb = np.ascontiguousarray(bgr[..., ::-1], dtype=np.uint8)
                self._loop.call_soon_threadsafe(self._slot.put, Frame(rgb, now, count))
                count += 1
                continue
            if now - last_ok > self.give_up_seconds:
                log.error("camera %d: no frames for %.0f s, giving up", self.index, self.give_up_seconds)
                break
            log.warning("camera %d: no frame; reopening", self.index)
            capture.release()
            self._stop.wait(1.0)
            capture = cv2.VideoCapture(self.index)
        capture.release()
        self._loop.call_soon_threadsafe(self._slot.close)

    async def recv(self) -> Frame:
        try:
            return await self._slot.get()
        except Closed:
            raise SourceEnded from None

    async def close(self) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join, 5.0)


class TrackSource:
    """Frames of a remote WebRTC video track (a browser's camera).

    Args:
        track: the aiortc remote track.
        clock: stamps arrival time as the capture time (the server cannot see the browser's).
        read_stamps: read the page's frame identifier (`streamer.stamp`) from each frame.
    """

    def __init__(self, track: object, clock: Clock, *, read_stamps: bool = False, name: str = "webrtc") -> None:
        self.name = name
        self.track = track
        self.clock = clock
        self.read_stamps = read_stamps
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="webrtc-source")
        self._count = 0

    def _convert(self, video_frame: object) -> tuple[U8, int | None]:
        image: U8 = video_frame.to_ndarray(format="rgb24")  # type: ignore[attr-defined]
        return image, stamp.read(image) if self.read_stamps else None

    async def recv(self) -> Frame:
        from aiortc.mediastreams import MediaStreamError

        try:
            video_frame = await self.track.recv()  # type: ignore[attr-defined]
        except MediaStreamError:
            raise SourceEnded from None
        arrived = self.clock.now()
        image, tag = await asyncio.get_running_loop().run_in_executor(self._executor, self._convert, video_frame)
        self._count += 1
        return Frame(image, arrived, self._count - 1, tag)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def open_source(spec: SourceSpec, clock: Clock, *, loop: bool = False, fps: float | None = None) -> Source:
    """Build a camera or file source (WebRTC sources are made per peer by the server); `fps`
    paces a file at that rate instead of its own."""
    if spec.kind == "file":
        return FileSource(Path(spec.target), clock, loop=loop, fps=fps)
    if spec.kind == "camera":
        return CameraSource(int(spec.target), clock)
    raise SourceError(f"source {spec} is created per WebRTC peer, not opened directly")
