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

RTP_TIME = ("capture", "send")
"""What an outgoing frame's RTP timestamp follows: its capture time, or when it is sent."""


class AvatarTrack(MediaStreamTrack):
    """An outgoing video track fed by a session (a `streamer.sinks.Sink`).

    Args:
        clock: the session clock.
        rtp_time: what the frames' RTP timestamps follow (RTP_TIME). "capture" gives the
            receiver's jitter buffer the camera's pacing, so the pipeline's varying delay reads as
            network jitter and the buffer grows to absorb it; "send" gives it the pacing frames
            leave with, so only the network's own jitter is buffered (the default: it halved the
            browser's jitter buffer, docs/benchmarks.md). The stream carries no audio to keep in sync.
    """

    kind = "video"
    name = "webrtc"

    def __init__(self, clock: Clock, rtp_time: str = "send") -> None:
        super().__init__()
        if rtp_time not in RTP_TIME:
            raise ValueError(f"rtp_time must be one of {', '.join(RTP_TIME)}, not {rtp_time!r}")
        self.clock = clock
        self.rtp_time = rtp_time
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
        at = frame.captured if self.rtp_time == "capture" else start
        if self._t0 is None:
            self._t0 = at
        video_frame = av.VideoFrame.from_ndarray(frame.image, format="rgb24")
        pts = max(round((at - self._t0) * VIDEO_CLOCK), self._last_pts + 1)
        video_frame.pts, video_frame.time_base = pts, Fraction(1, VIDEO_CLOCK)
        self._last_pts = pts
        end = self.clock.now()
        if self.report is not None:
            self.report(frame, end - start, end)
        return video_frame

    async def close(self) -> None:
        self._slot.close()
        self.stop()
