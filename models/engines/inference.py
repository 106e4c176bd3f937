"""The inference network every backend runs, and the uint8/uint16 pre- and post-processing.

At inference the generator always sees the same temporal code (the mean of the per-frame codes:
live frames were never seen in training) and the centred background window. Both StyleUNets'
styles are therefore constants, so each modulated convolution folds into a plain convolution
with a fixed weight (modulation and demodulation multiplied in once, at load). What remains per
frame is: the neural-texture lookup, two plain-conv UNets and the blend with cached features.
That is what `TeacherNet` runs; a distilled student (`models.networks.student.StudentNet`) has the same
call signature, and `inference_network` picks whichever the avatar carries.

`EngineNet` wraps either with the engine's array contract (uv uint16 and shaded uint8, NHWC, in;
image and mask uint8 out) so the ONNX export and the CUDA path carry the conversions in-graph.
"""

from __future__ import annotations

import copy
import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.avatar import Avatar
from models.networks.layers import ModulatedConv2d, assert_shape, downsample2x, upsample2x
from models.networks.selfieavatar import SelfieAvatarGenerator, StyleUNet, over_plate, rgb_residual, sample_texture


class FoldedConv(nn.Module):
    """A ModulatedConv2d whose style is fixed: one plain convolution with the style folded in.

    Keeps the `forward(x, w)` signature of the layer it replaces (w is ignored), so it drops into
    a copy of a StyleUNet without touching the network's structure.
    """

    def __init__(self, conv: ModulatedConv2d, w: Tensor) -> None:  # w: [1, w_dim]
        super().__init__()
        self.up = conv.up
        self.down = conv.down
        styles = conv.affine(w) * conv.weight_gain  # [1, I]
        weight = conv.weight * styles.reshape(1, -1, 1, 1)  # [O, I, k, k]
        if conv.demodulate:
            weight = weight * (weight.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).rsqrt()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.padding = conv.weight.shape[-1] // 2

    def forward(self, x: Tensor, w: Tensor | None = None) -> Tensor:
        """x: [N, I, H, W] -> [N, O, H', W'] (H' = 2H up, H/2 down); w is ignored."""
        if self.up:
            x = upsample2x(x)
        if self.down:
            x = downsample2x(x)
        return F.conv2d(x, self.weight, padding=self.padding)


def fold_unet(unet: StyleUNet, code: Tensor) -> tuple[StyleUNet, Tensor]:
    """A copy of `unet` with every modulated conv folded for `code` ([1, latent_dim]); returns it
    and its style w ([1, w_dim]), which `synthesize` still takes (for its shape checks only)."""
    folded = copy.deepcopy(unet).eval().requires_grad_(False)
    w = folded.style(code).detach()
    targets = [(name, m) for name, m in folded.named_modules() if isinstance(m, ModulatedConv2d)]
    for name, module in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = folded.get_submodule(parent_name) if parent_name else folded
        setattr(parent, attr, FoldedConv(module, w))
    del folded.mapping  # the folded network no longer needs it
    return folded, w


class TeacherNet(nn.Module):
    """The SelfieAvatar generator's inference pass (mean temporal code, centred window).

    forward(uv [N, 3, H, W] in [0, 1], shaded [N, 3, H, W] in [0, 1])
        -> image [N, 3, H, W] in [-1, 1] (unclamped), mask [N, 1, H, W] in [0, 1].
    Equal to `SelfieAvatarGenerator.forward(uv, shaded, None, centre, "const")` up to float
    rounding (tests/test_engines.py checks it).
    """

    def __init__(self, generator: SelfieAvatarGenerator) -> None:
        super().__init__()
        cfg = generator.config
        self.size = cfg.image_size
        self.channels = cfg.feature_channels
        with torch.no_grad():
            code = generator.mean_code().detach()  # [1, latent_dim]
            static = generator.static_features()
            self.foreground_unet, w1 = fold_unet(generator.foreground_unet, code)
            self.image_unet, w2 = fold_unet(generator.image_unet, code)
            o = (cfg.canvas_size - cfg.image_size) // 2
            background = static.background[:, :, o : o + self.size, o : o + self.size]
        self.register_buffer("texture", static.texture.detach().clone())  # [1, C, T, T]
        self.register_buffer("background", background.detach().clone())  # [1, C, H, W]
        self.register_buffer("w_fg", w1)  # [1, w_dim]
        self.register_buffer("w_img", w2)  # [1, w_dim]
        self.rgb_skip = cfg.rgb_skip
        plate = generator.plate[:, :, o : o + self.size, o : o + self.size].detach().clone() if cfg.plate else None
        self.register_buffer("plate", plate)  # [1, 3, H, W] or None
        self.texture: Tensor
        self.background: Tensor
        self.w_fg: Tensor
        self.w_img: Tensor
        self.plate: Tensor | None
        self.requires_grad_(False)

    def forward(self, uv: Tensor, shaded: Tensor) -> tuple[Tensor, Tensor]:
        n, c, h = uv.shape[0], self.channels, self.size
        assert_shape(uv, [n, 3, h, h], "uv")
        assert_shape(shaded, [n, 3, h, h], "shaded")
        face_mask = (uv[:, 2:3] > 0).to(uv.dtype)  # [N, 1, H, W]
        face = sample_texture(self.texture.to(uv.dtype), uv) * face_mask  # [N, C, H, W]
        conditioning = torch.cat([shaded, uv], dim=1) * 2 - 1  # [N, 6, H, W]
        fg = self.foreground_unet.synthesize(conditioning, self.w_fg.expand(n, -1), "const")  # [N, C + 1, H, W]
        foreground = face_mask + (1 - face_mask) * torch.sigmoid(fg[:, c:])
        person = face_mask * face + (1 - face_mask) * fg[:, :c]
        background = self.background.to(uv.dtype)
        features = foreground * person + (1 - foreground) * background
        out = self.image_unet.synthesize(features, self.w_img.expand(n, -1), "const")  # [N, 4, H, W]
        image = out[:, :3]
        mask = torch.sigmoid(out[:, 3:])
        if self.rgb_skip:
            image = rgb_residual(image, face_mask, face, background)
        if self.plate is not None:
            image = over_plate(image, mask, self.plate.to(uv.dtype))
        return image, mask


def inference_network(avatar: Avatar) -> nn.Module:
    """What an engine runs for `avatar`: its distilled student when it carries one, else the
    folded teacher. Both map (uv, shaded) in [0, 1] to (image in [-1, 1], mask in [0, 1]).
    The network is the engine's own copy: an engine that moves it to a device or to half
    precision leaves the avatar, and every other engine made from it, as they were."""
    if avatar.student is not None:
        return copy.deepcopy(avatar.student).eval()
    return TeacherNet(avatar.generator).eval()


class EngineNet(nn.Module):
    """An inference network with the engine's array contract baked in.

    forward(uv [N, H, W, 3] raw u16 values as float, shaded [N, H, W, 3] raw u8 values as float)
        -> image [N, H, W, 3] uint8 RGB, mask [N, H, W] uint8.
    The inputs arrive as float because the ONNX exporter cannot type a uint16 input; the ONNX
    backend prepends the Cast nodes itself, so the exported file still takes uint16 / uint8.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, uv: Tensor, shaded: Tensor) -> tuple[Tensor, Tensor]:
        dtype = self.net_dtype()
        uv01 = (uv.permute(0, 3, 1, 2) * (1.0 / 65535)).to(dtype)
        shaded01 = (shaded.permute(0, 3, 1, 2) * (1.0 / 255)).to(dtype)
        image, mask = self.net(uv01, shaded01)
        rgb = ((image.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        alpha = (mask.float()[:, 0] * 255).round().clamp(0, 255).to(torch.uint8)
        return rgb, alpha

    def net_dtype(self) -> torch.dtype:
        for t in itertools.chain(self.net.parameters(), self.net.buffers()):
            if t.is_floating_point():
                return t.dtype
        return torch.float32
