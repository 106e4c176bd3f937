"""Janus's CPU while it relays one 512 x 512 VP8 publisher (~21 fps) to N aiortc subscribers.

Runs a Janus of our own (`JanusServer`) and the peers in this process, inside a private
network namespace (root; the veth pair of `tests/netns.py` gives Janus an interface for ICE):

    unshare -n sh -c 'ip link set lo up && PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_janus_relay.py 1 5 10 20'

Janus's CPU is read from /proc (user + system time of its process) over 10 s per step; this
process's CPU (one publisher's encoder plus N subscribers' decoders) is printed beside it as the
same-run baseline of what the peers cost.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from aiortc import MediaStreamTrack

from streamer.janus.client import AVATAR, JanusSession, Room
from streamer.janus.netns import media_link
from streamer.janus.server import JanusServer, JanusServerConfig
from tests.media import first_frames
from tests.test_janus import StampedClip

CLIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "512" / "drv_lp_d9_512.mp4"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(server: JanusServer, counts: list[int], seconds: float = 10.0) -> None:
    received = [0]

    async def drain(track: MediaStreamTrack) -> None:
        while True:
            await track.recv()
            received[0] += 1

    assert server.process is not None
    async with await JanusSession.open(server.url) as janus:
        room = Room(server.url, await janus.create_room(secret="bench", pin="bench"), "bench")
        await janus.publish(room, StampedClip(first_frames(CLIP, 250)), display=AVATAR)
        tasks = []
        for n in counts:
            while len(tasks) < n:
                subscriber = await janus.subscribe(room, display=AVATAR)
                assert subscriber.track is not None
                tasks.append(asyncio.create_task(drain(subscriber.track)))
            await asyncio.sleep(3.0)  # let the new subscribers settle
            j0, p0, f0, t0 = cpu_seconds(server.process.pid), time.process_time(), received[0], time.monotonic()
            await asyncio.sleep(seconds)
            j1, p1, f1, t1 = cpu_seconds(server.process.pid), time.process_time(), received[0], time.monotonic()
            print(
                f"subscribers {n:3d}: janus {100 * (j1 - j0) / (t1 - t0):5.1f}% of a core, "
                f"this process (1 encoder + {n} decoders) {100 * (p1 - p0) / (t1 - t0):5.1f}%, "
                f"{(f1 - f0) / (t1 - t0) / n:4.1f} fps per subscriber",
                flush=True,
            )
        for task in tasks:
            task.cancel()


def main() -> None:
    counts = [int(a) for a in sys.argv[1:]] or [1, 5, 10, 20]
    with media_link() as link, JanusServer(JanusServerConfig(ice_enforce_list=link)) as server:
        asyncio.run(run(server, counts))


if __name__ == "__main__":
    main()
