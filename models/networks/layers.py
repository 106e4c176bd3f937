"""StyleGAN2 building blocks in plain PyTorch.

Every layer here is a reference implementation without custom CUDA ops, so the same code trains
on CPU and on CUDA and exports to ONNX (resampling is bilinear `interpolate` / `avg_pool2d`,
modulated convolution is a grouped `conv2d` or the equivalent scale-conv-scale form).
Equalized learning rate (Karras et al.) keeps Adam's effective step size equal across layers of
very different fan-in, which is what lets one learning rate train mapping, texture and UNet.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NoiseMode = Literal["random", "const", "none"]
"""How `NoiseInjection` draws its noise: fresh per call (training), a fixed buffer
(reproducible inference and static generators), or not at all."""

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)  # keeps activations at unit variance through leaky ReLU


def assert_shape(x: Tensor, shape: Sequence[int | None], name: str = "tensor") -> None:
    """Fail loudly at a module boundary when a tensor is not `shape` (`None` matches any size).

    Raises instead of `assert` so the check survives `python -O`.
    """
    if x.ndim != len(shape):
        raise AssertionError(f"{name}: expected shape {list(shape)}, got {list(x.shape)}")
    for got, want in zip(x.shape, shape, strict=True):
        if want is not None and got != want:
            raise AssertionError(f"{name}: expected shape {list(shape)}, got {list(x.shape)}")


def lrelu(x: Tensor) -> Tensor:
    """Leaky ReLU scaled back to unit gain."""
    return F.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN


def upsample2x(x: Tensor) -> Tensor:
    """Bilinear 2x upsampling: smooth enough that StyleGAN2's separate blur is not needed."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def downsample2x(x: Tensor) -> Tensor:
    """Bilinear 2x downsampling.

    With `align_corners=False` a bilinear sample at half the resolution lands exactly between
    four input pixels, so it equals a 2x2 average; `avg_pool2d` computes that directly and exports
    to every runtime.
    """
    return F.avg_pool2d(x, kernel_size=2)


class EqualLinear(nn.Module):
    """Fully connected layer with equalized learning rate.

    Weights are stored at unit variance and scaled at run time; `lr_mul` < 1 slows a layer down
    (the mapping network uses 0.01 as in StyleGAN2) without changing its initial function.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activation: bool = False,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full([out_features], bias_init / lr_mul)) if bias else None
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.bias_gain = lr_mul

    def forward(self, x: Tensor) -> Tensor:
        assert_shape(x, [None, self.in_features], "EqualLinear input")
        bias = self.bias * self.bias_gain if self.bias is not None else None
        x = F.linear(x, self.weight * self.weight_gain, bias)
        return lrelu(x) if self.activation else x

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, activation={self.activation}"


class EqualConv2d(nn.Module):
    """Convolution with equalized learning rate, optional bilinear 2x up/down around it.

    Downsampling happens before the convolution and upsampling before it too, so the kernel
    always runs at the lower of the two resolutions' cost where it can (down) and the image is
    never aliased by a strided kernel.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        bias: bool = True,
        activation: bool = False,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        if up and down:
            raise ValueError("EqualConv2d: up and down are exclusive")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.down = down
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        assert_shape(x, [None, self.in_channels, None, None], "EqualConv2d input")
        if self.up:
            x = upsample2x(x)
        if self.down:
            x = downsample2x(x)
        x = F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.padding)
        return lrelu(x) if self.activation else x

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, k={self.weight.shape[-1]}, "
            f"up={self.up}, down={self.down}, activation={self.activation}"
        )


class MappingNetwork(nn.Module):
    """Maps a latent code to the style vector w (StyleGAN2's f: z -> w).

    For sampled z the input is normalized to unit second moment as in StyleGAN2; for learned
    per-frame codes it is not, so that the average of the codes (used for unseen frames) stays
    the average instead of being blown back up to unit length.
    """

    def __init__(
        self,
        latent_dim: int,
        w_dim: int,
        num_layers: int = 4,
        *,
        lr_mul: float = 0.01,
        normalize_input: bool = True,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.w_dim = w_dim
        self.normalize_input = normalize_input
        dims = [latent_dim] + [w_dim] * num_layers
        self.layers = nn.Sequential(
            *(EqualLinear(d_in, d_out, lr_mul=lr_mul, activation=True) for d_in, d_out in itertools.pairwise(dims))
        )

    def forward(self, z: Tensor) -> Tensor:
        """z: [N, latent_dim] -> w: [N, w_dim]."""
        assert_shape(z, [None, self.latent_dim], "mapping input")
        if self.normalize_input:
            z = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
        w: Tensor = self.layers(z)
        return w


def modulated_conv2d(
    x: Tensor,  # [N, I, H, W]
    weight: Tensor,  # [O, I, k, k]
    styles: Tensor,  # [N, I]
    *,
    demodulate: bool = True,
    fused: bool = True,
) -> Tensor:  # [N, O, H, W]
    """StyleGAN2's modulated convolution, with 'same' padding.

    `fused` runs one grouped convolution with a per-sample weight (one kernel launch, the usual
    training path); the unfused form scales the input, convolves with the shared weight and
    scales the output, which is mathematically identical and friendlier to exporters and to
    batch-1 inference. Both are plain PyTorch.
    """
    n, i, h, w = x.shape
    o, _, kh, kw = weight.shape
    assert_shape(weight, [o, i, kh, kw], "modulated weight")
    assert_shape(styles, [n, i], "styles")
    padding = kh // 2
    dcoefs: Tensor | None = None
    if demodulate:
        # sum over I, k, k of (weight * style)^2 without building the [N, O, I, k, k] tensor
        dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()  # [N, O]
    if not fused:
        x = x * styles.reshape(n, i, 1, 1)
        x = F.conv2d(x, weight, padding=padding)
        if dcoefs is not None:
            x = x * dcoefs.reshape(n, o, 1, 1)
        return x
    per_sample = weight.unsqueeze(0) * styles.reshape(n, 1, i, 1, 1)  # [N, O, I, k, k]
    if dcoefs is not None:
        per_sample = per_sample * dcoefs.reshape(n, o, 1, 1, 1)
    x = x.reshape(1, n * i, h, w)
    x = F.conv2d(x, per_sample.reshape(n * o, i, kh, kw), padding=padding, groups=n)
    return x.reshape(n, o, h, w)


class ModulatedConv2d(nn.Module):
    """Convolution whose input channels are scaled per sample by an affine map of w.

    Demodulation renormalizes each output channel to unit expected variance, which replaces
    AdaIN's instance normalization without its droplet artifacts.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        w_dim: int,
        *,
        demodulate: bool = True,
        up: bool = False,
        down: bool = False,
        fused: bool = True,
    ) -> None:
        super().__init__()
        if up and down:
            raise ValueError("ModulatedConv2d: up and down are exclusive")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.demodulate = demodulate
        self.up = up
        self.down = down
        self.fused = fused
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        """x: [N, I, H, W], w: [N, w_dim] -> [N, O, H', W'] (H' = 2H up, H/2 down)."""
        assert_shape(x, [None, self.in_channels, None, None], "ModulatedConv2d input")
        styles = self.affine(w) * self.weight_gain  # [N, I]
        if self.up:
            x = upsample2x(x)
        if self.down:
            x = downsample2x(x)
        return modulated_conv2d(x, self.weight, styles, demodulate=self.demodulate, fused=self.fused)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, k={self.weight.shape[-1]}, "
            f"demodulate={self.demodulate}, up={self.up}, down={self.down}"
        )


class NoiseInjection(nn.Module):
    """Adds per-pixel noise with a learned strength (starts at 0, so it is opt-in by training).

    The fixed buffer makes inference reproducible and lets the static generators be cached.
    """

    def __init__(self, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution))
        self.noise_const: Tensor

    def forward(self, x: Tensor, mode: NoiseMode) -> Tensor:
        n = x.shape[0]
        assert_shape(x, [n, None, self.resolution, self.resolution], "NoiseInjection input")
        if mode == "none":
            return x
        if mode == "random":
            noise = torch.randn(n, 1, self.resolution, self.resolution, device=x.device)
        else:
            noise = self.noise_const
        return x + noise.to(x.dtype) * self.strength


class StyleConv(nn.Module):
    """One StyleGAN2 synthesis layer: modulated conv, noise, bias, leaky ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        *,
        kernel_size: int = 3,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, kernel_size, w_dim, up=up, down=down)
        self.noise = NoiseInjection(resolution)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: Tensor, w: Tensor, noise_mode: NoiseMode) -> Tensor:
        """x: [N, I, H, W], w: [N, w_dim] -> [N, O, resolution, resolution]."""
        x = self.noise(self.conv(x, w), noise_mode)
        return lrelu(x + self.bias.reshape(1, -1, 1, 1))


class ToRGB(nn.Module):
    """Modulated 1x1 projection to the output channels (RGB, a mask, or feature maps).

    Not demodulated: its output is the image itself, whose scale has to be free.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.conv = ModulatedConv2d(in_channels, out_channels, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        """x: [N, I, H, W], w: [N, w_dim] -> [N, out_channels, H, W]."""
        return self.conv(x, w) + self.bias.reshape(1, -1, 1, 1)


class MinibatchStd(nn.Module):
    """Appends the standard deviation of features across a group of samples as extra channels.

    Lets the discriminator see a lack of variety in a batch, which StyleGAN2 uses against mode
    collapse. Groups shrink to a divisor of the batch so any batch size works.
    """

    def __init__(self, group_size: int = 4, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, C, H, W] -> [N, C + num_channels, H, W]."""
        n, c, h, w = x.shape
        f = self.num_channels
        if c % f != 0:
            raise ValueError(f"MinibatchStd: {c} channels do not split into {f} groups")
        g = min(self.group_size, n)
        while n % g != 0:
            g -= 1
        y = x.reshape(g, n // g, f, c // f, h, w)  # [G, M, F, c, H, W]
        y = y - y.mean(dim=0)
        y = (y.square().mean(dim=0) + 1e-8).sqrt()  # [M, F, c, H, W]
        y = y.mean(dim=[2, 3, 4])  # [M, F]
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)  # [N, F, H, W]
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


def split_resolution(size: int, min_base: int = 4) -> tuple[int, int]:
    """Writes `size` as base * 2**doublings with the smallest base >= `min_base`.

    Lets a StyleGAN2 synthesis network grow to sizes that are not powers of two (the enlarged
    background canvas, e.g. 320 = 5 * 2**6) by starting from a 5x5 constant instead of 4x4.
    """
    if size < min_base:
        raise ValueError(f"size {size} is smaller than the minimum base {min_base}")
    base, doublings = size, 0
    while base % 2 == 0 and base // 2 >= min_base:
        base //= 2
        doublings += 1
    return base, doublings


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """StyleGAN's width rule: channels shrink as resolution grows, capped at `channel_max`."""
    return max(1, min(channel_base // resolution, channel_max))
