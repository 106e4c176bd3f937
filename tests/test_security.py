"""The live service's guards, for real (a real server, aiortc peers over loopback): the Host
allow-list against DNS rebinding, slots freed from peers that never connect, the per-client cap,
operator versus viewer, admission by measured capacity with a shared engine, and TLS."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from streamer.core.rtc import tolerate_closed_connects
from streamer.serve.config import ServeConfig
from streamer.serve.http import Server
from streamer.serve.ice import screen_candidates
from streamer.serve.security import self_signed
from streamer.serve.service import RequestError, Service
from streamer.sources.base import SourceSpec
from tests import fuzzing
from tests.media import first_frames
from tests.test_serve import Client, StampedClip, base_url, running, shared_config, until

pytestmark = pytest.mark.slow

EVIL = "evil.example"


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _from(address: str) -> aiohttp.ClientSession:
    """An HTTP client whose connections come from `address` (any 127.x.y.z is loopback)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def silent_offer() -> dict[str, str]:
    """A well-formed offer whose peer will never connect: no candidates, none ever trickled."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.createDataChannel("control")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    lines = [line for line in sdp.splitlines() if not line.startswith(("a=candidate", "a=end-of-candidates"))]
    return {"sdp": "\r\n".join(lines) + "\r\n", "type": "offer"}


async def offer_until_admitted(client: Client, url: str, within: float) -> list[int]:
    """POST the client's offer again while the service says busy; the statuses seen."""
    await client.pc.setLocalDescription(await client.pc.createOffer())
    body = {"sdp": client.pc.localDescription.sdp, "type": "offer"}
    statuses: list[int] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    async with aiohttp.ClientSession() as http:
        while loop.time() < end:
            async with http.post(url + "offer", json=body) as r:
                statuses.append(r.status)
                answer = await r.json()
            if r.status == 200:
                await client.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
                return statuses
            assert r.status == 503 and r.headers.get("Retry-After"), answer
            await asyncio.sleep(0.25)
    raise AssertionError(f"not admitted within {within} s: {statuses}")


# ---- 1. DNS rebinding ---------------------------------------------------------------------------


ROUTES = [
    ("GET", "/"),
    ("GET", "/dashboard"),
    ("GET", "/static/app.js"),
    ("GET", "/api/info"),
    ("GET", "/api/sessions"),
    ("GET", "/metrics"),
    ("GET", "/healthz"),
    ("POST", "/offer"),
    ("POST", "/api/control"),
]


def test_a_rebinding_host_is_refused_on_every_route(tiny_avatar: Path, driver_video: Path) -> None:
    """Without a token a page under another host name (a DNS-rebinding page controls both Host
    and Origin) gets 403 everywhere, /ws and /offer included; loopback names pass. (An
    --allowed-host requires a token: tests/test_security_sessions.py.)"""
    config = shared_config(tiny_avatar, driver_video)

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with running(config) as server, aiohttp.ClientSession() as http:
            url, port = base_url(server), server.port
            operator = {"Authorization": f"Bearer {server.config.operator_token}"}
            evil = {"Host": f"{EVIL}:{port}", "Origin": f"http://{EVIL}:{port}", **operator}
            for method, path in ROUTES:
                body = {"action": "pause"} if path == "/api/control" else {"sdp": "v=0", "type": "offer"}
                async with http.request(method, url + path.lstrip("/"), headers=evil, json=body) as r:
                    out[path] = (r.status, await r.text())
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url + "ws", headers=evil)
            out["/ws"] = (refused.value.status, "")
            out["paused"] = [s.state for s in server.service.sessions()]
            out["ok"], out["bad"] = {}, {}
            for host in (f"localhost:{port}", f"127.0.0.1:{port}", "LOCALHOST"):
                async with http.get(url + "api/info", headers={"Host": host}) as r:
                    out["ok"][host] = r.status
            for host in ("", "127.0.0.1.evil.example", "localhost@evil.example", "[::1", "localhost:x", "studio.lan"):
                async with http.get(url + "api/info", headers={"Host": host}) as r:
                    out["bad"][host] = r.status
            origin = f"http://localhost:{port}"
            async with http.post(
                url + "api/control",
                json={"action": "resume"},
                headers={"Host": f"localhost:{port}", "Origin": origin, **operator},
            ) as r:
                out["allowed control"] = r.status
        return out

    out = asyncio.run(scenario())
    for path in [p for _, p in ROUTES] + ["/ws"]:
        status, text = out[path]
        assert status == 403, (path, status, text)
        assert path == "/ws" or "host not allowed" in text
    assert out["paused"] == ["running"]  # the refused pause did nothing
    assert set(out["ok"].values()) == {200}, out["ok"]
    assert set(out["bad"].values()) == {403}, out["bad"]
    assert out["allowed control"] == 200


def test_with_a_token_the_host_is_not_checked(tiny_avatar: Path, driver_video: Path) -> None:
    """Bound beyond loopback the token guards (a rebinding page does not have it); any Host passes."""
    config = shared_config(tiny_avatar, driver_video, host="0.0.0.0", token="viewer-secret")

    async def scenario() -> list[int]:
        async with running(config) as server, aiohttp.ClientSession() as http:
            url = base_url(server)
            out = []
            for headers in ({"Host": EVIL}, {"Host": EVIL, "Authorization": "Bearer viewer-secret"}):
                async with http.get(url + "api/info", headers=headers) as r:
                    out.append(r.status)
            return out

    assert asyncio.run(scenario()) == [401, 200]


# ---- 2. slot exhaustion --------------------------------------------------------------------------


def test_peers_that_never_connect_free_their_slots(tiny_avatar: Path, driver_video: Path) -> None:
    """Four offers whose peers never connect take every slot; they are closed after the connect
    timeout, and a real peer that keeps asking gets its avatar within 15 s."""
    config = shared_config(tiny_avatar, driver_video, max_sessions=4, max_per_client=4, connect_timeout=2.0)

    async def scenario() -> tuple[list[int], list[int], float]:
        async with running(config) as server:
            url = base_url(server)
            async with _from("127.0.0.2") as attacker:
                taken = []
                for _ in range(4):
                    async with attacker.post(url + "offer", json=await silent_offer()) as r:
                        taken.append(r.status)
            assert len(server.service.peers) == 4
            loop = asyncio.get_running_loop()
            start = loop.time()
            client = Client()
            statuses = await offer_until_admitted(client, url, within=15)
            await client.wait_frames(3)
            elapsed = loop.time() - start
            assert next(iter(server.service.peers.values())).client == "127.0.0.1"
            assert len(server.service.peers) == 1
            await client.close()
        return taken, statuses, elapsed

    taken, statuses, elapsed = asyncio.run(scenario())
    assert taken == [200] * 4
    assert statuses[0] == 503 and statuses[-1] == 200  # busy at first, admitted once the slots freed
    assert elapsed < 15


def test_one_client_cannot_take_every_slot(tiny_avatar: Path, driver_video: Path) -> None:
    """The per-client cap: a third session from one address is refused while another address
    still gets in at once."""
    config = shared_config(tiny_avatar, driver_video, max_sessions=4, connect_timeout=60.0, admission="limit")

    async def scenario() -> tuple[list[int], str]:
        async with running(config) as server:
            url = base_url(server)
            statuses = []
            async with _from("127.0.0.2") as attacker:
                for _ in range(3):
                    async with attacker.post(url + "offer", json=await silent_offer()) as r:
                        statuses.append(r.status)
                        message = (await r.json()).get("error", "")
            client = Client()
            await client.connect(url)
            await client.wait_frames(3)
            await client.close()
        return statuses, message

    statuses, message = asyncio.run(scenario())
    assert statuses == [200, 200, 503]
    assert "127.0.0.2" in message and "per client" in message


def test_a_reconnecting_client_takes_over_the_slot_of_its_old_peer(tiny_avatar: Path, driver_video: Path) -> None:
    """A client whose link died on its side (the server still holds its peer) sends that peer's
    reconnect secret in `options.replaces`: it is closed and the new offer admitted at once, where
    the per-client cap refuses an offer that does not. Naming its (public) id closes nothing."""
    config = shared_config(tiny_avatar, driver_video, max_per_client=1, connect_timeout=60.0, admission="limit")

    async def scenario() -> dict[str, Any]:
        async with running(config) as server:
            url, peers = base_url(server), server.service.peers
            found: dict[str, Any] = {}
            async with _from("127.0.0.2") as laptop, _from("127.0.0.3") as stranger:
                async with laptop.post(url + "offer", json=await silent_offer()) as r:
                    answer = await r.json()
                old = answer["peer"]
                async with laptop.post(url + "offer", json=await silent_offer()) as r:
                    found["without"] = r.status
                body = {**await silent_offer(), "options": {"replaces": old}}
                async with stranger.post(url + "offer", json=body) as r:
                    found["stranger"], found["kept"] = r.status, old in peers
                async with laptop.post(url + "offer", json={**body, "options": {"replaces": 7}}) as r:
                    found["bad"] = r.status
                body = {**body, "options": {"replaces": answer["reconnect"]}}
                async with laptop.post(url + "offer", json=body) as r:
                    found["with"], new = r.status, (await r.json()).get("peer")
                found["old_closed"], found["new_open"] = old not in peers, new in peers
        return found

    found = asyncio.run(scenario())
    assert found == {"without": 503, "stranger": 200, "kept": True, "bad": 400, "with": 200,
                     "old_closed": True, "new_open": True}  # fmt: skip


# ---- 6. operator and viewer --------------------------------------------------------------------


class ChannelClient(Client):
    """A Client that can send on its data channel."""

    def __init__(self) -> None:
        super().__init__()
        self.channel = self.pc.createDataChannel("mine")
        self.channel.on("message", self.messages.append)

    async def send(self, message: dict[str, Any]) -> None:
        await until(lambda: self.channel.readyState == "open", "the data channel to open")
        self.channel.send(json.dumps(message))

    async def connect_as(self, url: str, token: str | None) -> dict[str, Any]:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer"}
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as http, http.post(url + "offer", json=body, headers=headers) as r:
            answer: dict[str, Any] = await r.json()
            assert r.status == 200, answer
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        return answer


def test_only_the_operator_controls_a_shared_session(tiny_avatar: Path, driver_video: Path) -> None:
    """A viewer watches (page, API reads, the /ws feed, a WebRTC stream) but cannot pause,
    calibrate or switch avatars: not over /api/control, /ws or its data channel; the operator
    can, with its own credential, and opens the dashboard."""
    config = shared_config(tiny_avatar, driver_video, operator_token="op-secret", max_per_client=4)

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with running(config) as server, aiohttp.ClientSession() as http:
            url = base_url(server)
            (main,) = server.service.sessions()
            op = {"Authorization": "Bearer op-secret"}
            for name, headers in (("viewer", {}), ("operator", op)):
                for path in ("", "dashboard", "api/info", "api/sessions"):
                    async with http.get(url + path, headers=headers) as r:
                        out[f"{name} GET /{path}"] = r.status
                        if path == "api/info":
                            out[f"{name} role"] = (await r.json())["role"]
                for action in ("pause", "calibrate"):
                    async with http.post(url + "api/control", json={"action": action}, headers=headers) as r:
                        out[f"{name} {action}"] = (r.status, main.state)
                async with http.post(url + "api/control", json={"action": "resume"}, headers=op) as r:
                    assert r.status == 200
            async with http.get(url + "dashboard?token=op-secret") as r:
                out["cookie"] = r.cookies.get("avatarcam_operator")
            async with http.ws_connect(url + "ws") as ws:
                out["viewer ws feed"] = json.loads((await ws.receive()).data)["type"]
                await ws.send_str(json.dumps({"type": "control", "action": "pause"}))
                out["viewer ws control"] = await _reply(ws)
            out["after viewer ws"] = str(main.state)
            async with http.ws_connect(url + "ws?token=op-secret") as ws:
                await ws.send_str(json.dumps({"type": "control", "action": "pause"}))
                out["operator ws control"] = await _reply(ws)
            out["after operator ws"] = str(main.state)
            main.resume()

            viewer, operator = ChannelClient(), ChannelClient()
            await viewer.connect_as(url, None)
            await operator.connect_as(url, "op-secret")
            await viewer.wait_frames(2)
            await viewer.send({"type": "control", "action": "pause"})
            await until(lambda: any('"error"' in m for m in viewer.messages), "the viewer's refusal")
            out["after viewer channel"] = str(main.state)
            await operator.send({"type": "control", "action": "pause"})
            await until(lambda: str(main.state) == "paused", "the operator's pause")
            await viewer.close()
            await operator.close()
        return out

    out = asyncio.run(scenario())
    assert out["viewer GET /"] == 200 and out["viewer GET /api/info"] == 200 and out["viewer GET /api/sessions"] == 200
    assert out["viewer GET /dashboard"] == 403 and out["operator GET /dashboard"] == 200
    assert (out["viewer role"], out["operator role"]) == ("viewer", "operator")
    assert out["viewer pause"] == (403, "running") and out["viewer calibrate"][0] == 403
    assert out["operator pause"] == (200, "paused") and out["operator calibrate"][0] == 200
    assert out["cookie"] is not None
    assert out["viewer ws feed"] == "snapshot"
    assert out["viewer ws control"]["type"] == "error" and "operator" in out["viewer ws control"]["error"]
    assert out["after viewer ws"] == "running"
    assert out["operator ws control"] == {"type": "control", "ok": True}
    assert out["after operator ws"] == "paused"
    assert out["after viewer channel"] == "running"


async def _reply(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The next message on the feed that is not a snapshot."""
    while True:
        message: dict[str, Any] = json.loads((await asyncio.wait_for(ws.receive(), 10)).data)
        if message["type"] != "snapshot":
            return message


def test_the_viewer_token_does_not_open_the_operators_routes(tiny_avatar: Path, driver_video: Path) -> None:
    config = shared_config(tiny_avatar, driver_video, host="0.0.0.0", token="viewer-secret")

    async def scenario() -> tuple[list[int], str]:
        async with running(config) as server, aiohttp.ClientSession() as http:
            url = base_url(server)
            operator = server.config.operator_token
            assert operator and operator != "viewer-secret" and operator in server.operator_url
            out = []
            for path in (
                "dashboard?token=viewer-secret",
                "api/info?token=viewer-secret",
                f"dashboard?token={operator}",
            ):
                async with http.get(url + path) as r:
                    out.append(r.status)
            return out, server.operator_url

    statuses, operator_url = asyncio.run(scenario())
    assert statuses == [403, 200, 200]
    assert "/dashboard?token=" in operator_url


# ---- 7. admission by capacity --------------------------------------------------------------------


def _camera_config(avatar: Path, **changes: Any) -> ServeConfig:
    base = ServeConfig(avatars=(avatar,), source=SourceSpec("webrtc", ""), port=0, max_per_client=4)
    from dataclasses import replace

    return replace(base, **changes)


def _camera(driver_video: Path) -> StampedClip:
    return StampedClip([np.ascontiguousarray(f[64:448, 64:448]) for f in first_frames(driver_video, 25)])


def test_a_session_the_machine_cannot_serve_is_refused(tiny_avatar: Path, driver_video: Path) -> None:
    """With a budget the measured cost of one session already fills, a second camera session
    gets 503 with Retry-After and a "busy, try later" message; the first keeps streaming."""
    config = _camera_config(tiny_avatar, cpu_budget=0.05)

    async def scenario() -> tuple[int, str, str | None, int, int]:
        async with running(config) as server:
            url = base_url(server)
            first = Client(send=_camera(driver_video))
            await first.connect(url)
            await first.wait_frames(5)
            await until(lambda: server.service.capacity.pipeline_s is not None, "the session's cost to be measured")
            second = Client(send=_camera(driver_video))
            await second.pc.setLocalDescription(await second.pc.createOffer())
            body = {"sdp": second.pc.localDescription.sdp, "type": "offer"}
            async with aiohttp.ClientSession() as http, http.post(url + "offer", json=body) as r:
                status, error, retry = r.status, (await r.json())["error"], r.headers.get("Retry-After")
            before = len(first.frames)
            await first.wait_frames(before + 5)  # the running session goes on
            sessions = len(server.service.sessions())
            await first.close()
            await second.close()
        return status, error, retry, sessions, before

    status, error, retry, sessions, _ = asyncio.run(scenario())
    assert status == 503 and retry is not None and int(retry) > 0
    assert "busy, try later" in error and "CPU cores" in error
    assert sessions == 1


def test_sessions_of_one_avatar_share_one_engine(tiny_avatar: Path, driver_video: Path) -> None:
    """Within the budget a second camera session is admitted, and both run on one engine."""
    config = _camera_config(tiny_avatar, cpu_budget=64.0)

    async def scenario() -> tuple[dict[str, int], dict[str, int]]:
        async with running(config) as server:
            url = base_url(server)
            first = Client(send=_camera(driver_video))
            await first.connect(url)
            await first.wait_frames(3)
            await until(lambda: server.service.capacity.pipeline_s is not None, "the session's cost to be measured")
            second = Client(send=_camera(driver_video))
            await second.connect(url)
            await second.wait_frames(3)
            await first.wait_frames(len(first.frames) + 3)
            shared = server.service.engines.users()
            await first.close()
            await until(lambda: len(server.service.peers) == 1, "the first peer to close")
            engines = server.service.engines
            await until(lambda: sum(engines.users().values()) == 1, "the first session to give its engine back")
            after = engines.users()
            await second.close()
        return shared, after

    shared, after = asyncio.run(scenario())
    assert list(shared.values()) == [2], shared
    assert list(after.values()) == [1], after


# ---- 4. TLS ------------------------------------------------------------------------------------


def test_tls_self_signed_is_made_once_into_the_cache_and_serves_https(
    tiny_avatar: Path, driver_video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AVATARCAM_HOME", str(tmp_path / "home"))
    cert = tmp_path / "home" / "tls" / "self-signed.crt"

    async def fetch(server: Server, trust: Path) -> tuple[int, str]:
        context = ssl.create_default_context(cafile=str(trust))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://127.0.0.1:{server.port}/api/info", ssl=context) as r:
                info = await r.json()
            with pytest.raises(aiohttp.ClientError):  # plain http on the https port
                async with http.get(f"http://127.0.0.1:{server.port}/api/info") as r:
                    await r.read()
        return r.status, info["source"]

    async def scenario() -> tuple[tuple[int, str], str, float, tuple[int, str]]:
        async with running(shared_config(tiny_avatar, driver_video, tls_self_signed=True)) as server:
            assert server.url.startswith("https://")
            first = await fetch(server, cert)
        made = cert.stat().st_mtime_ns
        key = cert.with_suffix(".key")
        config = shared_config(tiny_avatar, driver_video, tls_cert=cert, tls_key=key)
        async with running(config) as server:
            again = await fetch(server, cert)
        return first, oct(key.stat().st_mode & 0o777), made, again

    first, mode, made, again = asyncio.run(scenario())
    assert first[0] == 200 and again[0] == 200
    assert mode == "0o600"
    assert cert.stat().st_mtime_ns == made  # reused, not made again


# ---- 7. answers and logs -------------------------------------------------------------------------


NOT_UTF8 = [
    b"Authorization: Bearer \xff",
    b"Authorization: Bearer op-secret\xc3",
    b"Cookie: avatarcam_token=\xff",
    b"Cookie: avatarcam_operator=\xfe\xff; avatarcam_token=viewer\xe9",
]


def test_a_credential_that_is_not_utf8_is_wrong_not_a_server_error(
    tiny_avatar: Path, driver_video: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A byte that is not UTF-8 in the Authorization header or a cookie is a wrong credential:
    401 where a token is required, the viewer's role where none is; never a 500 or an ERROR log."""
    caplog.set_level(logging.WARNING)

    async def scenario() -> dict[tuple[str | None, bytes], int]:
        out = {}
        for token in (None, "viewer-secret"):
            config = shared_config(tiny_avatar, driver_video, token=token, operator_token="op-secret")
            async with running(config) as server:
                for header in NOT_UTF8:
                    status = await fuzzing.raw_request(server.port, b"/api/info", [b"Host: 127.0.0.1", header])
                    out[token, header] = status
        return out

    out = asyncio.run(scenario())
    assert {status for (token, _), status in out.items() if token is None} == {200}, out
    assert {status for (token, _), status in out.items() if token is not None} == {401}, out
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert logged == [], [f"{r.name}: {r.getMessage()}" for r in logged[:3]]


MALFORMED = [
    [],  # no Host
    [b"Host: 127.0.0.1", b"Host: localhost"],
    [b"Host: 127.0.0.1", b"Cookie: avatarcam_operator=op\x00secret"],
    [b"Host: 127.0.0.1", b"Authorization: Bearer " + b"a" * 10_000],
    [b"Host: 127.0.0.1", b"X-Odd header: 1"],
]


def test_a_request_that_does_not_parse_is_a_400_without_an_error_log(
    tiny_avatar: Path, driver_video: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No Host header or two, a NUL byte in a header, a header line over aiohttp's limit: 4xx,
    logged in one line at INFO, never an ERROR with a traceback (anyone can send these)."""
    caplog.set_level(logging.INFO)

    async def scenario() -> list[int]:
        async with running(shared_config(tiny_avatar, driver_video)) as server:
            return [await fuzzing.raw_request(server.port, b"/api/info", headers) for headers in MALFORMED]

    statuses = asyncio.run(scenario())
    assert all(400 <= status < 500 for status in statuses), statuses
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert logged == [], [f"{r.name}: {r.getMessage()}" for r in logged[:3]]
    assert sum("answered 4" in r.getMessage() for r in caplog.records) == len(MALFORMED)


def test_an_origin_that_does_not_parse_is_refused_not_a_server_error(
    tiny_avatar: Path, driver_video: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An Origin header urlsplit cannot read (a bracket left open, not an address in brackets)
    is not this service's origin: 403, never a 500 (found by the fuzzer)."""
    caplog.set_level(logging.WARNING)
    origins = [b"http://[::1", b"http://[x]:80", b"http://[::1]:99999"]

    async def scenario() -> list[int]:
        async with running(shared_config(tiny_avatar, driver_video)) as server:
            host = b"Host: 127.0.0.1:%d" % server.port
            return [
                await fuzzing.raw_request(server.port, path, [host, b"Origin: " + origin], method=method)
                for origin in origins
                for method, path in ((b"POST", b"/api/control"), (b"GET", b"/ws"))
            ]

    statuses = asyncio.run(scenario())
    assert statuses == [403] * 2 * len(origins), statuses
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert logged == [], [f"{r.name}: {r.getMessage()}" for r in logged[:3]]


CHANNEL_JUNK: list[str | bytes] = [
    "[" * 30_000 + "]" * 30_000,  # nested beyond the JSON parser's recursion limit
    '{"a":' * 10_000 + "1" + "}" * 10_000,
    b"\xff\xfe\x00[",
    "x" * 100_000,  # over the size limit
    "[]",
    '"control"',
    '{"type": "glass", "ms": "soon"}',
    '{"type": ["control"]}',
]


def refusals(client: Client) -> int:
    return sum('"error"' in m for m in client.messages)


def test_junk_on_a_data_channel_is_refused_without_an_error_log(
    tiny_avatar: Path, driver_video: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Deeply nested, binary, oversized and wrongly typed data-channel messages are logged as
    malformed (WARNING) and ignored: nothing at ERROR, no traceback, and the channel keeps
    answering (a viewer's control on the shared session gets its refusal after each)."""
    caplog.set_level(logging.WARNING)

    async def scenario() -> int:
        async with running(shared_config(tiny_avatar, driver_video)) as server:
            client = ChannelClient()
            await client.connect_as(base_url(server), None)
            for n, junk in enumerate(CHANNEL_JUNK, 1):
                await until(lambda: client.channel.readyState == "open", "the data channel to open")
                client.channel.send(junk)
                await client.send({"type": "control", "action": "pause"})
                await until(lambda: refusals(client) >= n, "the refusal")  # noqa: B023 (awaited here)
            await client.close()
        return refusals(client)

    assert asyncio.run(scenario()) == len(CHANNEL_JUNK)
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert logged == [], [f"{r.name}: {r.getMessage()}" for r in logged[:3]]
    assert sum("malformed" in r.getMessage() or "ignored" in r.getMessage() for r in caplog.records) == 6


# ---- 8. per-client limits and ICE -----------------------------------------------------------------


async def _status_of_offer(service: Service, client: str) -> int:
    """200 when the service answers an offer from `client`, else the status it refuses with."""
    try:
        await service.offer(await silent_offer(), client)
    except RequestError as exc:
        return exc.status
    return 200


def test_per_client_limits_count_an_ipv6_64_as_one_client(driver_video: Path) -> None:
    """A host picks any address of its IPv6 /64: the per-client session cap and the offer rate
    count the /64 as one client (an IPv4-mapped address as its IPv4 address)."""
    unused = Path("unused.avatar")  # no session is started: offers only reach admission and ICE

    async def scenario() -> tuple[dict[str, int], dict[str, int]]:
        tolerate_closed_connects(asyncio.get_running_loop())
        capped = Service(shared_config(unused, driver_video, max_per_client=1, admission="limit"))
        rated = Service(shared_config(unused, driver_video, offers_per_minute=2, admission="limit"))
        try:
            cap = {c: await _status_of_offer(capped, c) for c in CAP_CLIENTS}
            rate = {c: await _status_of_offer(rated, c) for c in RATE_CLIENTS}
        finally:
            await capped.shutdown()
            await rated.shutdown()
        return cap, rate

    cap, rate = asyncio.run(scenario())
    assert list(cap.values()) == [200, 503, 503, 200, 200, 200, 503], cap
    assert list(rate.values()) == [200, 200, 429, 200], rate


CAP_CLIENTS = [
    "2001:db8:1:2::1",
    "2001:db8:1:2::abcd",  # the same /64
    "2001:db8:1:2:ffff:ffff:ffff:ffff",
    "2001:db8:1:3::1",  # the next /64
    "10.0.0.1",
    "10.0.0.2",
    "::ffff:10.0.0.1",  # 10.0.0.1 again
]
RATE_CLIENTS = ["2001:db8::1", "2001:db8::2", "2001:db8::3", "2001:db8:0:1::1"]


def _with_candidates(offer: dict[str, str], addresses: list[str]) -> dict[str, str]:
    """`offer` with host candidates at these addresses in its first m-section. They are TCP
    candidates, which aiortc never pairs with its UDP ones: no packet goes to them even where
    the service would check them; the test reads what the service's ICE agent was given."""
    lines = offer["sdp"].split("\r\n")
    first = next(i for i, line in enumerate(lines) if line.startswith("m="))
    added = [f"a=candidate:{n} 1 tcp {1000 + n} {a} 9 typ host tcptype active" for n, a in enumerate(addresses)]
    return {**offer, "sdp": "\r\n".join(lines[: first + 1] + added + lines[first + 1 :])}


def _remote_candidates(service: Service, peer_id: str) -> set[str]:
    pc = service.peers[peer_id].pc
    transports = {t.receiver.transport.transport for t in pc.getTransceivers()}
    if pc.sctp is not None:
        transports.add(pc.sctp.transport.transport)
    return {c.ip for t in transports for c in t.getRemoteCandidates()}


FORBIDDEN = ["169.254.169.254", "fe80::1", "fd00:ec2::254", "::ffff:169.254.169.254", "224.0.0.251", "0.0.0.0"]


def test_an_offer_cannot_aim_ice_checks_at_metadata_or_link_local_addresses(driver_video: Path) -> None:
    """Candidates at link-local, metadata, multicast or unspecified addresses are dropped before
    aiortc sees the offer (loopback and LAN ones stay); more than MAX_CANDIDATES get a 400."""
    unused = Path("unused.avatar")

    async def scenario() -> tuple[set[str], int, str]:
        tolerate_closed_connects(asyncio.get_running_loop())
        service = Service(shared_config(unused, driver_video, admission="limit"))
        try:
            offer = _with_candidates(await silent_offer(), [*FORBIDDEN, "127.0.0.1", "192.168.7.7"])
            answer = await service.offer(offer, "127.0.0.1")
            given = _remote_candidates(service, answer["peer"])
            many = _with_candidates(await silent_offer(), [f"127.0.{n // 250}.{n % 250 + 1}" for n in range(1000)])
            try:
                await service.offer(many, "127.0.0.1")
                status, message = 200, ""
            except RequestError as exc:
                status, message = exc.status, str(exc)
        finally:
            await service.shutdown()
        return given, status, message

    given, status, message = asyncio.run(scenario())
    assert given == {"127.0.0.1", "192.168.7.7"}, given
    assert status == 400 and "1000 ICE candidates" in message, (status, message)


def test_a_candidate_port_no_socket_can_send_to_is_dropped() -> None:
    """`bench_fuzz.py --cases 20000` found it: a mangled candidate port (70000) reached aioice,
    whose send then failed inside asyncio with an ERROR log."""
    lines = [f"a=candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host\r" for port in ("5000", "70000", "0", "x")]
    kept, dropped = screen_candidates("\n".join(["v=0\r", *lines, "a=end-of-candidates\r"]))
    assert [line for line in kept.split("\n") if line.startswith("a=candidate")] == [lines[0]]
    assert dropped == ["127.0.0.1 port 70000", "127.0.0.1 port 0", "127.0.0.1 port x"]


# ---- 9. certificates and keys ---------------------------------------------------------------------


def _is_ca(cert_path: Path) -> bool:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)


def _as_ca(cert_path: Path, key_path: Path) -> bytes:
    """The certificate re-signed as earlier versions made it: CA:TRUE with no path limit."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
        .add_extension(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_the_self_signed_certificate_is_a_server_certificate_with_a_private_key(tmp_path: Path) -> None:
    """A leftover partial file (mode 0644, as a crash left it) is never written through: the key
    is made 0600 under a name of its own. The certificate is CA:FALSE with key usage
    digitalSignature and extended key usage serverAuth; one kept from before as a CA, or whose
    key others could read, is made again."""
    names = ["127.0.0.1", "localhost"]
    folder = tmp_path / "tls"
    folder.mkdir()
    (folder / "self-signed.partial").write_bytes(b"half a certificate")
    (folder / "self-signed.partial").chmod(0o644)
    cert_path, key_path = self_signed(names, folder)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert oct(key_path.stat().st_mode & 0o777) == "0o600"
    assert not _is_ca(cert_path)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert sorted(p.name for p in folder.iterdir()) == ["self-signed.crt", "self-signed.key", "self-signed.partial"]

    first = cert_path.read_bytes()
    assert self_signed(names, folder) == (cert_path, key_path) and cert_path.read_bytes() == first  # kept
    key_path.chmod(0o644)
    self_signed(names, folder)
    assert cert_path.read_bytes() != first and oct(key_path.stat().st_mode & 0o777) == "0o600"  # made again
    cert_path.write_bytes(_as_ca(cert_path, key_path))
    assert _is_ca(cert_path)
    self_signed(names, folder)
    assert not _is_ca(cert_path)  # made again
