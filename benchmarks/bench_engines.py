"""Engines side by side: torch vs onnx, teacher vs student, on the same real renders in one run.

    .venv/bin/python benchmarks/bench_engines.py STUDENT.avatar --data DATA [--frames N] [--threads T]
        [--backends torch onnx] [--device cpu] [--onnx-graph NAME=FILE ...]

Times one engine call (batch 1, uint16/uint8 in, uint8 out) per frame on renders from the
dataset's test split. The engines take turns in blocks of 10 frames, so load from other work
on a shared machine falls on all of them alike. Prints p50/p99 per engine and its ratio to the
baseline, the torch teacher (the reference backend), measured in the same run. `--onnx-graph
NAME=FILE` adds the onnx engine on another exported graph of the same avatar (e.g. one written by
an older checkout's `avatarcam export --onnx`), and reports its outputs' largest difference from
the onnx student's, to compare two versions of the graph in one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from models.avatar import load_avatar
from models.engines import Engine, create_engine
from models.engines.onnx_engine import OnnxEngine
from models.training.data import FrameSet

BLOCK = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("avatar", type=Path, help="an .avatar file (with a student, to compare both)")
    parser.add_argument("--data", type=Path, required=True, help="a prepared dataset at the avatar's size")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx"])
    parser.add_argument("--onnx-graph", action="append", default=[], metavar="NAME=FILE")
    args = parser.parse_args()
    if args.onnx_graph and "onnx" not in args.backends:
        raise SystemExit("--onnx-graph compares with the onnx backend: keep onnx in --backends")
    torch.set_num_threads(args.threads)

    avatar = load_avatar(args.avatar)
    networks = {"teacher": dataclasses.replace(avatar, student=None)}
    if avatar.student is not None:
        networks["student"] = avatar
    size = avatar.network.image_size
    frames = FrameSet(args.data, "test", size, limit=args.frames)
    uv = np.ascontiguousarray(frames.uv.permute(0, 2, 3, 1).numpy().astype(np.uint16))
    shaded = np.ascontiguousarray(frames.shaded.permute(0, 2, 3, 1).numpy())

    engines: dict[str, Engine] = {}
    for network, variant in networks.items():
        for backend in args.backends:
            engine = create_engine(backend, variant, args.device)
            engine(uv[:1], shaded[:1])  # warm-up: allocations, graph optimization
            engines[f"{backend}/{network}"] = engine
    for text in args.onnx_graph:
        name, _, path = text.partition("=")
        engine = OnnxEngine(avatar, args.device, model=Path(path), threads=args.threads)
        engine(uv[:1], shaded[:1])
        engines[f"onnx/{name}"] = engine
    times: dict[str, list[float]] = {name: [] for name in engines}
    largest: dict[str, int] = {f"onnx/{t.partition('=')[0]}": 0 for t in args.onnx_graph}
    for start in range(0, len(uv), BLOCK):
        for name, engine in engines.items():
            for i in range(start, min(start + BLOCK, len(uv))):
                t0 = time.perf_counter()
                out = engine(uv[i : i + 1], shaded[i : i + 1])
                times[name].append(time.perf_counter() - t0)
                if name in largest:
                    ours = engines["onnx/student"](uv[i : i + 1], shaded[i : i + 1])
                    diff = np.abs(out.image.astype(np.int16) - ours.image.astype(np.int16)).max()
                    largest[name] = max(largest[name], int(diff))

    baseline = "torch/teacher" if "torch/teacher" in times else next(iter(times))
    base_p50 = float(np.percentile(times[baseline], 50))
    report = {
        "avatar": args.avatar.name,
        "resolution": size,
        "device": args.device,
        "threads": args.threads,
        "frames": len(uv),
        "baseline": baseline,
        "engines": {
            name: {
                "ms_p50": round(float(np.percentile(t, 50)) * 1000, 2),
                "ms_p99": round(float(np.percentile(t, 99)) * 1000, 2),
                "speedup_vs_baseline": round(base_p50 / float(np.percentile(t, 50)), 2),
            }
            for name, t in times.items()
        },
        "largest_image_difference_from_onnx_student": largest,
        "versions": {"torch": torch.__version__, "onnxruntime": _version("onnxruntime")},
    }
    print(json.dumps(report, indent=2))


def _version(module: str) -> str | None:
    try:
        return str(__import__(module).__version__)
    except ImportError:
        return None


if __name__ == "__main__":
    main()
