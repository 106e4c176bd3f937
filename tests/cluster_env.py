"""Fixtures the cluster tests share (tests/test_cluster.py, tests/test_room_clients.py): a
local Ray cluster (a head and two worker nodes that advertise one `avatar_streams` each), a real
Janus on the namespace's veth pair (`tests.netns.media_link`), and the gateway on its own loop.

tests/conftest.py imports the fixtures, so every test module sees them; Ray is imported only
when one is used. They run only inside a private network namespace (`needs_private_network`).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest

from streamer.janus.client import Room
from streamer.janus.server import JanusServer, JanusServerConfig
from streamer.provenance.identity import DEMO_AVATAR
from tests.netns import media_link

if TYPE_CHECKING:  # Ray (the cluster extra) is imported only by the fixtures that use it
    from ray.cluster_utils import Cluster

    from streamer.cluster.fleet import Fleet
    from streamer.serve.gateway import GatewayConfig

RESOURCE = "avatar_streams"  # streamer.cluster.names.RESOURCE, without importing Ray here
STORE = 100 * 1024 * 1024


def _node(cluster: Cluster) -> Any:
    return cluster.add_node(num_cpus=1, resources={RESOURCE: 1}, object_store_memory=STORE)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": STORE, "include_dashboard": False},
    )
    for _ in range(2):
        _node(c)
    c.wait_for_nodes()
    ray.init(address=c.address, namespace="avatarcam", log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def fleet(cluster: Cluster) -> Fleet:
    from streamer.cluster.fleet import Fleet, FleetConfig

    f = Fleet(FleetConfig(address=cluster.address))
    f.connect()
    return f


API_SECRET = secrets.token_hex(8)
OPERATOR = secrets.token_hex(12)


@pytest.fixture(scope="module")
def janus() -> Iterator[JanusServer]:
    with media_link() as link, JanusServer(JanusServerConfig(ice_enforce_list=link, api_secret=API_SECRET)) as server:
        yield server


class GatewayThread:
    """A gateway on its own event loop in a thread, as `avatarcam gateway` runs it."""

    def __init__(self, config: GatewayConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        from streamer.serve.gateway import Gateway

        self.gateway = Gateway(config)
        asyncio.run_coroutine_threadsafe(self.gateway.startup(), self.loop).result(30)

    def call(self, method: str, path: str, body: Any = None, token: str | None = OPERATOR) -> tuple[int, Any, Any]:
        """(status, headers, JSON body) of one request."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.gateway.origin + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return response.status, response.headers, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, json.loads(exc.read())

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.gateway.shutdown(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _gateway_config(janus: JanusServer, **given: Any) -> GatewayConfig:
    from streamer.serve.gateway import GatewayConfig

    base = GatewayConfig(
        avatars=(DEMO_AVATAR,),
        janus_url=janus.url,
        janus_api_secret=API_SECRET,
        port=0,
        operator_token=OPERATOR,
        fps=15.0,
        retry_after=7,
    )
    return replace(base, **given)


@pytest.fixture(scope="module")
def gateway(cluster: Cluster, fleet: Fleet, janus: JanusServer) -> Iterator[GatewayThread]:
    g = GatewayThread(_gateway_config(janus, ray_address=cluster.address))
    try:
        yield g
    finally:
        for room in list(g.gateway.rooms):
            g.call("DELETE", f"/api/rooms/{room}")
        g.close()


def _create(gateway: GatewayThread) -> dict[str, Any]:
    status, _, body = gateway.call("POST", "/api/rooms", {"avatar": "cap12"})
    assert status == 201, body
    return dict(body)


def _join(gateway: GatewayThread, created: dict[str, Any], role: str) -> Room:
    room = created["room"]
    status, _, body = gateway.call("POST", f"/api/rooms/{room}/join", {"role": role, "token": created["tokens"][role]})
    assert status == 200, body
    return Room.parse(body["target"])


def _janus_less_gateway(**given: Any) -> GatewayThread:
    """A gateway whose Janus and Ray head are not there (port 9): for what it answers itself."""
    from streamer.serve.gateway import GatewayConfig

    config = GatewayConfig(
        avatars=(DEMO_AVATAR,),
        janus_url="http://127.0.0.1:9/janus",
        ray_address="127.0.0.1:9",
        port=0,
        operator_token=OPERATOR,
        **given,
    )
    return GatewayThread(config)


WAIT = 120.0  # seconds a condition may take on a loaded 2-core machine before the test fails


def _until(condition: Callable[[], Any], what: str, wait: float = WAIT) -> Any:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen within {wait:.0f} s")
