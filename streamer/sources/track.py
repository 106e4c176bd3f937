"""`webrtc`: frames of a remote WebRTC video track (a browser's or `connect`'s camera), made per peer."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from streamer.core import stamp
from streamer.core.clock import Clock
from streamer.core.frames import U8, Frame
from streamer.sources.base import SourceEnded


class TrackSource:
    """Frames of a remote WebRTC video track (a browser's camera).

    Args:
        track: the aiortc remote track.
        clock: stamps arrival time as the capture time (the server cannot see the browser's).
        read_stamps: read the page's frame identifier (`streamer.core.stamp`) from each frame.
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
