"""aiortc settings every WebRTC user here shares (serve, create, connect, bench): codecs and
their preference, the encoders' bitrate, the one ICE-server builder, closing a connection
whatever state aiortc left it in, and the handler for aiortc's closed-while-connecting task. The
outgoing avatar track is `streamer.sinks.webrtc`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpSender
from aiortc.codecs import h264, vpx
from aiortc.exceptions import InvalidStateError

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
