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


def _loss_override(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--loss {text!r}: use NAME=WEIGHT, e.g. cos=0") from None


def _train(args: argparse.Namespace) -> int:
    from models.train import TrainOptions, run

    options = TrainOptions(
        data=args.data,
        out=args.out,
        preset=args.preset,
        steps=args.steps,
        batch=args.batch,
        device=args.device,
        seed=args.seed,
        resume=args.resume,
        checkpoint_every=args.checkpoint_every,
        sample_every=args.sample_every,
        max_frames=args.max_frames,
        losses=tuple(args.loss),
    )
    preset = options.resolved_preset()
    if args.dry_run:
        print(json.dumps({"options": asdict(options), "preset": preset.to_dict()}, indent=2, default=str))
        return 0
    summary = run(options)
    print(json.dumps(summary, default=str))
    return 0


def _export(args: argparse.Namespace) -> int:
    from models.avatar import export

    path = export(args.run, args.data, args.out, subject=args.subject, consent=args.consent)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
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

    p = sub.add_parser("train", help="train a SelfieAvatar generator on a prepared dataset")
    p.add_argument("data", type=Path, help="a folder written by `avatarcam prepare`")
    p.add_argument("-o", "--out", type=Path, required=True, help="run folder (checkpoints, logs, samples)")
    p.add_argument("--preset", default="cpu-256", choices=["tiny", "cpu-256", "256", "512"])
    p.add_argument("--steps", type=int, help="total steps (default: the preset's)")
    p.add_argument("--batch", type=int, help="frames per step (default: the preset's)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run from its newest checkpoint")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--sample-every", type=int, default=250)
    p.add_argument("--max-frames", type=int, help="use only the first N training frames")
    p.add_argument("--loss", type=_loss_override, action="append", default=[], help="NAME=WEIGHT, e.g. cos=0")
    p.add_argument("--dry-run", action="store_true", help="print the resolved options and preset and exit")
    p.set_defaults(handler=_train)

    p = sub.add_parser("export", help="write one self-describing .avatar file from a training run")
    p.add_argument("run", type=Path, help="a run folder written by `avatarcam train`")
    p.add_argument("-o", "--out", type=Path, required=True, help="the NAME.avatar file to write")
    p.add_argument("--data", type=Path, required=True, help="the dataset the run trained on (expression model, crop)")
    p.add_argument("--subject", required=True, help="who the avatar depicts")
    p.add_argument("--consent", required=True, help="the depicted person's consent statement, verbatim")
    p.set_defaults(handler=_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from models.avatar import AvatarError
    from models.checkpoint import CheckpointError
    from models.data import DatasetError
    from models.train import TrainError
    from tracking.assets import AssetMissing
    from tracking.prepare import PrepareError
    from tracking.video import VideoError

    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except (AssetMissing, PrepareError, VideoError, DatasetError, TrainError, CheckpointError, AvatarError) as exc:
        print(f"avatarcam: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("avatarcam: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
