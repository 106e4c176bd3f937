"""Lower precision on the CPU: int8 onnxruntime and bf16 torch against their fp32, in one run.

    .venv/bin/python benchmarks/bench_precision.py AVATAR.avatar --data DATA [--frames 60]
        [--calibration 16] [--threads 2] [--torch]

Candidates, each against the fp32 engine of the same backend, on the same frames:
  - onnx int8: the onnx backend's exported graph, statically quantized by onnxruntime
    (QOperator, Conv and ConvTranspose only, int8 weights per channel, uint8 activations),
    calibrated on `--calibration` frames of the dataset's train split (the timed frames come
    from the test split). Quantizing Relu/Add too kept activations in int8 longer but moved
    the output by 7-8 uint8 levels on average, so only the convolutions are quantized.
  - torch bf16 (with `--torch`): the `torch-bf16` engine, the torch engine's network in
    channels-last layout under `torch.autocast("cpu", torch.bfloat16)`, which runs convolutions
    through oneDNN (AMX / AVX512-BF16 when the CPU has them).

Batch 1, every engine called on frame i before any on frame i + 1, so load from other work on
a shared machine falls on all of them alike. Prints, per engine: p50 ms and its ratio to the
fp32 engine of its backend; the max / mean absolute difference of the image from that fp32
engine's, in uint8 levels; the mean LPIPS(alex) of the image against fp32's image; and the mean
LPIPS of the whole 256 px image against the recorded frame, beside fp32's (a quick proxy for
`avatarcam evaluate`, which composites and crops differently). The load average is printed with
the numbers: on a loaded machine the medians move by tens of percent from run to run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.avatar import load_avatar
from models.engines.onnx_engine import INPUTS, OUTPUTS, onnx_path_for
from models.engines.torch_engine import TorchEngine
from models.evaluation.metrics.lpips import load_lpips
from models.training.data import FrameSet

Run = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (uv, shaded) -> image [1, H, W, 3] uint8


def frames(data: Path, split: str, size: int, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uv uint16, shaded uint8, recorded image uint8), all [N, H, W, 3], of a dataset split."""
    fs = FrameSet(data, split, size, limit=limit)

    def nhwc(t: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(t.permute(0, 2, 3, 1).numpy())

    return nhwc(fs.uv).astype(np.uint16), nhwc(fs.shaded), nhwc(fs.image)


def quantize_int8(source: Path, out: Path, uv: np.ndarray, shaded: np.ndarray) -> Path:
    """Static int8 quantization of an exported engine graph, calibrated on (uv, shaded)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Calibration(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches: Iterator[dict[str, np.ndarray]] = (
                dict(zip(INPUTS, (uv[i : i + 1], shaded[i : i + 1]), strict=True)) for i in range(len(uv))
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    prepared = out.with_name("prepared.onnx")
    # onnxruntime's quantization leaves temporary files in the working directory: use out's.
    with contextlib.chdir(out.parent):
        # The integer inputs' Cast nodes defeat symbolic shape inference; onnx's own is enough here.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out),
            Calibration(),
            quant_format=QuantFormat.QOperator,
            op_types_to_quantize=["Conv", "ConvTranspose"],
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
    return out


def onnx_run(path: Path, threads: int) -> Run:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(uv: np.ndarray, shaded: np.ndarray) -> np.ndarray:
        return np.asarray(session.run([OUTPUTS[0]], dict(zip(INPUTS, (uv, shaded), strict=True)))[0])

    return run


def torch_run(engine: TorchEngine) -> Run:
    return lambda uv, shaded: engine(uv, shaded).image


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return sorted(f for f in line.split() if f in {"amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("avatar", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="the avatar's prepared dataset")
    parser.add_argument("--frames", type=int, default=60, help="timed frames, from the test split")
    parser.add_argument("--calibration", type=int, default=16, help="int8 calibration frames, from train")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--torch", action="store_true", help="also time torch fp32 vs bf16 (slow here)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    avatar = load_avatar(args.avatar)
    size = avatar.network.image_size
    uv, shaded, real = frames(args.data, "test", size, args.frames)
    cal_uv, cal_shaded, _ = frames(args.data, "train", size, args.calibration)
    fp32_graph = onnx_path_for(avatar)
    if not fp32_graph.exists():
        from models.engines import create_engine

        create_engine("onnx", avatar).close()  # exports the graph into the cache
    tmp = Path(tempfile.mkdtemp(prefix="avatarcam-int8-"))
    int8_graph = quantize_int8(fp32_graph, tmp / "int8.onnx", cal_uv, cal_shaded)

    engines: dict[str, Run] = {"onnx/fp32": onnx_run(fp32_graph, args.threads)}
    engines["onnx/int8"] = onnx_run(int8_graph, args.threads)
    if args.torch:
        engines["torch/fp32"] = torch_run(TorchEngine(avatar))
        engines["torch/bf16"] = torch_run(TorchEngine(avatar, bf16=True))
    for run in engines.values():
        run(uv[:1], shaded[:1])  # warm-up

    load_before = os.getloadavg()
    times: dict[str, list[float]] = {name: [] for name in engines}
    images: dict[str, list[np.ndarray]] = {name: [] for name in engines}
    for i in range(len(uv)):
        for name, run in engines.items():
            t0 = time.perf_counter()
            image = run(uv[i : i + 1], shaded[i : i + 1])
            times[name].append(time.perf_counter() - t0)
            images[name].append(image[0])
    load_after = os.getloadavg()

    lpips = load_lpips()

    def as01(stack: list[np.ndarray] | np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack(list(stack))).permute(0, 3, 1, 2).float() / 255

    with torch.inference_mode():
        real01 = as01(real)
        out: dict[str, Any] = {}
        for name, stack in images.items():
            reference = f"{name.split('/')[0]}/fp32"
            diff = np.abs(np.stack(stack).astype(np.int16) - np.stack(images[reference]).astype(np.int16))
            p50 = float(np.median(times[name]))
            out[name] = {
                "ms_p50": round(p50 * 1000, 2),
                "ms_p90": round(float(np.percentile(times[name], 90)) * 1000, 2),
                "speedup_vs_fp32": round(float(np.median(times[reference])) / p50, 3),
                "max_abs_diff_u8": int(diff.max()),
                "mean_abs_diff_u8": round(float(diff.mean()), 4),
                "lpips_vs_fp32": round(float(lpips(as01(stack), as01(images[reference])).mean()), 5),
                "lpips_vs_recorded": round(float(lpips(as01(stack), real01).mean()), 5),
            }
    report = {
        "avatar": args.avatar.name,
        "network": "student" if avatar.student is not None else "teacher",
        "resolution": size,
        "threads": args.threads,
        "frames": len(uv),
        "calibration_frames": len(cal_uv),
        "cpu_flags": cpu_flags(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "engines": out,
        "versions": {"torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
