"""The cluster's control plane on a real local Ray cluster (a head and two worker nodes that
advertise one `avatar_streams` each), inside a private network namespace (`make test-cluster`).

Each session actor runs a real `AvatarSession` (the demo avatar driven by the shipped clip).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.netns import needs_private_network

pytestmark = [pytest.mark.cluster, needs_private_network]

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from streamer.cluster.actor import SessionFailed, SessionSpec  # noqa: E402
from streamer.cluster.avatars import AvatarRef  # noqa: E402
from streamer.cluster.fleet import Fleet, FleetConfig, NoCapacity, RayDown, UnknownSession  # noqa: E402
from streamer.cluster.names import RESOURCE  # noqa: E402
from streamer.provenance.identity import DEMO_AVATAR, DEMO_CLIP  # noqa: E402

STORE = 100 * 1024 * 1024
WAIT = 120.0  # seconds a condition may take on a loaded 2-core machine before the test fails


def _node(cluster: Cluster) -> Any:
    return cluster.add_node(num_cpus=1, resources={RESOURCE: 1}, object_store_memory=STORE)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
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
    f = Fleet(FleetConfig(address=cluster.address))
    f.connect()
    return f


@pytest.fixture(scope="module")
def avatar(cluster: Cluster) -> AvatarRef:
    return AvatarRef.put(DEMO_AVATAR)


def _spec(name: str) -> SessionSpec:
    return SessionSpec(name, f"file:{DEMO_CLIP}", ("null",), source_fps=10.0, fps=10.0)


def _until(condition: Callable[[], Any], what: str, wait: float = WAIT) -> Any:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen within {wait:.0f} s")


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
