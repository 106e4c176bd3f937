"""The torch backends: the generator's inference pass in float32 on CPU (the reference), and
`torch-bf16`, the same pass under bfloat16 autocast on CPUs with AVX512-BF16 or AMX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from models.avatar import Avatar
from models.engines.base import U8, U16, Engine, EngineOutput, EngineUnavailable, check_inputs, register
from models.engines.inference import inference_network

BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX); without it oneDNN emulates
    bf16 and is slower than float32. False where /proc/cpuinfo cannot be read (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    return any(line.startswith("flags") and BF16_FLAGS & set(line.split()) for line in text.splitlines())


def to_inputs(uv: U16, shaded: U8, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Engine arrays -> the generator's [N, 3, H, W] inputs in [0, 1]."""
    uv_t = torch.from_numpy(uv.astype(np.int32)).to(device).permute(0, 3, 1, 2).to(dtype) / 65535
    shaded_t = torch.from_numpy(shaded).to(device).permute(0, 3, 1, 2).to(dtype) / 255
    return uv_t, shaded_t


def to_output(image: Tensor, mask: Tensor) -> EngineOutput:
    """Generator outputs ([N, 3, H, W] in [-1, 1], [N, 1, H, W] in [0, 1]) -> uint8 arrays."""
    rgb = ((image.float() + 1) * 127.5).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    m = (mask.float()[:, 0] * 255).clamp(0, 255).round().to(torch.uint8)
    return EngineOutput(rgb.cpu().numpy(), m.cpu().numpy())


@register("torch")
def torch_engine(avatar: Avatar, device: str = "cpu") -> Engine:
    """The torch backend: the float32 reference on CPU, the fp16 CUDA-graph engine on CUDA."""
    if device.startswith("cuda"):
        from models.engines.cuda_engine import CudaTorchEngine

        return CudaTorchEngine(avatar, device)
    return TorchEngine(avatar, device)


@register("torch-bf16")
def torch_bf16_engine(avatar: Avatar, device: str = "cpu") -> Engine:
    """The torch CPU backend under bfloat16 autocast (oneDNN on AMX / AVX512-BF16)."""
    if device != "cpu":
        raise EngineUnavailable("torch-bf16 runs on the CPU only; on CUDA the torch backend is already fp16")
    if not cpu_has_bf16():
        raise EngineUnavailable("torch-bf16 needs a CPU with avx512_bf16 or amx_bf16 (see lscpu); use torch")
    return TorchEngine(avatar, device, bf16=True)


class TorchEngine:
    """Runs the avatar's inference network with torch: its distilled student when the file
    carries one, else the generator's pass with the mean temporal code and centred window
    (styles folded into plain convolutions, `models.engines.inference.TeacherNet`).

    With `bf16` the pass runs under `torch.autocast("cpu", torch.bfloat16)` in channels-last
    layout: convolutions in bfloat16, weights kept in float32, the output converted back to
    uint8 from float32.
    """

    def __init__(self, avatar: Avatar, device: str = "cpu", bf16: bool = False) -> None:
        self.name = "torch-bf16" if bf16 else "torch"
        self.bf16 = bf16
        self.device = device
        self.resolution = avatar.network.image_size
        self._device = torch.device(device)
        self.network = inference_network(avatar).to(self._device)
        # bf16 convolutions in oneDNN are fastest in channels-last (NHWC) layout.
        self._layout = torch.channels_last if bf16 else torch.contiguous_format
        if bf16:  # Module.to takes memory_format at run time; torch's stubs leave it out
            self.network = self.network.to(memory_format=self._layout)  # type: ignore[call-overload]

    @torch.inference_mode()
    def __call__(self, uv: U16, shaded: U8) -> EngineOutput:
        check_inputs(uv, shaded, self.resolution)
        uv_t, shaded_t = (
            t.contiguous(memory_format=self._layout) for t in to_inputs(uv, shaded, self._device, torch.float32)
        )
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            image, mask = self.network(uv_t, shaded_t)
        return to_output(image, mask)

    def close(self) -> None:
        pass
