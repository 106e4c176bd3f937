"""`avatarcam serve`: the HTTP face of the service — page, dashboard, signaling, control, metrics.

aiohttp on one port: `/` page, `/dashboard`, `/static/*` (files of `web/`), `POST /offer`
(aiortc's {"sdp", "type"} convention), `/api/info`, `/api/sessions`, `POST /api/control`,
`/ws` (dashboard feed and control), `/metrics` (Prometheus), and `/create` with its API
(`create_routes`). `Server` has startup / main loop /
shutdown; `run(config)` adds signal handling and is all the CLI calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from streamer.serve.config import ServeConfig
from streamer.serve.cookies import SessionCookies
from streamer.serve.create_routes import add_create_routes, is_create_route
from streamer.serve.guard import ROLE, Guard, listen, page, read_json
from streamer.serve.security import (
    AccessPolicy,
    Role,
    client_group,
    local_addresses,
    loopback_names,
    self_signed,
    server_context,
)
from streamer.serve.service import OPERATOR_ONLY, RequestError, Service

log = logging.getLogger(__name__)


FEED_PERIOD = 0.5  # seconds between dashboard snapshots and per-peer stats


SEND_TIMEOUT = 10.0  # seconds a websocket client may take to accept one message before it is closed


MAX_SOCKETS_PER_CLIENT = 8  # websockets one client (an address; an IPv6 /64) may hold open


OPERATOR_ROUTES = ("/dashboard", "/api/control")


class Outbox:
    """One websocket's sender, so that no client's send waits behind another's: it holds only
    the newest snapshot (a slow reader skips the ones in between) and the replies to the
    client's own requests, and closes the connection of a client that has not accepted a
    message within SEND_TIMEOUT seconds."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self.client = request.remote or "unknown"
        self._transport = request.transport
        self._snapshot: str | None = None
        self._replies: deque[str] = deque(maxlen=16)
        self._ready = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._send(), name=f"ws-{self.client}")

    def snapshot(self, message: str) -> None:
        self._snapshot = message
        self._ready.set()

    def reply(self, message: str) -> None:
        self._replies.append(message)
        self._ready.set()

    async def _send(self) -> None:
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                while self._replies or self._snapshot is not None:
                    if self._replies:
                        message = self._replies.popleft()
                    else:
                        message, self._snapshot = self._snapshot or "", None
                    await asyncio.wait_for(self.ws.send_str(message), SEND_TIMEOUT)
        except TimeoutError:
            log.warning("websocket from %s accepted nothing for %.0f s; closed", self.client, SEND_TIMEOUT)
            self.abort()
        except (ConnectionError, RuntimeError):  # the socket closed under us
            pass

    def abort(self) -> None:
        """Drop the connection without flushing what the client never read."""
        if self._transport is not None:
            self._transport.abort()

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        try:
            await asyncio.wait_for(self.ws.close(), 1.0)
        except TimeoutError:
            self.abort()


class Server:
    """The live service behind HTTP. `startup()` binds and returns the port, `main_loop()` runs
    until `should_exit` is set, `shutdown()` closes everything within the configured timeout."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config.resolved()
        assert self.config.operator_token is not None
        hosts = loopback_names(self.config.host) | {h.lower() for h in self.config.allowed_hosts}
        self.guard = Guard(
            AccessPolicy(self.config.token, self.config.operator_token, hosts),
            SessionCookies(self.config.token, self.config.operator_token, self.config.tls),
            started="avatarcam serve",
            host_hint="avatarcam",
            operator_routes=lambda request: request.path in OPERATOR_ROUTES or is_create_route(request.path),
            operator_only=OPERATOR_ONLY,
            allowed_origins=self.config.allowed_origins,
        )
        self.service = Service(self.config)
        self.should_exit = asyncio.Event()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._sockets: dict[web.WebSocketResponse, Outbox] = {}
        self._feed: asyncio.Task[None] | None = None

    # ---- lifecycle -----------------------------------------------------------------------------

    async def startup(self) -> int:
        await self.service.startup()
        app = self.guard.application()
        web_root = self.config.web_root
        app.add_routes(
            [
                web.get("/", page(web_root, "index.html")),
                web.get("/dashboard", page(web_root, "dashboard.html")),
                web.post("/offer", self._offer),
                web.get("/api/info", self._info),
                web.get("/api/sessions", self._sessions),
                web.post("/api/control", self._control),
                web.get("/ws", self._ws),
                web.get("/metrics", self._metrics),
                web.get("/healthz", self._health),
            ]
        )
        add_create_routes(app, self.service, self.config)
        if web_root.is_dir():
            app.router.add_static("/static", web_root)
        self._runner, self.port = await listen(app, self.config.host, self.config.port, self._tls())
        self._feed = asyncio.get_running_loop().create_task(self._push_feed(), name="feed")
        return self.port

    def _tls(self) -> Any:
        config = self.config
        if config.tls_cert is not None and config.tls_key is not None:
            return server_context(config.tls_cert, config.tls_key)
        if config.tls_self_signed:
            names = loopback_names(config.host) | set(config.allowed_hosts) | {"127.0.0.1", "localhost"}
            if config.host in ("0.0.0.0", "::", ""):  # every address of this machine
                names |= set(local_addresses())
            names -= {"0.0.0.0", "::", ""}
            cert, key = self_signed(sorted(names))
            log.info("TLS: self-signed certificate %s (names: %s)", cert, ", ".join(names))
            return server_context(cert, key)
        return None

    @property
    def origin(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"{'https' if self.config.tls else 'http'}://{host}:{self.port}"

    @property
    def url(self) -> str:
        query = f"?token={self.config.token}" if self.config.token else ""
        return f"{self.origin}/{query}"

    @property
    def operator_url(self) -> str:
        """The dashboard with the operator credential."""
        return f"{self.origin}/dashboard?token={self.config.operator_token}"

    async def main_loop(self) -> None:
        """Run until asked to exit, or until a non-looping shared source ends."""
        shared_done = asyncio.Event()
        if self.service.shared is not None:
            self.service.shared.on_end = lambda _session: shared_done.set()
        stop = asyncio.ensure_future(self.should_exit.wait())
        ended = asyncio.ensure_future(shared_done.wait())
        await asyncio.wait([stop, ended], return_when=asyncio.FIRST_COMPLETED)
        for task in (stop, ended):
            task.cancel()
        if shared_done.is_set():
            log.info("the source ended; stopping")

    async def shutdown(self) -> None:
        """Close peers, sessions, sockets and the listener; cancel what outlasts the timeout."""
        if self._feed is not None:
            self._feed.cancel()
            await asyncio.gather(self._feed, return_exceptions=True)
        try:
            await asyncio.wait_for(self._close_all(), self.config.shutdown_timeout)
        except TimeoutError:
            log.warning("shutdown took longer than %.1f s; cancelling the rest", self.config.shutdown_timeout)

    async def _close_all(self) -> None:
        for outbox in list(self._sockets.values()):
            await outbox.close()
        await self.service.shutdown()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _push_feed(self) -> None:
        """Stats, capacity, history and the dashboards' snapshots: this task never waits for a
        client (each socket's Outbox sends on its own)."""
        while True:
            await asyncio.sleep(FEED_PERIOD)
            self.service.push_stats()
            snapshot = self.service.snapshot()
            self.service.record(snapshot)  # kept whether or not a dashboard is open
            if self._sockets:
                message = json.dumps(snapshot)
                for outbox in list(self._sockets.values()):
                    outbox.snapshot(message)

    # ---- routes --------------------------------------------------------------------------------

    async def _offer(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        operator = request.get(ROLE) is Role.OPERATOR
        answer = await self.service.offer(body, request.remote or "unknown", operator=operator)
        return web.json_response(answer)

    async def _info(self, request: web.Request) -> web.Response:
        role = request.get(ROLE, Role.VIEWER)
        return web.json_response({**self.service.info(), "role": role.name.lower()})

    async def _sessions(self, request: web.Request) -> web.Response:
        return web.json_response({"sessions": [s.snapshot() for s in self.service.sessions()]})

    async def _control(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise RequestError(400, 'expected JSON {"action": ..., "session"?: ..., "value"?: ...}')
        return web.json_response(await self.service.control(body.get("action"), body.get("session"), body.get("value")))

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.service.metrics.exposition(), content_type="text/plain", charset="utf-8")

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "sessions": len(self.service.sessions())})

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        client = request.remote or "unknown"
        group = client_group(client)  # an IPv6 /64 is one client, as for peers
        if sum(1 for o in self._sockets.values() if client_group(o.client) == group) >= MAX_SOCKETS_PER_CLIENT:
            log.info("refused a websocket from %s: it holds %d already", client, MAX_SOCKETS_PER_CLIENT)
            raise RequestError(429, f"{client} holds {MAX_SOCKETS_PER_CLIENT} websockets already (the limit)")
        ws = web.WebSocketResponse(heartbeat=10, max_msg_size=64 * 1024)
        operator = request.get(ROLE) is Role.OPERATOR
        await ws.prepare(request)
        outbox = self._sockets[ws] = Outbox(ws, request)
        outbox.reply(json.dumps(self.service.first_snapshot()))  # a reply: never replaced by a later snapshot
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(message.data)
                    if not isinstance(data, dict) or data.get("type") != "control":
                        raise RequestError(400, 'send {"type": "control", "action": ...}')
                    if not operator:
                        raise RequestError(403, OPERATOR_ONLY)
                    reply = await self.service.control(data.get("action"), data.get("session"), data.get("value"))
                    reply = {"type": "control", **reply}
                except (ValueError, RecursionError, RequestError) as exc:
                    reply = {"type": "error", "error": str(exc)}
                outbox.reply(json.dumps(reply))
        finally:
            self._sockets.pop(ws, None)
            outbox.task.cancel()
        return ws


async def serve(config: ServeConfig) -> None:
    """Start, announce, run until SIGINT/SIGTERM (or the source ends), shut down."""
    server = Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows
            loop.add_signal_handler(sig, server.should_exit.set)
    try:
        await server.startup()
        print(f"avatarcam: serving on {server.url}", flush=True)
        print(f"avatarcam: operator dashboard on {server.operator_url}", flush=True)
        if server.config.token and config.token is None:
            why = "--allowed-host given" if config.loopback else "bound beyond localhost"
            print(f"avatarcam: {why}; the token above is required", file=sys.stderr, flush=True)
        await server.main_loop()
    finally:
        await server.shutdown()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)


def run(config: ServeConfig) -> None:
    """The CLI's entry point: the engine's CPU threads, uvloop when installed, then `serve`."""
    import torch

    from models.engines.base import live_threads

    torch.set_num_threads(config.threads or live_threads())  # onnxruntime takes torch's setting too
    try:
        import uvloop

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(serve(config))
