"""`avatarcam gateway`: the front door of a cluster (docs/cluster.md).

aiohttp on one port, with serve's security (Host allow-list, tokens, cookies, headers):

- `/` the page, `/dashboard` the fleet view (nodes, sessions, fps, latency, capacity left:
  `web/fleet.html`), `/static/*` the files of `web/`;
- `POST /api/rooms` (operator; `{"avatar": NAME}`): creates a Janus room with a random secret
  and pin, places the avatar's session actor on the cluster, returns the room's number, its
  driver and viewer tokens and links;
- `GET /api/rooms` (operator): the rooms with their sessions' fps, latency and node;
- `POST /api/rooms/{room}/join` (`{"role": "driver"|"viewer", "token": ROOM_TOKEN}`): what a
  participant needs: the Janus URL, the room, its pin, the display to publish or follow;
- `DELETE /api/rooms/{room}` (operator): ends the session (its share is freed) and the room;
- `GET /api/fleet` (operator): nodes, sessions, capacity left;
- `/janus`, `/janus/{session}[/{handle}]`: a same-origin pass-through to Janus's HTTP API for
  the page in room mode (web/janus.js), limited to what a participant sends (sessions, the
  VideoRoom handle, join/publish/subscribe/switch...): no room is created or destroyed through it.

A stream the cluster cannot place is refused with 503 + Retry-After; Janus or the Ray head
being down is a 503 that names it. Ray's calls block: they run in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import signal
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
from aiohttp import web

from streamer.cluster.actor import ActorOptions, SessionFailed, SessionSpec
from streamer.cluster.avatars import AvatarRef, AvatarUnavailable
from streamer.cluster.fleet import Fleet, FleetConfig, NoCapacity, RayDown, UnknownSession
from streamer.core.figures import percentiles
from streamer.janus.client import AVATAR, DRIVER, JanusDown, JanusError, JanusSession, Room
from streamer.serve.cookies import SessionCookies
from streamer.serve.guard import Guard, listen, page, read_json
from streamer.serve.rooms import Participant, RoomRecord
from streamer.serve.security import AccessPolicy, loopback_names
from streamer.serve.service import RequestError

log = logging.getLogger(__name__)
T = TypeVar("T")

WEB_ROOT = Path(__file__).resolve().parents[2] / "web"
OPERATOR_PREFIXES = ("/dashboard", "/api/rooms", "/api/fleet")
# What the page may send Janus through /janus: a participant's requests, not an operator's.
JANUS_MESSAGES = {"create", "attach", "message", "trickle", "keepalive", "detach", "hangup", "destroy"}
VIDEOROOM_REQUESTS = {"join", "publish", "configure", "unpublish", "start", "pause", "switch", "leave", "update"}
JANUS_PATH = re.compile(r"(?:/\d{1,20}(?:/\d{1,20})?)?")
JANUS_POLL = 70.0  # seconds a long-poll GET may take (Janus answers within 30 s)


def _own_credential(request: web.Request) -> bool:
    """Routes that carry their own credential: a join and a driver's report carry the room's
    token; Janus's API (/janus) checks the room's pin and its own api_secret."""
    return request.path.endswith(("/join", "/report")) or request.path.split("/")[1] == "janus"


class GatewayError(RequestError):
    """A request the gateway answers with `status` and a message saying what to do."""


@dataclass(frozen=True)
class GatewayConfig:
    """Options of `avatarcam gateway`.

    Attributes:
        avatars: the .avatar files rooms may be created for (by their stem).
        ray_address: the Ray head's address (host:port).
        janus_url: Janus's HTTP API as the gateway and the worker nodes reach it.
        janus_public_url: Janus's API as participants reach it (None: janus_url).
        janus_api_secret: Janus's `api_secret` (None: it has none).
        janus_admin_key: Janus VideoRoom's `admin_key` for creating rooms (None: none).
        avatar_path: path mode: the workers read each avatar at the gateway's path (shared
            storage); default: the gateway sends the bytes through Ray's object store.
        host, port: where the gateway listens.
        token: the viewer credential for the page (None on loopback: anyone who reaches it).
        operator_token: the operator credential (None: generated and printed).
        allowed_hosts: extra names the gateway is reached by (a token is then required).
        backend, device, fps: how sessions run on the workers.
        retry_after: seconds a refused stream is told to wait (Retry-After).
        start_timeout: seconds a placed session may take to start.
        max_restarts: restarts of a session actor after its node dies (-1: no bound).
        web_root: the page's files.
    """

    avatars: tuple[Path, ...]
    ray_address: str = "127.0.0.1:6379"
    janus_url: str = "http://127.0.0.1:8088/janus"
    janus_public_url: str | None = None
    janus_api_secret: str | None = None
    janus_admin_key: str | None = None
    avatar_path: bool = False
    host: str = "127.0.0.1"
    port: int = 8090
    token: str | None = None
    operator_token: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    backend: str = "torch"
    device: str = "cpu"
    fps: float = 30.0
    retry_after: int = 30
    start_timeout: float = 180.0
    max_restarts: int = -1
    web_root: Path = field(default=WEB_ROOT)

    def resolved(self) -> GatewayConfig:
        """Generated credentials where needed (as serve: a token beyond loopback)."""
        config = self
        if config.operator_token is None:
            config = replace(config, operator_token=secrets.token_urlsafe(24))
        exposed = config.host not in ("127.0.0.1", "localhost", "::1") or bool(config.allowed_hosts)
        if exposed and config.token is None:
            config = replace(config, token=secrets.token_urlsafe(24))
        return config


class Gateway:
    """The gateway's HTTP app, rooms and connection to the cluster."""

    def __init__(self, config: GatewayConfig, fleet: Fleet | None = None) -> None:
        self.config = config.resolved()
        assert self.config.operator_token is not None
        hosts = loopback_names(self.config.host) | {h.lower() for h in self.config.allowed_hosts}
        self.guard = Guard(
            AccessPolicy(self.config.token, self.config.operator_token, hosts),
            # its own cookie names: a serve on another port of the same host keeps its cookies
            SessionCookies(self.config.token, self.config.operator_token, False, scope="gateway"),
            started="avatarcam gateway",
            host_hint="the gateway",
            operator_routes=lambda request: request.path.startswith(OPERATOR_PREFIXES),
            operator_only="this needs the operator token (the dashboard URL avatarcam gateway printed)",
            # a join carries its room's token; Janus's API (/janus) checks the room's pin and its own api_secret
            # and so does a driver's report
            token_free=lambda request: (
                request.path.endswith(("/join", "/report")) or request.path.split("/")[1] == "janus"
            ),
        )
        actor = ActorOptions(max_restarts=self.config.max_restarts)
        self.fleet = fleet or Fleet(
            FleetConfig(self.config.ray_address, actor=actor, start_timeout=self.config.start_timeout)
        )
        self.avatars = {path.stem: path for path in self.config.avatars}
        self.rooms: dict[int, RoomRecord] = {}
        self._refs: dict[str, AvatarRef] = {}
        self._creating = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None  # the /janus pass-through's client
        self.port = 0

    # ---- lifecycle ---------------------------------------------------------------------------------

    async def startup(self) -> int:
        app = self.guard.application()
        app.add_routes(
            [
                web.get("/", page(self.config.web_root, "index.html")),
                web.get("/dashboard", page(self.config.web_root, "fleet.html")),  # the fleet view (web/fleet.js)
                web.get("/healthz", self._health),
                web.post("/api/rooms", self._create),
                web.get("/api/rooms", self._list),
                web.post("/api/rooms/{room}/join", self._join),
                web.post("/api/rooms/{room}/report", self._report),
                web.delete("/api/rooms/{room}", self._end),
                web.get("/api/fleet", self._fleet),
                web.route("*", "/janus", self._janus_pass),
                web.route("*", "/janus/{tail:.*}", self._janus_pass),
            ]
        )
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=JANUS_POLL, connect=5))
        if self.config.web_root.is_dir():
            app.router.add_static("/static", self.config.web_root)
        self._runner, self.port = await listen(app, self.config.host, self.config.port)
        return self.port

    async def shutdown(self) -> None:
        """Close the listener. Rooms and sessions stay: they outlive a gateway restart on the
        cluster (named, detached actors), and the operator ends them with DELETE."""
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    @property
    def origin(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}"

    @property
    def operator_url(self) -> str:
        return f"{self.origin}/dashboard?token={self.config.operator_token}"

    # ---- helpers ----------------------------------------------------------------------------------

    async def _body(self, request: web.Request) -> dict[str, Any]:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise GatewayError(400, "the body must be a JSON object")
        return body

    async def _ray(self, fn: Callable[..., T], *args: Any) -> T:
        """A blocking fleet call in a thread, its errors as the answers they deserve."""
        try:
            return await asyncio.to_thread(fn, *args)
        except RayDown as exc:
            raise GatewayError(503, str(exc), retry_after=self.config.retry_after) from None
        except NoCapacity as exc:
            raise GatewayError(503, str(exc), retry_after=self.config.retry_after) from None
        except UnknownSession as exc:
            raise GatewayError(404, str(exc)) from None
        except (SessionFailed, AvatarUnavailable) as exc:
            raise GatewayError(502, str(exc)) from None

    def _janus_down(self) -> GatewayError:
        return GatewayError(
            503,
            f"Janus at {self.config.janus_url} is not reachable: start it (docs/cluster.md) or give the gateway "
            "its address with --janus-url",
            retry_after=self.config.retry_after,
        )

    async def _janus(self) -> JanusSession:
        try:
            return await JanusSession.open(self.config.janus_url, api_secret=self.config.janus_api_secret)
        except JanusDown:
            raise self._janus_down() from None

    def _record(self, request: web.Request) -> RoomRecord:
        text = request.match_info["room"]
        record = self.rooms.get(int(text)) if text.isdecimal() and len(text) < 20 else None
        if record is None:
            raise GatewayError(404, f"no room {text[:40]} on this gateway: create one with POST /api/rooms")
        return record

    def _avatar_ref(self, name: str) -> AvatarRef:
        """The avatar as the sessions get it (read and put into the object store once)."""
        path = self.avatars[name]
        if self.config.avatar_path:
            return AvatarRef.shared(str(path.resolve()))
        if name not in self._refs:
            self.fleet.connect()
            self._refs[name] = AvatarRef.put(path)
        return self._refs[name]

    def _links(self, record: RoomRecord) -> dict[str, str]:
        """Each role's room link. Where the page itself needs a token (a gateway reached beyond
        loopback), the link carries the viewer token too: the room token alone opens no page."""
        page = f"&token={quote(self.config.token)}" if self.config.token else ""
        return {
            role.value: f"{self.origin}/?room={record.room}&role={role.value}&room_token={record.tokens[role]}{page}"
            for role in Participant
        }

    # ---- routes -----------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "rooms": len(self.rooms)})

    async def _create(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        name = body.get("avatar")
        if not isinstance(name, str) or name not in self.avatars:
            known = ", ".join(sorted(self.avatars)) or "none (start the gateway with .avatar files)"
            raise GatewayError(400, f'unknown avatar {str(name)[:40]!r}: send {{"avatar": NAME}} with one of {known}')
        async with self._creating:  # one placement at a time: the capacity check and the placement agree
            capacity = await self._ray(self.fleet.capacity)
            if capacity.free < 1:
                raise GatewayError(503, str(self.fleet._no_capacity()), retry_after=self.config.retry_after)
            avatar = await self._ray(self._avatar_ref, name)
            secret, pin, tokens = RoomRecord.new_secrets()
            janus = await self._janus()
            try:
                room = await janus.create_room(
                    secret=secret, pin=pin, description=f"avatarcam {name}", admin_key=self.config.janus_admin_key
                )
                target = Room(self.config.janus_url, room, pin, self.config.janus_api_secret).target()
                spec = SessionSpec(
                    f"room-{room}",
                    f"janus:{target}",
                    (f"janus:{target}",),
                    backend=self.config.backend,
                    device=self.config.device,
                    fps=self.config.fps,
                    room=room,
                )
                try:
                    status = await self._ray(self.fleet.place, spec, avatar)
                except BaseException:
                    await janus.destroy_room(room, secret=secret)  # a refused stream leaves no room behind
                    raise
            except JanusDown:
                raise self._janus_down() from None
            except JanusError as exc:
                raise GatewayError(502, f"Janus refused: {exc}") from None
            finally:
                await janus.close()
        record = RoomRecord(room, name, spec.name, secret, pin, tokens)
        self.rooms[room] = record
        log.info("room %d: avatar %s, session on node %s", room, name, status.get("node"))
        return web.json_response(
            {
                "room": room,
                "avatar": name,
                "session": spec.name,
                "node": status.get("node"),
                "tokens": {role.value: token for role, token in tokens.items()},
                "links": self._links(record),
            },
            status=201,
        )

    async def _list(self, request: web.Request) -> web.Response:
        rooms = []
        for record in list(self.rooms.values()):
            status = await self._ray(self._status, record.session)
            rooms.append({"room": record.room, "avatar": record.avatar, "created": record.created, "session": status})
        return web.json_response({"rooms": rooms})

    def _status(self, session: str) -> dict[str, Any]:
        self.fleet.connect()
        try:
            return self.fleet.status(session)
        except UnknownSession:
            return {"id": session, "state": "gone"}

    async def _join(self, request: web.Request) -> web.Response:
        record = self._record(request)
        body = await self._body(request)
        role_text, token = body.get("role"), body.get("token")
        if role_text not in {r.value for r in Participant}:
            raise GatewayError(400, 'send {"role": "driver" or "viewer", "token": ROOM_TOKEN}')
        role = Participant(role_text)
        if not isinstance(token, str) or not record.admits(role, token):
            raise GatewayError(
                403, f"wrong token for room {record.room} as {role.value}: use the link the operator gave"
            )
        public = self.config.janus_public_url or self.config.janus_url
        return web.json_response(
            {
                "janus": public,
                "room": record.room,
                "pin": record.pin,
                "role": role.value,
                # the driver publishes under DRIVER; everyone watches the avatar, published under AVATAR
                "publish": DRIVER if role is Participant.DRIVER else None,
                "subscribe": AVATAR,
                # Janus's API secret, when it has one, is every participant's to know (docs/cluster.md)
                "target": Room(public, record.room, record.pin, self.config.janus_api_secret).target(),
            }
        )

    async def _report(self, request: web.Request) -> web.Response:
        """The driver's page reports the glass-to-glass latency it measures (its running median,
        ms), which only it can see; the fleet view shows the room's recent reports."""
        record = self._record(request)
        body = await self._body(request)
        token, glass = body.get("token"), body.get("glass_ms")
        if not isinstance(token, str) or not record.admits(Participant.DRIVER, token):
            raise GatewayError(403, f"wrong token for room {record.room}: only its driver reports")
        if isinstance(glass, bool) or not isinstance(glass, int | float) or not 0 < glass < 60_000:
            raise GatewayError(400, 'send {"token": DRIVER_TOKEN, "glass_ms": MEDIAN} with 0 < MEDIAN < 60000')
        record.glass.append(glass / 1000)
        return web.json_response({"reports": len(record.glass)})

    async def _end(self, request: web.Request) -> web.Response:
        record = self._record(request)
        janus = await self._janus()  # Janus down: nothing is ended, the operator retries later
        try:
            with contextlib.suppress(UnknownSession):
                await asyncio.to_thread(self.fleet.end, record.session)
            try:
                await janus.destroy_room(record.room, secret=record.secret)
            except JanusDown:
                raise self._janus_down() from None
            except JanusError as exc:
                log.warning("room %d: Janus did not destroy it: %s", record.room, exc)
        except RayDown as exc:
            raise GatewayError(503, str(exc), retry_after=self.config.retry_after) from None
        finally:
            await janus.close()
        self.rooms.pop(record.room, None)
        return web.json_response({"ended": record.room})

    async def _janus_pass(self, request: web.Request) -> web.Response:
        """Janus's HTTP API on the gateway's origin, for the page (see the module docstring):
        the page's content security policy allows only its own origin, and one origin needs no
        CORS and one certificate. A long-poll GET waits here as it would at Janus."""
        tail = "/" + request.match_info.get("tail", "") if "tail" in request.match_info else ""
        if request.method not in ("GET", "POST") or not JANUS_PATH.fullmatch(tail):
            raise GatewayError(404, "not a Janus API path: /janus, /janus/SESSION or /janus/SESSION/HANDLE")
        body = await request.read() if request.method == "POST" else None
        if body is not None:
            self._check_janus_message(body)
        assert self._http is not None
        url = self.config.janus_url.rstrip("/") + tail
        try:
            async with self._http.request(
                request.method, url, params=request.query, data=body, headers={"Content-Type": "application/json"}
            ) as response:
                answer = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientConnectionError, OSError):
            raise self._janus_down() from None
        return web.Response(body=answer, status=status, content_type="application/json")

    def _check_janus_message(self, body: bytes) -> None:
        try:
            message = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise GatewayError(400, "the body is not valid JSON") from None
        if not isinstance(message, dict) or message.get("janus") not in JANUS_MESSAGES:
            raise GatewayError(403, f"Janus request not passed: only {sorted(JANUS_MESSAGES)}")
        if message["janus"] == "attach" and message.get("plugin") != "janus.plugin.videoroom":
            raise GatewayError(403, "only the VideoRoom plugin is reachable through the gateway")
        inner = message.get("body")
        if message["janus"] == "message" and (
            not isinstance(inner, dict) or inner.get("request") not in VIDEOROOM_REQUESTS
        ):
            raise GatewayError(403, f"VideoRoom request not passed: only a participant's {sorted(VIDEOROOM_REQUESTS)}")

    async def _fleet(self, request: web.Request) -> web.Response:
        return web.json_response(await self._ray(self._fleet_view))

    def _fleet_view(self) -> dict[str, Any]:
        capacity = self.fleet.capacity()
        rooms = {r.session: r for r in self.rooms.values()}
        sessions = []
        for s in self.fleet.sessions():
            record = rooms.get(str(s.get("id")))
            if record is not None:  # glass-to-glass is the driver's page's to measure: its reports
                s = {**s, "room": record.room, "glass_ms": percentiles(record.glass) if record.glass else {}}
            sessions.append(s)
        return {"capacity": capacity.to_json(), "nodes": self.fleet.nodes(), "sessions": sessions}


async def run_gateway(config: GatewayConfig) -> None:
    """Start, announce, run until SIGINT/SIGTERM, close the listener."""
    gateway = Gateway(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await gateway.startup()
        print(f"avatarcam: gateway on {gateway.origin}/", flush=True)
        print(f"avatarcam: operator dashboard on {gateway.operator_url}", flush=True)
        await stop.wait()
    finally:
        await gateway.shutdown()


def run(config: GatewayConfig) -> None:
    asyncio.run(run_gateway(config))
