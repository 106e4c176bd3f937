"""`avatarcam serve`: the HTTP face of the service — page, dashboard, signaling, control, metrics.

aiohttp on one port: `/` page, `/dashboard`, `/static/*` (files of `web/`), `POST /offer`
(aiortc's {"sdp", "type"} convention), `/api/info`, `/api/sessions`, `POST /api/control`,
`/ws` (dashboard feed and control), `/metrics` (Prometheus). `Server` has startup / main loop /
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
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web
from aiohttp.http_exceptions import HttpProcessingError

from streamer.serve.config import ServeConfig
from streamer.serve.cookies import SessionCookies
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


MAX_BODY = 256 * 1024  # bytes; an SDP offer is a few kB


FEED_PERIOD = 0.5  # seconds between dashboard snapshots and per-peer stats


# The page and dashboard load scripts, styles and images only from the service (inline styles
# stay allowed: the charts' legends and the dashboard's cards use them), talk only to it (fetch,
# /ws), are framed by no one (clickjacking the operator's controls) and send no Referer, which
# would carry a `?token=` address to another site.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
        "media-src 'self' blob: mediastream:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}


SEND_TIMEOUT = 10.0  # seconds a websocket client may take to accept one message before it is closed


MAX_SOCKETS_PER_CLIENT = 8  # websockets one client (an address; an IPv6 /64) may hold open


OPERATOR_ROUTES = ("/dashboard", "/api/control")


ROLE = web.RequestKey("role", Role)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RequestLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's log for handling requests. A request it cannot parse (no Host header or two, a
    NUL byte in a header, a line too long) is the client's fault and is answered 400: that is
    one INFO line here, not an ERROR with a traceback, so garbage sent to the port cannot fill
    the log with errors. Anything else stays an ERROR."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            reason = (str(exc.message).strip().splitlines() or [""])[0]
            self.info(f"{msg}: answered {exc.code}, %s", *args, reason[:200])
        else:
            super().exception(msg, *args, exc_info=exc_info, **kwargs)


def _error(status: int, message: str, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response({"error": message}, status=status, headers=headers)


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
        self.policy = AccessPolicy(self.config.token, self.config.operator_token, hosts)
        self.cookies = SessionCookies(self.config.token, self.config.operator_token, self.config.tls)
        self.service = Service(self.config)
        self.should_exit = asyncio.Event()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._sockets: dict[web.WebSocketResponse, Outbox] = {}
        self._feed: asyncio.Task[None] | None = None

    # ---- lifecycle -----------------------------------------------------------------------------

    async def startup(self) -> int:
        await self.service.startup()
        app = web.Application(middlewares=[self._errors, self._guard], client_max_size=MAX_BODY)
        app.on_response_prepare.append(_security_headers)
        web_root = self.config.web_root
        app.add_routes(
            [
                web.get("/", self._page("index.html")),
                web.get("/dashboard", self._page("dashboard.html")),
                web.post("/offer", self._offer),
                web.get("/api/info", self._info),
                web.get("/api/sessions", self._sessions),
                web.post("/api/control", self._control),
                web.get("/ws", self._ws),
                web.get("/metrics", self._metrics),
                web.get("/healthz", self._health),
            ]
        )
        if web_root.is_dir():
            app.router.add_static("/static", web_root)
        request_log = RequestLog(logging.getLogger("aiohttp.server"))
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, logger=request_log)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, ssl_context=self._tls())
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
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

    # ---- middlewares: errors, token, origin -----------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except RequestError as exc:
            log.info("%s %s -> %d: %s", request.method, request.path, exc.status, exc)
            return _error(exc.status, str(exc), exc.retry_after)
        except web.HTTPRequestEntityTooLarge:
            log.warning("%s %s: body over %d bytes", request.method, request.path, MAX_BODY)
            return _error(413, f"request body over {MAX_BODY} bytes")
        except web.HTTPException as exc:
            if exc.status >= 400:
                return _error(exc.status, exc.reason)
            raise

    def _role(self, request: web.Request) -> Role:
        auth = request.headers.get("Authorization", "")
        given = [request.query.get("token", ""), auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""]
        return max(self.policy.role(given), self.cookies.role(request.cookies))

    def _set_cookie(self, request: web.Request, response: web.StreamResponse) -> None:
        """A page opened with `?token=` gets a cookie for the role that token grants (an opaque
        value, not the token), unless it already holds a valid one: the page then works after
        it removes the token from its address bar, and on reload."""
        given = request.query.get("token")
        role = self.policy.role([given]) if given else Role.NONE
        if role is Role.NONE or (role is Role.VIEWER and self.config.token is None):
            return
        name = self.cookies.name(role)
        if self.cookies.valid(request.cookies.get(name, ""), role):
            return
        response.set_cookie(
            name,
            self.cookies.issue(role),
            max_age=int(self.cookies.lifetime),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self.config.tls,
        )

    def _origin_ok(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:  # not a browser, or a same-origin GET: the token is the guard
            return True
        if origin in self.config.allowed_origins:
            return True
        try:
            return urlsplit(origin).netloc == request.host
        except ValueError:  # "http://[::1" and the like: not this service's origin
            return False

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # Without a token, a DNS-rebinding page reaches the port under its own host name: the
        # Host header is the only thing that tells it apart, so it is checked on every route.
        if not self.policy.host_ok(request.headers.get("Host")):
            log.warning("refused %s %s for Host %r", request.method, request.path, request.headers.get("Host"))
            return _error(403, "host not allowed: open 127.0.0.1 or localhost, or start avatarcam with --allowed-host")
        if request.path == "/healthz":
            return await handler(request)
        role = self._role(request)
        if role is Role.NONE:
            return _error(401, "missing or wrong access token: open the URL avatarcam serve printed")
        if (request.method != "GET" or request.path == "/ws") and not self._origin_ok(request):
            log.warning("refused %s %s from origin %s", request.method, request.path, request.headers["Origin"])
            return _error(403, "origin not allowed")
        if request.path in OPERATOR_ROUTES and role is not Role.OPERATOR:
            return _error(403, OPERATOR_ONLY)
        request[ROLE] = role
        response = await handler(request)
        self._set_cookie(request, response)
        return response

    # ---- routes --------------------------------------------------------------------------------

    def _page(self, name: str) -> Handler:
        async def page(request: web.Request) -> web.StreamResponse:
            path = self.config.web_root / name
            if not path.is_file():
                return _error(404, f"{name} is missing from {self.config.web_root}")
            return web.FileResponse(path, headers={"Cache-Control": "no-cache"})

        return page

    async def _json(self, request: web.Request) -> Any:
        try:
            return await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise RequestError(400, "the body is not valid JSON") from None

    async def _offer(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        operator = request.get(ROLE) is Role.OPERATOR
        answer = await self.service.offer(body, request.remote or "unknown", operator=operator)
        return web.json_response(answer)

    async def _info(self, request: web.Request) -> web.Response:
        role = request.get(ROLE, Role.VIEWER)
        return web.json_response({**self.service.info(), "role": role.name.lower()})

    async def _sessions(self, request: web.Request) -> web.Response:
        return web.json_response({"sessions": [s.snapshot() for s in self.service.sessions()]})

    async def _control(self, request: web.Request) -> web.Response:
        body = await self._json(request)
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


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


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
    """The CLI's entry point: uvloop when installed, then `serve`."""
    try:
        import uvloop

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(serve(config))
