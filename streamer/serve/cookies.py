"""The service's cookies: an opaque value per role, never the token it stands for.

Browsers do not separate cookies by port (RFC 6265 section 8.5): a cookie set by
http://127.0.0.1:8080 reaches every server on 127.0.0.1. So the value is not the credential, which
also works as `?token=` or a Bearer header and may be used elsewhere. It is `expires.nonce.mac`: an
HMAC-SHA256 keyed by the credential. It tells nothing about the credential, stops working when the
credential changes (a generated one changes on every start) and expires after `lifetime` seconds.
A server that receives it can still replay it as a cookie until then: docs/security.md says so.
Over TLS the names carry the `__Host-` prefix: the browser then takes them only Secure, from this
host (no Domain) and for the whole path, so no other host or subdomain can set or shadow them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from streamer.serve.security import OPERATOR_COOKIE, VIEWER_COOKIE, Role

COOKIE_LIFETIME = 12 * 3600.0  # seconds; then the page must be opened with its token again

_NAMES = {Role.VIEWER: VIEWER_COOKIE, Role.OPERATOR: OPERATOR_COOKIE}


@dataclass(frozen=True)
class SessionCookies:
    """Issues and checks the viewer's and the operator's cookies.

    Attributes:
        token: the viewer credential (None: viewers need none, and get no cookie).
        operator_token: the operator credential.
        tls: served over https (the names then carry `__Host-`, and the cookies are Secure).
        lifetime: seconds a cookie is valid after it is issued.
        scope: a suffix for the names, so that two services on one host (cookies ignore the
            port) keep apart: serve has none, the gateway "gateway".
    """

    token: str | None
    operator_token: str
    tls: bool
    lifetime: float = COOKIE_LIFETIME
    scope: str = ""

    def name(self, role: Role) -> str:
        return ("__Host-" if self.tls else "") + _NAMES[role] + (f"_{self.scope}" if self.scope else "")

    def _credential(self, role: Role) -> str | None:
        return self.operator_token if role is Role.OPERATOR else self.token

    def issue(self, role: Role, now: float | None = None) -> str:
        """A fresh cookie value for `role` (VIEWER or OPERATOR)."""
        credential = self._credential(role)
        assert credential is not None, f"no credential for {role.name}"
        expires = int((time.time() if now is None else now) + self.lifetime)
        nonce = secrets.token_urlsafe(12)
        return f"{expires}.{nonce}.{_mac(credential, role, expires, nonce)}"

    def valid(self, value: str, role: Role, now: float | None = None) -> bool:
        """Whether `value` is a cookie this credential issued for `role`, not yet expired; any
        other string (a raw token, a forgery, bytes that are not ASCII) is simply not valid."""
        credential = self._credential(role)
        parts = value.split(".")
        if credential is None or len(parts) != 3 or not parts[0].isdecimal() or len(parts[0]) > 12:
            return False
        expires, nonce, mac = int(parts[0]), parts[1], parts[2]
        if expires < (time.time() if now is None else now):
            return False
        expected = _mac(credential, role, expires, nonce)
        return hmac.compare_digest(expected.encode(), mac.encode("utf-8", "replace"))

    def role(self, cookies: Mapping[str, str], now: float | None = None) -> Role:
        """The highest role the request's valid cookies grant (NONE without any)."""
        for role in (Role.OPERATOR, Role.VIEWER):
            value = cookies.get(self.name(role))
            if value and self.valid(value, role, now):
                return role
        return Role.NONE


def _mac(credential: str, role: Role, expires: int, nonce: str) -> str:
    message = f"avatarcam-cookie|{role.name}|{expires}|{nonce}".encode("utf-8", "replace")
    return hmac.new(credential.encode("utf-8", "replace"), message, hashlib.sha256).hexdigest()
