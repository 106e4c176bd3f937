"""`avatarcam connect` against a gateway's room link (`http://GW/?room=N&role=driver&room_token=T`).

Chosen by the link's form (`room_link`): the client joins through the gateway's rooms API
(`POST /api/rooms/N/join`), then talks to Janus itself with a `JanusSession`: a driver publishes
its camera as `DRIVER` and subscribes to `AVATAR`; a viewer only subscribes. `RoomLink` has the
interface of `Link` (serve's one peer connection), so the client's loop, sinks, reconnects and
glass-to-glass figures (frame ids painted into the camera frames, read back from the avatar's)
are the same ones. What a room has not: a data channel to the server, so nothing is reported
back (the gateway's fleet view shows no glass-to-glass from connect).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp

from streamer.connect.config import ConnectConfig, ConnectError
from streamer.connect.link import (
    _describe,
    _json_or_none,
    _Retry,
    _server_error,
    close_media,
    receive_frames,
    sender_rtt,
)
from streamer.core.clock import Clock
from streamer.core.frames import Frame
from streamer.janus.client import AVATAR, DRIVER, JanusDown, JanusError, JanusSession, Publisher, Room, Subscriber
from streamer.sinks.webrtc import AvatarTrack
from streamer.sources.track import TrackSource

log = logging.getLogger(__name__)

ROLES = ("driver", "viewer")


@dataclass(frozen=True)
class RoomRef:
    """A room link's parts: the gateway, the room number, the role, the room's token."""

    base: str
    room: int
    role: str
    token: str

    @property
    def publishes(self) -> bool:
        return self.role == "driver"


def room_link(url: str) -> RoomRef | None:
    """The room a gateway link names (None for any other URL: serve's). ConnectError for a
    room link that lacks its role or token, or names them wrongly."""
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    if "room" not in query:
        return None
    usage = "use the room link the gateway's operator gave: http://GATEWAY/?room=N&role=driver|viewer&room_token=T"
    rooms, roles, tokens = query.get("room", []), query.get("role", []), query.get("room_token", [])
    if len(rooms) != 1 or not rooms[0].isdecimal() or len(rooms[0]) > 18:
        raise ConnectError(f"the link's room must be one number: {usage}")
    if len(roles) != 1 or roles[0] not in ROLES:
        raise ConnectError(f"the link's role must be driver or viewer: {usage}")
    if len(tokens) != 1 or not tokens[0]:
        raise ConnectError(f"the link has no room_token: {usage}")
    return RoomRef(f"{parts.scheme}://{parts.netloc}", int(rooms[0]), roles[0], tokens[0])


async def join(http: aiohttp.ClientSession, ref: RoomRef) -> dict[str, Any]:
    """The gateway's join answer (`janus`, `room`, `pin`, `publish`, `subscribe`, `target`).
    ConnectError with the gateway's own words when it refuses; _Retry when it is busy or
    unreachable (at startup the client turns that into a ConnectError too)."""
    url = f"{ref.base}/api/rooms/{ref.room}/join"
    try:
        async with http.post(url, json={"role": ref.role, "token": ref.token}) as response:
            answer, status = await _json_or_none(response), response.status
            retry_after = response.headers.get("Retry-After")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _Retry(f"cannot reach the gateway at {ref.base}: {_describe(exc)}") from None
    if status == 200 and isinstance(answer, dict) and isinstance(answer.get("target"), str):
        return answer
    message = _server_error(answer, status)
    if status >= 500:
        wait = float(retry_after) if retry_after is not None and retry_after.isdigit() else None
        raise _Retry(f"the gateway is busy: {message}", wait)
    if status == 404 and not isinstance(answer, dict):
        raise ConnectError(f"{ref.base} is not an avatarcam gateway (POST {url} answered HTTP 404)")
    raise ConnectError(f"the gateway refused to let us join room {ref.room} as {ref.role}: {message}")


class RoomLink:
    """One stay in a room through Janus: our camera published as DRIVER (drivers only), the
    AVATAR subscribed (it follows a restarted session's re-publish by itself). The same
    interface as `Link`: `open`, `track`, `lost`/`reason`, `last_frame_at`, `rtt`, `send`, `close`."""

    def __init__(
        self,
        config: ConnectConfig,
        ref: RoomRef,
        http: aiohttp.ClientSession,
        clock: Clock,
        on_frame: Callable[[Frame], None],
        joined: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.ref = ref
        self.http = http
        self.joined = joined  # the gateway's join answer (None: open() joins)
        self.room: Room | None = None
        self.clock = clock
        self.on_frame = on_frame
        self.track = AvatarTrack(clock)
        self.lost = asyncio.Event()
        self.reason = ""
        self.reconnect: str | None = None  # rooms have no slot to take over
        self.opened_at = clock.now()
        self.last_frame_at: float | None = None
        self.janus: JanusSession | None = None
        self.publisher: Publisher | None = None
        self.subscriber: Subscriber | None = None
        self._source: TrackSource | None = None
        self._pull: asyncio.Task[None] | None = None

    def _lose(self, reason: str) -> None:
        if not self.lost.is_set():
            self.reason = reason
            self.lost.set()

    async def open(self) -> None:
        """Publish (a driver), subscribe to the avatar, start receiving. `_Retry` when Janus is
        down or the avatar is not published yet; ConnectError when Janus refuses the room."""
        if self.joined is None:
            self.joined = await join(self.http, self.ref)
        try:
            self.room = room = Room.parse(str(self.joined["target"]))
        except JanusError as exc:
            raise ConnectError(f"the gateway's join answer has no usable Janus target: {exc}") from None
        publish, subscribe = self.joined.get("publish"), str(self.joined.get("subscribe") or AVATAR)
        try:
            self.janus = await JanusSession.open(room.url, api_secret=room.api_secret)
            if publish:
                self.publisher = await self.janus.publish(room, self.track, display=str(publish) or DRIVER)
                self.publisher.pc.on("connectionstatechange", self._on_state)
            self.subscriber = await self.janus.subscribe(
                room, display=subscribe, timeout=self.config.first_frame_seconds
            )
        except JanusDown as exc:
            raise _Retry(f"Janus is not reachable: {exc}") from None
        except JanusError as exc:
            if "no publisher" in str(exc):
                raise _Retry(f"the room's avatar is not published yet ({exc})") from None
            raise ConnectError(f"Janus refused room {room.room}: {exc}") from None
        assert self.subscriber.track is not None
        self.subscriber.pc.on("connectionstatechange", self._on_state)
        self._source = TrackSource(self.subscriber.track, self.clock, read_stamps=self.config.stamp, name="avatar")
        self._pull = asyncio.get_running_loop().create_task(
            receive_frames(self, self._source), name="connect-room-receive"
        )
        self.opened_at = self.clock.now()

    async def _on_state(self) -> None:
        for pc in (p.pc for p in (self.publisher, self.subscriber) if p is not None):
            if pc.connectionState in ("failed", "closed"):
                self._lose(f"the connection to Janus {pc.connectionState}")

    def send(self, data: dict[str, Any]) -> None:
        """Nothing to send to: a room has no data channel to the session (see the module docstring)."""

    async def rtt(self) -> float | None:
        """The round-trip time to Janus that its receiver reports on our camera imply."""
        return None if self.publisher is None else await sender_rtt(self.publisher.pc)

    async def close(self) -> None:
        await close_media(self)
        if self.janus is not None:
            try:
                await asyncio.wait_for(self.janus.close(), 10.0)
            except Exception as exc:
                log.info("leaving room %d: %s: %s", self.ref.room, type(exc).__name__, exc)
