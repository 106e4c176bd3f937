"""The `avatarcam` command: a thin layer that parses options and calls each stage's `run`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path


def _prepare(args: argparse.Namespace) -> int:
    from tracking.prepare import PrepareConfig, run

    config = PrepareConfig(
        video=args.video,
        out=args.out,
        size=args.size,
        test_video=args.test_video,
        test_fraction=args.test_fraction,
        max_frames=args.max_frames,
        workers=args.workers,
        face_model=args.face_model,
        segmentation_model=args.segmentation_model,
    )
    config.validate()
    if args.dry_run:
        print(json.dumps(asdict(config), indent=2, default=str))
        return 0
    manifest = run(config)
    summary = {k: manifest[k] for k in ("frames_total", "frames_tracked", "train_frames", "test_frames", "size")}
    print(json.dumps(summary))
    for warning in manifest["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    fps = manifest["timings"]["frames_per_second"]
    print(
        f"prepared {config.out} at {fps:.1f} frames/s; check {config.out / 'contact_sheet.png'}",
        file=sys.stderr,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avatarcam", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="track, segment, crop and render a selfie video into a training set")
    p.add_argument("video", type=Path, help="the selfie video to learn from")
    p.add_argument("-o", "--out", type=Path, required=True, help="dataset folder to write")
    p.add_argument("--size", type=int, default=256, help="crop and render size in pixels (256, 512)")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--test-video", type=Path, help="another recording of the same person, for testing")
    split.add_argument("--test-fraction", type=float, default=0.2, help="tail fraction held out (default 0.2)")
    p.add_argument("--max-frames", type=int, help="use only the first N frames of each video")
    p.add_argument("--workers", type=int, default=2, help="threads for cropping, segmenting and rendering")
    p.add_argument("--face-model", type=Path, help="a face_landmarker.task to use instead of the installed one")
    p.add_argument(
        "--segmentation-model",
        type=Path,
        help="a segmentation model to use instead of the installed one",
    )
    p.add_argument("--dry-run", action="store_true", help="print the resolved options and exit")
    p.set_defaults(handler=_prepare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from tracking.assets import AssetMissing
    from tracking.prepare import PrepareError
    from tracking.video import VideoError

    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except (AssetMissing, PrepareError, VideoError) as exc:
        print(f"avatarcam: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("avatarcam: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
