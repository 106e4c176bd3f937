"""One WebRTC peer of the service."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.contrib.media import MediaBlackhole

from streamer.pipeline.session import AvatarSession
from streamer.sinks.webrtc import AvatarTrack


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
    watchdog: asyncio.Task[None] | None = None
    # Only the client that got the answer knows it: `options.replaces` must carry it to take over
    # this peer's slot on a reconnect (its id is public, in /api/sessions and the /ws feed).
    reconnect: str = field(default_factory=lambda: secrets.token_urlsafe(24))
