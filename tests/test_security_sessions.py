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
