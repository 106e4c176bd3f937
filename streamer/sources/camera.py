"""`camera:N`: an OpenCV camera, read continuously, reopened when it stops."""

from __future__ import annotations

import asyncio
import logging
import threading

import numpy as np

from streamer.core.clock import Clock
from streamer.core.frames import Frame
from streamer.core.queues import Closed, DropQueue
from streamer.sources.base import SourceContext, SourceEnded, SourceError

log = logging.getLogger(__name__)


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

    @classmethod
    def open(cls, target: str, context: SourceContext) -> CameraSource:
        return cls(int(target), context.clock)

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
