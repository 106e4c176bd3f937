"""Throughput of `avatarcam prepare` per stage, beside a decode-only baseline from the same run.

    .venv/bin/python benchmarks/bench_prepare.py [--video V] [--frames N] [--size 256]

Stage figures are frames per second of the time spent in that stage summed over threads, so
they show where the time goes; `overall` is frames over wall-clock time, the number that counts.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tracking.prepare import PrepareConfig, run
from tracking.video import read_frames

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "512" / "cap12_512.mp4"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--video", type=Path, default=DEFAULT)
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()

    start = time.perf_counter()
    decoded = sum(1 for _ in read_frames(args.video, args.frames))
    decode_fps = decoded / (time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as tmp:
        config = PrepareConfig(video=args.video, out=Path(tmp) / "data", size=args.size, max_frames=args.frames)
        manifest = run(config)
    timings = manifest["timings"]
    frames = manifest["frames_total"]
    stages = {k: frames / v for k, v in timings["stage_seconds"].items() if v > 0}
    report = {
        "video": args.video.name,
        "frames": frames,
        "size": args.size,
        "baseline_decode_only_fps": round(decode_fps, 1),
        "overall_fps": round(timings["frames_per_second"], 1),
        "stage_fps": {k: round(v, 1) for k, v in stages.items()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
