"""One peer connection to the server (offer, answer, the returned track, the data channel), and
the probe that checks a server before the first one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription

from streamer.connect.config import ConnectConfig, ConnectError
from streamer.core.clock import Clock
from streamer.core.frames import Frame
from streamer.core.rtc import ice_configuration, prefer_codec
from streamer.sinks.webrtc import AvatarTrack
from streamer.sources.base import SourceEnded
from streamer.sources.track import TrackSource

log = logging.getLogger(__name__)


class _Retry(Exception):
    """This attempt failed in a way a later one may not (server restarting, busy, network)."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.wait = wait


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
        self.replaces = replaces  # the reconnect secret of our previous peer, which this link takes over
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
        self.reconnect: str | None = None  # its secret: the next link names it to take over its slot
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
        if self.replaces is not None:  # a reconnect: the server gives the old peer's slot to this one
            options["replaces"] = self.replaces
        body = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "options": options}
        answer = await self._post_offer(body)
        self.session = answer.get("session")
        self.peer = answer.get("peer") if isinstance(answer.get("peer"), str) else None
        self.reconnect = answer.get("reconnect") if isinstance(answer.get("reconnect"), str) else None
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
        self._pull = asyncio.get_running_loop().create_task(receive_frames(self, self._source), name="connect-receive")

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
        return await sender_rtt(self.pc)

    async def close(self) -> None:
        await close_media(self)
        try:
            await asyncio.wait_for(self.pc.close(), 5.0)
        except Exception as exc:  # aiortc's own state on a half-open connection
            log.info("closing the peer connection: %s: %s", type(exc).__name__, exc)


class MediaLink(Protocol):
    """What `close_media` needs of a link to a server or to a room."""

    _pull: asyncio.Task[None] | None
    _source: Any
    track: Any

    def _lose(self, reason: str) -> None: ...


async def receive_frames(link: Any, source: TrackSource) -> None:
    """Hand each avatar frame to the link's `on_frame` until the track ends (both kinds of link)."""
    try:
        while True:
            frame = await source.recv()
            link.last_frame_at = frame.captured
            link.on_frame(frame)
    except SourceEnded:
        link._lose("the avatar track ended")


async def close_media(link: MediaLink) -> None:
    """Stop pulling the avatar, end the camera track and its source (both kinds of link)."""
    link._lose("closed")
    if link._pull is not None:
        link._pull.cancel()
        await asyncio.gather(link._pull, return_exceptions=True)
    await link.track.close()
    if link._source is not None:
        await link._source.close()


async def sender_rtt(pc: Any) -> float | None:
    """The round-trip time (seconds) that the far receiver's reports on `pc`'s sent media imply."""
    with contextlib.suppress(Exception):  # aiortc's stats of a closing connection
        for stats in (await pc.getStats()).values():
            if getattr(stats, "type", "") == "remote-inbound-rtp" and stats.roundTripTime is not None:
                return float(stats.roundTripTime)
    return None


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
