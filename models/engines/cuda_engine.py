"""The torch backend on CUDA: fp16, channels-last, CUDA graphs, its own stream, pinned buffers.

`create_engine("torch", avatar, "cuda")` lands here. Per batch size, the first call captures
the whole step (uint16/uint8 unpacking, the network, the uint8 packing) into a CUDA graph on the
engine's stream; later calls copy the inputs into pinned host buffers, enqueue host-to-device
copy, graph replay and device-to-host copy on that stream, and wait on one event.

`submit` returns before the GPU finishes, so a caller can overlap tracking and rendering of
frame n+1 with generation of frame n (two buffer slots alternate, so one frame can be in flight
while the next is submitted); `__call__` is `submit(...).result()`.

UNVERIFIED on this project's machines (no GPU was available where it was written); its tests
are marked `gpu` and skip without CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from models.avatar import Avatar
from models.engines.base import U8, U16, EngineOutput, EngineUnavailable, check_inputs
from models.engines.inference import EngineNet, inference_network

SLOTS = 2  # frames that can be in flight at once


@dataclass
class _Slot:
    """One frame's buffers: pinned host in/out and the device tensors a graph reads and writes."""

    host_uv: Tensor  # [N, H, W, 3] int16 pinned (uint16 bits)
    host_shaded: Tensor  # [N, H, W, 3] uint8 pinned
    host_image: Tensor  # [N, H, W, 3] uint8 pinned
    host_mask: Tensor  # [N, H, W] uint8 pinned
    dev_uv: Tensor  # [N, H, W, 3] int16
    dev_shaded: Tensor  # [N, H, W, 3] uint8
    dev_image: Tensor  # [N, H, W, 3] uint8 (graph output)
    dev_mask: Tensor  # [N, H, W] uint8 (graph output)
    graph: torch.cuda.CUDAGraph | None
    done: torch.cuda.Event


class _Step(nn.Module):
    """The captured step: raw integer inputs on the device -> uint8 image and mask."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.engine_net = EngineNet(net)

    def forward(self, uv: Tensor, shaded: Tensor) -> tuple[Tensor, Tensor]:
        uv_raw = (uv.to(torch.int32) & 0xFFFF).to(torch.float32)  # int16 bits -> 0..65535
        image, mask = self.engine_net(uv_raw, shaded.to(torch.float32))
        return image, mask


class Pending:
    """A submitted frame; `result()` waits for it and returns copies of its outputs."""

    def __init__(self, slot: _Slot, batch: int) -> None:
        self._slot = slot
        self._batch = batch

    def result(self) -> EngineOutput:
        self._slot.done.synchronize()
        n = self._batch
        return EngineOutput(self._slot.host_image[:n].numpy().copy(), self._slot.host_mask[:n].numpy().copy())


class CudaTorchEngine:
    """torch on CUDA in half precision (see the module docstring).

    Args:
        avatar: the avatar (its student, when it carries one).
        device: "cuda" or "cuda:i".
        graphs: capture CUDA graphs (off: eager, e.g. for debugging).
        compile: run the network through `torch.compile` (Triton) before capture.
        half: fp16 weights and activations (off: fp32, for parity checks).
    """

    name = "torch"

    def __init__(
        self,
        avatar: Avatar,
        device: str = "cuda",
        *,
        graphs: bool = True,
        compile: bool = False,
        half: bool = True,
    ) -> None:
        if not torch.cuda.is_available():
            raise EngineUnavailable("no CUDA device is visible; use device 'cpu'")
        self.device = device
        self.resolution = avatar.network.image_size
        self._device = torch.device(device)
        net = inference_network(avatar).to(self._device)
        if half:
            net = net.half()
        for p in net.parameters():  # channels-last conv weights: tensor-core friendly NHWC kernels
            if p.dim() == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)
        step: nn.Module = _Step(net).eval()
        if compile:
            step = torch.compile(step, mode="max-autotune-no-cudagraphs")  # type: ignore[assignment]
        self._step = step
        self._graphs = graphs
        self.stream = torch.cuda.Stream(self._device)
        self._slots: dict[int, list[_Slot]] = {}
        self._turn = 0

    def _new_slot(self, n: int) -> _Slot:
        r, dev = self.resolution, self._device

        def pinned(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
            return torch.empty(shape, dtype=dtype, pin_memory=True)

        slot = _Slot(
            pinned((n, r, r, 3), torch.int16),
            pinned((n, r, r, 3), torch.uint8),
            pinned((n, r, r, 3), torch.uint8),
            pinned((n, r, r), torch.uint8),
            torch.zeros((n, r, r, 3), dtype=torch.int16, device=dev),
            torch.zeros((n, r, r, 3), dtype=torch.uint8, device=dev),
            torch.zeros((n, r, r, 3), dtype=torch.uint8, device=dev),
            torch.zeros((n, r, r), dtype=torch.uint8, device=dev),
            None,
            torch.cuda.Event(),
        )
        if self._graphs:
            slot.graph = self._capture(slot)
        return slot

    @torch.inference_mode()
    def _capture(self, slot: _Slot) -> torch.cuda.CUDAGraph:
        """Warm up on the engine's stream (cuDNN autotuning, lazy inits), then capture one step."""
        with torch.cuda.device(self._device), torch.cuda.stream(self.stream):
            for _ in range(3):
                self._step(slot.dev_uv, slot.dev_shaded)
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(self._device), torch.cuda.graph(graph, stream=self.stream):
            image, mask = self._step(slot.dev_uv, slot.dev_shaded)
            slot.dev_image.copy_(image)
            slot.dev_mask.copy_(mask)
        return graph

    @torch.inference_mode()
    def submit(self, uv: U16, shaded: U8) -> Pending:
        """Enqueue one batch and return at once; the arrays may be reused after this returns."""
        n = check_inputs(uv, shaded, self.resolution)
        if n not in self._slots:
            self._slots[n] = [self._new_slot(n) for _ in range(SLOTS)]
        slot = self._slots[n][self._turn % SLOTS]
        self._turn += 1
        slot.done.synchronize()  # the previous frame in this slot has been read back
        np.copyto(slot.host_uv.numpy(), uv.view(np.int16))
        np.copyto(slot.host_shaded.numpy(), shaded)
        with torch.cuda.device(self._device), torch.cuda.stream(self.stream):
            slot.dev_uv.copy_(slot.host_uv, non_blocking=True)
            slot.dev_shaded.copy_(slot.host_shaded, non_blocking=True)
            if slot.graph is not None:
                slot.graph.replay()
            else:
                image, mask = self._step(slot.dev_uv, slot.dev_shaded)
                slot.dev_image.copy_(image)
                slot.dev_mask.copy_(mask)
            slot.host_image.copy_(slot.dev_image, non_blocking=True)
            slot.host_mask.copy_(slot.dev_mask, non_blocking=True)
            slot.done.record(self.stream)
        return Pending(slot, n)

    def __call__(self, uv: U16, shaded: U8) -> EngineOutput:
        return self.submit(uv, shaded).result()

    def close(self) -> None:
        self.stream.synchronize()
        self._slots.clear()
