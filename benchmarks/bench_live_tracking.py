"""Latency of the live driving path on one 640x480 camera frame -> 256x256 conditioning.

    .venv/bin/python benchmarks/bench_live_tracking.py [--frames N] [--device cpu|cuda]

Prints p50/p99 per stage over N frames of a real driver video, beside the bare FaceLandmarker
call measured in the same run (the floor any tracker-based path pays). Tracking, smoothing and
retargeting run on the CPU; `--device` moves the renderer.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from streamer.core.figures import percentiles
from tracking.crop import Crop
from tracking.expression import ExpressionModel
from tracking.live import LiveDriver
from tracking.render import FaceRenderer
from tracking.tracker import FaceTracker
from tracking.video import read_frames

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "512"


def camera_frames(path: Path, count: int) -> list[np.ndarray]:
    """A 512x512 clip letterboxed into 640x480, as a webcam would deliver it."""
    out = []
    for _, _, rgb in read_frames(path, count):
        canvas = np.zeros((480, 640, 3), np.uint8)
        canvas[:, 80:560] = cv2.resize(rgb, (480, 480), interpolation=cv2.INTER_AREA)
        out.append(canvas)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--avatar-video", type=Path, default=SHARED / "cap12_512.mp4")
    parser.add_argument("--driver", type=Path, default=SHARED / "drv_lp_d10_512.mp4")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with FaceTracker(mode="video") as tracker:
        tracks = [t for i, _, f in read_frames(args.avatar_video, 200) if (t := tracker(f, i * 40))]
    model = ExpressionModel.fit(
        np.stack([t.shape for t in tracks]),
        np.stack([t.blendshapes for t in tracks]),
        np.stack([t.pose.as_vector() for t in tracks]),
    )
    frames = camera_frames(args.driver, args.frames)

    with FaceTracker(mode="video") as bare:
        baseline = []
        for i, f in enumerate(frames):
            start = time.perf_counter()
            bare(f, i * 33)
            baseline.append(time.perf_counter() - start)

    tracker = FaceTracker(mode="video")
    renderer = FaceRenderer(tracker.mesh, 256, args.device)
    driver = LiveDriver(model, Crop(0, 0, 512, 256), renderer, tracker)
    totals: list[float] = []
    for i, f in enumerate(frames):
        start = time.perf_counter()
        out = driver(f, i / 30)
        if args.device == "cuda":
            torch.cuda.synchronize()
        totals.append(time.perf_counter() - start)
        del out
    tracker.close()
    warm = slice(10, None)
    print(
        json.dumps(
            {
                "frames": len(frames),
                "input": "640x480",
                "output": "256x256",
                "render_device": args.device,
                "baseline_facelandmarker_ms": percentiles(baseline[warm]),
                "live_path_ms": percentiles(totals[warm]),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
