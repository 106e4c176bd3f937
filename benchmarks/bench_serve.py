"""Server-side end-to-end latency of the live service: capture -> track -> render -> engine ->
compose -> sink, on the real pipeline (`AvatarSession`), optionally with a WebRTC peer.

    .venv/bin/python benchmarks/bench_serve.py [AVATAR] [--seconds 20] [--backend torch] [--device cpu]
        [--fps 25] [--peer] [--json]

The source is a real driver video paced in real time (frames land on absolute deadlines, as
from a camera), so `fps` shows whether the pipeline keeps up and `dropped` what it shed to keep
latency bounded. The baseline measured in the same run is the bare FaceLandmarker call on the
same frames: the floor of any tracker-driven avatar. Default avatar: the shipped demo.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamer.clock import MonotonicClock
from streamer.demo import DEMO_AVATAR, DEMO_CLIP
from streamer.metrics import Metrics
from streamer.session import AvatarEntry, AvatarSession, SessionConfig
from streamer.sinks import NullSink
from streamer.sources import FileSource
from tracking.tracker import FaceTracker
from tracking.video import read_frames


def tracker_baseline(video: Path, frames: int) -> float:
    """p50 ms of FaceLandmarker alone (VIDEO mode) on the clip's first frames."""
    times = []
    with FaceTracker(mode="video", max_faces=1) as tracker:
        for i, _, rgb in read_frames(video, frames):
            start = time.perf_counter()
            tracker(rgb, i * 40)
            times.append(time.perf_counter() - start)
    return float(np.median(times[5:]) * 1000)


async def run_session(args: argparse.Namespace) -> dict[str, Any]:
    clock = MonotonicClock()
    entry = AvatarEntry.load(args.avatar, device=args.device)
    source = FileSource(args.video, clock, loop=True, fps=args.fps)
    config = SessionConfig(backend=args.backend, device=args.device)
    session = AvatarSession("bench", entry, source, config, clock, Metrics())
    session.add_sink(NullSink(clock))
    client = None
    if args.peer:
        client = await _loopback_peer(session, clock)
    await session.start()
    await asyncio.sleep(3)  # warm-up: first engine calls, tracker start
    session.stats = type(session.stats)(session.stats.metrics)  # measure from here
    await asyncio.sleep(args.seconds)
    snap = session.snapshot()
    snap["fps"] = session.stats.frames / args.seconds
    await session.stop()
    if client is not None:
        await client.close()
    return snap


async def _loopback_peer(session: AvatarSession, clock: MonotonicClock) -> Any:
    """An aiortc receiver connected to a sender of this session's frames (encode included)."""
    from aiortc import RTCConfiguration, RTCPeerConnection
    from aiortc.contrib.media import MediaBlackhole

    from streamer.webrtc import AvatarTrack

    track = AvatarTrack(clock)
    session.add_sink(track)
    sender, receiver = RTCPeerConnection(RTCConfiguration(iceServers=[])), RTCPeerConnection(RTCConfiguration([]))
    sender.addTrack(track)
    sink = MediaBlackhole()
    receiver.on("track", sink.addTrack)
    await sender.setLocalDescription(await sender.createOffer())
    await receiver.setRemoteDescription(sender.localDescription)
    await receiver.setLocalDescription(await receiver.createAnswer())
    await sender.setRemoteDescription(receiver.localDescription)
    await sink.start()

    class Pair:
        async def close(self) -> None:
            await sink.stop()
            await sender.close()
            await receiver.close()

    return Pair()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("avatar", type=Path, nargs="?", default=DEMO_AVATAR)
    parser.add_argument("--video", type=Path, default=DEMO_CLIP)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--fps", type=float, default=25.0, help="source frame rate (the camera's)")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--peer", action="store_true", help="also stream to a loopback WebRTC peer")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    baseline = tracker_baseline(args.video, 100)
    snap = asyncio.run(run_session(args))
    result = {
        "avatar": args.avatar.name,
        "resolution": AvatarEntry.load(args.avatar).resolution,
        "backend": args.backend,
        "device": args.device,
        "source_fps": args.fps,
        "seconds": args.seconds,
        "fps": round(snap["fps"], 2),
        "frames": snap["frames"],
        "dropped": snap["dropped"],
        "e2e_ms": snap["e2e_ms"],
        "stages_ms": snap["stages_ms"],
        "baseline_tracker_ms_p50": round(baseline, 2),
        "torch_threads": torch.get_num_threads(),
        "peer": args.peer,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"avatar {result['avatar']} at {result['resolution']} px, {args.backend} on {args.device}, "
        f"source {args.fps:g} fps for {args.seconds:g} s{' + WebRTC peer' if args.peer else ''}"
    )
    print(f"  sustained {result['fps']:.1f} fps, {result['dropped']} frames dropped")
    e2e = result["e2e_ms"] or {"p50": float("nan"), "p99": float("nan")}
    print(f"  end to end (capture -> sink): p50 {e2e['p50']:.1f} ms, p99 {e2e['p99']:.1f} ms")
    for name, s in result["stages_ms"].items():
        if s:
            print(f"    {name:8s} p50 {s['p50']:6.1f} ms   p99 {s['p99']:6.1f} ms")
    print(
        f"  baseline, bare FaceLandmarker: p50 {baseline:.1f} ms "
        f"(end to end is {e2e['p50'] / baseline:.1f}x the tracker alone)"
    )


if __name__ == "__main__":
    main()
