"""The tensorrt backend: an fp16 TensorRT engine built from the ONNX export, run on CUDA.

The ONNX graph is exported with float inputs (TensorRT has no uint16 tensors): the uint16 and
uint8 arrays are unpacked on the GPU by torch before the engine runs, and the engine's uint8
outputs are copied back. Builds use a timing cache, and the built engine is cached in the
avatarcam cache dir under a key of (network digest, GPU name, TensorRT version), since a
serialized engine is valid only for the GPU model and TensorRT version that built it.

UNVERIFIED: TensorRT cannot be installed from the package registries these machines reach, and
the H100/H200 benchmark machines lack it too. This is written against TensorRT 10's Python API
(named I/O tensors, `execute_async_v3`); its tests skip when `tensorrt` is not importable.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from models.avatar import Avatar
from models.engines.base import U8, U16, EngineOutput, EngineUnavailable, check_inputs, register
from models.engines.inference import inference_network
from models.engines.onnx_engine import INPUTS, OUTPUTS, export_onnx, network_key
from tracking.assets import cache_dir

MAX_BATCH = 8
WORKSPACE = 1 << 30


def require_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise EngineUnavailable(
            "the tensorrt backend needs NVIDIA TensorRT >= 10 (`pip install tensorrt` from NVIDIA's index "
            "on a CUDA machine); it is not installable here. Use --backend torch or onnx."
        ) from None
    return tensorrt


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def build_engine(trt: Any, onnx_path: Path, plan: Path, timing: Path, size: int) -> bytes:
    """Parse the ONNX file, build an fp16 engine for batch 1..MAX_BATCH, save plan and timing cache."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineUnavailable(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE)
    cache = config.create_timing_cache(timing.read_bytes() if timing.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for name in (f"{i}_raw" for i in INPUTS):
        profile.set_shape(name, (1, size, size, 3), (1, size, size, 3), (MAX_BATCH, size, size, 3))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineUnavailable(f"TensorRT failed to build an engine from {onnx_path}")
    data = bytes(serialized)
    _atomic_write(plan, data)
    _atomic_write(timing, bytes(config.get_timing_cache().serialize()))
    return data


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)


@register("tensorrt")
class TensorRTEngine:
    """TensorRT fp16 on CUDA (see the module docstring; unverified here)."""

    name = "tensorrt"

    def __init__(self, avatar: Avatar, device: str = "cuda") -> None:
        trt = require_tensorrt()
        if not device.startswith("cuda") or not torch.cuda.is_available():
            raise EngineUnavailable("the tensorrt backend runs on CUDA only; no CUDA device is visible")
        self.device = device
        self.resolution = size = avatar.network.image_size
        self._device = torch.device(device)
        net = inference_network(avatar)
        gpu = _slug(torch.cuda.get_device_name(self._device))
        folder = cache_dir() / "engines"
        stem = f"{network_key(net)}-{size}"
        plan = folder / f"{stem}-{gpu}-trt{trt.__version__}.plan"
        if plan.exists():
            data = plan.read_bytes()
        else:
            onnx_path = folder / f"{stem}-float-inputs.onnx"
            if not onnx_path.exists():
                export_onnx(net, size, onnx_path, integer_inputs=False)
            data = build_engine(trt, onnx_path, plan, folder / f"timing-{gpu}-trt{trt.__version__}.cache", size)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(data)
        self._context = self._engine.create_execution_context()
        self.stream = torch.cuda.Stream(self._device)

    @torch.inference_mode()
    def __call__(self, uv: U16, shaded: U8) -> EngineOutput:
        n = check_inputs(uv, shaded, self.resolution)
        r, dev = self.resolution, self._device
        with torch.cuda.stream(self.stream):
            bits = torch.from_numpy(uv.view("int16")).pin_memory().to(dev, non_blocking=True)
            uv_raw = (bits.to(torch.int32) & 0xFFFF).to(torch.float32).contiguous()
            shaded_raw = torch.from_numpy(shaded).pin_memory().to(dev, non_blocking=True).to(torch.float32)
            image = torch.empty((n, r, r, 3), dtype=torch.uint8, device=dev)
            mask = torch.empty((n, r, r), dtype=torch.uint8, device=dev)
            tensors = {"uv_raw": uv_raw, "shaded_raw": shaded_raw.contiguous(), OUTPUTS[0]: image, OUTPUTS[1]: mask}
            for name, tensor in tensors.items():
                if name.endswith("_raw"):
                    self._context.set_input_shape(name, tuple(tensor.shape))
                self._context.set_tensor_address(name, tensor.data_ptr())
            if not self._context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            out = EngineOutput(image.cpu().numpy(), mask.cpu().numpy())
        return out

    def close(self) -> None:
        self.stream.synchronize()
