"""The live service's state: avatars, sessions, WebRTC peers and control actions.

HTTP lives in `streamer.serve.http`; this module knows nothing about requests, so the same
operations serve the HTTP API, the websocket and the data channels.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import secrets
import time
from dataclasses import replace
from typing import Any

import psutil
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole

from streamer.core.clock import Clock, MonotonicClock
from streamer.core.frames import Background
from streamer.core.metrics import Metrics
from streamer.core.rtc import (
    CODECS,
    close_connection,
    ice_configuration,
    prefer_codec,
    set_bitrate,
    set_frame_release,
    tolerate_closed_connects,
)
from streamer.pipeline.engine_pool import EnginePool
from streamer.pipeline.session import AvatarEntry, AvatarSession, SessionConfig
from streamer.provenance.identity import is_demo_identity, public_identity
from streamer.provenance.watermark import identity_digest
from streamer.serve.capacity import Capacity, time_encoder
from streamer.serve.config import ServeConfig
from streamer.serve.ice import screen_candidates
from streamer.serve.peers import Peer
from streamer.serve.security import client_group
from streamer.serve.status import History, snapshot, usable_cores
from streamer.sinks import SINKS, open_sink
from streamer.sinks.base import Sink, SinkContext, SinkError
from streamer.sinks.webrtc import AvatarTrack
from streamer.sources import open_source
from streamer.sources.base import SourceContext
from streamer.sources.track import TrackSource

log = logging.getLogger(__name__)


class RequestError(Exception):
    """A client request the service refuses; `status` is the HTTP status to answer with,
    `retry_after` (seconds) goes into a Retry-After header."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


MAX_CHANNEL_MESSAGE = 64 * 1024  # bytes (or characters) of one data-channel message; control is tens


OPERATOR_ONLY = "this needs the operator credential: open the dashboard URL avatarcam serve printed"


def check_media_sections(sdp: str) -> None:
    """Refuse an offer with more than one video or more than one audio section, before aiortc
    parses it: each section gets its own decoder and its own unbounded queue of decoded frames,
    and a 256 kB offer can carry thousands of them."""
    kinds = [line[2:].split(" ", 1)[0] for line in sdp.splitlines() if line.startswith("m=")]
    for kind in ("video", "audio"):
        if kinds.count(kind) > 1:
            raise RequestError(
                400, f"the offer has {kinds.count(kind)} {kind} sections; send at most one video and one audio section"
            )


def split_report(value: Any) -> dict[str, float | None] | None:
    """A page's split of glass-to-glass (`streamer.core.split`: milliseconds by segment name),
    or None when `value` is not one."""
    if not isinstance(value, dict) or not 0 < len(value) <= 32:
        return None
    out: dict[str, float | None] = {}
    for key, v in value.items():
        if not isinstance(key, str) or not re.fullmatch(r"[a-z_]{1,32}", key):
            return None
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not abs(v) < 60_000):
            return None
        out[key] = None if v is None else round(float(v), 2)
    return out


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
        self.engines = EnginePool()
        self.capacity = Capacity(
            config.cpu_budget or float(usable_cores()), config.fps or 30.0, gpu=config.device.startswith("cuda")
        )
        self.history = History()
        self._process = psutil.Process()
        self._process.cpu_percent()  # the first call only sets the baseline

    @property
    def default_avatar(self) -> AvatarEntry:
        return next(iter(self.avatars.values()))

    def session_config(self, *, stamp: bool = False, background: Background | None = None) -> SessionConfig:
        compose = self.config.compose
        if background is not None:
            compose = replace(compose, background=background)
        return SessionConfig(
            self.config.backend,
            self.config.device,
            compose,
            stamp=stamp,
            idle_fps=self.config.fps or 30.0,
            engines=self.engines,
        )

    def _open_sinks(self) -> list[Sink]:
        """The shared stream's sinks (`--sink`), opened before the avatars load: a virtual camera
        publishes its starting card at once, so a meeting app sees a live device from the first
        second. Per-peer kinds (webrtc) are made per peer, not here."""
        config = self.config
        context = SinkContext(
            self.clock,
            config.fps or 30.0,
            config.framing,
            config.virtualcam_backend,
            virtualcam_pacing=config.virtualcam_pacing,
            identity=lambda: self.default_avatar.avatar.identity,  # a recording's credentials name it
        )
        sinks: list[Sink] = []
        for spec in config.sinks:
            row = SINKS[spec.kind]
            if row.shared and config.source.kind == "webrtc":
                raise SinkError(f"sink {spec} needs a shared source (camera:N or file:PATH), not webrtc")
            if row.open is None or config.source.kind == "webrtc":
                continue
            try:
                sinks.append(open_sink(spec, context))
            except SinkError as exc:
                if not (spec.kind == "virtualcam" and config.virtualcam_optional):
                    raise
                log.warning("no virtual camera: %s", exc)
        return sinks

    async def startup(self) -> None:
        """Open the shared stream's sinks (a virtual camera shows its starting card), load the
        avatars and, for a camera or file source, start the shared session."""
        tolerate_closed_connects(asyncio.get_running_loop())
        set_bitrate(self.config.bitrate)
        set_frame_release(self.config.frame_release)
        sinks = self._open_sinks()
        try:
            await self._load(sinks)
        except BaseException:
            for sink in sinks:
                await sink.close()
            raise

    async def _load(self, sinks: list[Sink]) -> None:
        for path in self.config.avatars:
            entry = await asyncio.to_thread(
                AvatarEntry.load, path, badge_required=self.config.badge_required, device=self.config.device
            )
            self.avatars[entry.name] = entry
            log.info("avatar %s: %s (%d px)", entry.name, entry.avatar.identity.subject, entry.resolution)
        if self.config.admission == "capacity":
            resolution = self.default_avatar.resolution
            self.capacity.encode_s = await asyncio.to_thread(time_encoder, self.config.codec, resolution)
            log.info(
                "capacity: %.1f cores at %g fps; a %s encoder takes %.1f ms per %d px frame",
                self.capacity.cores,
                self.capacity.fps,
                self.config.codec,
                self.capacity.encode_s * 1000,
                resolution,
            )
        if self.config.source.kind == "webrtc":
            return
        context = SourceContext(self.clock, loop=self.config.loop, fps=self.config.source_fps)
        source = open_source(self.config.source, context)
        shared = AvatarSession("main", self.default_avatar, source, self.session_config(), self.clock, self.metrics)
        for sink in sinks:
            shared.add_sink(sink)
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
        """Apply a control action: calibrate, pause, resume, background VALUE, avatar NAME.
        Callers check the role: the operator, or a peer acting on its own session."""
        if session_id is not None and not isinstance(session_id, str):
            raise RequestError(400, "session must be a string")
        if not isinstance(action, str) or not (value is None or isinstance(value, str)):
            raise RequestError(400, "action and value must be strings")
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
                mode = Background(value or "")
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

    def _admit(self, client: str, replacing: Peer | None = None) -> None:
        """Rate limit, slots and capacity for a new peer from `client`; the peer it `replacing`
        takes over is counted as gone (its slot is the new one's)."""
        now = time.monotonic()
        group = client_group(client)  # an IPv6 /64 is one client
        for address in [a for a, times in self._offers.items() if not times or now - times[-1] >= 60]:
            del self._offers[address]  # forget quiet clients: the table stays small
        recent = [t for t in self._offers.get(group, []) if now - t < 60]
        if len(recent) >= self.config.offers_per_minute:
            raise RequestError(429, f"too many offers from {group}; wait a minute", retry_after=60)
        self._offers[group] = [*recent, now]
        peers = [p for p in self.peers.values() if p is not replacing]
        if len(peers) >= self.config.max_sessions:
            raise RequestError(503, f"server busy: {len(peers)} sessions (the limit); try again later", retry_after=5)
        own = sum(1 for p in peers if client_group(p.client) == group)
        if own >= self.config.max_per_client:
            raise RequestError(
                503, f"server busy: {group} already holds {own} sessions (the limit per client)", retry_after=5
            )
        if self.config.admission == "capacity":
            webrtc = self.config.source.kind == "webrtc"
            pipelines = int(self.shared is not None) + sum(1 for p in peers if p.session is not None or webrtc)
            verdict = self.capacity.admit(pipelines, len(peers), new_pipeline=webrtc)
            if not verdict.admit:
                log.info("refused a session from %s: %s", client, verdict.reason)
                raise RequestError(
                    503, f"server busy, try later: at capacity ({verdict.reason})", retry_after=verdict.retry_after
                )

    async def offer(self, body: Any, client: str, *, operator: bool = False) -> dict[str, Any]:
        """Answer a browser's (or any client's) SDP offer and start streaming the avatar to it.
        `operator`: the request carried the operator credential (its data channel may then
        control a shared session)."""
        if not isinstance(body, dict) or body.get("type") != "offer" or not isinstance(body.get("sdp"), str):
            raise RequestError(400, 'expected JSON {"sdp": "...", "type": "offer"}')
        check_media_sections(body["sdp"])
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise RequestError(400, "options must be an object")
        codec = options.get("codec", self.config.codec)
        if not isinstance(codec, str) or codec not in CODECS:
            raise RequestError(400, f"codec must be one of {sorted(CODECS)}")
        background = options.get("background")
        if background is not None and (
            not isinstance(background, str) or background not in {b.value for b in Background}
        ):
            raise RequestError(400, f"background must be one of {[b.value for b in Background]}")
        stamp = bool(options.get("stamp", False))
        replacing = self._replacing(options.get("replaces"))
        self._admit(client, replacing)

        config = self.config
        pc = RTCPeerConnection(ice_configuration(config.ice_servers, config.ice_username, config.ice_credential))
        track = AvatarTrack(self.clock, self.config.rtp_time)
        peer = Peer(f"peer-{secrets.token_hex(4)}", pc, track, client=client, operator=operator)
        self.peers[peer.id] = peer
        try:
            await self._negotiate(peer, body["sdp"], codec, stamp, background)
        except Exception as exc:
            await self.close_peer(peer.id)
            if isinstance(exc, RequestError):
                raise
            log.warning("offer from %s rejected: %s", client, exc)
            raise RequestError(400, f"cannot use this offer: {exc}") from None
        if replacing is not None and replacing.id in self.peers:
            log.info(
                "peer %s from %s is replaced by its reconnecting client (%s)", replacing.id, replacing.client, peer.id
            )
            await self.close_peer(replacing.id)
        if peer.id in self.peers and not peer.connected:
            peer.watchdog = asyncio.get_running_loop().create_task(self._connect_or_close(peer), name=f"{peer.id}-wd")
        log.info("peer %s answered, from %s (codec %s)", peer.id, client, codec)
        session = peer.session or self.shared
        return {
            "sdp": pc.localDescription.sdp,
            "type": pc.localDescription.type,
            "session": session.id if session is not None else peer.id,
            "peer": peer.id,
            "reconnect": peer.reconnect,
        }

    def _replacing(self, replaces: Any) -> Peer | None:
        """The peer a reconnecting client takes over: `options.replaces` is the `reconnect`
        secret an earlier answer gave it (a peer id, which every viewer sees, is not enough). It is
        closed only once the new offer is admitted and answered, so a link that died on the
        client's side (a network drop) gives its slot to the new one instead of holding it until
        ICE gives up. An unknown secret (the server restarted, the peer is gone) replaces nothing."""
        if replaces is None:
            return None
        if not isinstance(replaces, str):
            raise RequestError(400, "options.replaces must be the reconnect secret an earlier answer gave")
        for peer in self.peers.values():
            if hmac.compare_digest(peer.reconnect.encode(), replaces.encode("utf-8", "replace")):
                return peer
        return None

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
            if pc.connectionState == "connected":
                peer.connected = True
            if pc.connectionState in ("failed", "closed"):
                await self.close_peer(peer.id)

        @pc.on("track")
        def on_track(track: Any) -> None:
            # A track nothing reads would fill aiortc's queue of decoded frames: drain it.
            if track.kind != "video" or self.config.source.kind != "webrtc" or peer.session is not None:
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

        try:
            sdp, dropped = screen_candidates(sdp)
        except ValueError as exc:
            raise RequestError(400, str(exc)) from None
        if dropped:
            log.info("peer %s: no checks to ICE candidates at %s", peer.id, ", ".join(sorted(set(dropped))[:8]))
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

    async def _connect_or_close(self, peer: Peer) -> None:
        """Close a peer that has not connected `connect_timeout` seconds after its answer: a
        client that never completes ICE must not hold a session slot."""
        await asyncio.sleep(self.config.connect_timeout)
        if not peer.connected and peer.id in self.peers:
            timeout = self.config.connect_timeout
            log.info("peer %s from %s did not connect within %.0f s; closed", peer.id, peer.client, timeout)
            await self.close_peer(peer.id)

    def _peer_session_ended(self, session: AvatarSession) -> None:
        """A browser's session ended on its own (its camera track stopped, or frames kept failing)."""
        task = asyncio.get_running_loop().create_task(self.close_peer(session.id))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _on_peer_message(self, peer: Peer, message: Any) -> None:
        if len(message) > MAX_CHANNEL_MESSAGE:
            log.warning("peer %s sent a %d-byte message (over %d); ignored", peer.id, len(message), MAX_CHANNEL_MESSAGE)
            return
        try:
            data = json.loads(message)
            kind = data.get("type")
        except (ValueError, AttributeError, TypeError, RecursionError):  # RecursionError: nested too deeply
            log.warning("peer %s sent a malformed message", peer.id)
            return
        session = peer.session or self.shared
        if kind == "clock" and isinstance(data.get("t"), int | float):
            self._send(peer, {"type": "clock", "t": data["t"], "server": self.clock.now()})
        elif kind == "glass" and session is not None and isinstance(data.get("ms"), int | float):
            if 0 < data["ms"] < 60_000:
                session.stats.glass_to_glass(data["ms"] / 1000)
            if (split := split_report(data.get("split"))) is not None:
                session.stats.split_reported(split)
        elif kind == "control" and session is not None:
            try:
                if peer.session is None and not peer.operator:  # the shared session is everyone's
                    raise RequestError(403, OPERATOR_ONLY)
                await self.control(data.get("action"), session.id, data.get("value"))
            except RequestError as exc:
                self._send(peer, {"type": "error", "error": str(exc)})

    def _send(self, peer: Peer, data: dict[str, Any]) -> None:
        if peer.channel is not None and peer.channel.readyState == "open":
            peer.channel.send(json.dumps(data))

    def push_stats(self) -> None:
        """Tell each peer how its session is doing (over its data channel); update the capacity
        estimate from the sessions' measured stage costs."""
        self.capacity.observe(s.stats.snapshot() for s in self.sessions())
        for peer in list(self.peers.values()):
            session = peer.session or self.shared
            if session is None:
                continue
            snap = session.stats.snapshot()
            e2e = snap["e2e_ms"]
            timed, peer.timed = session.stats.timed_since(peer.timed)
            self._send(
                peer,
                {
                    "type": "stats",
                    "session": session.id,
                    "avatar": session.entry.name,
                    "face_found": snap["face_found"],
                    "fps": snap["fps"],
                    "e2e_ms": e2e["p50"] if e2e else None,
                    "dropped": snap["dropped"],
                    "state": str(session.state),
                    "frames": [t.wire() for t in timed],
                },
            )

    async def close_peer(self, peer_id: str) -> None:
        peer = self.peers.pop(peer_id, None)
        if peer is None:
            return
        if peer.watchdog is not None and peer.watchdog is not asyncio.current_task():
            peer.watchdog.cancel()
        if self.shared is not None:
            self.shared.remove_sink(peer.track)
        await peer.track.close()
        if peer.session is not None:
            await peer.session.stop()
        if peer.blackhole is not None:
            await peer.blackhole.stop()
        await close_connection(peer.pc)
        self.metrics.sessions.set(len(self.sessions()))
        log.info("peer %s closed", peer_id)

    # ---- reporting and shutdown ----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The dashboard's view of everything (sent over /ws)."""
        return snapshot(self.sessions(), self.started, self._process, self.config.device)

    def record(self, snapshot: dict[str, Any]) -> None:
        """Keep the compact part of a snapshot for the dashboards opened later."""
        self.history.record(snapshot)

    def first_snapshot(self) -> dict[str, Any]:
        """A dashboard's first message over /ws: a snapshot carrying the kept history (oldest
        first), so its charts start with the last HISTORY_SECONDS instead of empty."""
        return {**self.snapshot(), "history": list(self.history), "history_seconds": self.history.seconds}

    def info(self) -> dict[str, Any]:
        """What any viewer may read about the service; `identity` and `watermark_digest` (the
        mark's payload, None when unmarked) let `connect` re-embed the mark and sign recordings."""
        entry = self.default_avatar
        identity = entry.avatar.identity
        marked = self.config.compose.watermark or entry.badge_required or is_demo_identity(identity)
        return {
            "source": str(self.config.source),
            "avatar": entry.name,
            "avatars": sorted(self.avatars),
            "subject": identity.subject,
            "resolution": entry.resolution,
            "token_required": self.config.token is not None,
            "watermark": marked,
            "watermark_digest": f"{identity_digest(identity):08x}" if marked else None,
            "identity": public_identity(identity),
            "admission": self.config.admission,
            "capacity": self.capacity.info(len(self.sessions()), len(self.peers)),
            "engines": self.engines.users(),
        }

    async def shutdown(self) -> None:
        for peer_id in list(self.peers):
            await self.close_peer(peer_id)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self.shared is not None:
            await self.shared.stop()
            self.shared = None
