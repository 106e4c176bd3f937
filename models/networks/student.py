"""The distilled student: a small plain-conv UNet locked to one avatar's identity (CPU tier).

As MegaPortraits distills its teacher into a one-identity student, the student learns the
teacher's mapping from conditioning renders to image and mask for this one person only, so it
needs neither modulation nor temporal codes. It is shaped for 2 CPU cores at 256 x 256, where
memory traffic at full resolution costs as much as convolutions at half resolution: full
resolution is touched only by the first (strided) and the last (transposed) convolution.

    [I_R, I_UV] [N, 6, H, W] -- 4x4 conv, stride 2 ---------------------> [N, w0, H/2, H/2]
    face features: neural texture at I_UV, nearest, at H/2 -- 1x1 conv -> [N, w0, H/2, H/2]  (summed,
    plus a learned canvas: the background's memory)
      encoder: (3x3 stride-2 conv, 3x3 conv) per level --------------> [N, w_l, H/2^(l+1), ...]
      decoder: bilinear up, 1x1 lateral + skip, 3x3 conv ---------------> [N, w0, H/2, H/2]
      head: 4x4 transposed conv, stride 2, + backdrop ------------------> [N, 4, H, W]: I_A (3), I_FM logit (1)

The backdrop is a learned full-resolution image (and mask logit) added to the output; it starts
as the teacher's mean output, so the network only learns what changes from frame to frame.

The face features come from the teacher's neural texture (copied in and fine-tuned). The lookup
is a nearest-texel gather rather than bilinear `grid_sample`: onnxruntime's GridSample cost
about 12 ms per 256 px frame on one core here, the gather about 1 ms.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.networks.layers import assert_shape, upsample2x


@dataclass(frozen=True)
class StudentConfig:
    """Shape of a student network.

    Attributes:
        image_size: H = W of the conditioning renders and of the output (the teacher's).
        texture_channels: C of the teacher's neural texture fed as face features (0: none).
        texture_size: T, the side of that texture.
        widths: channels at H/2, H/4, ... (one entry per level; the last is the bottleneck).
        rgb_skip: as the teacher's network.rgb_skip: the network predicts a residual over an RGB
            base, the texture's first three channels looked up at full resolution on the face
            and the backdrop elsewhere, so face detail never passes through half resolution.
    """

    image_size: int
    texture_channels: int
    texture_size: int
    widths: tuple[int, ...] = (16, 24, 32, 48, 64)
    rgb_skip: bool = False

    def __post_init__(self) -> None:
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ValueError(f"student widths must be >= 2 positive numbers, got {self.widths}")
        if self.image_size % (2 ** len(self.widths)):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2**{len(self.widths)}")
        if self.texture_channels < 0 or self.texture_size < 1:
            raise ValueError("texture_channels must be >= 0 and texture_size >= 1")
        if self.rgb_skip and self.texture_channels < 3:
            raise ValueError("rgb_skip needs a texture with at least 3 channels")

    def to_dict(self) -> dict[str, object]:
        return {
            "image_size": self.image_size,
            "texture_channels": self.texture_channels,
            "texture_size": self.texture_size,
            "widths": list(self.widths),
            "rgb_skip": self.rgb_skip,
        }

    @staticmethod
    def from_dict(fields: dict[str, object]) -> StudentConfig:
        known = {"image_size", "texture_channels", "texture_size", "widths", "rgb_skip"}
        fields = {"rgb_skip": False, **fields}  # files written before rgb_skip existed
        if set(fields) != known:
            raise ValueError(f"student config keys {sorted(fields)} != {sorted(known)}")
        widths = fields["widths"]
        if not isinstance(widths, list):
            raise ValueError("student config 'widths' must be a list")
        return StudentConfig(
            int(str(fields["image_size"])),
            int(str(fields["texture_channels"])),
            int(str(fields["texture_size"])),
            tuple(int(w) for w in widths),
            bool(fields["rgb_skip"]),
        )


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2 if stride == 1 else (k - 1) // 2)


def lookup_texels(
    texture: Tensor,  # [1, C, T, T]
    uv: Tensor,  # [N, 3, h, w]: u, v in [0, 1] in channels 0, 1
) -> Tensor:  # [N, C, h, w]
    """Nearest-texel lookup of the texture at each pixel's (u, v) (u along the width)."""
    n, _, h, w = uv.shape
    c, t = texture.shape[1], texture.shape[-1]
    ij = (uv[:, :2] * t).floor().clamp(0, t - 1).long()  # [N, 2, h, w] column, row
    index = (ij[:, 1] * t + ij[:, 0]).reshape(-1)  # [N * h * w]
    table = texture.reshape(c, t * t).t()  # [T * T, C]: a row per texel, gathered contiguously
    return table[index].reshape(n, h, w, c).permute(0, 3, 1, 2)


class StudentNet(nn.Module):
    """forward(uv [N, 3, H, W] in [0, 1], shaded [N, 3, H, W] in [0, 1])
    -> image [N, 3, H, W] in [-1, 1] (unclamped), mask [N, 1, H, W] in [0, 1]."""

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        self.config = config
        w = config.widths
        half = config.image_size // 2
        c = config.texture_channels
        self.texture = nn.Parameter(torch.zeros(1, c, config.texture_size, config.texture_size))
        self.stem = _conv(6, w[0], k=4, stride=2)
        self.face = _conv(c, w[0], k=1) if c else None
        self.canvas = nn.Parameter(torch.zeros(1, w[0], half, half))
        self.down = nn.ModuleList(
            nn.Sequential(_conv(w[i], w[i + 1], stride=2), nn.ReLU(), _conv(w[i + 1], w[i + 1]), nn.ReLU())
            for i in range(len(w) - 1)
        )
        self.lateral = nn.ModuleList(_conv(w[i + 1], w[i], k=1) for i in range(len(w) - 1))
        self.fuse = nn.ModuleList(nn.Sequential(_conv(w[i], w[i]), nn.ReLU()) for i in range(len(w) - 1))
        self.head = nn.ConvTranspose2d(w[0], 4, 4, stride=2, padding=1)
        self.backdrop = nn.Parameter(torch.zeros(1, 4, config.image_size, config.image_size))
        nn.init.zeros_(self.head.weight)  # start as exactly the backdrop; learn the residual
        if self.head.bias is not None:
            nn.init.zeros_(self.head.bias)

    def decode(self, uv: Tensor, shaded: Tensor) -> Tensor:
        """Everything before the head: the decoder's features [N, w0, H/2, H/2]."""
        n, h = uv.shape[0], self.config.image_size
        assert_shape(uv, [n, 3, h, h], "uv")
        assert_shape(shaded, [n, 3, h, h], "shaded")
        x = self.stem(torch.cat([shaded, uv], dim=1) * 2 - 1) + self.canvas  # [N, w0, H/2, H/2]
        if self.face is not None:
            uv_half = uv[:, :, ::2, ::2]  # [N, 3, H/2, H/2]
            face_mask = torch.sign(uv_half[:, 2:3])  # 1 on the face, 0 off it (the code is >= 0)
            x = x + self.face(lookup_texels(self.texture, uv_half) * face_mask)
        x = F.relu(x)
        skips = []
        for down in self.down:
            skips.append(x)
            x = down(x)
        for i in reversed(range(len(self.down))):
            x = self.fuse[i](self.lateral[i](upsample2x(x)) + skips[i])
        return x

    def forward(self, uv: Tensor, shaded: Tensor) -> tuple[Tensor, Tensor]:
        n, h = uv.shape[0], self.config.image_size
        out = self.head(self.decode(uv, shaded))  # [N, 4, H, W]: the residual over the base
        assert_shape(out, [n, 4, h, h], "student output")
        return out[:, :3] + self._base(uv), torch.sigmoid(out[:, 3:] + self.backdrop[:, 3:])

    def _base(self, uv: Tensor) -> Tensor:
        """[N, 3, H, W] what the head's RGB residual is added to: with rgb_skip the texture's first
        three channels on the face and the backdrop elsewhere, else the backdrop. One gather from
        both at once (texels, then backdrop pixels) picks each pixel's value: the same as
        backdrop + face * (texel - backdrop), without full-resolution masks and products, which
        cost about 1 ms of onnxruntime's 8 per 256 px frame."""
        if not self.config.rgb_skip:
            return self.backdrop[:, :3]
        n, _, h, w = uv.shape
        t = self.texture.shape[-1]
        ij = (uv[:, :2] * t).floor().clamp(0, t - 1).long()  # [N, 2, H, W] column, row
        face = torch.sign(uv[:, 2]).long()  # [N, H, W]
        pixel = torch.arange(h * w, device=uv.device).reshape(1, h, w) + t * t
        index = face * (ij[:, 1] * t + ij[:, 0]) + (1 - face) * pixel
        texels = self.texture[0, :3].reshape(3, t * t).t()  # [T * T, 3]
        table = torch.cat([texels, self.backdrop[0, :3].reshape(3, h * w).t()])  # [T * T + H * W, 3]
        return table[index.reshape(-1)].reshape(n, h, w, 3).permute(0, 3, 1, 2)

    def start_from_mean(self, image: Tensor, mask: Tensor) -> None:
        """Set the backdrop to a mean image [1, 3, H, W] in [-1, 1] and mean mask [1, 1, H, W]."""
        with torch.no_grad():
            self.backdrop[:, :3] = image
            self.backdrop[:, 3:] = torch.logit(mask.clamp(0.02, 0.98))

    @staticmethod
    def for_teacher(
        texture: Tensor, image_size: int, widths: tuple[int, ...] | None = None, rgb_skip: bool = False
    ) -> StudentNet:
        """A fresh student whose face features start as the teacher's texture [1, C, T, T]."""
        config = StudentConfig(image_size, texture.shape[1], texture.shape[-1], rgb_skip=rgb_skip)
        student = StudentNet(replace(config, widths=widths) if widths else config)
        with torch.no_grad():
            student.texture.copy_(texture)
        return student
