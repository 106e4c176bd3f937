"""Per-session frame rate and end-to-end latency with 1, 2, 3... camera sessions at once.

    .venv/bin/python benchmarks/bench_sessions.py [AVATAR] [--peers 3] [--seconds 15] [--warmup 4]
        [--backend onnx] [--size 640x480] [--fps 30] [--admission limit|capacity] [--json]

The real service (`--source webrtc`) in this process; N aiortc peers, each sending a real driver
video scaled to `--size` at `--fps` on absolute deadlines (as a camera would), each receiving its
own avatar back. For each N: the frames per second each peer received, and each session's
end-to-end time (camera frame received to avatar frame sent) p50 / p99 from the service.
With `--admission capacity` it also shows how many of the N the service admits (the others get
503). The load clients run on the same cores as the service: on a small machine they compete.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.provenance.identity import DEMO_AVATAR  # noqa: E402
from streamer.serve.config import ServeConfig  # noqa: E402
from streamer.serve.http import Server  # noqa: E402
from streamer.sources.base import SourceSpec  # noqa: E402
from tracking.video import read_frames  # noqa: E402

DRIVER = ROOT.parent / "shared" / "data" / "512" / "drv_lp_d10_512.mp4"


class PacedClip(MediaStreamTrack):
    """Driver frames at `fps` on absolute deadlines, looping."""

    kind = "video"

    def __init__(self, frames: list[np.ndarray], fps: float) -> None:
        super().__init__()
        self.frames, self.period = frames, 1 / fps
        self.n = 0
        self.t0: float | None = None

    async def recv(self) -> av.VideoFrame:
        now = time.monotonic()
        self.t0 = self.t0 or now
        due = self.t0 + self.n * self.period
        if due > now:
            await asyncio.sleep(due - now)
        frame = av.VideoFrame.from_ndarray(self.frames[self.n % len(self.frames)], format="rgb24")
        frame.pts, frame.time_base = round(self.n * self.period * 90_000), Fraction(1, 90_000)
        self.n += 1
        return frame


class Peer:
    def __init__(self, frames: list[np.ndarray], fps: float) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTrack(PacedClip(frames, fps))
        self.pc.createDataChannel("control")
        self.received: list[float] = []
        self.session: str | None = None
        self._pull: asyncio.Task[None] | None = None
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        async def pull() -> None:
            with contextlib.suppress(Exception):
                while True:
                    await track.recv()
                    self.received.append(time.monotonic())

        self._pull = asyncio.ensure_future(pull())

    async def connect(self, url: str) -> int:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer"}
        async with aiohttp.ClientSession() as http, http.post(url + "offer", json=body) as r:
            answer = await r.json()
            if r.status != 200:
                return r.status
        self.session = answer["session"]
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        return 200

    async def close(self) -> None:
        await self.pc.close()
        if self._pull is not None:
            self._pull.cancel()


def driver_frames(video: Path, size: tuple[int, int], count: int = 90) -> list[np.ndarray]:
    out = []
    for _, _, rgb in read_frames(video, count):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(size[0], size[1])
        out.append(frame.to_ndarray(format="rgb24"))
    return out


async def measure(args: argparse.Namespace, n: int, frames: list[np.ndarray]) -> dict[str, Any]:
    config = ServeConfig(
        avatars=(args.avatar,),
        source=SourceSpec("webrtc", ""),
        port=0,
        backend=args.backend,
        fps=args.fps,
        admission=args.admission,
        max_sessions=max(4, n),
        max_per_client=max(4, n),
    )
    server = Server(config)
    await server.startup()
    url = f"http://127.0.0.1:{server.port}/"
    peers = [Peer(frames, args.fps) for _ in range(n)]
    try:
        statuses = []
        for peer in peers:
            statuses.append(await peer.connect(url))
            await asyncio.sleep(args.stagger)  # the next one arrives after this one's cost is known
        await asyncio.sleep(args.warmup)
        for session in server.service.sessions():
            session.stats = type(session.stats)(session.stats.metrics)  # measure from here
        start = time.monotonic()
        counts = [len(p.received) for p in peers]
        await asyncio.sleep(args.seconds)
        elapsed = time.monotonic() - start
        snaps = {s.id: s.snapshot() for s in server.service.sessions()}
        capacity = server.service.capacity.info(len(snaps), len(server.service.peers))
        rows = []
        for peer, status, before in zip(peers, statuses, counts, strict=True):
            snap = snaps.get(peer.session or "")
            rows.append(
                {
                    "status": status,
                    "fps_received": round((len(peer.received) - before) / elapsed, 2),
                    "e2e_ms": snap["e2e_ms"] if snap else None,
                    "dropped": snap["dropped"] if snap else None,
                    "stages_ms": {k: v["p50"] for k, v in snap["stages_ms"].items() if v} if snap else None,
                }
            )
        return {"peers": n, "admitted": statuses.count(200), "sessions": rows, "capacity": capacity}
    finally:
        for peer in peers:
            await peer.close()
        await server.shutdown()


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    frames = driver_frames(args.video, args.size)
    results = []
    for n in range(1, args.peers + 1):
        result = await measure(args, n, frames)
        results.append(result)
        if not args.json:
            for i, row in enumerate(result["sessions"]):
                e2e = row["e2e_ms"] or {}
                print(
                    f"{n} peer(s), #{i + 1}: status {row['status']}, {row['fps_received']:5.1f} fps received, "
                    f"e2e p50 {e2e.get('p50', float('nan')):6.1f} ms, p99 {e2e.get('p99', float('nan')):6.1f} ms",
                    flush=True,
                )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("avatar", type=Path, nargs="?", default=DEMO_AVATAR)
    parser.add_argument("--video", type=Path, default=DRIVER)
    parser.add_argument("--peers", type=int, default=3, help="measure 1..N peers at once")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--stagger", type=float, default=2.0, help="seconds between two peers' offers")
    parser.add_argument("--backend", default="onnx")
    parser.add_argument("--size", type=lambda s: tuple(int(v) for v in s.split("x")), default=(640, 480))
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--admission", choices=["limit", "capacity"], default="limit")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    results = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
