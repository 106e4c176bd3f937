"""`webrtc`: the avatar as an outgoing aiortc video track, one per peer.

The session pushes frames into a latest-frame slot and aiortc's sender pulls them with `recv()`
at its own pace, so a slow network link drops frames here instead of building latency."""

from __future__ import annotations

from fractions import Fraction

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from streamer.core.clock import Clock
from streamer.core.frames import Frame
from streamer.core.queues import Closed, DropQueue
from streamer.core.rtc import VIDEO_CLOCK
from streamer.sinks.base import Report


class AvatarTrack(MediaStreamTrack):
    """An outgoing video track fed by a session (a `streamer.sinks.Sink`)."""

    kind = "video"
    name = "webrtc"

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.report: Report | None = None
        self._slot: DropQueue[Frame] = DropQueue(1)
        self._t0: float | None = None
        self._last_pts = -1

    def send(self, frame: Frame) -> bool:
        return self._slot.put(frame)

    def status(self, title: str, detail: str = "") -> None:
        """A peer's page shows its own state."""

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        try:
            frame = await self._slot.get()
        except Closed:
            self.stop()
            raise MediaStreamError from None
        start = self.clock.now()
        if self._t0 is None:
            self._t0 = frame.captured
        video_frame = av.VideoFrame.from_ndarray(frame.image, format="rgb24")
        # Timestamps follow capture times, so the receiver's jitter buffer sees real pacing.
        pts = max(round((frame.captured - self._t0) * VIDEO_CLOCK), self._last_pts + 1)
        video_frame.pts, video_frame.time_base = pts, Fraction(1, VIDEO_CLOCK)
        self._last_pts = pts
        end = self.clock.now()
        if self.report is not None:
            self.report(frame, end - start, end)
        return video_frame

    async def close(self) -> None:
        self._slot.close()
        self.stop()
