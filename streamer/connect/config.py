"""Options of `avatarcam connect`, validated."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from streamer.core.rtc import CODECS, FRAME_RELEASE
from streamer.sinks import usage as sink_usage
from streamer.sinks.base import SinkSpec
from streamer.sources.base import SourceSpec


class ConnectError(RuntimeError):
    """`connect` cannot go on (wrong token, not an avatarcam server, unreachable); the message
    says what to do."""


@dataclass(frozen=True)
class ConnectConfig:
    """Options of `avatarcam connect`.

    Attributes:
        url: the server, as `avatarcam serve` printed it (http(s)://HOST:PORT/, maybe ?token=T).
        token: the server's access token (None: the URL's ?token=, or none).
        cafile: certificates (PEM) to trust for an https server besides the system's: the
            server's own self-signed certificate, or the CA that signed its certificate.
        camera: the local camera index to send (None when `video` is given).
        video: a video file sent instead of a camera, paced at its own frame rate.
        loop: play `video` again from the start when it ends.
        sinks: where the avatar goes (virtualcam, window, file:OUT.mp4, null).
        seconds: stop this long after the first avatar frame arrives (None: until Ctrl-C).
        codec: the WebRTC codec both ways (vp8 or h264), as `serve --codec`.
        bitrate: starting bitrate of the outgoing video, bits/s, as `serve --bitrate`.
        frame_release: when the avatar's receiver hands a frame to the decoder, as `serve --frame-release`.
        ice_servers: STUN/TURN URLs (none by default: no third party).
        ice_username, ice_credential: the TURN servers' long-term credential.
        fps: the frame rate declared to the virtual camera and the file; the virtual camera
            repeats the last frame on this clock when the link stalls.
        max_width: camera frames wider than this are scaled down before they are sent.
        stamp: paint frame ids into sent frames (glass-to-glass); they are visible at the top
            left of the avatar frames.
        virtualcam_backend: a pyvirtualcam backend name (None: the platform's).
        virtualcam_pacing: when the virtual camera hands pictures to the device, as `serve --virtualcam-pacing`.
        stall_seconds: no avatar frame for this long means the link is lost: reconnect.
        first_frame_seconds: how long a new link may take to deliver its first avatar frame.
        max_backoff: the longest wait between two reconnection attempts, seconds.
        report_every: seconds between the printed status lines (0: none).
        json_path: also write the final report here.
    """

    url: str
    token: str | None = None
    cafile: Path | None = None
    camera: int | None = 0
    video: Path | None = None
    loop: bool = False
    sinks: tuple[SinkSpec, ...] = (SinkSpec("virtualcam"),)
    seconds: float | None = None
    codec: str = "vp8"
    bitrate: int = 1_000_000
    frame_release: str = "marker"
    ice_servers: tuple[str, ...] = ()
    ice_username: str | None = None
    ice_credential: str | None = None
    fps: float = 30.0
    max_width: int = 640
    stamp: bool = True
    virtualcam_backend: str | None = None
    virtualcam_pacing: str = "tick"
    stall_seconds: float = 2.0
    first_frame_seconds: float = 30.0
    max_backoff: float = 3.0
    report_every: float = 1.0
    json_path: Path | None = None

    def resolved(self) -> ConnectConfig:
        """Validated, with the token taken from the URL when not given (ValueError otherwise)."""
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"URL {self.url!r}: give the address `avatarcam serve` printed, e.g. http://HOST:8080/")
        try:
            _ = parts.port
        except ValueError:
            raise ValueError(f"URL {self.url!r} has a malformed port") from None
        token = self.token or next(iter(parse_qs(parts.query).get("token", [])), None)
        if (self.camera is None) == (self.video is None):
            raise ValueError("give either --camera N or --video PATH")
        if self.cafile is not None and not self.cafile.is_file():
            raise ValueError(f"--cafile {self.cafile}: no such file")
        if self.cafile is not None and parts.scheme != "https":
            raise ValueError("--cafile is for an https:// URL")
        if self.video is not None and not self.video.is_file():
            raise ValueError(f"--video {self.video}: no such file")
        if self.loop and self.video is None:
            raise ValueError("--loop is for --video")
        if not self.sinks:
            raise ValueError(f"give at least one --sink ({sink_usage(peers=False)})")
        kinds = [s.kind for s in self.sinks]
        for kind in ("virtualcam", "window"):
            if kinds.count(kind) > 1:
                raise ValueError(f"--sink {kind} is given twice")
        if self.frame_release not in FRAME_RELEASE:
            raise ValueError(f"frame_release must be one of {', '.join(FRAME_RELEASE)}, got {self.frame_release!r}")
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {sorted(CODECS)}, got {self.codec!r}")
        if self.bitrate < 50_000 or self.fps <= 0 or self.max_width < 64:
            raise ValueError("bitrate must be >= 50000, fps > 0 and max_width >= 64")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError("--seconds must be > 0")
        timings = (self.stall_seconds, self.first_frame_seconds, self.max_backoff)
        if min(timings) <= 0 or self.report_every < 0:
            raise ValueError("stall, first-frame and backoff times must be > 0")
        return replace(self, token=token)

    @property
    def source(self) -> SourceSpec:
        """What is sent: the video file, or the camera."""
        return SourceSpec("file", str(self.video)) if self.video is not None else SourceSpec("camera", str(self.camera))

    @property
    def base(self) -> str:
        """http(s)://HOST:PORT, without path or query."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"
