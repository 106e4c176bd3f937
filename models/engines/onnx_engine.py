"""The onnx backend: the inference network exported to ONNX with the engine's array contract
baked in (uv uint16 and shaded uint8, NHWC, in; image and mask uint8 out), run by onnxruntime.

Exports are cached by content: the key hashes the exported network's weights together with
the torch, onnx and opset versions, so a retrained or distilled avatar never reuses a stale
graph. `avatarcam export --onnx` writes the same graph next to the .avatar file.
"""

from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.avatar import Avatar
from models.engines.base import U8, U16, EngineOutput, EngineUnavailable, check_inputs, register
from models.engines.inference import EngineNet, inference_network
from tracking.assets import cache_dir

OPSET = 17
INPUTS = ("uv", "shaded")
OUTPUTS = ("image", "mask")


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise EngineUnavailable("the onnx backend needs `pip install 'avatarcam[onnx]'` (onnx, onnxruntime)") from None
    return onnx


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise EngineUnavailable("the onnx backend needs `pip install 'avatarcam[onnx]'` (onnx, onnxruntime)") from None
    return onnxruntime


GRAPH_VERSION = 2
"""Raise when an inference network's forward() changes without its weights changing (2: the
student's base as one gather), so no cache keeps serving the old graph."""


def network_key(net: nn.Module) -> str:
    """A short digest of the network's weights, its graph's version and the exporter's versions."""
    header = f"torch {torch.__version__} opset {OPSET} {type(net).__name__} graph {GRAPH_VERSION}"
    digest = hashlib.sha256(header.encode())
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def export_onnx(net: nn.Module, size: int, out: Path, *, integer_inputs: bool = True) -> Path:
    """Export `net` (an inference network at `size` px, on CPU, float32) to `out`, atomically.

    With `integer_inputs` the graph takes uint16 `uv` and uint8 `shaded`; without, it takes the
    same values as float32 `uv_raw` and `shaded_raw` (for runtimes without uint16, TensorRT).
    """
    onnx = _onnx()
    wrapped = EngineNet(net).eval()
    dummy = (torch.zeros(1, size, size, 3), torch.zeros(1, size, size, 3))
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    axes = {name: {0: "batch"} for name in (*(f"{i}_raw" for i in INPUTS), *OUTPUTS)}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated in favour of torch.export's, which needs
        # onnxscript (not installed here); this one works and is what the pinned torch ships.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            wrapped,
            dummy,
            str(partial),
            input_names=[f"{i}_raw" for i in INPUTS],
            output_names=list(OUTPUTS),
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    model = onnx.load(str(partial))
    if integer_inputs:
        _typed_inputs(onnx, model)
    onnx.checker.check_model(model)
    onnx.save(model, str(partial))
    partial.replace(out)
    return out


def _typed_inputs(onnx: Any, model: Any) -> None:
    """Replace the float inputs with uint16 `uv` and uint8 `shaded` feeding Cast nodes.

    The exporter cannot type a uint16 input, so the integer inputs and their casts are added
    here; the graph then takes exactly the engine's arrays.
    """
    helper, proto = onnx.helper, onnx.TensorProto
    graph = model.graph
    raw = {i.name: i for i in graph.input}
    dims: list[Any] = ["batch", None, None, 3]
    for name, elem in (("uv", proto.UINT16), ("shaded", proto.UINT8)):
        old = raw[f"{name}_raw"]
        shape = [d.dim_param or d.dim_value for d in old.type.tensor_type.shape.dim] or dims
        graph.input.remove(old)
        graph.input.append(helper.make_tensor_value_info(name, elem, shape))
        graph.node.insert(0, helper.make_node("Cast", [name], [f"{name}_raw"], to=proto.FLOAT, name=f"cast_{name}"))


def onnx_path_for(avatar: Avatar) -> Path:
    """Where the cache keeps this avatar's exported graph."""
    net = inference_network(avatar)
    kind = "student" if avatar.student is not None else "teacher"
    return cache_dir() / "engines" / f"{kind}-{avatar.network.image_size}-{network_key(net)}.onnx"


def export_beside(avatar_path: Path) -> Path:
    """`avatarcam export --onnx`: write NAME.onnx next to NAME.avatar (its student's graph when
    it carries one) and seed the engine cache with it, so the onnx backend starts at once."""
    from models.avatar import load_avatar

    avatar = load_avatar(avatar_path)
    out = export_onnx(inference_network(avatar), avatar.network.image_size, avatar_path.with_suffix(".onnx"))
    cached = onnx_path_for(avatar)
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(cached.name + ".partial")
        shutil.copyfile(out, partial)
        partial.replace(cached)
    return out


@register("onnx")
class OnnxEngine:
    """onnxruntime on CPU (or CUDA when onnxruntime-gpu is installed).

    Args:
        avatar: the avatar (its student, when it carries one).
        device: "cpu" or "cuda[:i]".
        model: an exported graph to use instead of the cache (e.g. from `avatarcam export --onnx`).
        threads: intra-op threads; default torch's setting, so backends compare like for like.
    """

    name = "onnx"

    def __init__(self, avatar: Avatar, device: str = "cpu", model: Path | None = None, threads: int | None = None):
        ort = _onnxruntime()
        self.device = device
        self.resolution = avatar.network.image_size
        providers: list[Any] = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise EngineUnavailable("onnx on cuda needs onnxruntime-gpu (this onnxruntime is CPU-only)")
            index = int(device.partition(":")[2] or 0)
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        path = model or onnx_path_for(avatar)
        if not path.exists():
            export_onnx(inference_network(avatar), self.resolution, path)
        self.path = path
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(path), options, providers=providers)

    def __call__(self, uv: U16, shaded: U8) -> EngineOutput:
        check_inputs(uv, shaded, self.resolution)
        image, mask = self._session.run(list(OUTPUTS), {"uv": np.ascontiguousarray(uv), "shaded": shaded})
        return EngineOutput(image, mask)

    def close(self) -> None:
        pass
