"""The scale-out, measured on one machine: Janus fan-out against serve's own, placement, failover.

    .venv/bin/python benchmarks/bench_cluster.py --json OUT.json [--viewers 1 4 8 16]
        [--seconds 12] [--warmup 6] [--kills 5] [--parts fanout,placement,failover]

Runs inside a private network namespace holding only `lo` (it re-executes itself under
`unshare -n`, or `unshare -rn` when not root), as the cluster tests do, so that Janus and Ray
reach nothing but loopback.

**fanout**: one avatar stream (the shipped demo avatar driven by the shipped clip, paced at 30 fps
by the file source) to N viewers, two ways, each N in turn:
- `serve`: `avatarcam serve --source file:CLIP` in this process; the viewers are WebRTC peers of
  serve, each with its own track and encoder there;
- `janus`: the same `AvatarSession` in this process with the `janus` sink (one encoder), into a
  local Janus VideoRoom; the viewers subscribe through Janus.
The viewers run in a child process, so that their work is not counted as the server's. The
first viewer decodes every frame and reads its stamp: the session here echoes a stamp onto each
avatar frame (its id = the source frame's number, recorded with its capture time on the shared
CLOCK_MONOTONIC), so each of its frames gives glass-to-glass, source capture to decoded. The
other viewers count the frames they receive (reassembled from RTP) without decoding them: 16
decoders on these 2 cores would otherwise be what limits, not the server. The session runs with
`--threads` (default 1) torch and onnxruntime threads, leaving the other core to fan-out.
Server CPU is read from /proc over the same window: this process (the session; serve's
encoders too) plus, for janus, the Janus process. `cpu_s_per_viewer_s` = (CPU/s at N - CPU/s at 1)
/ (N - 1).

**placement** and **failover** use a local Ray cluster (see `--parts`; they need the `cluster`
extra): two streams on two nodes against two on one node; then the node holding a session is
killed `--kills` times and the time to the next avatar frame at a connected viewer is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.core import stamp  # noqa: E402
from streamer.core.clock import MonotonicClock  # noqa: E402
from streamer.core.frames import Frame  # noqa: E402
from streamer.janus.netns import media_link, private_network  # noqa: E402
from streamer.provenance.identity import DEMO_AVATAR, DEMO_CLIP  # noqa: E402
from streamer.sources import SOURCES, SourceKind  # noqa: E402
from streamer.sources.base import Source, SourceContext, SourceSpec  # noqa: E402
from streamer.sources.file import FileSource  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------- plumbing


def reexec_in_private_network() -> None:
    """Run this script again inside a new network namespace with only `lo` (up)."""
    unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    inner = " ".join(map(_quote, [sys.executable, *sys.argv]))
    os.execvp(unshare[0], [*unshare, "sh", "-c", f"ip link set lo up && exec {inner}"])


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (from /proc; not its children:
    the viewers' child process is not the server)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:13]) / TICK  # utime stime


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class StampingSource:
    """Wraps a source: numbers each frame (its `tag`, echoed onto the avatar frame by a session
    with `stamp=True`) and records when it was captured, for glass-to-glass at the viewers."""

    def __init__(self, inner: Source) -> None:
        self.inner = inner
        self.captured: list[tuple[int, float]] = []  # (tag, monotonic seconds)
        self._count = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def recv(self) -> Frame:
        frame = await self.inner.recv()
        frame.tag = self._count % stamp.MODULUS
        self._count += 1
        self.captured.append((frame.tag, time.monotonic()))
        return frame

    async def close(self) -> None:
        await self.inner.close()


def glass_ms(captured: list[tuple[int, float]], received: Iterable[tuple[float, int]]) -> list[float]:
    """For each (receive time, tag): receive time minus the latest capture of that tag before it."""
    by_tag: dict[int, list[float]] = {}
    for tag, t in captured:
        by_tag.setdefault(tag, []).append(t)
    out = []
    for t_recv, tag in received:
        before = [t for t in by_tag.get(tag, ()) if t <= t_recv]
        if before:
            out.append((t_recv - before[-1]) * 1000)
    return out


# ---------------------------------------------------------------------------------- viewers (child process)


async def _pull(track: Any, record: list[tuple[float, int]]) -> None:
    with contextlib.suppress(Exception):
        while True:
            frame = await track.recv()
            tag = stamp.read(frame.to_ndarray(format="rgb24"))
            if tag is not None:
                record.append((time.monotonic(), tag))


def _watch(track: Any, record: list[tuple[float, int]], counted: bool) -> asyncio.Future[None] | None:
    """A counted viewer's track is never read (its receiver counts); the decoding viewer's is."""
    if counted:
        COUNTED[id(track._queue)] = record
        return None
    return asyncio.ensure_future(_pull(track, record))


async def _serve_viewer(url: str, record: list[tuple[float, int]], *, counted: bool) -> Callable[[], Any]:
    import aiohttp
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.createDataChannel("control")
    pc.on("track", lambda track: _watch(track, record, counted))
    await pc.setLocalDescription(await pc.createOffer())
    body = {"sdp": pc.localDescription.sdp, "type": "offer"}
    async with aiohttp.ClientSession() as http, http.post(url + "offer", json=body) as r:
        answer = await r.json()
        if r.status != 200:
            raise RuntimeError(f"serve refused a viewer: {r.status} {answer}")
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    return pc.close


async def _janus_viewer(target: str, record: list[tuple[float, int]], *, counted: bool) -> Callable[[], Any]:
    from streamer.janus.client import AVATAR, JanusSession, Room

    room = Room.parse(target)
    session = await JanusSession.open(room.url, api_secret=room.api_secret)
    subscriber = await session.subscribe(room, display=AVATAR, timeout=60)
    pull = _watch(subscriber.track, record, counted)

    async def close() -> None:
        if pull is not None:
            pull.cancel()
        await session.close()

    return close


COUNTED: dict[int, list[tuple[float, int]]] = {}  # id(a track's frame queue) -> that viewer's record


class _Prepend:
    """A queue whose next `get` returns `first`, then the queue's own."""

    def __init__(self, first: Any, queue: Any) -> None:
        self.first, self.queue = [first], queue

    def get(self) -> Any:
        return self.first.pop() if self.first else self.queue.get()


def dispatching_worker(decoding: Callable[..., None]) -> Callable[..., None]:
    """A stand-in for aiortc's decoder thread. When a receiver's first frame (reassembled from
    its RTP packets) arrives, it looks up whose track the receiver feeds: a counting viewer's
    frames are counted and never decoded, so the viewers after the first cost this process
    almost nothing and the server's side, not 16 decoders, is what the figures show; the first
    viewer's go to aiortc's own decoder."""

    def worker(loop: Any, input_q: Any, output_q: Any, *rest: Any) -> None:
        first = input_q.get()
        record = COUNTED.get(id(output_q))
        if record is None:
            decoding(loop, _Prepend(first, input_q), output_q, *rest)
            return
        task = first
        while task is not None:
            record.append((time.monotonic(), -1))
            task = input_q.get()

    return worker


async def viewers_child(mode: str, where: str, n: int, warmup: float, seconds: float) -> None:
    """Connect n viewers, wait `warmup`, say 'measuring', record `seconds`, print the records.
    The first viewer decodes every frame and reads its stamp (glass-to-glass); the others count
    the frames they receive without decoding them (`dispatching_worker`)."""
    from aiortc import rtcrtpreceiver

    rtcrtpreceiver.decoder_worker = dispatching_worker(rtcrtpreceiver.decoder_worker)  # type: ignore[assignment]
    records: list[list[tuple[float, int]]] = [[] for _ in range(n)]
    connect = _serve_viewer if mode == "serve" else _janus_viewer
    closers = [await connect(where, records[i], counted=i > 0) for i in range(n)]
    await asyncio.sleep(warmup)
    start = time.monotonic()
    print(json.dumps({"measuring": start}), flush=True)
    await asyncio.sleep(seconds)
    end = time.monotonic()
    window = [[(t, tag) for t, tag in r if start <= t < end] for r in records]
    print(json.dumps({"start": start, "end": end, "records": window}), flush=True)
    for close in closers:
        with contextlib.suppress(Exception):
            await close()


async def run_viewers(
    mode: str, where: str, n: int, args: argparse.Namespace, server_pids: list[int]
) -> tuple[dict[str, Any], float]:
    """The viewers in a child process; returns their records and the server's CPU seconds/second."""
    command = [sys.executable, __file__, "--viewers-child", mode, where, str(n), str(args.warmup), str(args.seconds)]
    # one line carries every record of the window: far more than asyncio's 64 KiB line limit
    child = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE, limit=1 << 26)
    assert child.stdout is not None
    cpu0 = t0 = 0.0
    result: dict[str, Any] = {}
    async for raw in child.stdout:
        message = json.loads(raw)
        if "measuring" in message:
            cpu0, t0 = sum(cpu_seconds(p) for p in server_pids), time.monotonic()
        else:
            cpu1, t1 = sum(cpu_seconds(p) for p in server_pids), time.monotonic()
            result = message
    await child.wait()
    if child.returncode != 0 or not result:
        raise RuntimeError(f"the {mode} viewers failed (exit {child.returncode})")
    return result, (cpu1 - cpu0) / (t1 - t0)


def summarize(result: dict[str, Any], captured: list[tuple[int, float]], cpu_per_s: float) -> dict[str, Any]:
    seconds = result["end"] - result["start"]
    fps = [len(r) / seconds for r in result["records"]]
    glass = glass_ms(captured, ((t, tag) for t, tag in result["records"][0]))  # the decoding viewer
    return {
        "fps_min": round(min(fps), 2),
        "fps_median": round(statistics.median(fps), 2),
        "glass_p50_ms": round(percentile(glass, 50) or float("nan"), 1),
        "glass_p99_ms": round(percentile(glass, 99) or float("nan"), 1),
        "server_cpu_s_per_s": round(cpu_per_s, 3),
    }


def per_viewer_cost(rows: dict[int, dict[str, Any]]) -> None:
    one = rows.get(1)
    for n, row in rows.items():
        row["cpu_s_per_viewer_s"] = (
            None
            if one is None or n == 1
            else round((row["server_cpu_s_per_s"] - one["server_cpu_s_per_s"]) / (n - 1), 4)
        )


# ---------------------------------------------------------------------------------- fan-out


def stamping_file_rows() -> list[StampingSource]:
    """Make the `file` source kind stamp its frames (instrumentation for this benchmark only)."""
    made: list[StampingSource] = []

    def open_stamped(target: str, context: SourceContext) -> Source:
        source = StampingSource(FileSource.open(target, context))
        made.append(source)
        return source

    SOURCES["file"] = SourceKind(open_stamped, "PATH")
    return made


async def fanout_serve(args: argparse.Namespace, n: int) -> dict[str, Any]:
    from streamer.serve.config import ServeConfig
    from streamer.serve.http import Server

    made = stamping_file_rows()
    config = ServeConfig(
        avatars=(DEMO_AVATAR,),
        source=SourceSpec("file", str(DEMO_CLIP)),
        port=0,
        loop=True,
        source_fps=30.0,
        backend=args.backend,
        max_sessions=n + 1,
        max_per_client=n + 1,
        admission="limit",
        offers_per_minute=600,
    )
    server = Server(config)
    server.service.session_config = functools.partial(server.service.session_config, stamp=True)  # type: ignore[method-assign]
    await server.startup()
    try:
        result, cpu = await run_viewers("serve", f"http://127.0.0.1:{server.port}/", n, args, [os.getpid()])
        return summarize(result, made[-1].captured, cpu)
    finally:
        await server.shutdown()


async def fanout_janus(args: argparse.Namespace, n: int, janus: Any) -> dict[str, Any]:
    from streamer.core.metrics import Metrics
    from streamer.janus.client import JanusSession, Room
    from streamer.pipeline.session import AvatarEntry, AvatarSession, SessionConfig
    from streamer.sinks import open_sink, parse_sink
    from streamer.sinks.base import SinkContext

    clock = MonotonicClock()
    async with await JanusSession.open(janus.url, api_secret=janus.config.api_secret) as admin:
        secret, pin = os.urandom(8).hex(), os.urandom(8).hex()
        number = await admin.create_room(secret=secret, pin=pin, description="bench")
        room = Room(janus.url, number, pin, janus.config.api_secret)
        entry = await asyncio.to_thread(AvatarEntry.load, DEMO_AVATAR)
        source = StampingSource(FileSource(DEMO_CLIP, clock, loop=True, fps=30.0))
        session = AvatarSession("bench", entry, source, SessionConfig(args.backend, stamp=True), clock, Metrics())
        session.add_sink(open_sink(parse_sink(f"janus:{room.target()}"), SinkContext(clock)))
        await session.start()
        try:
            assert janus.process is not None
            result, cpu = await run_viewers("janus", room.target(), n, args, [os.getpid(), janus.process.pid])
            return summarize(result, source.captured, cpu)
        finally:
            await session.stop()
            await admin.destroy_room(number, secret=secret)


async def fanout(args: argparse.Namespace) -> dict[str, Any]:
    from streamer.janus.server import JanusServer, JanusServerConfig

    out: dict[str, dict[int, dict[str, Any]]] = {"janus": {}, "serve": {}}
    with (
        media_link() as link,
        JanusServer(JanusServerConfig(ice_enforce_list=link, api_secret=os.urandom(8).hex())) as janus,
    ):
        for n in args.viewers:
            for way in ("janus", "serve"):
                row = await (fanout_janus(args, n, janus) if way == "janus" else fanout_serve(args, n))
                out[way][n] = row
                print(f"fanout {way:5} {n:2} viewers: {json.dumps(row)}", flush=True)
    for rows in out.values():
        per_viewer_cost(rows)
    return {way: {str(n): row for n, row in rows.items()} for way, rows in out.items()}


# ---------------------------------------------------------------------------------- Ray: placement, failover

STORE = 100 * 1024 * 1024


def ray_cluster(streams_per_node: list[int]) -> Any:
    """A local Ray cluster: a head advertising no streams, one worker node per entry."""
    import ray
    from ray.cluster_utils import Cluster

    from streamer.cluster.names import NAMESPACE, RESOURCE

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": STORE, "include_dashboard": False},
    )
    for streams in streams_per_node:
        cluster.add_node(num_cpus=1, resources={RESOURCE: streams}, object_store_memory=STORE)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
    return cluster


def stop_ray(cluster: Any) -> None:
    import ray

    ray.shutdown()
    cluster.shutdown()


def session_rate(fleet: Any, names: list[str], seconds: float) -> dict[str, dict[str, Any]]:
    """Avatar frames per second of each session over `seconds`, from its own frame counter."""
    before = {n: fleet.status(n) for n in names}
    t0 = time.monotonic()
    time.sleep(seconds)
    after = {n: fleet.status(n) for n in names}
    elapsed = time.monotonic() - t0
    return {
        n: {
            "node": after[n].get("node"),
            "fps": round((after[n].get("frames", 0) - before[n].get("frames", 0)) / elapsed, 2),
            "e2e_ms": after[n].get("e2e_ms"),
        }
        for n in names
    }


def placement(args: argparse.Namespace) -> dict[str, Any]:
    """Two streams on two nodes (one share each) against two on one node (two shares)."""
    from streamer.cluster.actor import SessionSpec
    from streamer.cluster.avatars import AvatarRef
    from streamer.cluster.fleet import Fleet, FleetConfig

    out: dict[str, Any] = {}
    for layout, shares in (("two_nodes", [1, 1]), ("one_node", [2, 0])):
        cluster = ray_cluster(shares)
        try:
            fleet = Fleet(FleetConfig(address=cluster.address))
            fleet.connect()
            avatar = AvatarRef.put(DEMO_AVATAR)
            names = [f"{layout}-{i}" for i in range(2)]
            for name in names:
                fleet.place(
                    SessionSpec(name, f"file:{DEMO_CLIP}", ("null",), backend=args.backend, source_fps=30.0), avatar
                )
            time.sleep(args.warmup)
            rates = session_rate(fleet, names, args.seconds)
            out[layout] = {"nodes": len({r["node"] for r in rates.values()}), "sessions": rates}
            print(f"placement {layout}: {json.dumps(out[layout])}", flush=True)
            for name in names:
                fleet.end(name)
        finally:
            stop_ray(cluster)
    return out


FAILOVER_WAIT = 60.0  # seconds after a kill before it counts as a miss (null in failover_s)


async def failover(args: argparse.Namespace) -> list[float | None]:
    """Kill the node that holds a session `args.kills` times; each time, the seconds from the kill
    to the first avatar frame of the restarted session at a viewer that stayed connected."""
    from streamer.cluster.actor import SessionSpec
    from streamer.cluster.avatars import AvatarRef
    from streamer.cluster.fleet import Fleet, FleetConfig
    from streamer.cluster.names import RESOURCE
    from streamer.janus.client import AVATAR, JanusSession, Room
    from streamer.janus.server import JanusServer, JanusServerConfig

    times: list[float | None] = []
    secret = os.urandom(8).hex()
    with media_link() as link, JanusServer(JanusServerConfig(ice_enforce_list=link, api_secret=secret)) as janus:
        cluster = ray_cluster([1, 1])
        try:
            fleet = Fleet(FleetConfig(address=cluster.address))
            fleet.connect()
            avatar = AvatarRef.put(DEMO_AVATAR)
            async with await JanusSession.open(janus.url, api_secret=secret) as viewer:
                room_secret, pin = os.urandom(8).hex(), os.urandom(8).hex()
                number = await viewer.create_room(secret=room_secret, pin=pin, description="failover")
                room = Room(janus.url, number, pin, secret)
                spec = SessionSpec("failover", f"file:{DEMO_CLIP}", (f"janus:{room.target()}",), backend=args.backend)
                placed = await asyncio.to_thread(fleet.place, spec, avatar)
                subscriber = await viewer.subscribe(room, display=AVATAR, timeout=120)
                assert subscriber.track is not None
                node = placed["node"]
                for kill in range(args.kills):
                    with contextlib.suppress(TimeoutError):  # a miss before shows here as no frame
                        await asyncio.wait_for(subscriber.track.recv(), 30)
                    switches = subscriber.switches
                    (victim,) = [n for n in cluster.worker_nodes if n.node_id == node]
                    killed = time.monotonic()
                    await asyncio.to_thread(cluster.remove_node, victim)
                    took: float | None = None
                    with contextlib.suppress(TimeoutError):
                        while time.monotonic() - killed < FAILOVER_WAIT:  # old frames may still be in flight
                            await asyncio.wait_for(subscriber.track.recv(), FAILOVER_WAIT)
                            if subscriber.switches > switches:
                                took = round(time.monotonic() - killed, 2)
                                break
                    times.append(took)
                    status = await asyncio.to_thread(fleet.status, "failover")
                    print(f"failover {kill + 1}: {took} s, the session now: {json.dumps(status)[:300]}", flush=True)
                    node = status.get("node")
                    cluster.add_node(num_cpus=1, resources={RESOURCE: 1}, object_store_memory=STORE)
                    cluster.wait_for_nodes()
                await subscriber.close()
                await asyncio.to_thread(fleet.end, "failover")
                await viewer.destroy_room(number, secret=room_secret)
        finally:
            stop_ray(cluster)
    return times


# ---------------------------------------------------------------------------------- main


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--viewers-child":
        mode, where, n, warmup, seconds = sys.argv[2:7]
        asyncio.run(viewers_child(mode, where, int(n), float(warmup), float(seconds)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--viewers", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--seconds", type=float, default=12.0, help="measured window per case")
    parser.add_argument("--warmup", type=float, default=6.0, help="seconds before each window")
    parser.add_argument("--kills", type=int, default=5, help="failover: node kills")
    parser.add_argument("--backend", default="onnx")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch / onnxruntime threads of the session here (as `make bench`)"
    )
    parser.add_argument("--parts", default="fanout,placement,failover")
    args = parser.parse_args()
    if not private_network():
        if shutil.which("unshare") is None:
            sys.exit("bench_cluster: needs `unshare` (util-linux) to make its private network namespace")
        reexec_in_private_network()
    parts = set(args.parts.split(","))
    import torch

    torch.set_num_threads(args.threads)  # the engine's onnxruntime takes the same count
    settings = {**vars(args), "json": str(args.json) if args.json else None}
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "cores": os.cpu_count(), "args": settings}
    if "fanout" in parts:
        results["fanout"] = asyncio.run(fanout(args))
    if "placement" in parts:
        results["placement"] = placement(args)
    if "failover" in parts:
        results["failover_s"] = asyncio.run(failover(args))
        done = [t for t in results["failover_s"] if t is not None]
        results["failover_p50_s"] = statistics.median(done) if done else None
        results["failover_missed"] = len(results["failover_s"]) - len(done)
    text = json.dumps(results, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
