"""An async Janus VideoRoom client over Janus's HTTP transport (aiohttp), with aiortc peers.

The interface the scale-out builds on (the Ray actor, the gateway, the tests):

    room = Room.parse("http://127.0.0.1:8088/janus#room=1234&pin=PIN")
    async with await JanusSession.open(room.url) as janus:
        number = await janus.create_room(secret=ADMIN, pin=PIN)           # -> room number
        publisher = await janus.publish(room, track, display=AVATAR)      # Publisher: feed, pc
        subscriber = await janus.subscribe(room, display=AVATAR)          # Subscriber: track
        frame = await subscriber.track.recv()

- `Room` is what a participant needs to join: the Janus URL, the room number and its pin (no
  admin secret). `Room.target()` is a string for registries and `--source`/`--sink`:
  `URL#room=N&pin=PIN` (the pin URL-encoded; `&apisecret=S` added when `Room.api_secret` is
  set, for a Janus whose API needs one); `Room.parse` reads it back.
- Rooms are made with a `secret` (to destroy them) and a `pin` (to join): only holders of the pin
  publish or subscribe. Listing a room's publishers (`publishers`) and `exists` need neither:
  Janus answers those to anyone who can reach its API (guard the API with `api_secret`).
- `JanusSession` is one Janus session: requests are POSTed, events (answers to asynchronous
  requests, renegotiation offers, other participants' news) come from one long-poll GET loop, and
  a keepalive goes out every `KEEPALIVE` seconds.
- `publish` joins as a publisher with a display name (`DRIVER`, `AVATAR`) and sends the track
  over its own aiortc peer connection (VP8 first, `streamer.core.rtc`), sendonly.
- `subscribe` waits for a publisher with that display (`timeout`), receives its video on one
  aiortc peer connection, and *follows* that display: when a new publisher with the same display
  appears (a restarted avatar session), it sends the VideoRoom `switch` request on its existing
  subscriber handle. Janus then feeds the new publisher's stream into the same m-line: same
  handle, same peer connection, same `track`; `switches` counts them. When the old publisher left
  first, Janus has marked the m-line inactive (an "updated" offer) and the switch re-activates it
  with another offer: both are answered on the same peer connection. To learn about new
  publishers, a subscriber also holds a second handle joined as a non-publishing participant
  (it never publishes, so `publishers` does not list it).

Errors: `JanusDown` when the URL cannot be reached (it names the URL); `JanusError` for what
Janus refuses, in words ("no room 1234", "wrong room pin for room 1234").

Janus never gathers ICE candidates on a loopback interface (its ice.c skips IFF_LOOPBACK), so
participants and Janus need one other interface in common: on one machine that is any LAN or
virtual interface; in the tests' private network namespace a veth pair (`tests/netns.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from streamer.core.rtc import ice_configuration, prefer_codec

log = logging.getLogger(__name__)

DRIVER = "driver"  # the display of the driver's camera in a room
AVATAR = "avatar"  # the display of the avatar in a room
# Publishers a room admits at once: the driver and the avatar, plus the avatars of sessions that
# died with their node, which Janus keeps until their session times out (60 s without a
# keepalive). bench_cluster's fifth node kill in a minute found 4 too few: the restarted session's
# publish was refused ("Maximum number of publishers (4) already reached").
PUBLISHERS = 16
PLUGIN = "janus.plugin.videoroom"
KEEPALIVE = 25.0  # seconds between keepalives (Janus drops a silent session after 60 s)
POLL_EVENTS = 10  # events one long-poll GET may bring back

# VideoRoom error codes (janus_videoroom.c)
NO_SUCH_ROOM, UNAUTHORIZED, NO_SUCH_FEED, ROOM_EXISTS = 426, 433, 428, 427


class JanusError(Exception):
    """Janus refused a request, or answered something this client cannot use."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class JanusDown(JanusError):
    """Janus cannot be reached at the URL."""


@dataclass(frozen=True)
class Room:
    """What a participant needs to join a room: the Janus API URL, the room number, its pin.

    `target()` gives `URL#room=N&pin=PIN` (pin URL-encoded), what registries and the `janus`
    source and sink take; `Room.parse` reads it back.
    """

    url: str
    room: int
    pin: str
    api_secret: str | None = None  # Janus's API secret, when its API has one

    def target(self) -> str:
        fields: dict[str, str | int] = {"room": self.room, "pin": self.pin}
        if self.api_secret is not None:
            fields["apisecret"] = self.api_secret
        return f"{self.url}#{urlencode(fields)}"

    @classmethod
    def parse(cls, target: str) -> Room:
        usage = "use http://HOST:PORT/janus#room=N&pin=PIN (Room.target())"
        parts = urlsplit(target)
        fields = parse_qs(parts.fragment, keep_blank_values=True)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise JanusError(f"janus target {target!r} has no http(s) URL: {usage}")
        rooms, pins, api = fields.get("room", []), fields.get("pin", []), fields.get("apisecret", [])
        if len(rooms) != 1 or not rooms[0].isdigit() or len(pins) != 1 or len(api) > 1:
            raise JanusError(f"janus target {_redact(target)!r} needs one room number and one pin: {usage}")
        return cls(parts._replace(fragment="").geturl(), int(rooms[0]), pins[0], api[0] if api else None)

    @classmethod
    def valid(cls, target: str) -> bool:
        try:
            cls.parse(target)
        except JanusError:
            return False
        return True

    def __repr__(self) -> str:  # the pin and the API secret stay out of logs
        return f"Room(url={self.url!r}, room={self.room}, pin='***')"

    def __str__(self) -> str:
        return f"{self.url}#room={self.room}"


def _redact(target: str) -> str:
    return target.split("#", 1)[0] + "#..." if "#" in target else target


def _explain(code: int | None, reason: str, request: str, room: int | None) -> str:
    if code == NO_SUCH_ROOM:
        return f"no room {room}: create it first (JanusSession.create_room) or check the room number"
    if code == UNAUTHORIZED and request == "join":
        return f"wrong room pin for room {room}: use the pin the room was created with"
    if code == UNAUTHORIZED:
        return f"wrong room secret (or admin key) for room {room}: {reason}"
    if code == ROOM_EXISTS:
        return f"room {room} exists already: pick another number or let Janus choose (room=None)"
    return f"Janus refused {request!r}" + (f" for room {room}" if room is not None else "") + f": {reason} ({code})"


@dataclass
class _Waiter:
    future: asyncio.Future[tuple[dict[str, Any], dict[str, Any] | None]]


class _Handle:
    """One attached VideoRoom plugin handle: requests, and its unsolicited events in a queue."""

    def __init__(self, session: JanusSession, handle_id: int) -> None:
        self.session = session
        self.id = handle_id
        self.events: asyncio.Queue[tuple[dict[str, Any], dict[str, Any] | None]] = asyncio.Queue()
        self.detached = False

    async def request(self, body: dict[str, Any], jsep: dict[str, Any] | None = None) -> dict[str, Any]:
        """A synchronous VideoRoom request (create, destroy, exists, listparticipants)."""
        data, _ = await self.message(body, jsep)
        return data

    async def message(
        self, body: dict[str, Any], jsep: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Send a request; its answer (plugin data, jsep), waiting for the event of an
        asynchronous one. JanusError when the plugin refuses it."""
        message: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            message["jsep"] = jsep
        data, answer_jsep = await self.session._send(f"/{self.session.id}/{self.id}", message, timeout=timeout)
        if "error_code" in data or "error" in data:
            raise JanusError(
                _explain(data.get("error_code"), str(data.get("error")), str(body.get("request")), body.get("room")),
                data.get("error_code"),
            )
        return data, answer_jsep

    async def detach(self) -> None:
        if self.detached:
            return
        self.detached = True
        self.session._handles.pop(self.id, None)
        with contextlib.suppress(JanusError, asyncio.TimeoutError):
            await self.session._send(f"/{self.session.id}/{self.id}", {"janus": "detach"}, timeout=2.0)


@dataclass
class Publisher:
    """A track published into a room: its feed id, its peer connection; `close()` leaves."""

    room: Room
    display: str
    feed: int
    pc: RTCPeerConnection
    handle: _Handle = field(repr=False)

    async def close(self) -> None:
        await self.pc.close()
        await self.handle.detach()


class Subscriber:
    """A room's publisher of one display, received: `track` is its video (an aiortc remote
    track); it follows re-publishes of that display with `switch` (`switches` counts them)."""

    def __init__(self, room: Room, display: str, pc: RTCPeerConnection, handle: _Handle, watcher: _Handle) -> None:
        self.room = room
        self.display = display
        self.pc = pc
        self.handle = handle
        self.watcher = watcher
        self.feed = 0
        self.mid = ""  # the subscription's m-line
        self.switches = 0
        self.track: MediaStreamTrack | None = None
        self._seen: set[int] = set()
        self._signaling = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.closed = False

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._follow(), name=f"janus-follow-{self.room.room}"),
            loop.create_task(self._renegotiate(), name=f"janus-offers-{self.room.room}"),
        ]

    async def _answer(self, offer: dict[str, Any]) -> None:
        """Answer an offer from Janus on this peer connection (the first, or an update)."""
        await self.pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        local = self.pc.localDescription
        await self.handle.message({"request": "start"}, {"type": local.type, "sdp": local.sdp})

    async def _renegotiate(self) -> None:
        """Answer Janus's "updated" offers (the publisher left: m-line inactive; a switch re-activated it)."""
        while True:
            data, jsep = await self.handle.events.get()
            if jsep is not None and jsep.get("type") == "offer":
                async with self._signaling:
                    try:
                        await self._answer(jsep)
                    except JanusError as exc:
                        log.warning("room %d: answering Janus's updated offer failed: %s", self.room.room, exc)
            elif data.get("videoroom") in ("destroyed",) or data.get("janus") == "hangup":
                log.info("room %d: subscription ended (%s)", self.room.room, data)

    async def _follow(self) -> None:
        """Switch to each new publisher with our display (a restarted session's re-publish)."""
        while True:
            data, _ = await self.watcher.events.get()
            for feed, mid in _video_feeds(data.get("publishers", []), self.display):
                if feed in self._seen:
                    continue
                self._seen.add(feed)
                async with self._signaling:
                    try:
                        await self.handle.message(
                            {"request": "switch", "streams": [{"feed": feed, "mid": mid, "sub_mid": self.mid}]}
                        )
                    except JanusError as exc:
                        log.warning("room %d: cannot switch to feed %d: %s", self.room.room, feed, exc)
                        continue
                    self.feed = feed
                    self.switches += 1
                    log.info(
                        "room %d: %s is now feed %d (switch %d)", self.room.room, self.display, feed, self.switches
                    )

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pc.close()
        await self.handle.detach()
        await self.watcher.detach()


def _video_feeds(publishers: list[dict[str, Any]], display: str) -> list[tuple[int, str]]:
    """(feed id, mid of its video stream) of the publishers shown as `display`."""
    found = []
    for publisher in publishers:
        if publisher.get("display") != display or publisher.get("dummy"):
            continue
        for stream in publisher.get("streams", []):
            if stream.get("type") == "video" and not stream.get("disabled"):
                found.append((int(publisher["id"]), str(stream["mid"])))
                break
    return found


class JanusSession:
    """One Janus session over HTTP (see the module docstring). Make it with `await JanusSession.open(url)`."""

    def __init__(self, url: str, http: aiohttp.ClientSession, *, api_secret: str | None, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.http = http
        self.api_secret = api_secret
        self.timeout = timeout
        self.id = 0
        self._handles: dict[int, _Handle] = {}
        self._waiting: dict[str, _Waiter] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._control: _Handle | None = None
        self._participants: list[Publisher | Subscriber] = []
        self.closed = False

    # ---- the transport ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str, *, api_secret: str | None = None, timeout: float = 5.0) -> JanusSession:
        """Create a Janus session at `url` (http://HOST:PORT/janus). JanusDown when nothing
        answers there; JanusError when something that is not Janus (or refuses us) does."""
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=timeout))
        session = cls(url, http, api_secret=api_secret, timeout=timeout)
        try:
            answer = await session._post("", {"janus": "create"})
            session.id = int(answer["data"]["id"])
        except BaseException:
            await http.close()
            raise
        loop = asyncio.get_running_loop()
        session._tasks = [
            loop.create_task(session._poll(), name="janus-poll"),
            loop.create_task(session._keepalive(), name="janus-keepalive"),
        ]
        return session

    def _down(self, exc: BaseException) -> JanusDown:
        return JanusDown(
            f"cannot reach Janus at {self.url} ({exc.__class__.__name__}: {exc}): start Janus "
            "(janus -F CONFIG_DIR, or streamer.janus.server.JanusServer) or fix the URL"
        )

    async def _post(self, path: str, message: dict[str, Any]) -> dict[str, Any]:
        """POST one Janus API message; the parsed answer (JanusError for a Janus error)."""
        message = {"transaction": secrets.token_hex(8), **message}
        if self.api_secret is not None:
            message["apisecret"] = self.api_secret
        try:
            async with self.http.post(
                self.url + path, json=message, timeout=aiohttp.ClientTimeout(total=self.timeout)
            ) as response:
                if response.status != 200:
                    raise JanusError(f"{self.url} answered HTTP {response.status}: is this Janus's HTTP API (…/janus)?")
                answer: dict[str, Any] = await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientConnectionError, OSError) as exc:
            raise self._down(exc) from exc
        except ValueError as exc:
            raise JanusError(f"{self.url} did not answer JSON: is this Janus's HTTP API (…/janus)?") from exc
        if answer.get("janus") == "error":
            error = answer.get("error", {})
            code, reason = error.get("code"), error.get("reason")
            if code == 403:
                raise JanusError(f"Janus at {self.url} refused the API secret: pass the right api_secret", code)
            raise JanusError(f"Janus at {self.url} refused {message.get('janus')!r}: {reason} ({code})", code)
        answer["_transaction"] = message["transaction"]
        return answer

    async def _send(
        self, path: str, message: dict[str, Any], *, timeout: float | None = None
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """POST a handle message; for an asynchronous request, wait for its event."""
        transaction = secrets.token_hex(8)
        future: asyncio.Future[tuple[dict[str, Any], dict[str, Any] | None]] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting[transaction] = _Waiter(future)
        try:
            answer = await self._post(path, {**message, "transaction": transaction})
            if answer.get("janus") == "success":
                return answer.get("plugindata", {}).get("data", {}), answer.get("jsep")
            if answer.get("janus") != "ack":
                raise JanusError(f"Janus answered {answer.get('janus')!r} to {message.get('janus')!r}")
            return await asyncio.wait_for(future, timeout or self.timeout * 2)
        except TimeoutError:
            raise JanusError(f"Janus at {self.url} did not answer {message.get('body', message)} in time") from None
        finally:
            self._waiting.pop(transaction, None)

    async def _poll(self) -> None:
        """The long-poll loop: route each event to the request that waits for it or its handle."""
        params = {"maxev": str(POLL_EVENTS)}
        if self.api_secret is not None:
            params["apisecret"] = self.api_secret
        while not self.closed:
            try:
                async with self.http.get(
                    f"{self.url}/{self.id}", params=params, timeout=aiohttp.ClientTimeout(total=60)
                ) as response:
                    events = await response.json(content_type=None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.closed:
                    return
                log.warning("Janus event poll at %s failed: %s; retrying", self.url, exc)
                await asyncio.sleep(1.0)
                continue
            for event in events if isinstance(events, list) else [events]:
                self._dispatch(event)

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("janus")
        if kind == "keepalive":
            return
        data = event.get("plugindata", {}).get("data", {}) if kind == "event" else {"janus": kind}
        jsep = event.get("jsep")
        waiter = self._waiting.get(str(event.get("transaction")))
        # An "updated" offer may carry the transaction of the switch that caused it: it goes to
        # the handle, and the switch waits for its own "switched" event.
        if kind == "event" and waiter is not None and data.get("videoroom") != "updated" and not waiter.future.done():
            waiter.future.set_result((data, jsep))
            return
        handle = self._handles.get(int(event.get("sender", 0)))
        if handle is not None:
            handle.events.put_nowait((data, jsep))

    async def _keepalive(self) -> None:
        while not self.closed:
            await asyncio.sleep(KEEPALIVE)
            try:
                await self._post(f"/{self.id}", {"janus": "keepalive"})
            except JanusError as exc:
                log.warning("Janus keepalive at %s failed: %s", self.url, exc)

    async def _attach(self) -> _Handle:
        answer = await self._post(f"/{self.id}", {"janus": "attach", "plugin": PLUGIN})
        handle = _Handle(self, int(answer["data"]["id"]))
        self._handles[handle.id] = handle
        return handle

    async def _control_handle(self) -> _Handle:
        if self._control is None:
            self._control = await self._attach()
        return self._control

    # ---- rooms -----------------------------------------------------------------------------------

    async def create_room(
        self,
        *,
        secret: str,
        pin: str,
        description: str = "",
        room: int | None = None,
        publishers: int = PUBLISHERS,
        bitrate: int = 1_000_000,
        videocodec: str = "vp8",
        admin_key: str | None = None,
    ) -> int:
        """Create a room (number `room`, or one Janus picks) that `secret` destroys and `pin`
        joins; at most `publishers` publish at once, each capped at `bitrate` bits/s. The
        room is private (not in Janus's room list). Returns its number."""
        if not secret or not pin:
            raise JanusError("a room needs a secret (to destroy it) and a pin (to join it)")
        body: dict[str, Any] = {
            "request": "create",
            "secret": secret,
            "pin": pin,
            "description": description or "avatarcam",
            "publishers": publishers,
            "bitrate": bitrate,
            "videocodec": videocodec,
            "is_private": True,
            "permanent": False,
        }
        if room is not None:
            body["room"] = room
        if admin_key is not None:
            body["admin_key"] = admin_key
        data = await (await self._control_handle()).request(body)
        return int(data["room"])

    async def destroy_room(self, room: int, *, secret: str) -> None:
        """Destroy a room; its participants are dropped."""
        await (await self._control_handle()).request({"request": "destroy", "room": room, "secret": secret})

    async def exists(self, room: int) -> bool:
        data = await (await self._control_handle()).request({"request": "exists", "room": room})
        return bool(data.get("exists"))

    async def publishers(self, room: Room) -> list[tuple[int, str]]:
        """(feed id, display) of the room's publishers that are sending now."""
        data = await (await self._control_handle()).request({"request": "listparticipants", "room": room.room})
        return [(int(p["id"]), str(p.get("display", ""))) for p in data.get("participants", []) if p.get("publisher")]

    # ---- participants ----------------------------------------------------------------------------

    async def publish(self, room: Room, track: MediaStreamTrack, *, display: str, codec: str = "vp8") -> Publisher:
        """Join `room` as a publisher shown as `display` and send `track` (sendonly)."""
        handle = await self._attach()
        pc: RTCPeerConnection | None = None
        try:
            joined, _ = await handle.message(
                {"request": "join", "ptype": "publisher", "room": room.room, "pin": room.pin, "display": display}
            )
            pc = RTCPeerConnection(ice_configuration(()))
            transceiver = pc.addTransceiver(track, direction="sendonly")
            prefer_codec(transceiver, codec)
            await pc.setLocalDescription(await pc.createOffer())
            offer = pc.localDescription
            _, answer = await handle.message(
                {"request": "publish", "display": display}, {"type": offer.type, "sdp": offer.sdp}, timeout=10.0
            )
            if answer is None:
                raise JanusError(f"Janus accepted the publish in room {room.room} but sent no answer")
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        except BaseException:
            if pc is not None:
                await pc.close()
            await handle.detach()
            raise
        publisher = Publisher(room, display, int(joined["id"]), pc, handle)
        self._participants.append(publisher)
        return publisher

    async def subscribe(self, room: Room, *, display: str, timeout: float = 10.0) -> Subscriber:
        """Receive the video of the publisher shown as `display` (waiting up to `timeout`
        seconds for one) and follow that display across re-publishes (see the module docstring)."""
        watcher = await self._attach()
        handle: _Handle | None = None
        pc: RTCPeerConnection | None = None
        try:
            joined, _ = await watcher.message(
                {
                    "request": "join",
                    "ptype": "publisher",
                    "room": room.room,
                    "pin": room.pin,
                    "display": f"({display} viewer)",
                }
            )
            feeds = _video_feeds(joined.get("publishers", []), display)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while not feeds:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise JanusError(f"no publisher {display!r} in room {room.room} after {timeout:g} s")
                try:
                    data, _ = await asyncio.wait_for(watcher.events.get(), remaining)
                except TimeoutError:
                    continue
                feeds = _video_feeds(data.get("publishers", []), display)
            feed, mid = feeds[-1]
            handle = await self._attach()
            pc = RTCPeerConnection(ice_configuration(()))
            subscriber = Subscriber(room, display, pc, handle, watcher)
            subscriber._seen.update(f for f, _ in feeds)
            attached, offer = await handle.message(
                {
                    "request": "join",
                    "ptype": "subscriber",
                    "room": room.room,
                    "pin": room.pin,
                    "streams": [{"feed": feed, "mid": mid}],
                },
                timeout=10.0,
            )
            if offer is None:
                raise JanusError(f"Janus attached the subscription in room {room.room} but sent no offer")
            streams = [s for s in attached.get("streams", []) if s.get("type") == "video"]
            subscriber.feed, subscriber.mid = feed, str(streams[0]["mid"]) if streams else "0"
            await subscriber._answer(offer)
            transceiver = next(t for t in pc.getTransceivers() if t.kind == "video")
            subscriber.track = transceiver.receiver.track
        except BaseException:
            if pc is not None:
                await pc.close()
            for h in (handle, watcher):
                if h is not None:
                    await h.detach()
            raise
        subscriber._start()
        self._participants.append(subscriber)
        return subscriber

    # ---- lifetime --------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close every publisher and subscriber of this session, then the session."""
        if self.closed:
            return
        for participant in self._participants:
            with contextlib.suppress(Exception):
                await participant.close()
        self.closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(JanusError):
            await self._post(f"/{self.id}", {"janus": "destroy"})
        await self.http.close()

    async def __aenter__(self) -> JanusSession:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
