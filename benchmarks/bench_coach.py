"""Per-frame cost of the recording coach beside the plain live tracker, measured in the same run.

    .venv/bin/python benchmarks/bench_coach.py [--video V] [--seconds S] [--side 640] [--rounds 3]

Frames are a real clip sampled at 4 fps (as `streamer.create.preview` samples the page's
preview) and scaled to `--side` on their longer side (its `MAX_SIDE`). Three paths run over the
same frames, interleaved round by round so a change in the machine's load hits them alike:
`tracker` is serve's per-frame tracker (`FaceTracker(mode="video", max_faces=1)`),
`tracker_two_faces` the coach's own (it looks for a second face), `coach` is `Coach.feed`
(that tracker plus framing, light, the pose map and the expression bars). `core_share_at_4fps`
is the coach's median cost times 4 frames a second: the share of one core it keeps busy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from streamer.core.figures import percentiles
from streamer.create.coach import Coach
from streamer.create.preview import MAX_SIDE, SAMPLE_FPS
from streamer.sources.track import capped_size
from tracking.tracker import FaceTracker
from tracking.video import probe, read_frames

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "originals" / "f2fdemo_obama_weekly_address.mp4"
U8 = npt.NDArray[np.uint8]


def preview_frames(path: Path, seconds: float, side: int) -> list[tuple[float, U8]]:
    info = probe(path)
    step = max(1, round(info.fps / SAMPLE_FPS))
    frames = []
    for index, t, rgb in read_frames(path, round(seconds * info.fps)):
        if index % step == 0:
            size = capped_size(rgb.shape[1], rgb.shape[0], side)
            frames.append((t, np.ascontiguousarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))))
    return frames


def time_tracker(frames: list[tuple[float, U8]], max_faces: int) -> list[float]:
    with FaceTracker(mode="video", max_faces=max_faces) as tracker:
        spent = []
        for t, rgb in frames:
            start = time.perf_counter()
            tracker(rgb, round(t * 1000))
            spent.append(time.perf_counter() - start)
    return spent


def time_coach(frames: list[tuple[float, U8]]) -> list[float]:
    with Coach() as coach:
        spent = []
        for t, rgb in frames:
            start = time.perf_counter()
            coach.feed(rgb, t)
            spent.append(time.perf_counter() - start)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--video", type=Path, default=DEFAULT)
    parser.add_argument("--seconds", type=float, default=30.0, help="of the clip to sample")
    parser.add_argument("--side", type=int, default=MAX_SIDE, help="longer side of the preview frames")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    frames = preview_frames(args.video, args.seconds, args.side)
    times: dict[str, list[float]] = {"tracker": [], "tracker_two_faces": [], "coach": []}
    warm = slice(3, None)  # the first calls build MediaPipe's graph
    for _ in range(args.rounds):
        times["tracker"] += time_tracker(frames, 1)[warm]
        times["tracker_two_faces"] += time_tracker(frames, 2)[warm]
        times["coach"] += time_coach(frames)[warm]
    coach_p50 = float(np.median(times["coach"]))
    print(
        json.dumps(
            {
                "video": args.video.name,
                "frames_per_round": len(frames),
                "rounds": args.rounds,
                "input": "x".join(map(str, frames[0][1].shape[1::-1])),
                **{f"{name}_ms": percentiles(values) for name, values in times.items()},
                "coach_over_tracker_p50": round(coach_p50 / float(np.median(times["tracker"])), 2),
                "core_share_at_4fps": round(coach_p50 * SAMPLE_FPS, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
