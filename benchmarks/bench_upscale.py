"""Which resampler the virtual camera should scale the avatar's crop with: quality and cost.

    .venv/bin/python benchmarks/bench_upscale.py [VIDEO] [--side 720] [--frames 12] [--json]

The avatar's crop (256 px on the CPU tier) is scaled up to the camera's height (720 px in a
1280x720 camera). Real high-resolution frames give the answer it should have come out as: the
centre square of evenly spaced frames of a 720p video at `side` px is the reference; the same
square shrunk to 256 px (area averaging, like a camera sensor) and scaled back up with each
resampler is compared with it (LPIPS, lower is better; PSNR). Bilinear is the baseline, and
nearest-neighbour the floor. The cost is ms per frame of the resize alone (median of 50), with
OpenCV's threads as the service runs them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from models.evaluation.metrics import create_metric
from streamer.stages.framing import Resampler
from tracking.video import probe, read_frames

DEFAULT_VIDEO = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "originals" / "f2fdemo_obama_weekly_address.mp4"
)
FLAGS = {**{r.value: r.cv2_flag for r in Resampler}, "nearest": cv2.INTER_NEAREST}


def centre_square(rgb: np.ndarray, side: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return cv2.resize(rgb[y : y + s, x : x + s], (side, side), interpolation=cv2.INTER_AREA)


def tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255


def cost_ms(small: np.ndarray, side: int, flag: int) -> float:
    cv2.resize(small, (side, side), interpolation=flag)
    seconds = []
    for _ in range(50):
        start = time.perf_counter()
        cv2.resize(small, (side, side), interpolation=flag)
        seconds.append(time.perf_counter() - start)
    return round(float(np.median(seconds)) * 1000, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", type=Path, nargs="?", default=DEFAULT_VIDEO)
    parser.add_argument("--side", type=int, default=720, help="the camera-side reference size (px)")
    parser.add_argument("--crop", type=int, default=256, help="the avatar's crop size (px)")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    info = probe(args.video)
    if min(info.width, info.height) < args.side:
        parser.error(f"{args.video} is {info.width}x{info.height}: too small for a {args.side} px reference")
    step = max(1, info.frames // args.frames)
    references = [centre_square(rgb, args.side) for i, _, rgb in read_frames(args.video) if i % step == 0]
    references = references[: args.frames]
    rows = {}
    for name, flag in FLAGS.items():
        lpips, psnr = create_metric("lpips"), create_metric("psnr")
        for reference in references:
            small = cv2.resize(reference, (args.crop, args.crop), interpolation=cv2.INTER_AREA)
            up = cv2.resize(small, (args.side, args.side), interpolation=flag)
            lpips.update(tensor(up), tensor(reference))
            psnr.update(tensor(up), tensor(reference))
        rows[name] = {
            "lpips": round(lpips.result(), 4),
            "psnr": round(psnr.result(), 2),
            "ms": cost_ms(small, args.side, flag),
        }
    report = {"video": args.video.name, "frames": len(references), "crop": args.crop, "side": args.side, **rows}
    if args.json:
        print(json.dumps(report))
        return
    print(f"{args.crop} px -> {args.side} px on {len(references)} frames of {args.video.name}:")
    for name, row in rows.items():
        tag = " (default)" if name == Resampler.CUBIC.value else " (baseline)" if name == "linear" else ""
        print(f"  {name:8s} LPIPS {row['lpips']:.4f}  PSNR {row['psnr']:6.2f} dB  {row['ms']:6.3f} ms{tag}")


if __name__ == "__main__":
    main()
