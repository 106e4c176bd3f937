"""The render stage, old against new, in one run: median ms per frame on real tracked cap12 frames.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_render.py [--data data/cap12] [--frames 300]
        [--size 256] [--threads 2] [--baseline-checkout ../main] [--json OUT.json]

Each frame is rendered by the baseline and by this checkout's CPU renderer, alternately (old,
new, old, new, ...), so load on a shared machine hits both alike; each timing is one
`FaceRenderer` call plus `uv_u16()` and `shaded_u8()`, what the live pipeline's render stage
times. The baseline is `--baseline-checkout`'s own tracking/render.py and tracking/raster.py
(e.g. the main checkout, loaded under other module names), or without it this checkout's
`kernel="torch"` path. Reported beside the times: how many frames render identically (uv, region)
and the largest difference of the shaded image (8-bit levels).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from tracking.mesh import load_canonical_mesh
from tracking.render import FaceRenderer


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def baseline_renderer(checkout: Path | None, size: int) -> Any:
    """The old renderer: `checkout`'s render module over its own rasterizers, or this checkout's
    PyTorch kernel."""
    mesh = load_canonical_mesh()
    if checkout is None:
        return FaceRenderer(mesh, size, kernel="torch")
    # The old render module imports the old rasterizers under their own names.
    names = [name for name in ("raster", "raster_np", "raster_cpu") if (checkout / "tracking" / f"{name}.py").is_file()]
    saved = {name: sys.modules.get(f"tracking.{name}") for name in names}
    try:
        for name in names:
            sys.modules[f"tracking.{name}"] = _load(f"baseline_{name}", checkout / "tracking" / f"{name}.py")
        render = _load("baseline_render", checkout / "tracking" / "render.py")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(f"tracking.{name}", None)
            else:
                sys.modules[f"tracking.{name}"] = module
    return render.FaceRenderer(mesh, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/cap12"), help="a prepared dataset (tracking.npz)")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (as `bench --threads`)")
    parser.add_argument("--baseline-checkout", type=Path, help="a checkout whose renderer is the baseline")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tracks = args.data / "train" / "tracking.npz"
    if not tracks.is_file():
        raise SystemExit(f"{tracks} not found: pass --data, a folder made by `avatarcam prepare`")
    if args.frames < 1:
        raise SystemExit("--frames must be >= 1")
    torch.set_num_threads(args.threads)
    with np.load(tracks) as saved:
        prepared = int(saved["crop"][3])  # x0, y0, side, size: the landmarks are pixels of a size x size crop
        landmarks = saved["landmarks"].astype(np.float32) * np.float32(args.size / prepared)
    picks = np.linspace(0, len(landmarks) - 1, args.frames).round().astype(int)
    old, new = baseline_renderer(args.baseline_checkout, args.size), FaceRenderer(load_canonical_mesh(), args.size)
    times: dict[str, list[float]] = {"old": [], "new": []}
    same_uv = same_region = 0
    shaded_diff = 0
    for warm in picks[:10]:
        old(landmarks[warm])
        new(landmarks[warm])
    for i in picks:
        outs = {}
        for name, renderer in (("old", old), ("new", new)):
            start = time.perf_counter()
            cond = renderer(landmarks[i])
            outs[name] = (cond.uv_u16(), cond.shaded_u8(), cond.region.numpy())
            times[name].append(time.perf_counter() - start)
        (uv_a, sh_a, rg_a), (uv_b, sh_b, rg_b) = outs["old"], outs["new"]
        same_uv += bool(np.array_equal(uv_a, uv_b))
        same_region += bool(np.array_equal(rg_a, rg_b))
        shaded_diff = max(shaded_diff, int(np.abs(sh_a.astype(np.int16) - sh_b).max()))
    old_ms, new_ms = (float(np.median(times[k])) * 1000 for k in ("old", "new"))
    report = {
        "baseline": str(args.baseline_checkout) if args.baseline_checkout else "this checkout, kernel=torch",
        "frames": len(picks),
        "size": args.size,
        "threads": args.threads,
        "old_ms_p50": round(old_ms, 2),
        "new_ms_p50": round(new_ms, 2),
        "old_ms_p90": round(float(np.percentile(times["old"], 90)) * 1000, 2),
        "new_ms_p90": round(float(np.percentile(times["new"], 90)) * 1000, 2),
        "speedup_p50": round(old_ms / new_ms, 2),
        "frames_uv_identical": same_uv,
        "frames_region_identical": same_region,
        "shaded_max_diff_levels": shaded_diff,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpu_count": len(os.sched_getaffinity(0)),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
