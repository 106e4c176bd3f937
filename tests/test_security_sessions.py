"""Issue 24, sessions and credentials, for real (a real server over loopback, aiortc peers):
a viewer cannot close another's session, `--allowed-host` requires a token, cookies carry an
opaque session id instead of a token, and the pages get CSP, frame-ancestors and Referrer-Policy."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.test_security import silent_offer
from tests.test_serve import Client, base_url, running, shared_config

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


# ---- 4. options.replaces needs the reconnect secret ------------------------------------------------


def test_a_peer_id_alone_closes_no_session(tiny_avatar: Path, driver_video: Path) -> None:
    """Peer ids are public (every answer, /api/sessions and /ws in camera mode) and behind a NAT
    or a proxy every client has the same address: naming a live peer's id in `options.replaces`
    closes nothing, with a junk offer (refused) or a good one (answered)."""
    config = shared_config(tiny_avatar, driver_video, max_per_client=4, connect_timeout=60.0, admission="limit")

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with running(config) as server, aiohttp.ClientSession() as http:
            url, peers = base_url(server), server.service.peers
            victim = Client()
            answer = await victim.connect(url)
            await victim.wait_frames(2)
            victim_id = answer["peer"]
            junk = {"sdp": "x", "type": "offer", "options": {"replaces": victim_id}}
            async with http.post(url + "offer", json=junk) as r:
                out["junk"], out["kept after junk"] = r.status, victim_id in peers
            good = {**await silent_offer(), "options": {"replaces": victim_id}}
            async with http.post(url + "offer", json=good) as r:
                out["good"], out["kept after good"] = r.status, victim_id in peers
            if victim_id in peers:
                await victim.wait_frames(len(victim.frames) + 3)  # still served
            await victim.close()
        return out

    out = asyncio.run(scenario())
    assert out == {"junk": 400, "kept after junk": True, "good": 200, "kept after good": True}


def test_a_replace_acts_only_once_the_new_offer_is_admitted_and_answered(tiny_avatar: Path, driver_video: Path) -> None:
    """With the answer's reconnect secret, an offer whose SDP is refused, or which the rate limit
    refuses, closes nothing; a good one takes over the old peer's slot (per-client cap 1)."""
    config = shared_config(
        tiny_avatar, driver_video, max_per_client=1, connect_timeout=60.0, admission="limit", offers_per_minute=3
    )

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with running(config) as server, aiohttp.ClientSession() as http:
            url, peers = base_url(server), server.service.peers
            async with http.post(url + "offer", json=await silent_offer()) as r:  # offer 1
                first = await r.json()
            secret = first["reconnect"]
            assert isinstance(secret, str) and len(secret) >= 32 and first["peer"] not in secret
            junk = {"sdp": "x", "type": "offer", "options": {"replaces": secret}}
            async with http.post(url + "offer", json=junk) as r:  # offer 2
                out["junk"], out["kept after junk"] = r.status, first["peer"] in peers
            good = {**await silent_offer(), "options": {"replaces": secret}}
            async with http.post(url + "offer", json=good) as r:  # offer 3
                second = await r.json()
                out["good"], out["old closed"] = r.status, first["peer"] not in peers
            out["new open"] = second["peer"] in peers
            again = {**good, "options": {"replaces": second["reconnect"]}}
            async with http.post(url + "offer", json=again) as r:  # offer 4
                out["rate limited"], out["kept after 429"] = r.status, second["peer"] in peers
        return out

    out = asyncio.run(scenario())
    assert out == {"junk": 400, "kept after junk": True, "good": 200, "old closed": True, "new open": True,
                   "rate limited": 429, "kept after 429": True}  # fmt: skip


# ---- 5. --allowed-host requires a token ---------------------------------------------------------


def test_an_allowed_host_requires_a_token(tiny_avatar: Path, driver_video: Path) -> None:
    """A reverse proxy keeps the loopback bind, and every client comes through it: with
    `--allowed-host` a token is generated (none given) and required, under any Host name."""
    config = shared_config(tiny_avatar, driver_video, allowed_hosts=("avatar.example.org",))

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with running(config) as server, aiohttp.ClientSession() as http:
            url, port, token = base_url(server), server.port, server.config.token
            for host in (f"127.0.0.1:{port}", f"avatar.example.org:{port}"):
                async with http.get(url + "api/info", headers={"Host": host}) as r:
                    out[f"{host.split(':')[0]} without"] = r.status
                async with http.get(url + "api/info", headers={"Host": host, "Authorization": f"Bearer {token}"}) as r:
                    out[f"{host.split(':')[0]} with"] = r.status, (await r.json()).get("token_required")
            out["token"] = token is not None
        return out

    assert asyncio.run(scenario()) == {
        "127.0.0.1 without": 401,
        "127.0.0.1 with": (200, True),
        "avatar.example.org without": 401,
        "avatar.example.org with": (200, True),
        "token": True,
    }


# ---- 6. credentials: opaque cookies, security headers, the token out of the address bar ----------


def test_cookie_values_are_opaque_and_expire() -> None:
    """A cookie value is an HMAC under the credential it stands for: not the token, bound to its
    role, useless once the credential changes, and expired after its lifetime."""
    from streamer.serve.cookies import SessionCookies
    from streamer.serve.security import Role

    cookies = SessionCookies("viewer-secret", "op-secret", tls=False, lifetime=60.0)
    value = cookies.issue(Role.OPERATOR, now=1000.0)
    assert "op-secret" not in value and value != cookies.issue(Role.OPERATOR, now=1000.0)
    assert cookies.valid(value, Role.OPERATOR, now=1059.0)
    assert not cookies.valid(value, Role.OPERATOR, now=1061.0)  # expired
    assert not cookies.valid(value, Role.VIEWER, now=1000.0)  # another role
    assert not SessionCookies("viewer-secret", "new-op-secret", tls=False).valid(value, Role.OPERATOR, now=1000.0)
    forged = value[:-1] + ("0" if value[-1] != "0" else "1")
    for junk in ("op-secret", forged, "", "1.2", "9" * 40 + ".a.b", "\xff.\udcff.\x00", value + ".x"):
        assert not cookies.valid(junk, Role.OPERATOR, now=1000.0), junk
    assert cookies.role({"avatarcam_operator": value}, now=1000.0) is Role.OPERATOR
    assert cookies.role({"avatarcam_operator": "op-secret"}, now=1000.0) is Role.NONE
    assert SessionCookies(None, "op", tls=True).name(Role.OPERATOR) == "__Host-avatarcam_operator"


def _set_cookie(response: aiohttp.ClientResponse, name: str) -> dict[str, Any] | None:
    """The Set-Cookie of `name` in a response: its value and attributes (None when absent)."""
    morsel = response.cookies.get(name)
    if morsel is None:
        return None
    return {"value": morsel.value, **{k: morsel[k] for k in ("path", "domain", "secure", "httponly", "samesite")}}


def test_cookies_carry_an_opaque_value_not_the_token(
    tiny_avatar: Path, driver_video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Browsers send 127.0.0.1's cookies to every port of it: a cookie must not hand the token
    to another server there. The page's cookie is an opaque value that works as a cookie only;
    the raw token in a cookie opens nothing; over TLS the cookie is `__Host-` and Secure."""
    monkeypatch.setenv("AVATARCAM_HOME", str(tmp_path / "home"))
    tokens = {"token": "viewer-secret", "operator_token": "op-secret"}

    async def scenario(tls: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        config = shared_config(tiny_avatar, driver_video, tls_self_signed=tls, **tokens)
        prefix = "__Host-" if tls else ""
        async with running(config) as server, aiohttp.ClientSession() as http:
            url = f"{'https' if tls else 'http'}://127.0.0.1:{server.port}/"
            for path, name in (
                ("dashboard?token=op-secret", "avatarcam_operator"),
                ("?token=viewer-secret", "avatarcam_token"),
            ):
                async with http.get(url + path, ssl=False) as r:
                    cookie = _set_cookie(r, prefix + name)
                assert cookie is not None, (path, r.headers.getall("Set-Cookie", []))
                out[name] = {**cookie, "value": "secret" in cookie["value"]}
                async with http.get(
                    url + path, ssl=False, headers={"Cookie": f"{prefix}{name}={cookie['value']}"}
                ) as r:
                    out[f"{name} again"] = _set_cookie(r, prefix + name)  # a valid cookie is kept, not renewed
                for what, value in (("cookie", cookie["value"]), ("raw token", path.split("=")[1])):
                    headers = {"Cookie": f"{prefix}{name}={value}"}
                    async with http.get(url + path.split("?")[0], ssl=False, headers=headers) as r:
                        out[f"{name} {what}"] = r.status
        return out

    for tls in (False, True):
        out = asyncio.run(scenario(tls))
        attributes = {"path": "/", "domain": "", "secure": tls or "", "httponly": True, "samesite": "Strict"}
        assert out == {
            "avatarcam_operator": {"value": False, **attributes},
            "avatarcam_operator again": None,
            "avatarcam_operator cookie": 200,
            "avatarcam_operator raw token": 401,
            "avatarcam_token": {"value": False, **attributes},
            "avatarcam_token again": None,
            "avatarcam_token cookie": 200,
            "avatarcam_token raw token": 401,
        }, tls


def test_every_answer_carries_csp_frame_ancestors_and_referrer_policy(tiny_avatar: Path, driver_video: Path) -> None:
    """Pages, scripts, API answers and refusals: scripts only from the service, no framing
    (clickjacking the operator's controls), no Referer (it would carry `?token=`)."""
    config = shared_config(tiny_avatar, driver_video, token="viewer-secret")

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with running(config) as server, aiohttp.ClientSession() as http:
            url = base_url(server)
            for path in (
                "?token=viewer-secret",
                "static/app.js?token=viewer-secret",
                "api/info?token=viewer-secret",
                "api/info",
                "healthz",
            ):
                async with http.get(url + path) as r:
                    out[path] = (
                        r.status,
                        r.headers.get("Content-Security-Policy", ""),
                        r.headers.get("Referrer-Policy"),
                    )
        return out

    for path, (status, csp, referrer) in asyncio.run(scenario()).items():
        directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
        assert directives.get("frame-ancestors") == ["'none'"], (path, status, csp)
        assert directives.get("script-src") == ["'self'"] and directives.get("object-src") == ["'none'"], (path, csp)
        assert referrer == "no-referrer", (path, status)


def test_fuzzed_cookies_are_refused_cleanly(
    tiny_avatar: Path, driver_video: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Seeded junk in the cookies (forged `expires.nonce.mac` values, raw tokens, huge, non-ASCII,
    on every cookie name): 401 or 403, never a 5xx, nothing logged at ERROR."""
    import logging
    import random

    from tests.fuzzing import JUNK

    caplog.set_level(logging.WARNING)
    config = shared_config(tiny_avatar, driver_video, token="viewer-secret", operator_token="op-secret")
    rng = random.Random(2424)
    names = [f"{p}avatarcam_{n}" for p in ("", "__Host-") for n in ("token", "operator")] + ["x"]
    values = [*JUNK, "viewer-secret", "op-secret", "1.2.3", "99999999999.a.b", "0.0.0", "9" * 13 + ".n.m", "a.b.c.d"]

    async def scenario() -> dict[int, int]:
        statuses: dict[int, int] = {}
        async with running(config) as server, aiohttp.ClientSession() as http:
            url = base_url(server)
            for _ in range(200):
                value = rng.choice(values) + rng.choice(["", "." + rng.choice(values), "x" * rng.randint(0, 2000)])
                value = "".join(c for c in value if c != ";" and c.isprintable())  # what a header may carry
                cookie = f"{rng.choice(names)}={value}".encode("utf-8", "surrogateescape").decode("latin-1")
                path = rng.choice(["", "dashboard", "api/info", "ws"])
                async with http.get(url + path, headers={"Cookie": cookie}) as r:
                    statuses[r.status] = statuses.get(r.status, 0) + 1
        return statuses

    statuses = asyncio.run(scenario())
    assert set(statuses) <= {401, 403}, statuses
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert logged == [], [f"{r.name}: {r.getMessage()}" for r in logged[:5]]
