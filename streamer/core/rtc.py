"""aiortc settings every WebRTC user here shares (serve, create, connect, bench): codecs and
their preference, the encoders' bitrate, the one ICE-server builder, closing a connection
whatever state aiortc left it in, and the handler for aiortc's closed-while-connecting task. The
outgoing avatar track is `streamer.sinks.webrtc`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiortc.rtcrtpreceiver
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpSender
from aiortc.codecs import h264, vpx
from aiortc.exceptions import InvalidStateError
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

log = logging.getLogger(__name__)


VIDEO_CLOCK = 90_000  # RTP video clock rate (Hz)


CODECS = {"vp8": "video/VP8", "h264": "video/H264"}


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


class MarkerJitterBuffer(JitterBuffer):
    """aiortc's jitter buffer, which also hands on a video frame as soon as its last packet (the
    one with the RTP marker bit, RFC 7741 and RFC 6184) is in, with every packet before it.

    aiortc's own hands a video frame on only when the first packet of the next frame arrives, so
    each received frame waits one frame interval (33 ms at 30 fps) before it is decoded. Losses
    and reordering are left to aiortc's logic: a frame with a gap is not released here."""

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        pli, frame = super().add(packet)
        if frame is None and self._is_video and packet.marker:
            frame = self._complete_frame()
        return pli, frame

    def _complete_frame(self) -> JitterFrame | None:
        """The frame at the buffer's origin, when all its packets up to the marker are in."""
        if self._origin is None:
            return None
        packets: list[RtpPacket] = []
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self.capacity]
            if packet is None or (packets and packet.timestamp != packets[0].timestamp):
                return None
            packets.append(packet)
            if packet.marker:
                self.remove(count + 1)
                return JitterFrame(b"".join(p._data for p in packets), packets[0].timestamp)  # type: ignore[attr-defined]
        return None


FRAME_RELEASE = ("marker", "next")
"""When aiortc's receivers hand a video frame to the decoder: on its last packet (the marker
bit), or (aiortc's own) when the next frame's first packet arrives."""


def set_frame_release(mode: str) -> None:
    """Make the receivers this process creates from now on release frames as `mode` says
    (FRAME_RELEASE). aiortc keeps this per process, like the bitrate."""
    if mode not in FRAME_RELEASE:
        raise ValueError(f"frame release must be one of {', '.join(FRAME_RELEASE)}, not {mode!r}")
    aiortc.rtcrtpreceiver.JitterBuffer = MarkerJitterBuffer if mode == "marker" else JitterBuffer  # type: ignore[misc]


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


async def close_connection(pc: RTCPeerConnection) -> None:
    """`pc.close()`, and when aiortc trips over a half-negotiated connection (a transceiver that
    never got a transport: found by the fuzzer), stop whatever transports it did open."""
    try:
        await pc.close()
        return
    except Exception as exc:  # aiortc's own state, not ours: clean up what exists
        log.info("closing a half-negotiated connection: %s: %s", type(exc).__name__, exc)
    transports: list[Any] = []
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        transports += [dtls, getattr(dtls, "transport", None)]
    if pc.sctp is not None:
        transports += [pc.sctp, pc.sctp.transport, getattr(pc.sctp.transport, "transport", None)]
    for transport in transports:
        if transport is not None:
            with contextlib.suppress(Exception):
                await transport.stop()
