"""`avatarcam connect`: a laptop's camera drives an avatar on a remote `avatarcam serve --source
webrtc`, and the avatar comes back into the laptop's own sinks (virtual camera, window, file).

The pieces are the service's own: a `Source` (camera or paced file) feeds an `AvatarTrack` (the
outgoing WebRTC track), the returned track is read by a `TrackSource`, and frames go to the
same `Sink`s `serve` uses. What is new here is the client's life around them:

- `Presenter`: what the sinks show. Each avatar frame as it arrives; in a gap, the last frame
  again on the device's frame rate (a camera that stops delivering looks broken to a meeting
  app); when the link is down, a "reconnecting" card.
- `Link`: one peer connection (offer, answer, the returned track, the data channel).
- `Client`: startup (probe the server, open source and sinks), main loop (connect, watch the
  link, reconnect with backoff), shutdown (close everything, the final report).
- `ConnectStats`: glass-to-glass latency with the web page's frame ids (`streamer.stamp`: the
  client paints an id into each camera frame, the service echoes it onto the avatar frame),
  fps, drops, round-trip time and the audio delay that keeps lip sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import ssl
import sys
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription

from streamer import stamp
from streamer.clock import Clock, MonotonicClock, Pacer
from streamer.frames import U8, Frame
from streamer.sinks import FileSink, NullSink, Sink, SinkError, SinkSpec, VirtualCamSink
from streamer.sources import CameraSource, FileSource, Source, SourceEnded, TrackSource
from streamer.webrtc import CODECS, AvatarTrack, ice_configuration, prefer_codec, set_bitrate

log = logging.getLogger(__name__)

SINK_KINDS = "virtualcam, window, file:OUT.mp4 or null"
WINDOW = 300  # samples in the rolling figures printed each second
MAX_GLASS = 10.0  # seconds; an older id than this is a wrapped one, not this frame's


class ConnectError(RuntimeError):
    """`connect` cannot go on (wrong token, not an avatarcam server, unreachable); the message
    says what to do."""


class _Retry(Exception):
    """This attempt failed in a way a later one may not (server restarting, busy, network)."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.wait = wait


def parse_sink(text: str) -> SinkSpec:
    """A `--sink` of connect: the service's sinks plus `window`; `webrtc` is what connect receives."""
    if text == "window":
        return SinkSpec("window")
    try:
        spec = SinkSpec.parse(text)
    except SinkError:
        raise SinkError(f"--sink {text!r}: use {SINK_KINDS}") from None
    if spec.kind == "webrtc":
        raise SinkError(f"--sink webrtc: connect receives the avatar over WebRTC; use {SINK_KINDS}")
    return spec


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
        ice_servers: STUN/TURN URLs (none by default: no third party).
        ice_username, ice_credential: the TURN servers' long-term credential.
        fps: the frame rate declared to the virtual camera and the file; the presenter repeats
            the last frame on this clock when the link stalls.
        max_width: camera frames wider than this are scaled down before they are sent.
        stamp: paint frame ids into sent frames (glass-to-glass); they are visible at the top
            left of the avatar frames.
        virtualcam_backend: a pyvirtualcam backend name (None: the platform's).
        stall_seconds: no avatar frame for this long means the link is lost: reconnect.
        first_frame_seconds: how long a new link may take to deliver its first avatar frame.
        repeat_after: seconds without a new avatar frame before the last one is shown again.
        card_after: seconds without a new avatar frame, while the link is down, before the
            "reconnecting" card replaces the last frame.
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
    ice_servers: tuple[str, ...] = ()
    ice_username: str | None = None
    ice_credential: str | None = None
    fps: float = 30.0
    max_width: int = 640
    stamp: bool = True
    virtualcam_backend: str | None = None
    stall_seconds: float = 2.0
    first_frame_seconds: float = 30.0
    repeat_after: float = 0.5
    card_after: float = 2.0
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
            raise ValueError(f"give at least one --sink ({SINK_KINDS})")
        kinds = [s.kind for s in self.sinks]
        for kind in ("virtualcam", "window"):
            if kinds.count(kind) > 1:
                raise ValueError(f"--sink {kind} is given twice")
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {sorted(CODECS)}, got {self.codec!r}")
        if self.bitrate < 50_000 or self.fps <= 0 or self.max_width < 64:
            raise ValueError("bitrate must be >= 50000, fps > 0 and max_width >= 64")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError("--seconds must be > 0")
        timings = (self.stall_seconds, self.first_frame_seconds, self.repeat_after, self.card_after, self.max_backoff)
        if min(timings) <= 0 or self.report_every < 0:
            raise ValueError("stall, first-frame, repeat, card and backoff times must be > 0")
        return replace(self, token=token)

    @property
    def base(self) -> str:
        """http(s)://HOST:PORT, without path or query."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"


# ---- figures -------------------------------------------------------------------------------------


def _percentiles(values: list[float] | deque[float]) -> dict[str, float] | None:
    """{"samples", "p50", "p90", "p99"} in milliseconds, or None without samples."""
    if not values:
        return None
    p50, p90, p99 = np.percentile(np.fromiter(values, np.float64), [50, 90, 99]) * 1000
    return {
        "samples": len(values),
        "p50": round(float(p50), 1),
        "p90": round(float(p90), 1),
        "p99": round(float(p99), 1),
    }


@dataclass
class ConnectStats:
    """The client's counters and latency samples (event-loop thread only).

    Glass-to-glass is the page's measure: from when the camera frame was captured (the
    source's clock) to when the avatar frame carrying its id arrived here, decoded. Each id is
    taken once, so a repeated frame is not a new sample.
    """

    clock: Clock
    frames_sent: int = 0
    frames_received: int = 0
    echoed: int = 0
    capture_dropped: int = 0
    held: int = 0
    cards: int = 0
    reconnects: int = 0
    first_frame_at: float | None = None
    last_frame_at: float | None = None
    server: dict[str, Any] | None = None
    glass: list[float] = field(default_factory=list)
    sink: list[float] = field(default_factory=list)
    rtt: list[float] = field(default_factory=list)
    arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    _sent_at: np.ndarray = field(default_factory=lambda: np.full(stamp.MODULUS, np.nan))
    _next_id: int = 0

    def stamped(self, frame: Frame) -> None:
        """Paint the next frame id into `frame` (in place) and remember its capture time."""
        tag = self._next_id
        self._next_id = (tag + 1) % stamp.MODULUS
        stamp.write(frame.image, tag)
        frame.tag = tag
        self._sent_at[tag] = frame.captured

    def received(self, frame: Frame) -> float | None:
        """An avatar frame arrived (`frame.captured` is its arrival); its glass-to-glass seconds."""
        self.frames_received += 1
        self.arrivals.append(frame.captured)
        if self.first_frame_at is None:
            self.first_frame_at = frame.captured
        self.last_frame_at = frame.captured
        if frame.tag is None:
            return None
        sent = float(self._sent_at[frame.tag])
        self._sent_at[frame.tag] = np.nan
        if math.isnan(sent) or not 0 <= frame.captured - sent <= MAX_GLASS:
            return None
        self.echoed += 1
        self.glass.append(frame.captured - sent)
        return frame.captured - sent

    def fps(self, window: float = 1.0) -> float:
        """Avatar frames received per second over the last `window` seconds."""
        now = self.clock.now()
        recent = [t for t in self.arrivals if now - t <= window]
        return round(len(recent) / window, 1)

    def audio_delay_ms(self) -> float | None:
        """How late the video reaches the sinks after its capture: the audio delay (e.g. OBS's
        sync offset) that keeps a meeting's microphone in sync with the avatar."""
        glass = _percentiles(self.glass[-WINDOW:])
        if glass is None:
            return None
        sink = _percentiles(self.sink[-WINDOW:])
        return round(glass["p50"] + (sink["p50"] if sink else 0.0))

    def dropped(self, sink_dropped: int) -> dict[str, int]:
        """Frames that did not make it, by where: `capture` (the encoder was busy with an
        older frame), `lost` (sent with an id that never came back: dropped by the server to
        keep latency bounded, or on the network), `server` (the server's own count), `sinks`
        (a busy sink replaced an avatar, held or card frame by a newer one)."""
        server = int(self.server.get("dropped") or 0) if self.server else 0
        lost = max(0, self.frames_sent - self.echoed) if self.echoed else 0
        return {"capture": self.capture_dropped, "lost": lost, "server": server, "sinks": sink_dropped}

    def line(self, state: str, sink_dropped: int) -> str:
        """The status line printed once a second."""
        glass = _percentiles(self.glass[-WINDOW:])
        rtt = f"{self.rtt[-1] * 1000:.1f} ms" if self.rtt else "–"
        g = f"p50 {glass['p50']:.0f} ms p99 {glass['p99']:.0f} ms" if glass else "–"
        d = self.dropped(sink_dropped)
        delay = self.audio_delay_ms()
        return (
            f"avatarcam: {state} | {self.fps():.1f} fps | glass-to-glass {g} | rtt {rtt} | "
            f"dropped {d['capture'] + d['lost']} (lost {d['lost']}) | "
            f"set audio delay {'–' if delay is None else f'{delay:.0f} ms'}"
        )

    def report(self, sink_dropped: int) -> dict[str, Any]:
        """The final JSON."""
        streamed = None
        if self.first_frame_at is not None and self.last_frame_at is not None:
            streamed = self.last_frame_at - self.first_frame_at
        fps = round((self.frames_received - 1) / streamed, 2) if streamed and self.frames_received > 1 else None
        return {
            "seconds": round(streamed, 2) if streamed is not None else None,
            "frames_sent": self.frames_sent,
            "frames_received": self.frames_received,
            "fps": fps,
            "glass_ms": _percentiles(self.glass),
            "sink_ms": _percentiles(self.sink),
            "rtt_ms": _percentiles(self.rtt),
            "dropped": self.dropped(sink_dropped),
            "held_frames": self.held,
            "card_frames": self.cards,
            "reconnects": self.reconnects,
            "audio_delay_ms": self.audio_delay_ms(),
            "server": self.server,
        }


# ---- what the sinks show -------------------------------------------------------------------------


def card(width: int, height: int, title: str, detail: str = "") -> U8:
    """A dark card with a title and a detail line ([height, width, 3] uint8 RGB)."""
    import cv2

    image = np.full((height, width, 3), 32, np.uint8)
    scale = max(0.3, width / 640)
    for text, y, size in ((title, 0.47, 1.0), (detail, 0.6, 0.5)):
        if not text:
            continue
        (w, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale * size, 1)
        fit = min(1.0, 0.92 * width / max(w, 1))
        (w, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale * size * fit, 1)
        origin = ((width - w) // 2, int(height * y))
        cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale * size * fit, (235, 235, 235), 1, cv2.LINE_AA)
    return image


class Presenter:
    """Hands frames to the sinks: each avatar frame as it arrives; after `repeat_after` seconds
    without one, the last frame again on every tick; when the link is down and `card_after`
    seconds have passed without a frame (or none ever came), a card saying what is happening.

    Held and card frames carry index -1 and the time they were shown as their capture time.

    Args:
        sinks: where frames go.
        size: (width, height) every frame is scaled to (a virtual camera has one format).
        fps: the tick rate.
        clock: pacing and timestamps.
        stats: counts held and card frames and the sinks' delivery times.
    """

    def __init__(
        self,
        sinks: list[Sink],
        size: tuple[int, int],
        fps: float,
        clock: Clock,
        stats: ConnectStats,
        *,
        repeat_after: float = 0.5,
        card_after: float = 2.0,
    ) -> None:
        self.sinks = sinks
        self.size = size
        self.clock = clock
        self.stats = stats
        self.repeat_after = repeat_after
        self.card_after = card_after
        self.live = False
        self.title, self.detail = "connecting", ""
        self._pacer = Pacer(fps, clock)
        self._last: Frame | None = None
        self._last_at: float | None = None
        self._card: tuple[tuple[str, str], U8] | None = None
        for sink in sinks:
            sink.report = self._delivered

    def _delivered(self, frame: Frame, seconds: float, finished: float) -> None:
        if frame.index >= 0:
            self.stats.sink.append(finished - frame.captured)

    def _fit(self, image: U8) -> U8:
        width, height = self.size
        if image.shape[1] == width and image.shape[0] == height:
            return image
        import cv2

        return np.asarray(cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR), dtype=np.uint8)

    def _send(self, frame: Frame) -> None:
        for sink in self.sinks:
            sink.send(frame)

    def show(self, frame: Frame) -> None:
        """A new avatar frame."""
        frame = frame.derive(self._fit(frame.image)) if frame.image.shape[:2] != self.size[::-1] else frame
        self._last, self._last_at = frame, self.clock.now()
        self._send(frame)

    def set_state(self, live: bool, title: str = "", detail: str = "") -> None:
        """The link is up (`live`), or down with a card `title` and `detail` to show."""
        self.live = live
        if title:
            self.title, self.detail = title, detail

    def tick(self) -> str | None:
        """Fill a gap if there is one: "card", "held", or None when the stream is flowing."""
        now = self.clock.now()
        since = None if self._last_at is None else now - self._last_at
        if not self.live and (since is None or since >= self.card_after):
            key = (self.title, self.detail)
            if self._card is None or self._card[0] != key:
                self._card = (key, card(*self.size, self.title, self.detail))
            self._send(Frame(self._card[1], now, -1))
            self.stats.cards += 1
            return "card"
        if self._last is not None and since is not None and since >= self.repeat_after:
            self._send(Frame(self._last.image, now, -1))
            self.stats.held += 1
            return "held"
        return None

    async def run(self) -> None:
        """Tick on absolute deadlines until cancelled."""
        while True:
            await self._pacer.wait()
            self.tick()


# ---- one peer connection -------------------------------------------------------------------------


async def _json_or_none(response: aiohttp.ClientResponse) -> Any:
    try:
        return await response.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        return None


def _server_error(body: Any, status: int) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return f"HTTP {status}"


class Link:
    """One WebRTC connection to the server: our camera out, the avatar back, a data channel.

    `lost` is set (with `reason`) when the connection fails or closes, the avatar track ends,
    or the server says the session ended. Stalls are the client's to notice (`last_frame_at`).
    """

    def __init__(
        self,
        config: ConnectConfig,
        http: aiohttp.ClientSession,
        clock: Clock,
        on_frame: Callable[[Frame], None],
        on_message: Callable[[dict[str, Any]], None],
        replaces: str | None = None,
    ) -> None:
        self.config = config
        self.replaces = replaces  # the server's id of our previous peer, which this link takes over
        self.http = http
        self.clock = clock
        self.on_frame = on_frame
        self.on_message = on_message
        self.track = AvatarTrack(clock)
        self.pc = RTCPeerConnection(ice_configuration(config.ice_servers, config.ice_username, config.ice_credential))
        self.lost = asyncio.Event()
        self.reason = ""
        self.session: str | None = None
        self.peer: str | None = None  # the server's id of this link's peer
        self.opened_at = clock.now()
        self.last_frame_at: float | None = None
        self._channel: Any = None
        self._source: TrackSource | None = None
        self._pull: asyncio.Task[None] | None = None

    def _lose(self, reason: str) -> None:
        if not self.lost.is_set():
            self.reason = reason
            self.lost.set()

    async def open(self) -> None:
        """Offer, get the answer, start receiving. Raises `_Retry` or `ConnectError`."""
        pc = self.pc
        transceiver = pc.addTransceiver(self.track, direction="sendrecv")
        prefer_codec(transceiver, self.config.codec)
        self._channel = pc.createDataChannel("control")
        self._channel.on("message", self._on_channel_message)
        self._channel.on("close", lambda: self._lose("the server closed the data channel"))
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_state)
        await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers all candidates here
        options: dict[str, Any] = {"codec": self.config.codec, "stamp": self.config.stamp}
        if self.replaces is not None:  # a reconnect: the server frees the old peer's slot now
            options["replaces"] = self.replaces
        body = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "options": options}
        answer = await self._post_offer(body)
        self.session = answer.get("session")
        self.peer = answer.get("peer") if isinstance(answer.get("peer"), str) else None
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        self.opened_at = self.clock.now()

    async def _post_offer(self, body: dict[str, Any]) -> dict[str, Any]:
        url = self.config.base + "/offer"
        try:
            async with self.http.post(url, json=body, headers=_auth(self.config.token)) as response:
                answer = await _json_or_none(response)
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Retry(f"cannot reach {self.config.base}: {_describe(exc)}") from None
        if status == 200 and isinstance(answer, dict) and isinstance(answer.get("sdp"), str):
            return answer
        message = _server_error(answer, status)
        if status in (401, 403):
            raise ConnectError(f"the server refused the connection: {message}")
        if status in (429, 503) or status >= 500:
            wait = float(retry_after) if retry_after and retry_after.isdigit() else None
            raise _Retry(f"the server is busy: {message}", wait)
        raise ConnectError(f"the server refused the offer: {message}")

    def _on_track(self, track: Any) -> None:
        if track.kind != "video":
            return
        self._source = TrackSource(track, self.clock, read_stamps=self.config.stamp, name="avatar")
        self._pull = asyncio.get_running_loop().create_task(self._receive(self._source), name="connect-receive")

    async def _receive(self, source: TrackSource) -> None:
        try:
            while True:
                frame = await source.recv()
                self.last_frame_at = frame.captured
                self.on_frame(frame)
        except SourceEnded:
            self._lose("the avatar track ended")

    async def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self._lose(f"the connection {self.pc.connectionState}")

    def _on_channel_message(self, message: Any) -> None:
        try:
            data = json.loads(message)
        except (ValueError, TypeError):
            return
        if not isinstance(data, dict):
            return
        if data.get("type") == "stats" and data.get("state") == "ended":
            self._lose("the server ended the session")
        if data.get("type") == "error":
            log.warning("the server says: %s", data.get("error"))
        self.on_message(data)

    def send(self, data: dict[str, Any]) -> None:
        """A message to the server over the data channel, when it is open."""
        if self._channel is not None and self._channel.readyState == "open":
            self._channel.send(json.dumps(data))

    async def rtt(self) -> float | None:
        """The round-trip time (seconds) the server's receiver reports imply, if known yet."""
        with contextlib.suppress(Exception):  # aiortc's stats of a closing connection
            for stats in (await self.pc.getStats()).values():
                if getattr(stats, "type", "") == "remote-inbound-rtp" and stats.roundTripTime is not None:
                    return float(stats.roundTripTime)
        return None

    async def close(self) -> None:
        self._lose("closed")
        if self._pull is not None:
            self._pull.cancel()
            await asyncio.gather(self._pull, return_exceptions=True)
        await self.track.close()
        if self._source is not None:
            await self._source.close()
        try:
            await asyncio.wait_for(self.pc.close(), 5.0)
        except Exception as exc:  # aiortc's own state on a half-open connection
            log.info("closing the peer connection: %s: %s", type(exc).__name__, exc)


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer (timed out)"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return (
            f"its certificate is not trusted ({exc.certificate_error.__class__.__name__}: "
            f"{getattr(exc.certificate_error, 'verify_message', exc.certificate_error)}); pass --cafile CERT.pem "
            "(for `serve --tls-self-signed`, the self-signed.crt it logged)"
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return str(exc.os_error.strerror or exc.os_error).lower()
    return str(exc) or type(exc).__name__


async def probe(http: aiohttp.ClientSession, config: ConnectConfig) -> dict[str, Any]:
    """The server's /api/info, after checking it is an avatarcam server that accepts our token and
    drives avatars from connecting cameras. Raises `ConnectError` with one clear line."""
    base = config.base
    try:
        async with http.get(base + "/healthz") as response:
            health, status = await _json_or_none(response), response.status
        if status == 403 and isinstance(health, dict) and "error" in health:  # its Host allow-list
            raise ConnectError(f"the server at {base} refused: {_server_error(health, status)}")
        if status != 200 or not isinstance(health, dict) or health.get("ok") is not True:
            raise ConnectError(f"{base} is not an avatarcam server (GET /healthz answered HTTP {status}, not its JSON)")
        async with http.get(base + "/api/info", headers=_auth(config.token)) as response:
            info, status = await _json_or_none(response), response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ConnectError(
            f"cannot reach {base}: {_describe(exc)}; check the address and that `avatarcam serve` runs there"
        ) from None
    if status == 401:
        raise ConnectError(
            f"the server refused the access token: {_server_error(info, status)} "
            "(pass the token `avatarcam serve` printed: --token T, or the URL with ?token=T)"
        )
    if status != 200:
        raise ConnectError(f"the server at {base} refused: {_server_error(info, status)}")
    if not isinstance(info, dict) or not isinstance(info.get("resolution"), int) or "source" not in info:
        raise ConnectError(f"{base} is not an avatarcam server (its /api/info lacks the source and resolution)")
    if info["source"] != "webrtc":
        raise ConnectError(
            f"the server at {base} drives its avatar from its own source ({info['source']}), not from a "
            "connecting camera: start it with `avatarcam serve AVATAR --source webrtc`"
        )
    return info


# ---- the client ----------------------------------------------------------------------------------


def _virtual_camera(size: tuple[int, int], fps: float, clock: Clock, backend: str | None) -> Sink:
    """The service's VirtualCamSink at `size`, or, where the sink frames the avatar into a
    webcam-shaped picture itself (issue 17's `FramingConfig` API), at its default camera size.
    Transitional: one branch goes once that change has landed."""
    import importlib
    import inspect

    make: Any = VirtualCamSink
    if "framing" in inspect.signature(make).parameters:
        framing = importlib.import_module("streamer.framing").FramingConfig()
        sink: Sink = make(framing, fps, clock, backend)
    else:
        sink = make(*size, fps, clock, backend)
    return sink


class _ScaledSource:
    """A source whose frames are scaled down to `max_width` (in a worker thread)."""

    def __init__(self, source: Source, max_width: int) -> None:
        self.source = source
        self.name = source.name
        self.max_width = max_width
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="connect-scale")

    def _scale(self, image: U8) -> U8:
        import cv2

        height, width = image.shape[:2]
        if width <= self.max_width:
            return image
        size = (self.max_width, round(height * self.max_width / width) // 2 * 2)
        return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)

    async def recv(self) -> Frame:
        frame = await self.source.recv()
        if frame.image.shape[1] <= self.max_width:
            return frame
        image = await asyncio.get_running_loop().run_in_executor(self._executor, self._scale, frame.image)
        return frame.derive(image)

    async def close(self) -> None:
        await self.source.close()
        self._executor.shutdown(wait=True, cancel_futures=True)


class Client:
    """The connect client: `startup()`, `main_loop()` until `should_exit` (or --seconds),
    `shutdown()` returns the final report."""

    def __init__(self, config: ConnectConfig, clock: Clock | None = None) -> None:
        self.config = config.resolved()
        self.clock = clock or MonotonicClock()
        self.stats = ConnectStats(self.clock)
        self.should_exit = asyncio.Event()
        self.state = "connecting"
        self.link: Link | None = None
        self.info: dict[str, Any] = {}
        self.sinks: list[Sink] = []
        self.source: Source | None = None
        self.presenter: Presenter | None = None
        self._http: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # ---- lifecycle -----------------------------------------------------------------------------

    async def startup(self) -> None:
        """Check the server, then open the source and the sinks and start capturing."""
        config = self.config
        trust = ssl.create_default_context(cafile=str(config.cafile)) if config.cafile is not None else True
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=15, connect=5), connector=aiohttp.TCPConnector(ssl=trust)
        )
        self.info = await probe(self._http, config)
        set_bitrate(config.bitrate)
        resolution = int(self.info["resolution"])
        self.sinks = [self._open_sink(spec, (resolution, resolution)) for spec in config.sinks]
        self.presenter = Presenter(
            self.sinks,
            (resolution, resolution),
            config.fps,
            self.clock,
            self.stats,
            repeat_after=config.repeat_after,
            card_after=config.card_after,
        )
        self.presenter.set_state(False, "connecting", f"to {config.base}")
        source: Source
        if config.video is not None:
            source = FileSource(config.video, self.clock, loop=config.loop)
        else:
            assert config.camera is not None
            source = CameraSource(config.camera, self.clock)
        self.source = _ScaledSource(source, config.max_width)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._capture(), name="connect-capture"),
            loop.create_task(self.presenter.run(), name="connect-present"),
            loop.create_task(self._report(), name="connect-report"),
        ]

    def _open_sink(self, spec: SinkSpec, size: tuple[int, int]) -> Sink:
        if spec.kind == "virtualcam":
            return _virtual_camera(size, self.config.fps, self.clock, self.config.virtualcam_backend)
        if spec.kind == "file":
            return FileSink(Path(spec.target), self.clock, self.config.fps)
        if spec.kind == "window":
            from streamer.window import WindowSink

            return WindowSink(f"avatarcam: {self.config.base}", self.clock, on_quit=self.should_exit.set)
        if spec.kind == "null":
            return NullSink(self.clock)
        raise SinkError(f"--sink {spec}: use {SINK_KINDS}")

    async def main_loop(self) -> None:
        """Connect, watch the link, and reconnect with backoff until asked to exit."""
        attempt = 0
        previous: str | None = None  # the server's id of the last peer that got an answer
        while not self.should_exit.is_set():
            link = Link(self.config, self._require_http(), self.clock, self._on_frame, self._on_message, previous)
            try:
                await link.open()
            except _Retry as exc:
                await link.close()
                attempt += 1
                wait = exc.wait if exc.wait is not None else self._backoff(attempt)
                self._down(f"reconnecting (attempt {attempt})", f"{exc}; next try in {wait:.1f} s")
                await self._sleep(wait)
                continue
            except BaseException:
                await link.close()
                raise
            previous = link.peer or previous
            self.link = link
            self.state = "live"
            assert self.presenter is not None
            self.presenter.set_state(True)
            reason = await self._watch(link)
            self.link = None
            await link.close()
            if reason is None:
                break
            self.stats.reconnects += 1
            attempt = 0 if link.last_frame_at is not None else attempt
            attempt += 1
            wait = self._backoff(attempt)
            self._down(f"reconnecting (attempt {attempt})", f"{reason}; next try in {wait:.1f} s")
            await self._sleep(wait)

    async def shutdown(self) -> dict[str, Any]:
        """Close the link, source, sinks and HTTP session (each whatever the others do); the
        final report."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        closers: list[tuple[str, Callable[[], Any]]] = []
        if self.link is not None:
            closers.append(("the link", self.link.close))
        if self.source is not None:
            closers.append((self.source.name, self.source.close))
        closers += [(f"sink {sink.name}", sink.close) for sink in self.sinks]
        if self._http is not None:
            closers.append(("the HTTP session", self._http.close))
        for name, close in closers:
            try:
                await close()
            except Exception:
                log.exception("connect: closing %s failed", name)
        return self.report()

    def report(self) -> dict[str, Any]:
        sink_dropped = sum(int(getattr(s, "dropped", 0)) for s in self.sinks)
        return {
            "url": self.config.base,
            "codec": self.config.codec,
            "source": self.source.name if self.source is not None else None,
            "sinks": [str(s) for s in self.config.sinks],
            "resolution": self.info.get("resolution"),
            **self.stats.report(sink_dropped),
        }

    # ---- the loop's parts ----------------------------------------------------------------------

    def _require_http(self) -> aiohttp.ClientSession:
        assert self._http is not None, "startup() first"
        return self._http

    def _backoff(self, attempt: int) -> float:
        return float(min(self.config.max_backoff, 0.25 * 2 ** (attempt - 1)))

    def _down(self, title: str, detail: str) -> None:
        self.state = title
        if self.presenter is not None:
            self.presenter.set_state(False, "reconnecting", detail)
        print(f"avatarcam: {title}: {detail}", file=sys.stderr, flush=True)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.should_exit.wait(), seconds)

    async def _watch(self, link: Link) -> str | None:
        """Wait until the link is lost (its reason) or the client should exit (None)."""
        config = self.config
        while True:
            await asyncio.sleep(0.1)  # a watchdog's poll, not pacing
            if self.should_exit.is_set():
                return None
            if link.lost.is_set():
                return link.reason
            now = self.clock.now()
            if link.last_frame_at is None and now - link.opened_at > config.first_frame_seconds:
                return f"no avatar frame within {config.first_frame_seconds:.0f} s"
            if link.last_frame_at is not None and now - link.last_frame_at > config.stall_seconds:
                return f"no avatar frame for {config.stall_seconds:.0f} s"
            first = self.stats.first_frame_at
            if config.seconds is not None and first is not None and now - first >= config.seconds:
                self.should_exit.set()

    async def _capture(self) -> None:
        assert self.source is not None
        try:
            while True:
                frame = await self.source.recv()
                link = self.link
                if link is None:
                    continue  # the camera keeps running while the link is down
                if self.config.stamp:
                    with contextlib.suppress(ValueError):  # too small to carry an id
                        self.stats.stamped(frame)
                self.stats.frames_sent += 1
                if not link.track.send(frame):
                    self.stats.capture_dropped += 1
        except SourceEnded:
            print(f"avatarcam: {self.source.name} ended", file=sys.stderr, flush=True)
            self.should_exit.set()

    def _on_frame(self, frame: Frame) -> None:
        self.stats.received(frame)
        if self.presenter is not None:
            self.presenter.show(frame)

    def _on_message(self, data: dict[str, Any]) -> None:
        if data.get("type") == "stats":
            self.stats.server = data

    async def _report(self) -> None:
        """Once a second: sample the RTT, tell the server our glass-to-glass (its dashboard shows
        it), print the status line."""
        if self.config.report_every <= 0:
            return
        pacer = Pacer(1 / self.config.report_every, self.clock)
        while True:
            await pacer.wait()
            link = self.link
            if link is not None:
                rtt = await link.rtt()
                if rtt is not None:
                    self.stats.rtt.append(rtt)
                glass = _percentiles(self.stats.glass[-WINDOW:])
                if glass is not None:
                    link.send({"type": "glass", "ms": glass["p50"]})
            sink_dropped = sum(int(getattr(s, "dropped", 0)) for s in self.sinks)
            print(self.stats.line(self.state, sink_dropped), file=sys.stderr, flush=True)


async def connect(config: ConnectConfig, clock: Clock | None = None) -> dict[str, Any]:
    """Run the client until SIGINT/SIGTERM, the window's q, the end of a non-looping video or
    --seconds; the final report (also written to `config.json_path`)."""
    client = Client(config, clock)
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # Windows, not main thread
            loop.add_signal_handler(sig, client.should_exit.set)
            installed.append(sig)
    try:
        await client.startup()
        await client.main_loop()
    finally:
        report = await client.shutdown()
        for sig in installed:
            loop.remove_signal_handler(sig)
    if client.config.json_path is not None:
        client.config.json_path.write_text(json.dumps(report, indent=2))
    return report


def run(config: ConnectConfig) -> dict[str, Any]:
    """The CLI's entry point."""
    return asyncio.run(connect(config))
