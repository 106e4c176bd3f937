"""The cluster's control plane on a real local Ray cluster (a head and two worker nodes that
advertise one `avatar_streams` each), inside a private network namespace (`make test-cluster`).

Each session actor runs a real `AvatarSession` (the demo avatar driven by the shipped clip).
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamer.core import stamp
from streamer.janus.client import AVATAR, DRIVER, JanusSession, Room
from streamer.janus.server import JanusServer
from tests.media import first_frames, shared_video
from tests.netns import needs_private_network
from tests.test_janus import StampedClip

pytestmark = [pytest.mark.cluster, needs_private_network]

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from streamer.cluster.actor import SessionFailed, SessionSpec  # noqa: E402
from streamer.cluster.avatars import AvatarRef  # noqa: E402
from streamer.cluster.fleet import Fleet, FleetConfig, NoCapacity, RayDown, UnknownSession  # noqa: E402
from streamer.provenance.identity import DEMO_AVATAR, DEMO_CLIP  # noqa: E402
from tests.cluster_env import (  # noqa: E402  (the fixtures come from tests/conftest.py)
    OPERATOR,
    WAIT,
    GatewayThread,
    _create,
    _gateway_config,
    _join,
    _node,
    _until,
)


@pytest.fixture(scope="module")
def avatar(cluster: Cluster) -> AvatarRef:
    return AvatarRef.put(DEMO_AVATAR)


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray[Any, Any]]:
    return first_frames(shared_video("drv_lp_d9_512.mp4"), 50)


def _spec(name: str) -> SessionSpec:
    return SessionSpec(name, f"file:{DEMO_CLIP}", ("null",), source_fps=10.0, fps=10.0)


def test_capacity_refuses_the_stream_after_the_last_and_admits_it_once_one_ends(
    fleet: Fleet, avatar: AvatarRef
) -> None:
    assert fleet.capacity().total == 2
    first = fleet.place(_spec("cap-a"), avatar)
    second = fleet.place(_spec("cap-b"), avatar)
    assert {first["node"], second["node"]} == {n["node"] for n in fleet.nodes() if n["streams"]}
    assert first["avatar"] == "cap12" and first["avatar_mode"] == "object-store"
    _until(lambda: fleet.status("cap-a").get("frames", 0) > 0, "frames from the first session")
    with pytest.raises(NoCapacity, match="all 2 avatar streams"):
        fleet.place(_spec("cap-c"), avatar)
    with pytest.raises(UnknownSession):
        fleet.status("cap-c")  # the refused stream left nothing behind
    assert {s["id"] for s in fleet.sessions()} == {"cap-a", "cap-b"}
    fleet.end("cap-a")
    third = fleet.place(_spec("cap-c"), avatar)
    assert third["node"] == first["node"]
    fleet.end("cap-b")
    fleet.end("cap-c")
    assert fleet.sessions() == []
    assert fleet.capacity().free == 2


def test_failover_restarts_the_session_on_another_node(cluster: Cluster, fleet: Fleet, avatar: AvatarRef) -> None:
    placed = fleet.place(_spec("fail"), avatar)
    (victim,) = [n for n in cluster.worker_nodes if n.node_id == placed["node"]]
    cluster.remove_node(victim)
    moved = _until(
        lambda: (s := fleet.status("fail")).get("restarted") and s.get("frames", 0) > 0 and s,
        "the session's restart on the other node",
    )
    assert moved["node"] != placed["node"]
    assert moved["state"] == "running"
    _node(cluster)  # the cluster gets its second node back for the tests after this one
    fleet.end("fail")


def test_path_mode_on_a_worker_without_the_file_is_a_clear_error(fleet: Fleet) -> None:
    free = fleet.capacity().free
    with pytest.raises(SessionFailed, match=r"is not on node .* every worker node must hold it"):
        fleet.place(_spec("nofile"), AvatarRef.shared("/srv/avatars/missing.avatar"))
    with pytest.raises(UnknownSession):
        fleet.status("nofile")
    _until(lambda: fleet.capacity().free == free, "the refused session's share to be free again")


def test_ray_head_down_is_a_clear_error() -> None:
    with pytest.raises(RayDown, match=r"Ray head at 127.0.0.1:9 is not reachable: start it with `ray start --head"):
        Fleet(FleetConfig(address="127.0.0.1:9")).connect()


# ---- through the gateway, with a real Janus ---------------------------------------------------------


async def _watch(room: Room, count: int, frames: int) -> list[list[tuple[int | None, np.ndarray[Any, Any]]]]:
    """`count` viewers of the room's avatar, each reading `frames` frames: (tag, image)."""

    async def one(session: JanusSession) -> list[tuple[int | None, np.ndarray[Any, Any]]]:
        subscriber = await session.subscribe(room, display=AVATAR, timeout=60)
        assert subscriber.track is not None
        out = []
        for _ in range(frames):
            image = (await asyncio.wait_for(subscriber.track.recv(), 60)).to_ndarray(format="rgb24")
            out.append((stamp.read(image), image))
        await subscriber.close()
        return out

    async with await JanusSession.open(room.url, api_secret=room.api_secret) as session:
        return list(await asyncio.gather(*(one(session) for _ in range(count))))


def test_end_to_end_driver_to_session_actor_to_janus_to_five_viewers(
    gateway: GatewayThread, clip: list[np.ndarray[Any, Any]]
) -> None:
    created = _create(gateway)
    driver_room, viewer_room = _join(gateway, created, "driver"), _join(gateway, created, "viewer")

    async def run() -> tuple[list[Any], list[int]]:
        camera = StampedClip(clip)
        async with await JanusSession.open(driver_room.url, api_secret=driver_room.api_secret) as session:
            publisher = await session.publish(driver_room, camera, display=DRIVER)
            try:
                # the session idles until the driver's frames come: read until tagged frames arrive
                await _until_async(lambda: _tagged(viewer_room), "tagged avatar frames")
                return await _watch(viewer_room, 5, 20), camera.sent
            finally:
                await publisher.close()

    viewers, sent = asyncio.run(run())
    assert len(viewers) == 5
    for frames in viewers:
        tags = [t for t, _ in frames if t is not None]
        assert len(tags) >= 5 and set(tags) <= set(sent)  # the driver's frame ids came back
        # the avatar (the demo's 256 px), not the driver's 512 px frames passed through
        assert {image.shape for _, image in frames} == {(256, 256, 3)} != {clip[0].shape}
    _, _, listing = gateway.call("GET", "/api/rooms")
    (row,) = [r for r in listing["rooms"] if r["room"] == created["room"]]
    assert row["session"]["frames"] > 0 and row["session"]["fps"] >= 0 and row["session"]["node"]
    assert gateway.call("DELETE", f"/api/rooms/{created['room']}")[0] == 200


async def _tagged(room: Room) -> bool:
    (frames,) = await _watch(room, 1, 5)
    return any(t is not None for t, _ in frames)


async def _until_async(condition: Callable[[], Awaitable[bool]], what: str, wait: float = WAIT) -> None:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{what} did not happen within {wait:.0f} s")


def test_gateway_refuses_the_stream_after_the_last_with_503_and_admits_it_once_one_ends(
    gateway: GatewayThread,
) -> None:
    first, second = _create(gateway), _create(gateway)
    status, headers, body = gateway.call("POST", "/api/rooms", {"avatar": "cap12"})
    assert status == 503 and headers["Retry-After"] == "7"
    assert "all 2 avatar streams of the cluster are in use" in body["error"]
    assert set(gateway.gateway.rooms) == {first["room"], second["room"]}  # the refused one left no room
    _, _, fleet_view = gateway.call("GET", "/api/fleet")
    assert fleet_view["capacity"] == {"total": 2, "free": 0, "used": 2}
    assert {s["room"] for s in fleet_view["sessions"]} == {first["room"], second["room"]}
    assert gateway.call("DELETE", f"/api/rooms/{first['room']}")[0] == 200
    third = _create(gateway)
    for created in (second, third):
        assert gateway.call("DELETE", f"/api/rooms/{created['room']}")[0] == 200


def test_failover_a_connected_viewer_gets_the_avatar_again_without_rejoining(
    cluster: Cluster, gateway: GatewayThread, clip: list[np.ndarray[Any, Any]]
) -> None:
    created = _create(gateway)
    driver_room, viewer_room = _join(gateway, created, "driver"), _join(gateway, created, "viewer")
    (victim,) = [n for n in cluster.worker_nodes if n.node_id == created["node"]]

    async def run() -> tuple[int, float, list[int]]:
        async with await JanusSession.open(driver_room.url, api_secret=driver_room.api_secret) as session:
            camera = StampedClip(clip)
            publisher = await session.publish(driver_room, camera, display=DRIVER)
            subscriber = await session.subscribe(viewer_room, display=AVATAR, timeout=60)
            assert subscriber.track is not None
            track = subscriber.track
            while stamp.read((await asyncio.wait_for(track.recv(), 60)).to_ndarray(format="rgb24")) is None:
                pass
            killed = time.monotonic()
            await asyncio.to_thread(cluster.remove_node, victim)
            await _until_async(lambda: _switched(subscriber), "the viewer's switch to the restarted session")
            tags = []
            while len(tags) < 5:  # the restarted session's avatar, with the driver's ids
                tag = stamp.read((await asyncio.wait_for(track.recv(), 60)).to_ndarray(format="rgb24"))
                if tag is not None:
                    tags.append(tag)
            seconds = time.monotonic() - killed
            await publisher.close()
            return subscriber.switches, seconds, tags

    switches, seconds, tags = asyncio.run(run())
    print(f"failover: {seconds:.1f} s from the node kill to the avatar again at the viewer")
    assert switches >= 1 and len(tags) == 5
    _, _, listing = gateway.call("GET", "/api/rooms")
    (row,) = [r for r in listing["rooms"] if r["room"] == created["room"]]
    assert row["session"]["restarted"] and row["session"]["node"] != created["node"]
    _node(cluster)
    assert gateway.call("DELETE", f"/api/rooms/{created['room']}")[0] == 200


async def _switched(subscriber: Any) -> bool:
    return bool(subscriber.switches >= 1)


def test_gateway_bad_input_each_gets_a_clear_error_and_loses_nothing(
    cluster: Cluster, gateway: GatewayThread, janus: JanusServer
) -> None:
    created = _create(gateway)
    room = created["room"]
    before = gateway.call("GET", "/api/fleet")[2]

    status, _, body = gateway.call("POST", f"/api/rooms/{room + 1}/join", {"role": "viewer", "token": "x"})
    assert status == 404 and "no room" in body["error"]
    assert gateway.call("DELETE", f"/api/rooms/{room + 1}")[0] == 404
    status, _, body = gateway.call("POST", f"/api/rooms/{room}/join", {"role": "driver", "token": "wrong"})
    assert status == 403 and "wrong token" in body["error"]
    viewer = created["tokens"]["viewer"]
    status, _, body = gateway.call("POST", f"/api/rooms/{room}/join", {"role": "driver", "token": viewer})
    assert status == 403  # a viewer's token does not make a driver
    status, _, body = gateway.call("POST", "/api/rooms", {"avatar": "cap12"}, token=viewer)
    assert status == 403 and "operator token" in body["error"]  # a room's token opens no other door
    with urllib.request.urlopen(f"{gateway.gateway.origin}/dashboard?token={OPERATOR}", timeout=30) as page:
        assert b"/static/fleet.js" in page.read()  # the fleet view, for the operator only:
    assert gateway.call("GET", "/dashboard", token=None)[0] == 403
    status, _, body = gateway.call("POST", "/api/rooms", {"avatar": "nobody"})
    assert status == 400 and "unknown avatar 'nobody'" in body["error"] and "cap12" in body["error"]

    no_janus = GatewayThread(_gateway_config(janus, ray_address=cluster.address, janus_url="http://127.0.0.1:9/janus"))
    try:
        status, headers, body = no_janus.call("POST", "/api/rooms", {"avatar": "cap12"})
        assert status == 503 and "Retry-After" in headers
        assert body["error"].startswith("Janus at http://127.0.0.1:9/janus is not reachable")
    finally:
        no_janus.close()

    no_ray = GatewayThread(_gateway_config(janus, ray_address="127.0.0.1:9"))
    try:
        for method, path in (("POST", "/api/rooms"), ("GET", "/api/fleet")):
            status, _, body = no_ray.call(method, path, {"avatar": "cap12"} if method == "POST" else None)
            assert status == 503 and body["error"].startswith("Ray head at 127.0.0.1:9 is not reachable: start it")
    finally:
        no_ray.close()

    elsewhere = replace(_gateway_config(janus, ray_address=cluster.address), avatar_path=True)
    no_file = GatewayThread(replace(elsewhere, avatars=(Path("/srv/avatars/cap12.avatar"),)))
    try:
        status, _, body = no_file.call("POST", "/api/rooms", {"avatar": "cap12"})
        assert status == 502 and "avatar file /srv/avatars/cap12.avatar is not on node" in body["error"]
        assert no_file.gateway.rooms == {}
    finally:
        no_file.close()

    after = gateway.call("GET", "/api/fleet")[2]  # nothing lost, nothing leaked
    assert after["capacity"] == before["capacity"]
    assert [s["room"] for s in after["sessions"]] == [room]
    assert _join(gateway, created, "viewer").room == room
    assert gateway.call("DELETE", f"/api/rooms/{room}")[0] == 200
    _until(lambda: gateway.call("GET", "/api/fleet")[2]["capacity"]["free"] == 2, "both shares free again")
