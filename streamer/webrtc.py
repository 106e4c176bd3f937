"""WebRTC with aiortc: the avatar as an outgoing video track, codec and bitrate choice.

The outgoing track is also a session sink: the session pushes frames into a latest-frame slot
and aiortc's sender pulls them with `recv()` at its own pace, so a slow network link drops
frames here instead of building latency.
"""

from __future__ import annotations

import asyncio
import logging
from fractions import Fraction
from typing import Any

import av
from aiortc import MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCRtpSender
from aiortc.codecs import h264, vpx
from aiortc.exceptions import InvalidStateError
from aiortc.mediastreams import MediaStreamError

from streamer.clock import Clock
from streamer.frames import Frame
from streamer.queues import Closed, DropQueue
from streamer.sinks import Report

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90_000  # RTP video clock rate (Hz)
CODECS = {"vp8": "video/VP8", "h264": "video/H264"}


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


def prefer_codec(transceiver: Any, codec: str) -> None:
    """Offer `codec` ("vp8" or "h264") first on `transceiver` (RTX and the rest stay as fallbacks)."""
    mime = CODECS[codec]
    codecs = RTCRtpSender.getCapabilities("video").codecs
    transceiver.setCodecPreferences(
        [c for c in codecs if c.mimeType == mime] + [c for c in codecs if c.mimeType != mime]
    )


def set_bitrate(bits_per_second: int) -> None:
    """Start aiortc's VP8 and H.264 encoders at this bitrate; congestion control adapts it
    between half and twice the value. aiortc keeps these settings per process."""
    vpx.DEFAULT_BITRATE = h264.DEFAULT_BITRATE = bits_per_second
    vpx.MIN_BITRATE = h264.MIN_BITRATE = bits_per_second // 2
    vpx.MAX_BITRATE = h264.MAX_BITRATE = bits_per_second * 2


def ice_configuration(urls: tuple[str, ...], username: str | None = None, credential: str | None = None) -> Any:
    """An RTCConfiguration with these STUN/TURN URLs (turn: ones with the long-term credential).
    No URLs means no ICE servers at all: aiortc's default would contact a public STUN host."""
    servers = [
        RTCIceServer(url, username=username, credential=credential)
        if url.startswith(("turn:", "turns:"))
        else RTCIceServer(url)
        for url in urls
    ]
    return RTCConfiguration(iceServers=servers)


def tolerate_closed_connects(loop: asyncio.AbstractEventLoop) -> None:
    """Log at INFO, not ERROR, the one task aiortc leaves unretrieved when a peer is closed while
    it is still connecting (`RTCPeerConnection.__connect` raising "RTCIceTransport is closed",
    aiortc issue #1040): closing such a peer is this service's job (connect timeout, a vanished
    client). Every other unhandled exception goes to the handler that was there before."""
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc, task = context.get("exception"), context.get("future")
        if isinstance(exc, InvalidStateError) and "RTCPeerConnection.__connect" in repr(task):
            log.info("a peer was closed while it was connecting (%s)", exc)
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
