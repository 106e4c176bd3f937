"""The live service's state: avatars, sessions, WebRTC peers and control actions.

HTTP lives in `streamer.server`; this module knows nothing about requests, so the same
operations serve the HTTP API, the websocket and the data channels.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole

from models.engines import ENGINES
from streamer.clock import Clock, MonotonicClock
from streamer.compose import Background, ComposeConfig
from streamer.metrics import Metrics
from streamer.session import AvatarEntry, AvatarSession, SessionConfig
from streamer.sinks import FileSink, NullSink, SinkError, SinkSpec, VirtualCamSink
from streamer.sources import SourceSpec, TrackSource, open_source
from streamer.webrtc import CODECS, AvatarTrack, prefer_codec, set_bitrate

log = logging.getLogger(__name__)


class ServeError(RuntimeError):
    """The service cannot start with these options; the message says what to change."""


class RequestError(Exception):
    """A client request the service refuses; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServeConfig:
    """Options of `avatarcam serve`.

    Attributes:
        avatars: avatar files; the first is shown, the others can be switched to.
        source: camera:N, file:PATH or webrtc (each browser drives its own avatar).
        sinks: where the avatar goes besides WebRTC peers (virtualcam, file:OUT.mp4, null, webrtc).
        host, port: where the page, API and signaling listen (port 0: any free port).
        fps: frame rate declared to the virtual camera and the file sink.
        loop: play a file source again from the start when it ends.
        backend, device: the engine.
        compose: background mode and badge.
        badge_required: force the synthetic badge (the shipped demo avatar).
        token: access token for page, API and signaling; required when host is not loopback
            (None there: one is generated and printed).
        allowed_origins: extra browser origins allowed besides the server's own.
        max_sessions: concurrent WebRTC peers.
        offers_per_minute: signaling requests allowed per client address per minute.
        ice_servers: STUN/TURN URLs for peers behind NAT (none by default: no third party).
        bitrate: starting video bitrate of WebRTC senders, bits/s.
        codec: default WebRTC codec (vp8 or h264); a page can ask for the other.
        virtualcam_backend: a pyvirtualcam backend name (None: the platform's).
        virtualcam_optional: without a virtual camera device, warn and go on (the demo).
        shutdown_timeout: seconds to close peers and sessions on SIGINT/SIGTERM before cancelling.
        web_root: folder of the page and dashboard.
    """

    avatars: tuple[Path, ...]
    source: SourceSpec
    sinks: tuple[SinkSpec, ...] = (SinkSpec("webrtc"),)
    host: str = "127.0.0.1"
    port: int = 8080
    fps: float = 30.0
    loop: bool = False
    backend: str = "torch"
    device: str = "cpu"
    compose: ComposeConfig = field(default_factory=ComposeConfig)
    badge_required: bool = False
    token: str | None = None
    allowed_origins: tuple[str, ...] = ()
    max_sessions: int = 4
    offers_per_minute: int = 30
    ice_servers: tuple[str, ...] = ()
    bitrate: int = 1_000_000
    codec: str = "vp8"
    virtualcam_backend: str | None = None
    virtualcam_optional: bool = False
    shutdown_timeout: float = 5.0
    web_root: Path = Path(__file__).resolve().parent.parent / "web"

    @property
    def loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1")

    def resolved(self) -> ServeConfig:
        """Validated, with a generated token when one is required and none was given."""
        if not self.avatars:
            raise ValueError("give at least one .avatar file")
        for path in self.avatars:
            if not path.is_file():
                raise ValueError(f"avatar {path} does not exist; train and export one, or run `avatarcam demo`")
        if self.backend not in ENGINES:
            raise ValueError(f"unknown engine backend {self.backend!r}; choose one of {sorted(ENGINES)}")
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {sorted(CODECS)}, got {self.codec!r}")
        if self.max_sessions < 1 or self.offers_per_minute < 1 or self.bitrate < 50_000 or self.fps < 0:
            raise ValueError("max_sessions and offers_per_minute must be >= 1, bitrate >= 50000, fps >= 0")
        self.compose.validate()
        if self.token is None and not self.loopback:
            return replace(self, token=secrets.token_urlsafe(24))
        return self


@dataclass
class Peer:
    """One WebRTC connection and what it feeds or is fed by."""

    id: str
    pc: RTCPeerConnection
    track: AvatarTrack
    session: AvatarSession | None = None  # its own session (webrtc source) or None (shared)
    channel: Any = None
    blackhole: MediaBlackhole | None = None


class Service:
    """Avatars, the shared session (camera or file source), per-peer sessions and peers."""

    def __init__(self, config: ServeConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or MonotonicClock()
        self.metrics = Metrics()
        self.avatars: dict[str, AvatarEntry] = {}
        self.shared: AvatarSession | None = None
        self.peers: dict[str, Peer] = {}
        self.started = time.monotonic()
        self._offers: dict[str, list[float]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._process = psutil.Process()
        self._process.cpu_percent()  # the first call only sets the baseline

    @property
    def default_avatar(self) -> AvatarEntry:
        return next(iter(self.avatars.values()))

    def session_config(self, *, stamp: bool = False, background: Background | None = None) -> SessionConfig:
        compose = self.config.compose
        if background is not None:
            compose = replace(compose, background=background)
        return SessionConfig(self.config.backend, self.config.device, compose, stamp=stamp)

    async def startup(self) -> None:
        """Load avatars and, for a camera or file source, start the shared session and its sinks."""
        set_bitrate(self.config.bitrate)
        for path in self.config.avatars:
            entry = await asyncio.to_thread(
                AvatarEntry.load, path, badge_required=self.config.badge_required, device=self.config.device
            )
            self.avatars[entry.name] = entry
            log.info("avatar %s: %s (%d px)", entry.name, entry.avatar.identity.subject, entry.resolution)
        if self.config.source.kind == "webrtc":
            for sink in self.config.sinks:
                if sink.kind not in ("webrtc", "null"):
                    raise SinkError(f"sink {sink} needs a shared source (camera:N or file:PATH), not webrtc")
            return
        source = open_source(self.config.source, self.clock, loop=self.config.loop)
        shared = AvatarSession("main", self.default_avatar, source, self.session_config(), self.clock, self.metrics)
        resolution = self.default_avatar.resolution
        for spec in self.config.sinks:
            if spec.kind == "virtualcam":
                fps = self.config.fps or 30.0
                try:
                    cam = VirtualCamSink(resolution, resolution, fps, self.clock, self.config.virtualcam_backend)
                except SinkError as exc:
                    if not self.config.virtualcam_optional:
                        raise
                    log.warning("no virtual camera: %s", exc)
                    continue
                shared.add_sink(cam)
            elif spec.kind == "file":
                shared.add_sink(FileSink(Path(spec.target), self.clock, self.config.fps or 30.0))
            elif spec.kind == "null":
                shared.add_sink(NullSink(self.clock))
        await shared.start()
        self.shared = shared
        self.metrics.sessions.set(1)

    # ---- sessions ------------------------------------------------------------------------------

    def sessions(self) -> list[AvatarSession]:
        own = [p.session for p in self.peers.values() if p.session is not None]
        return ([self.shared] if self.shared is not None else []) + own

    def find(self, session_id: str | None) -> list[AvatarSession]:
        """The session with this id, or all sessions for None."""
        sessions = self.sessions()
        if session_id is None:
            return sessions
        found = [s for s in sessions if s.id == session_id]
        if not found:
            raise RequestError(404, f"no session {session_id!r}")
        return found

    async def control(self, action: Any, session_id: Any = None, value: Any = None) -> dict[str, Any]:
        """Apply a control action: calibrate, pause, resume, background VALUE, avatar NAME."""
        if session_id is not None and not isinstance(session_id, str):
            raise RequestError(400, "session must be a string")
        targets = self.find(session_id)
        if action == "calibrate":
            done = [await s.calibrate() for s in targets]
            return {"ok": True, "calibrated": sum(done)}
        if action == "pause":
            for s in targets:
                s.pause()
        elif action == "resume":
            for s in targets:
                s.resume()
        elif action == "background":
            try:
                mode = Background(value)
            except ValueError:
                raise RequestError(400, f"background must be one of {[b.value for b in Background]}") from None
            try:
                for s in targets:
                    await s.set_background(mode)
            except ValueError as exc:
                raise RequestError(400, str(exc)) from None
        elif action == "avatar":
            if value not in self.avatars:
                raise RequestError(400, f"unknown avatar {value!r}; loaded: {sorted(self.avatars)}")
            try:
                for s in targets:
                    await s.set_avatar(self.avatars[value])
            except ValueError as exc:
                raise RequestError(400, str(exc)) from None
        else:
            raise RequestError(400, "action must be calibrate, pause, resume, background or avatar")
        return {"ok": True}

    # ---- WebRTC --------------------------------------------------------------------------------

    def _admit(self, client: str) -> None:
        now = time.monotonic()
        recent = [t for t in self._offers.get(client, []) if now - t < 60]
        if len(recent) >= self.config.offers_per_minute:
            raise RequestError(429, f"too many offers from {client}; wait a minute")
        self._offers[client] = [*recent, now]
        if len(self.peers) >= self.config.max_sessions:
            raise RequestError(503, f"server busy: {len(self.peers)} sessions (the limit); try again later")

    async def offer(self, body: Any, client: str) -> dict[str, Any]:
        """Answer a browser's (or any client's) SDP offer and start streaming the avatar to it."""
        if not isinstance(body, dict) or body.get("type") != "offer" or not isinstance(body.get("sdp"), str):
            raise RequestError(400, 'expected JSON {"sdp": "...", "type": "offer"}')
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise RequestError(400, "options must be an object")
        codec = options.get("codec", self.config.codec)
        if codec not in CODECS:
            raise RequestError(400, f"codec must be one of {sorted(CODECS)}")
        background = options.get("background")
        if background is not None and background not in {b.value for b in Background}:
            raise RequestError(400, f"background must be one of {[b.value for b in Background]}")
        stamp = bool(options.get("stamp", False))
        self._admit(client)

        ice = [RTCIceServer(url) for url in self.config.ice_servers]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        peer = Peer(f"peer-{secrets.token_hex(4)}", pc, AvatarTrack(self.clock))
        self.peers[peer.id] = peer
        try:
            await self._negotiate(peer, body["sdp"], codec, stamp, background)
        except Exception as exc:
            await self.close_peer(peer.id)
            if isinstance(exc, RequestError):
                raise
            log.warning("offer from %s rejected: %s", client, exc)
            raise RequestError(400, f"cannot use this offer: {exc}") from None
        log.info("peer %s connected from %s (codec %s)", peer.id, client, codec)
        session = peer.session or self.shared
        return {
            "sdp": pc.localDescription.sdp,
            "type": pc.localDescription.type,
            "session": session.id if session is not None else peer.id,
            "peer": peer.id,
        }

    async def _negotiate(self, peer: Peer, sdp: str, codec: str, stamp: bool, background: str | None) -> None:
        pc = peer.pc

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            peer.channel = channel

            @channel.on("message")
            async def on_message(message: Any) -> None:
                await self._on_peer_message(peer, message)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.close_peer(peer.id)

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind != "video" or self.config.source.kind != "webrtc":
                peer.blackhole = peer.blackhole or MediaBlackhole()
                peer.blackhole.addTrack(track)
                return
            source = TrackSource(track, self.clock, read_stamps=stamp, name=f"webrtc:{peer.id}")
            config = self.session_config(stamp=stamp, background=Background(background) if background else None)
            session = AvatarSession(
                peer.id, self.default_avatar, source, config, self.clock, self.metrics, on_end=self._peer_session_ended
            )
            session.add_sink(peer.track)
            peer.session = session

        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        if self.config.source.kind == "webrtc" and peer.session is None:
            raise RequestError(400, "this server drives avatars from browser cameras: the offer must send video")
        video = [t for t in pc.getTransceivers() if t.kind == "video"]
        if not video:
            raise RequestError(400, "the offer has no video section: add a video transceiver (recvonly is fine)")
        pc.addTrack(peer.track)
        for transceiver in video:
            prefer_codec(transceiver, codec)
        await pc.setLocalDescription(await pc.createAnswer())
        if peer.blackhole is not None:
            await peer.blackhole.start()
        if peer.session is not None:
            await peer.session.start()
        elif self.shared is not None:
            self.shared.add_sink(peer.track)
        self.metrics.sessions.set(len(self.sessions()))

    def _peer_session_ended(self, session: AvatarSession) -> None:
        """A browser's session ended on its own (its camera track stopped, or frames kept failing)."""
        task = asyncio.get_running_loop().create_task(self.close_peer(session.id))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _on_peer_message(self, peer: Peer, message: Any) -> None:
        try:
            data = json.loads(message)
            kind = data.get("type")
        except (ValueError, AttributeError):
            log.warning("peer %s sent a malformed message", peer.id)
            return
        session = peer.session or self.shared
        if kind == "glass" and session is not None and isinstance(data.get("ms"), int | float):
            if 0 < data["ms"] < 60_000:
                session.stats.glass_to_glass(data["ms"] / 1000)
        elif kind == "control" and session is not None:
            try:
                await self.control(data.get("action"), session.id, data.get("value"))
            except RequestError as exc:
                self._send(peer, {"type": "error", "error": str(exc)})

    def _send(self, peer: Peer, data: dict[str, Any]) -> None:
        if peer.channel is not None and peer.channel.readyState == "open":
            peer.channel.send(json.dumps(data))

    def push_stats(self) -> None:
        """Tell each peer how its session is doing (over its data channel)."""
        for peer in list(self.peers.values()):
            session = peer.session or self.shared
            if session is None:
                continue
            snap = session.stats.snapshot()
            e2e = snap["e2e_ms"]
            self._send(
                peer,
                {
                    "type": "stats",
                    "session": session.id,
                    "face_found": snap["face_found"],
                    "fps": snap["fps"],
                    "e2e_ms": e2e["p50"] if e2e else None,
                    "dropped": snap["dropped"],
                    "state": str(session.state),
                },
            )

    async def close_peer(self, peer_id: str) -> None:
        peer = self.peers.pop(peer_id, None)
        if peer is None:
            return
        if self.shared is not None:
            self.shared.remove_sink(peer.track)
        await peer.track.close()
        if peer.session is not None:
            await peer.session.stop()
        if peer.blackhole is not None:
            await peer.blackhole.stop()
        await peer.pc.close()
        self.metrics.sessions.set(len(self.sessions()))
        log.info("peer %s closed", peer_id)

    # ---- reporting and shutdown ----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The dashboard's view of everything (sent over /ws)."""
        sessions = [s.snapshot() for s in self.sessions()]
        return {
            "type": "snapshot",
            "time": time.time(),
            "uptime_s": round(time.monotonic() - self.started, 1),
            "system": {
                "cpu_percent": self._process.cpu_percent(),
                "rss_mb": round(self._process.memory_info().rss / 2**20, 1),
                "gpu": _gpu_load(self.config.device),
            },
            "totals": {
                "frames": sum(s["frames"] for s in sessions),
                "dropped": sum(s["dropped"] for s in sessions),
                "sessions": len(sessions),
            },
            "sessions": sessions,
        }

    def info(self) -> dict[str, Any]:
        entry = self.default_avatar
        return {
            "source": str(self.config.source),
            "avatar": entry.name,
            "avatars": sorted(self.avatars),
            "subject": entry.avatar.identity.subject,
            "resolution": entry.resolution,
            "token_required": self.config.token is not None,
        }

    async def shutdown(self) -> None:
        for peer_id in list(self.peers):
            await self.close_peer(peer_id)
        if self.shared is not None:
            await self.shared.stop()
            self.shared = None


def _gpu_load(device: str) -> dict[str, Any] | None:
    if not device.startswith("cuda"):
        return None
    import torch

    index = torch.device(device).index or 0
    try:
        util: float | None = float(torch.cuda.utilization(index))
    except Exception:  # needs pynvml; memory is still known
        util = None
    return {
        "name": torch.cuda.get_device_name(index),
        "util_percent": util,
        "mem_mb": round(torch.cuda.memory_allocated(index) / 2**20, 1),
    }
