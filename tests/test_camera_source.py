"""`camera:N` through a fake capture at the OpenCV boundary (these machines have no /dev/video*):
an unplugged camera is reopened every second, and the source ends after 30 s without frames."""

from __future__ import annotations

import asyncio
import threading
import time

import cv2
import numpy as np
import pytest

from streamer.sources.base import SourceEnded, SourceError
from streamer.sources.camera import CameraSource

# What each opening of the camera delivers: (frame read?, the clock's time at that read).
REELS = [
    [(True, 0.0), (True, 0.033), (False, 0.1)],  # two frames, then unplugged
    [(False, 29.0)],  # still gone after 29 s: keep trying
    [(True, 29.5), (True, 29.53), (False, 60.0)],  # back; then gone for good (30.5 s)
]


class Clock:
    """Session time, set by the fake camera at each read (the source reads it right after)."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep_until(self, deadline: float) -> None:
        self.t = max(self.t, deadline)


class Camera:
    """The fake `cv2.VideoCapture` factory: every opening plays the next reel."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.opened: list[tuple[int, float]] = []  # (index, monotonic time)
        self.released: list[float] = []
        self.may_read = threading.Semaphore(1)  # a frame is read only once the last one was taken

    def __call__(self, index: int) -> Capture:
        self.opened.append((index, time.monotonic()))
        return Capture(self, REELS[len(self.opened) - 1] if len(self.opened) <= len(REELS) else None)


class Capture:
    def __init__(self, camera: Camera, reel: list[tuple[bool, float]] | None) -> None:
        self.camera, self.reel = camera, list(reel or [])
        self.opened = reel is not None

    def isOpened(self) -> bool:
        return self.opened

    def read(self) -> tuple[bool, np.ndarray | None]:
        ok, t = self.reel.pop(0) if self.reel else (False, 1000.0)
        if ok:
            assert self.camera.may_read.acquire(timeout=10)
        self.camera.clock.t = t
        if not ok:
            return False, None
        bgr = np.zeros((48, 64, 3), np.uint8)
        bgr[..., 0], bgr[..., 2] = 200, round(t)  # blue, and the time in the red channel
        return True, bgr

    def release(self) -> None:
        self.camera.released.append(time.monotonic())


def test_unplugged_camera_is_reopened_every_second_then_given_up_after_30_s(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    camera = Camera(clock)
    monkeypatch.setattr(cv2, "VideoCapture", camera)

    async def drive() -> list[tuple[float, int, np.ndarray]]:
        source = CameraSource(7, clock)
        got = []
        try:
            for _ in range(4):
                frame = await asyncio.wait_for(source.recv(), 10)
                got.append((frame.captured, frame.index, frame.image))
                camera.may_read.release()
            with pytest.raises(SourceEnded):
                await asyncio.wait_for(source.recv(), 10)
        finally:
            await source.close()
        return got

    got = asyncio.run(drive())
    assert [(captured, index) for captured, index, _ in got] == [(0.0, 0), (0.033, 1), (29.5, 2), (29.53, 3)]
    for captured, _, rgb in got:
        assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
        assert (rgb[..., 2] == 200).all() and (rgb[..., 0] == round(captured)).all()  # BGR became RGB
    # Opened at start and twice more (not again after 30 s without frames), each time about a
    # second after the failing capture was released; every capture is released in the end.
    assert [index for index, _ in camera.opened] == [7, 7, 7]
    for (_, reopened), released in zip(camera.opened[1:], camera.released, strict=False):
        assert 0.9 <= reopened - released <= 2.0, reopened - released
    assert len(camera.released) == 3


def test_a_camera_that_cannot_be_opened_says_what_to_check(monkeypatch: pytest.MonkeyPatch) -> None:
    class Closed:
        def isOpened(self) -> bool:
            return False

    monkeypatch.setattr(cv2, "VideoCapture", lambda index: Closed())

    async def start() -> None:
        CameraSource(3, Clock())

    with pytest.raises(SourceError, match="camera 3 cannot be opened: check that it is plugged in"):
        asyncio.run(start())
