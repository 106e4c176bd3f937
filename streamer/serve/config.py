"""Options of `avatarcam serve` (and `demo`): one frozen dataclass, validated in `resolved()`."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

from models.engines import ENGINES
from streamer.core.rtc import CODECS, FRAME_RELEASE
from streamer.sinks.base import SinkSpec
from streamer.sources.base import SourceSpec
from streamer.stages.compose import ComposeConfig
from streamer.stages.framing import FramingConfig


class ServeError(RuntimeError):
    """The service cannot start with these options; the message says what to change."""


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
        source_fps: pace a file source at this rate, as a camera would deliver it (None: the
            file's own rate).
        backend, device: the engine.
        threads: the engine's intra-op threads on the CPU (None: every core but one, left to
            tracking, rendering and encoding; `models.engines.base.live_threads`).
        compose: background mode and badge.
        framing: the virtual camera's format (default 1280x720) and how the avatar fills it; its
            background picture is compose.image.
        badge_required: force the synthetic badge (the shipped demo avatar).
        token: access token for page, API and signaling; required when host is not loopback or
            allowed_hosts is given (a reverse proxy in front of a loopback bind: the Host
            allow-list does not tell its public clients apart); None there: one is generated and
            printed.
        allowed_origins: extra browser origins allowed besides the server's own.
        operator_token: the operator's credential (dashboard, /api/control, control over /ws and
            over a shared session's data channel); None: one is generated and printed.
        allowed_hosts: host names a TLS certificate made by tls_self_signed names besides the
            loopback ones; giving any requires a token (generated when none is given), which then
            guards every route instead of the Host allow-list.
        max_sessions: concurrent WebRTC peers.
        max_per_client: WebRTC peers, connecting or connected, one client address may hold.
        connect_timeout: seconds a peer has after the answer to get connected (ICE and DTLS)
            before it is closed and its slot freed.
        admission: "capacity" refuses a peer the measured costs say cannot be served at `fps`
            (503 + Retry-After); "limit" admits up to max_sessions.
        cpu_budget: cores the capacity model may fill (None: the cores this process may use).
        tls_cert, tls_key: serve https with this certificate and key (PEM).
        tls_self_signed: serve https with a self-signed certificate made into the cache.
        offers_per_minute: signaling requests allowed per client address per minute.
        ice_servers: STUN/TURN URLs for peers behind NAT (none by default: no third party).
        ice_username, ice_credential: the TURN servers' long-term credential.
        bitrate: starting video bitrate of WebRTC senders, bits/s.
        rtp_time: what the avatar frames' RTP timestamps follow (`streamer.sinks.webrtc.AvatarTrack`):
            "capture" (the camera's pacing) or "send" (the pacing they leave with).
        frame_release: when the receivers hand a camera frame to the decoder (`streamer.core.rtc`):
            "marker", on its last packet; "next", aiortc's own, one frame later.
        codec: default WebRTC codec (vp8 or h264); a page can ask for the other.
        virtualcam_backend: a pyvirtualcam backend name (None: the platform's).
        virtualcam_pacing: when the virtual camera hands pictures to the device (tick, lock, prompt:
            `streamer.sinks.base.SinkContext`).
        virtualcam_optional: without a virtual camera device, warn and go on (the demo).
        shutdown_timeout: seconds to close peers and sessions on SIGINT/SIGTERM before cancelling.
        web_root: folder of the page and dashboard.
        create_dir: the /create page's uploads, jobs and finished avatars (None: `<cache>/create`,
            the cache being $AVATARCAM_HOME, else ~/.cache/avatarcam).
    """

    avatars: tuple[Path, ...]
    source: SourceSpec
    sinks: tuple[SinkSpec, ...] = (SinkSpec("webrtc"),)
    host: str = "127.0.0.1"
    port: int = 8080
    fps: float = 30.0
    loop: bool = False
    source_fps: float | None = None
    backend: str = "torch"
    device: str = "cpu"
    threads: int | None = None
    compose: ComposeConfig = field(default_factory=ComposeConfig)
    framing: FramingConfig = field(default_factory=FramingConfig)
    badge_required: bool = False
    token: str | None = None
    allowed_origins: tuple[str, ...] = ()
    operator_token: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    max_sessions: int = 4
    max_per_client: int = 2
    connect_timeout: float = 10.0
    admission: str = "capacity"
    cpu_budget: float | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_self_signed: bool = False
    offers_per_minute: int = 30
    ice_servers: tuple[str, ...] = ()
    ice_username: str | None = None
    ice_credential: str | None = None
    bitrate: int = 1_000_000
    frame_release: str = "marker"
    rtp_time: str = "send"
    codec: str = "vp8"
    virtualcam_backend: str | None = None
    virtualcam_optional: bool = False
    virtualcam_pacing: str = "tick"
    shutdown_timeout: float = 5.0
    web_root: Path = Path(__file__).resolve().parents[2] / "web"
    create_dir: Path | None = None

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
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        if self.rtp_time not in ("capture", "send"):
            raise ValueError(f"rtp_time must be capture or send, got {self.rtp_time!r}")
        if self.frame_release not in FRAME_RELEASE:
            raise ValueError(f"frame_release must be one of {', '.join(FRAME_RELEASE)}, got {self.frame_release!r}")
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {sorted(CODECS)}, got {self.codec!r}")
        if self.max_sessions < 1 or self.offers_per_minute < 1 or self.bitrate < 50_000 or self.fps < 0:
            raise ValueError("max_sessions and offers_per_minute must be >= 1, bitrate >= 50000, fps >= 0")
        if self.source_fps is not None and (self.source_fps <= 0 or self.source.kind != "file"):
            raise ValueError("--source-fps paces a file source: give a rate > 0 with --source file:PATH")
        if self.max_per_client < 1 or self.connect_timeout <= 0:
            raise ValueError("max_per_client must be >= 1 and connect_timeout > 0")
        if self.admission not in ("capacity", "limit"):
            raise ValueError(f"admission must be capacity or limit, got {self.admission!r}")
        if self.cpu_budget is not None and self.cpu_budget <= 0:
            raise ValueError("cpu_budget must be > 0 cores")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give --tls-cert and --tls-key together")
        if self.tls_cert is not None and self.tls_self_signed:
            raise ValueError("give either --tls-cert/--tls-key or --tls-self-signed, not both")
        for tls_file in (self.tls_cert, self.tls_key):
            if tls_file is not None and not tls_file.is_file():
                raise ValueError(f"TLS file {tls_file} does not exist")
        for name in self.allowed_hosts:
            if not name or any(c in name for c in ":/ "):
                raise ValueError(f"--allowed-host takes a host name without port or scheme, got {name!r}")
        if self.token is not None and self.operator_token == self.token:
            raise ValueError("the operator token must differ from the viewer token")
        self.compose.validate()
        resolved = self
        if self.framing.image != self.compose.image:
            resolved = replace(resolved, framing=replace(self.framing, image=self.compose.image))
        resolved.framing.validate()
        if self.token is None and self.token_required:
            resolved = replace(resolved, token=secrets.token_urlsafe(24))
        if self.operator_token is None:
            resolved = replace(resolved, operator_token=secrets.token_urlsafe(24))
        return resolved

    @property
    def token_required(self) -> bool:
        """Bound beyond loopback, or reached through a name (a reverse proxy) anyone may use."""
        return not self.loopback or bool(self.allowed_hosts)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None or self.tls_self_signed
