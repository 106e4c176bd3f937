"""What `avatarcam serve` and `avatarcam gateway` share of HTTP: JSON errors, the request log,
the security headers and `Guard` (Host allow-list, tokens, cookies, origins, operator routes)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from streamer.serve.cookies import SessionCookies
from streamer.serve.security import AccessPolicy, Role
from streamer.serve.service import RequestError

log = logging.getLogger(__name__)

MAX_BODY = 256 * 1024  # bytes; an SDP offer is a few kB

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

ROLE = web.RequestKey("role", Role)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Routes = Callable[[web.Request], bool]


def json_error(status: int, message: str, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response({"error": message}, status=status, headers=headers)


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


def page(web_root: Path, name: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        path = web_root / name
        if not path.is_file():
            return json_error(404, f"{name} is missing from {web_root}")
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})

    return handler


async def read_json(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise RequestError(400, "the body is not valid JSON") from None


async def listen(app: web.Application, host: str, port: int, ssl_context: Any = None) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port (0: any free port); the runner, to clean up, and the port bound."""
    request_log = RequestLog(logging.getLogger("aiohttp.server"))
    runner = web.AppRunner(app, access_log=None, handle_signals=False, logger=request_log)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    server = site._server
    assert server is not None
    return runner, server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RequestError as exc:
        log.info("%s %s -> %d: %s", request.method, request.path, exc.status, exc)
        return json_error(exc.status, str(exc), exc.retry_after)
    except web.HTTPRequestEntityTooLarge:
        log.warning("%s %s: body over %d bytes", request.method, request.path, MAX_BODY)
        return json_error(413, f"request body over {MAX_BODY} bytes")
    except web.HTTPException as exc:
        if exc.status >= 400:
            return json_error(exc.status, exc.reason)
        raise


@dataclass(frozen=True)
class Guard:
    """Who may use which route of one app: `policy` and `cookies` judge the credentials, the rest
    is what differs between serve and the gateway: what printed the URLs and takes --allowed-host,
    the operator's routes and the refusal there, the routes that carry their own token (only Host
    and origin are checked), the origins beyond the app's own, and whether `?token=` gets a cookie."""

    policy: AccessPolicy
    cookies: SessionCookies
    started: str
    host_hint: str
    operator_routes: Routes
    operator_only: str
    token_free: Routes = lambda request: False
    allowed_origins: Collection[str] = ()
    issue_cookies: bool = True

    def application(self) -> web.Application:
        """An app with the middlewares (errors, token, origin) and the security headers."""
        app = web.Application(middlewares=[errors, self.guard], client_max_size=MAX_BODY)
        app.on_response_prepare.append(_security_headers)
        return app

    def role(self, request: web.Request) -> Role:
        auth = request.headers.get("Authorization", "")
        given = [request.query.get("token", ""), auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""]
        return max(self.policy.role(given), self.cookies.role(request.cookies))

    def set_cookie(self, request: web.Request, response: web.StreamResponse) -> None:
        """A page opened with `?token=` gets a cookie for the role that token grants (an opaque
        value, not the token), unless it already holds a valid one: the page then works after
        it removes the token from its address bar, and on reload."""
        given = request.query.get("token")
        role = self.policy.role([given]) if given else Role.NONE
        if role is Role.NONE or (role is Role.VIEWER and self.policy.token is None):
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
            secure=self.cookies.tls,
        )

    def origin_ok(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:  # not a browser, or a same-origin GET: the token is the guard
            return True
        if origin in self.allowed_origins:
            return True
        try:
            return urlsplit(origin).netloc == request.host
        except ValueError:  # "http://[::1" and the like: not this service's origin
            return False

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # Without a token, a DNS-rebinding page reaches the port under its own host name: the
        # Host header is the only thing that tells it apart, so it is checked on every route.
        if not self.policy.host_ok(request.headers.get("Host")):
            log.warning("refused %s %s for Host %r", request.method, request.path, request.headers.get("Host"))
            hint = f"start {self.host_hint} with --allowed-host"
            return json_error(403, f"host not allowed: open 127.0.0.1 or localhost, or {hint}")
        if request.path == "/healthz":
            return await handler(request)
        role = self.role(request)
        if role is Role.NONE and not self.token_free(request):
            return json_error(401, f"missing or wrong access token: open the URL {self.started} printed")
        if (request.method != "GET" or request.path == "/ws") and not self.origin_ok(request):
            log.warning("refused %s %s from origin %s", request.method, request.path, request.headers["Origin"])
            return json_error(403, "origin not allowed")
        if self.token_free(request):
            return await handler(request)
        if self.operator_routes(request) and role is not Role.OPERATOR:
            return json_error(403, self.operator_only)
        request[ROLE] = role
        response = await handler(request)
        if self.issue_cookies:
            self.set_cookie(request, response)
        return response
