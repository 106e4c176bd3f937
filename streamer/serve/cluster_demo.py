"""`make cluster-demo`: the whole scale-out on one machine (docs/cluster.md).

Starts Janus (a generated config), a local Ray cluster (a head and two worker nodes that
advertise one `avatar_streams` each), the gateway, creates a room for the shipped demo avatar
and drives it with the shipped clip, published into the room as the driver; prints the room's
links and the operator's fleet view, and runs until Ctrl-C.

Ray binds every interface and announces the machine's address, so by default the demo refuses
to run outside a private network namespace: `make cluster-demo` runs it inside one (`unshare
-n`). Janus gathers ICE candidates only on interfaces other than loopback, so inside the
namespace the demo adds a veth pair of its own (private addresses, nothing leaves the
namespace). `--expose` runs it in the machine's own network instead, where Ray's and Janus's
ports are open on every interface: only on a machine where that is acceptable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import urllib.request

from streamer.janus.netns import HOST_ADDRESS, MEDIA_ADDRESS, media_link, private_network


def _host_namespace_pid() -> int | None:
    """The process (make, or the shell) whose network namespace is this machine's, when this one
    runs in a private namespace of its own and may add a link to it (root); else None."""
    parent = os.getppid()
    try:
        if os.geteuid() != 0 or os.readlink(f"/proc/{parent}/ns/net") == os.readlink("/proc/self/ns/net"):
            return None
    except OSError:
        return None
    return parent


def _call(origin: str, method: str, path: str, token: str, body: object = None) -> dict[str, object]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(origin + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=600) as response:
        return dict(json.loads(response.read()))


async def _run(expose: bool, port: int) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from streamer.cluster.names import RESOURCE
    from streamer.core.clock import MonotonicClock
    from streamer.janus.client import DRIVER, JanusSession, Room
    from streamer.janus.server import JanusServer, JanusServerConfig
    from streamer.provenance.identity import DEMO_AVATAR, DEMO_CLIP
    from streamer.serve.gateway import Gateway, GatewayConfig
    from streamer.sinks.webrtc import AvatarTrack
    from streamer.sources.file import FileSource

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    host_pid = None if expose else _host_namespace_pid()
    with contextlib.ExitStack() as stack:
        link = None if expose else stack.enter_context(media_link(host_pid))
        janus = stack.enter_context(JanusServer(JanusServerConfig(ice_enforce_list=link)))
        print(f"cluster-demo: Janus on {janus.url}", flush=True)
        store = 150 * 1024 * 1024
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "object_store_memory": store, "include_dashboard": False},
        )
        stack.callback(cluster.shutdown)
        for _ in range(2):
            cluster.add_node(num_cpus=1, resources={RESOURCE: 1}, object_store_memory=store)
        cluster.wait_for_nodes()
        print(f"cluster-demo: Ray head at {cluster.address}, two worker nodes with 1 {RESOURCE} each", flush=True)
        # With a link to this machine's own namespace, the gateway listens on its end of it, so
        # that a browser here opens the room links (a token then guards the page, as serve's does).
        host = MEDIA_ADDRESS if host_pid is not None else "127.0.0.1"
        gateway = Gateway(
            GatewayConfig(
                avatars=(DEMO_AVATAR,), ray_address=cluster.address, janus_url=janus.url, host=host, port=port
            )
        )
        await gateway.startup()
        stack.callback(ray.shutdown)
        token = str(gateway.config.operator_token)
        print(f"cluster-demo: gateway on {gateway.origin}/ (operator: {gateway.operator_url})", flush=True)
        print("cluster-demo: placing the demo avatar's session (loads the avatar on a worker)...", flush=True)
        created = await asyncio.to_thread(
            _call, gateway.origin, "POST", "/api/rooms", token, {"avatar": DEMO_AVATAR.stem}
        )
        room_number = int(str(created["room"]))
        tokens = created["tokens"]
        assert isinstance(tokens, dict)
        joined = await asyncio.to_thread(
            _call, gateway.origin, "POST", f"/api/rooms/{room_number}/join", token,
            {"role": "driver", "token": tokens["driver"]},
        )  # fmt: skip
        room = Room.parse(str(joined["target"]))
        # the driver: the shipped clip, paced like a camera, as a WebRTC track (serve's own classes)
        clock = MonotonicClock()
        clip, camera = FileSource(DEMO_CLIP, clock, loop=True), AvatarTrack(clock)

        async def drive() -> None:
            while True:
                camera.send(await clip.recv())

        driving = asyncio.create_task(drive(), name="driver")
        janus_session = await JanusSession.open(room.url, api_secret=room.api_secret)
        publisher = await janus_session.publish(room, camera, display=DRIVER)
        print(f"cluster-demo: room {room_number}, driven by {DEMO_CLIP.name}, session on node {created['node']}")
        links = created["links"]
        assert isinstance(links, dict)
        print(f"cluster-demo: viewer link: {links['viewer']}")
        print(f"cluster-demo: fleet: curl -H 'Authorization: Bearer {token}' {gateway.origin}/api/fleet")
        if host_pid is not None:
            print(
                "cluster-demo: open the viewer link in a browser on this machine: it reaches the private "
                f"network namespace over a link of its own ({HOST_ADDRESS} here, {MEDIA_ADDRESS} there)",
                flush=True,
            )
        elif not expose:
            print(
                "cluster-demo: all of this runs in a private network namespace; reach it from this machine's "
                f"shell with: nsenter --net=/proc/{os.getpid()}/ns/net curl ... (docs/cluster.md)",
                flush=True,
            )
        try:
            await stop.wait()
        finally:
            driving.cancel()
            await publisher.close()
            await janus_session.close()
            await clip.close()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(_call, gateway.origin, "DELETE", f"/api/rooms/{room_number}", token)
            await gateway.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cluster-demo", description=__doc__)
    parser.add_argument(
        "--expose",
        action="store_true",
        help="run in this machine's network (Ray and Janus then listen on every interface)",
    )
    parser.add_argument("--port", type=int, default=8090, help="the gateway's port")
    args = parser.parse_args(argv)
    if not args.expose and not private_network():
        print(
            "cluster-demo: run me inside a private network namespace (make cluster-demo does: "
            "unshare -n), or pass --expose on a machine where Ray and Janus may listen on every interface",
            file=sys.stderr,
        )
        return 2
    asyncio.run(_run(args.expose, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
