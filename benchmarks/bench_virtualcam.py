"""What the meeting sees, measured: the served avatar into a webcam-sized virtual camera.

    .venv/bin/python benchmarks/bench_virtualcam.py [AVATAR] [--camera-size 1280x720] [--seconds 20]
        [--backend onnx] [--source VIDEO] [--source-fps 30] [--camera-fps 30]
        [--phase-lock both|on|off | --pacing tick,lock,prompt] [--rounds N]
        [--json OUT.json] [--screenshot OUT.jpg]

The real service (`Service`: file source paced in real time, the whole pipeline, the virtual
camera sink with its framing) publishes into pyvirtualcam's own `Camera` through a registered
backend that records each picture's arrival (the contract of the real backends; no
v4l2loopback is needed). Reported, after a warm-up: the rate pictures reach the device and
their interval p50/p99/max, the rate of new avatar pictures among them (the sink repeats the
last picture on a tick without a new one), beside the rate the pipeline made avatar frames at
and what it dropped (a new frame lands between two ticks with some jitter: two in one interval
and the first is never shown), ticks the sink missed,
the camera stage's cost (framing + send) and end-to-end latency, and the engine-to-device time
split into its wait for the sink's turn, the framing and the hand-over to the device. `--screenshot` saves one of
the device's own pictures (docs/live.md, "What the meeting sees").
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import pyvirtualcam

from streamer.core.clock import PhaseLock
from streamer.core.figures import percentiles
from streamer.provenance.identity import DEMO_AVATAR, DEMO_CLIP
from streamer.serve.config import ServeConfig
from streamer.serve.service import Service
from streamer.sinks.base import SinkSpec
from streamer.sinks.virtualcam import VirtualCamSink
from streamer.sources.base import SourceSpec
from streamer.stages.framing import CameraSize, FramingConfig


class Capture:
    """A pyvirtualcam backend: arrival time and a digest of every picture, and one picture kept."""

    times: ClassVar[list[float]] = []
    digests: ClassVar[list[int]] = []
    keep_at: ClassVar[float] = float("inf")
    kept: ClassVar[np.ndarray | None] = None
    lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device: str | None) -> None:
        self.shape = (height, width, 3)

    def device(self) -> str:
        return "capture"

    def native_fourcc(self) -> int | None:
        return None

    def send(self, frame: np.ndarray) -> None:
        now = time.monotonic()
        with Capture.lock:
            Capture.times.append(now)
            Capture.digests.append(hash(frame[::997].tobytes()))
            # The first picture after keep_at that is an avatar's, not a status card (cards are dark).
            if Capture.kept is None and now >= Capture.keep_at and float(frame[::97].mean()) > 60:
                Capture.kept = frame.reshape(self.shape).copy()

    def close(self) -> None:
        pass


async def measure(args: argparse.Namespace, pacing: str) -> dict[str, Any]:
    """One run with the sink's pacing: "tick" (its own grid), "lock" (the phase lock), "prompt"."""
    phase_lock = pacing == "lock"
    with Capture.lock:
        Capture.times, Capture.digests, Capture.kept = [], [], None
    size = CameraSize.parse(args.camera_size)
    config = ServeConfig(
        avatars=(args.avatar,),
        source=SourceSpec("file", str(args.source)),
        sinks=(SinkSpec("virtualcam"),),
        port=0,
        loop=True,
        source_fps=args.source_fps,
        fps=args.camera_fps,
        backend=args.backend,
        admission="limit",
        framing=FramingConfig(size=size),
        virtualcam_backend="bench-capture",
    ).resolved()
    service = Service(config)
    opened = time.monotonic()
    await service.startup()
    running = time.monotonic()
    assert service.shared is not None
    camera = next(s for s in service.shared.sinks if isinstance(s, VirtualCamSink))
    # off, the baseline: ticks on the sink's own grid, whatever the frames do (the sink's default)
    camera.lock = PhaseLock(camera.pacer.period) if phase_lock else None
    camera.prompt = pacing == "prompt"
    await asyncio.sleep(args.warmup)
    stats = service.shared.stats
    start, missed0, sent0 = time.monotonic(), camera.pacer.missed, camera.sent
    repeated0, sink_dropped0 = camera.repeated, camera.dropped
    camera.handoffs.clear()
    camera.handoff_parts.clear()
    made0, dropped0 = stats.frames, stats.dropped
    Capture.keep_at = start + args.seconds / 2
    await asyncio.sleep(args.seconds)
    end = time.monotonic()
    snap = service.shared.stats.snapshot()
    missed, sent = camera.pacer.missed - missed0, camera.sent - sent0
    repeated, sink_dropped = camera.repeated - repeated0, camera.dropped - sink_dropped0
    handoffs = list(camera.handoffs)
    parts = np.array(list(camera.handoff_parts)).reshape(-1, 3)
    made, dropped = stats.frames - made0, stats.dropped - dropped0
    await service.shutdown()

    with Capture.lock:
        pairs = [(t, d) for t, d in zip(Capture.times, Capture.digests, strict=True) if start <= t <= end]
        first_picture = Capture.times[0] if Capture.times else None
    times = np.array([t for t, _ in pairs])
    digests = [d for _, d in pairs]
    new = sum(1 for a, b in itertools.pairwise(digests) if a != b)
    intervals = np.diff(times)
    return {
        "pacing": pacing,
        "phase_lock": phase_lock,
        "phase_shifted_ms": round(camera.lock.shifted * 1000, 1) if camera.lock else None,
        "phase_agreement": round(camera.lock.agreement, 3) if camera.lock else None,
        "camera": str(size),
        "avatar": args.avatar.name,
        "backend": args.backend,
        "source_fps": args.source_fps,
        "camera_fps": args.camera_fps,
        "seconds": round(end - start, 2),
        "device_fps": round(len(times) / (end - start), 2),
        "interval_ms": {**(percentiles(intervals) or {}), "max": round(float(intervals.max()) * 1000, 1)},
        "new_pictures_per_s": round(new / (end - start), 2),
        "avatar_frames_per_s": round(made / (end - start), 2),
        "pipeline_dropped": dropped,
        "ticks_sent": sent,
        "ticks_missed": missed,
        "ticks_repeated": repeated,
        "sink_dropped": sink_dropped,
        "engine_to_device_ms": percentiles(handoffs),
        "engine_to_device_split_ms": {k: percentiles(parts[:, i]) for i, k in enumerate(("wait", "framing", "send"))},
        "camera_stage_ms": snap["stages_ms"].get("sink"),
        "e2e_ms": snap["e2e_ms"],
        "first_picture_after_s": round(first_picture - opened, 3) if first_picture else None,
        "avatar_running_after_s": round(running - opened, 2),
        "cpu_count": len(os.sched_getaffinity(0)),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def _name(pacing: str) -> str:
    return {"tick": "phase_lock_off", "lock": "phase_lock_on"}.get(pacing, pacing)


MEDIAN_KEYS = ("device_fps", "new_pictures_per_s", "avatar_frames_per_s", "ticks_repeated", "sink_dropped")


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, the median over the rounds (per second where the runs' lengths differ)."""
    out: dict[str, Any] = {k: round(float(np.median([r[k] / r["seconds"] for r in runs])), 2) for k in MEDIAN_KEYS[3:]}
    out = {f"{k}_per_s": v for k, v in out.items()}
    out |= {k: round(float(np.median([r[k] for r in runs])), 2) for k in MEDIAN_KEYS[:3]}
    for key in ("engine_to_device_ms", "e2e_ms", "interval_ms"):
        for q in ("p50", "p99"):
            values = [r[key][q] for r in runs if r[key]]
            out[f"{key}_{q}"] = round(float(np.median(values)), 2) if values else None
    for part in ("wait", "framing", "send"):
        values = [r["engine_to_device_split_ms"][part]["p50"] for r in runs if r["engine_to_device_split_ms"][part]]
        out[f"engine_to_device_{part}_p50"] = round(float(np.median(values)), 2) if values else None
    out["load_average_1m"] = [r["load_average_1m"] for r in runs]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("avatar", type=Path, nargs="?", default=DEMO_AVATAR)
    parser.add_argument("--camera-size", default="1280x720")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--backend", default="onnx")
    parser.add_argument("--source", type=Path, default=DEMO_CLIP)
    parser.add_argument(
        "--source-fps", type=float, default=30.0, help="pace the source like a camera at this rate (the clip is 25 fps)"
    )
    parser.add_argument("--camera-fps", type=float, default=30.0, help="the virtual camera's frame rate")
    parser.add_argument(
        "--phase-lock",
        choices=("both", "on", "off"),
        default="both",
        help="the sink's phase lock; both measures off (the baseline) and on, alternately, in one run",
    )
    parser.add_argument(
        "--pacing",
        help="the sink's pacing to compare, comma-separated: tick (its own grid, the default), lock (the phase "
        "lock), prompt (each new frame at once); overrides --phase-lock",
    )
    parser.add_argument("--rounds", type=int, default=1, help="runs of each side (alternating order)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args()
    pyvirtualcam.register_backend("bench-capture", Capture)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    sides = {"both": ("tick", "lock"), "on": ("lock",), "off": ("tick",)}[args.phase_lock]
    if args.pacing:
        sides = tuple(args.pacing.split(","))
        if not set(sides) <= {"tick", "lock", "prompt"}:
            parser.error("--pacing takes tick, lock and prompt")
    runs: dict[str, list[dict[str, Any]]] = {_name(side): [] for side in sides}
    for round_ in range(args.rounds):  # off, on, then on, off, ...: neither side always goes first
        for pacing in sides if round_ % 2 == 0 else sides[::-1]:
            runs[_name(pacing)].append(asyncio.run(measure(args, pacing)))
    report: dict[str, Any] = {"rounds": args.rounds, "runs": runs, "median": {k: _median(v) for k, v in runs.items()}}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.screenshot and Capture.kept is not None:
        cv2.imwrite(str(args.screenshot), Capture.kept[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])


if __name__ == "__main__":
    main()
