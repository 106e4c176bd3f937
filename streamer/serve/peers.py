"""One WebRTC peer of the service and how a connection is closed, whatever state aiortc left it in."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.contrib.media import MediaBlackhole

from streamer.pipeline.session import AvatarSession
from streamer.sinks.webrtc import AvatarTrack

log = logging.getLogger(__name__)


@dataclass
class Peer:
    """One WebRTC connection and what it feeds or is fed by."""

    id: str
    pc: RTCPeerConnection
    track: AvatarTrack
    session: AvatarSession | None = None  # its own session (webrtc source) or None (shared)
    channel: Any = None
    blackhole: MediaBlackhole | None = None
    client: str = "unknown"
    operator: bool = False  # the offer came with the operator credential
    connected: bool = False
    timed: int = 0  # the last of its session's frame timings sent to it (`SessionStats.timed_since`)
    watchdog: asyncio.Task[None] | None = None
    # Only the client that got the answer knows it: `options.replaces` must carry it to take over
    # this peer's slot on a reconnect (its id is public, in /api/sessions and the /ws feed).
    reconnect: str = field(default_factory=lambda: secrets.token_urlsafe(24))


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
