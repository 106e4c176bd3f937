"""`webrtc`: frames of a remote WebRTC video track (a browser's or `connect`'s camera), made per peer.

aiortc decodes every frame the peer sends into the track's queue, which is unbounded: a camera
faster or larger than the session can take would fill memory. So a task drains the track as it
arrives into a latest-frame slot; the session converts only the newest frame, scaled down to at
most `max_side` pixels on its longer side.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from streamer.core import stamp
from streamer.core.clock import Clock
from streamer.core.frames import U8, Frame
from streamer.core.queues import Closed, DropQueue
from streamer.sources.base import SourceEnded

MAX_SIDE = 1280  # pixels; larger driver frames are scaled down (tracking needs far fewer)


def capped_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) scaled down, aspect kept, so the longer side is at most `max_side`; even."""
    scale = min(1.0, max_side / max(width, height, 1))
    return max(2, round(width * scale) // 2 * 2), max(2, round(height * scale) // 2 * 2)


class TrackSource:
    """Frames of a remote WebRTC video track (a browser's camera).

    Args:
        track: the aiortc remote track.
        clock: stamps arrival time as the capture time (the server cannot see the browser's).
        read_stamps: read the page's frame identifier (`streamer.core.stamp`) from each frame.
        max_side: frames larger than this (longer side, pixels) are scaled down.
    """

    def __init__(
        self,
        track: object,
        clock: Clock,
        *,
        read_stamps: bool = False,
        name: str = "webrtc",
        max_side: int = MAX_SIDE,
    ) -> None:
        self.name = name
        self.track = track
        self.clock = clock
        self.read_stamps = read_stamps
        self.max_side = max_side
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="webrtc-source")
        self._latest: DropQueue[tuple[Any, float]] = DropQueue(1)  # (aiortc VideoFrame, arrival)
        self._drain: asyncio.Task[None] | None = None
        self._count = 0

    async def _pull(self) -> None:
        """Take every frame off aiortc's queue as it arrives; only the newest waits."""
        from aiortc.mediastreams import MediaStreamError

        try:
            while True:
                video_frame = await self.track.recv()  # type: ignore[attr-defined]
                self._latest.put((video_frame, self.clock.now()))
        except MediaStreamError:
            pass
        finally:
            self._latest.close()

    def _convert(self, video_frame: Any) -> tuple[U8, int | None]:
        width, height = capped_size(video_frame.width, video_frame.height, self.max_side)
        if (width, height) == (video_frame.width, video_frame.height):
            image: U8 = video_frame.to_ndarray(format="rgb24")
        else:
            image = video_frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="FAST_BILINEAR")
        return image, stamp.read(image) if self.read_stamps else None

    async def recv(self) -> Frame:
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_task(self._pull(), name=f"{self.name}-drain")
        try:
            video_frame, arrived = await self._latest.get()
        except Closed:
            raise SourceEnded from None
        image, tag = await asyncio.get_running_loop().run_in_executor(self._executor, self._convert, video_frame)
        self._count += 1
        return Frame(image, arrived, self._count - 1, tag)

    async def close(self) -> None:
        if self._drain is not None:
            self._drain.cancel()
            await asyncio.gather(self._drain, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)
