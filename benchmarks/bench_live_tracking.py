"""Latency of the live driving path on one 640x480 camera frame -> 256x256 conditioning.

    .venv/bin/python benchmarks/bench_live_tracking.py [--frames N] [--device cpu|cuda]

Prints p50/p99 per stage over N frames of a real driver video, beside the bare FaceLandmarker
call measured in the same run (the floor any tracker-based path pays). Tracking, smoothing and
retargeting run on the CPU; `--device` moves the renderer.

    .venv/bin/python benchmarks/bench_live_tracking.py --roi [--frames N]

instead asks whether tracking a region of interest around the last face is cheaper than the whole
frame: on the same 1280x720 camera frames, alternately, one VIDEO-mode FaceLandmarker gets the
whole frame and another a 256x256 crop around the face it found in the previous frame (1.8x the
landmarks' box), its landmarks mapped back. Printed: each one's ms p50/p90, the crop's landmark
distance from the whole frame's (fraction of the face's size) and its blendshapes' largest
difference.
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


def roi_study(driver: Path, count: int) -> dict[str, object]:
    """Whole 1280x720 frame against a 256x256 crop around the last face, alternately (see above)."""
    frames = []
    for _, _, rgb in read_frames(driver, count):
        canvas = np.zeros((720, 1280, 3), np.uint8)
        canvas[:, 280:1000] = cv2.resize(rgb, (720, 720), interpolation=cv2.INTER_AREA)
        frames.append(canvas)
    times: dict[str, list[float]] = {"whole": [], "roi": []}
    errors, blend_diffs = [], []
    box: tuple[float, float, float] | None = None  # centre x, y and side of the crop, camera pixels
    with FaceTracker(mode="video", max_faces=1) as whole, FaceTracker(mode="video", max_faces=1) as roi:
        for i, frame in enumerate(frames):
            start = time.perf_counter()
            full = whole(frame, i * 33)
            times["whole"].append(time.perf_counter() - start)
            start = time.perf_counter()
            if box is None:
                crop, scale, x0, y0 = frame, 1.0, 0.0, 0.0
            else:
                cx, cy, side = box
                x0, y0 = cx - side / 2, cy - side / 2
                scale = side / 256
                warp = np.array([[1 / scale, 0, -x0 / scale], [0, 1 / scale, -y0 / scale]], np.float32)
                crop = cv2.warpAffine(frame, warp, (256, 256), flags=cv2.INTER_AREA)
            found = roi(crop, i * 33)
            times["roi"].append(time.perf_counter() - start)
            if found is None:
                box = None
                continue
            points = found.landmarks[:, :2] * scale + np.array([x0, y0], np.float32)
            low, high = points.min(axis=0), points.max(axis=0)
            box = (*((low + high) / 2), float((high - low).max()) * 1.8)
            if full is not None and i >= 10:
                size = float((full.landmarks[:, :2].max(axis=0) - full.landmarks[:, :2].min(axis=0)).max())
                errors.append(float(np.linalg.norm(points - full.landmarks[:, :2], axis=1).mean()) / size)
                blend_diffs.append(float(np.abs(found.blendshapes - full.blendshapes).max()))
    warm = slice(10, None)
    return {
        "frames": len(frames),
        "camera": "1280x720",
        "whole_frame_ms": percentiles(times["whole"][warm]),
        "roi_256_ms": percentiles(times["roi"][warm]),
        "roi_landmark_error_of_face_size": _spread(errors),
        "roi_blendshape_max_diff": _spread(blend_diffs),
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(float(np.median(values)), 4), "p99": round(float(np.percentile(values, 99)), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--roi", action="store_true", help="whole frame against a crop around the last face")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--avatar-video", type=Path, default=SHARED / "cap12_512.mp4")
    parser.add_argument("--driver", type=Path, default=SHARED / "drv_lp_d10_512.mp4")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.roi:
        print(json.dumps(roi_study(args.driver, args.frames), indent=2))
        return

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
