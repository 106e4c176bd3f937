"""The SelfieAvatar networks (SelfieAvatar, Liang et al., on StyleAvatar, Wang et al. 2023).

Data flow of one frame (H = image_size, C = feature_channels, T = texture_size, S' = canvas_size):

    G_f() ---------------------------------------------> neural texture      [1, C, T, T]
    grid_sample(texture, I_UV.uv) * face mask ----------> face features       [N, C, H, W]
    S_1([I_R, I_UV], code) -----------------------------> fg features + m_fg  [N, C + 1, H, W]
    G_b() window at the crop's offset ------------------> bg features         [N, C, H, W]
    blend(face, fg, bg; face mask, m_fg) ----------------> features            [N, C, H, W]
    S_2(features, code) --------------------------------> I_A, I_FM           [N, 3 + 1, H, W]
    I_FM * I_A + (1 - I_FM) * plate (network.plate) -----> image               [N, 3, H, W]

G_f and G_b depend on nothing but their own weights, so at inference they run once and are
cached (`static_features`); only the two StyleUNets run per frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.networks.layers import (
    EqualConv2d,
    EqualLinear,
    MappingNetwork,
    MinibatchStd,
    NoiseMode,
    StyleConv,
    ToRGB,
    assert_shape,
    channels_at,
    split_resolution,
    upsample2x,
)
from models.networks.presets import NetworkConfig

SQRT_HALF = math.sqrt(0.5)  # keeps the variance of a sum of two unit-variance paths at one


class _SynthesisBlock(nn.Module):
    """StyleGAN2 'skip' block: (up) conv, optional UNet skip, conv, and a ToRGB output that is
    summed with the upsampled output of the block before, so every resolution speaks directly."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        img_channels: int,
        w_dim: int,
        resolution: int,
        *,
        up: bool,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.out_channels = out_channels
        self.conv0 = StyleConv(in_channels, out_channels, w_dim, resolution, up=up)
        self.conv1 = StyleConv(out_channels, out_channels, w_dim, resolution)
        self.to_img = ToRGB(out_channels, img_channels, w_dim)

    def forward(
        self,
        x: Tensor,  # [N, in_channels, R or R/2, same]
        img: Tensor | None,  # [N, img_channels, R/2, R/2] or None for the first block
        w: Tensor,  # [N, w_dim]
        noise_mode: NoiseMode,
        skip: Tensor | None = None,  # [N, out_channels, R, R] encoder features
    ) -> tuple[Tensor, Tensor]:  # [N, out_channels, R, R], [N, img_channels, R, R]
        x = self.conv0(x, w, noise_mode)
        if skip is not None:
            assert_shape(skip, list(x.shape), "UNet skip")
            x = (x + skip) * SQRT_HALF
        x = self.conv1(x, w, noise_mode)
        y = self.to_img(x, w)
        return x, y if img is None else upsample2x(img) + y


class FeatureGenerator(nn.Module):
    """G_f (neural texture in UV space) and G_b (background features): StyleGAN2 synthesis.

    There is no input: a learned constant and a learned code (through the mapping network) play
    the role of z, and the noise is the fixed buffer, so the output is a deterministic function
    of the weights and can be cached once training stops changing them.
    Output: [1, out_channels, size, size].
    """

    def __init__(
        self,
        out_channels: int,
        size: int,
        *,
        channel_base: int,
        channel_max: int,
        latent_dim: int,
        w_dim: int,
        mapping_layers: int,
        mapping_lr_mul: float,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.size = size
        base, doublings = split_resolution(size)

        def ch(resolution: int) -> int:
            return channels_at(resolution, channel_base, channel_max)

        self.code = nn.Parameter(torch.randn(1, latent_dim))
        self.mapping = MappingNetwork(latent_dim, w_dim, mapping_layers, lr_mul=mapping_lr_mul)
        self.const = nn.Parameter(torch.randn(1, ch(base), base, base))
        blocks = [_SynthesisBlock(ch(base), ch(base), out_channels, w_dim, base, up=False)]
        for k in range(doublings):
            r = base << (k + 1)
            blocks.append(_SynthesisBlock(ch(r // 2), ch(r), out_channels, w_dim, r, up=True))
        self.blocks = nn.ModuleList(blocks)

    def forward(self) -> Tensor:
        """-> [1, out_channels, size, size]."""
        w = self.mapping(self.code)  # [1, w_dim]
        x: Tensor = self.const
        img: Tensor | None = None
        for block in self.blocks:
            x, img = block(x, img, w, "const")
        assert img is not None
        assert_shape(img, [1, self.out_channels, self.size, self.size], "FeatureGenerator output")
        return img


class _EncoderBlock(nn.Module):
    """Two 3x3 convs, the second halving the resolution; returns the pre-downsampling features
    as the skip for the decoder."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, *, modulated: bool) -> None:
        super().__init__()
        self.modulated = modulated
        self.conv0: nn.Module
        self.conv1: nn.Module
        if modulated:
            self.conv0 = StyleConv(in_channels, in_channels, w_dim, resolution)
            self.conv1 = StyleConv(in_channels, out_channels, w_dim, resolution // 2, down=True)
        else:
            self.conv0 = EqualConv2d(in_channels, in_channels, 3, activation=True)
            self.conv1 = EqualConv2d(in_channels, out_channels, 3, activation=True, down=True)

    def forward(
        self, x: Tensor, w: Tensor, noise_mode: NoiseMode
    ) -> tuple[Tensor, Tensor]:  # skip [N, I, R, R], down [N, O, R/2, R/2]
        if self.modulated:
            skip = self.conv0(x, w, noise_mode)
            return skip, self.conv1(skip, w, noise_mode)
        skip = self.conv0(x)
        return skip, self.conv1(skip)


class StyleUNet(nn.Module):
    """S_1 / S_2 (StyleAvatar's StyleUNet): a UNet whose decoder is a StyleGAN2 synthesis network.

    The encoder keeps the output pixel-aligned with the conditioning (skips at every
    resolution); the decoder's convolutions are modulated by w = mapping(per-frame temporal
    code), which absorbs what the conditioning cannot explain (lighting drift, hair and cloth
    motion) instead of letting it blur into the mean.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        size: int,
        *,
        min_res: int,
        channel_base: int,
        channel_max: int,
        latent_dim: int,
        w_dim: int,
        mapping_layers: int,
        mapping_lr_mul: float,
        modulate_encoder: bool,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.size = size
        self.latent_dim = latent_dim
        self.w_dim = w_dim

        def ch(resolution: int) -> int:
            return channels_at(resolution, channel_base, channel_max)

        levels = []  # encoder resolutions, size down to 2 * min_res
        r = size
        while r > min_res:
            levels.append(r)
            r //= 2
        if r != min_res or not levels:
            raise ValueError(f"StyleUNet: size {size} is not min_res {min_res} * 2**k, k >= 1")
        self.mapping = MappingNetwork(latent_dim, w_dim, mapping_layers, lr_mul=mapping_lr_mul, normalize_input=False)
        self.from_input = EqualConv2d(in_channels, ch(size), 1, activation=True)
        self.encoder = nn.ModuleList(
            _EncoderBlock(ch(r), ch(r // 2), w_dim, r, modulated=modulate_encoder) for r in levels
        )
        self.bottleneck = _SynthesisBlock(ch(min_res), ch(min_res), out_channels, w_dim, min_res, up=False)
        self.decoder = nn.ModuleList(
            _SynthesisBlock(ch(r // 2), ch(r), out_channels, w_dim, r, up=True) for r in reversed(levels)
        )

    def style(self, code: Tensor) -> Tensor:
        """code: [N, latent_dim] -> w: [N, w_dim]. Separate so inference can cache w."""
        w: Tensor = self.mapping(code)
        return w

    def synthesize(self, x: Tensor, w: Tensor, noise_mode: NoiseMode) -> Tensor:
        """x: [N, in_channels, size, size], w: [N, w_dim] -> [N, out_channels, size, size]."""
        n = x.shape[0]
        assert_shape(x, [n, self.in_channels, self.size, self.size], "StyleUNet input")
        assert_shape(w, [n, self.w_dim], "StyleUNet w")
        x = self.from_input(x)
        skips = []
        for enc in self.encoder:
            skip, x = enc(x, w, noise_mode)
            skips.append(skip)
        x, img = self.bottleneck(x, None, w, noise_mode)
        for dec, skip in zip(self.decoder, reversed(skips), strict=True):
            x, img = dec(x, img, w, noise_mode, skip)
        assert_shape(img, [n, self.out_channels, self.size, self.size], "StyleUNet output")
        return img

    def forward(self, x: Tensor, code: Tensor, noise_mode: NoiseMode = "random") -> Tensor:
        """x: [N, in_channels, size, size], code: [N, latent_dim] -> [N, out_channels, size, size]."""
        return self.synthesize(x, self.style(code), noise_mode)


class LaplacianPyramid(nn.Module):
    """A directly optimised feature map stored as a Laplacian pyramid (Deferred Neural Rendering).

    The map is the sum of `levels` learned images, each at half the side of the one before,
    upsampled to full size. Every texel gets gradient from the first step, and the coarse levels
    let one gradient move a whole region, so a texture fills in far faster than through the
    weights of a generator. forward() -> [1, channels, size, size].
    """

    def __init__(self, channels: int, size: int, levels: int) -> None:
        super().__init__()
        self.size = size
        sides = [size >> k for k in range(levels) if size >> k >= 4]
        self.levels = nn.ParameterList(nn.Parameter(torch.zeros(1, channels, s, s)) for s in sides)

    def forward(self) -> Tensor:
        out: Tensor = self.levels[0]
        for level in self.levels[1:]:
            out = out + F.interpolate(level, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return out

    @torch.no_grad()
    def seed(self, image: Tensor) -> None:
        """Set the first image.shape[1] channels to `image` [1, k, size, size]: a Laplacian
        decomposition of it, so the coarse levels start with its low frequencies."""
        k = image.shape[1]
        current = image.to(self.levels[0])
        for i, level in enumerate(self.levels):
            if i + 1 < len(self.levels):
                coarse = F.interpolate(current, size=self.levels[i + 1].shape[-2:], mode="area")
                up = F.interpolate(coarse, size=current.shape[-2:], mode="bilinear", align_corners=False)
                level[:, :k] = current - up
                current = coarse
            else:
                level[:, :k] = current
        # Each level is upsampled straight to full size in forward(), not level by level, so
        # correct the finest level for the difference between the two reconstructions.
        self.levels[0][:, :k] += image.to(self.levels[0]) - self()[:, :k]


def zero_outputs(module: nn.Module, channels: slice = slice(None)) -> None:
    """Zero the weights of every ToRGB of `module` for the given output channels, so the network
    starts by adding nothing there and learns a residual (the zero-initialised last layer of
    Fixup): at step 0 the image is exactly the seeded features, and unlike a zero gain, the
    layer's own weights get gradient at once."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, ToRGB):
                m.conv.weight[channels] = 0
                m.bias[channels] = 0


@dataclass(frozen=True)
class StaticFeatures:
    """The outputs of the two static generators."""

    texture: Tensor  # [1, C, T, T]    G_f: neural texture in UV space
    background: Tensor  # [1, C, S', S'] G_b: background features on the enlarged canvas


@dataclass(frozen=True)
class GeneratorOutput:
    """What one generator pass returns; `image` and `mask` are the product, the rest feed
    losses and debugging views."""

    image: Tensor  # [N, 3, H, W] I_A in [-1, 1] nominally; not clamped (clamping kills gradients)
    mask: Tensor  # [N, 1, H, W] I_FM, the predicted person mask, in [0, 1]
    foreground: Tensor  # [N, 1, H, W] S_1's blend mask (1 on the rendered face), in [0, 1]
    face_mask: Tensor  # [N, 1, H, W] 1 where the face mesh was rendered (I_UV third channel > 0)
    face_features: Tensor  # [N, C, H, W] neural texture sampled through I_UV, 0 off the face
    features: Tensor  # [N, C, H, W] blended features S_2 turns into the image


class SelfieAvatarGenerator(nn.Module):
    """G: the full SelfieAvatar generator (G_f, G_b, S_1, S_2 and the per-frame codes).

    Inputs are the tracker's pixel-aligned renders cropped to image_size; during training with
    sliding windows they are random crops of a canvas_size canvas and `window` says where, so the
    background features are cut from the same place and a head translation in the input becomes
    a translation relative to a fixed background, which is what makes unseen head positions work.
    """

    def __init__(self, config: NetworkConfig, num_frames: int) -> None:
        super().__init__()
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.config = config
        self.num_frames = num_frames
        c = config.feature_channels
        self.texture_generator = FeatureGenerator(  # G_f
            c,
            config.texture_size,
            channel_base=config.texture_channel_base,
            channel_max=config.texture_channel_max,
            latent_dim=config.latent_dim,
            w_dim=config.w_dim,
            mapping_layers=config.mapping_layers,
            mapping_lr_mul=config.mapping_lr_mul,
        )
        self.background_generator = FeatureGenerator(  # G_b
            c,
            config.canvas_size,
            channel_base=config.background_channel_base,
            channel_max=config.background_channel_max,
            latent_dim=config.latent_dim,
            w_dim=config.w_dim,
            mapping_layers=config.mapping_layers,
            mapping_lr_mul=config.mapping_lr_mul,
        )
        self.texture_direct: LaplacianPyramid | None = None
        self.background_direct: LaplacianPyramid | None = None
        if config.direct_levels > 0:
            self.texture_direct = LaplacianPyramid(c, config.texture_size, config.direct_levels)
            self.background_direct = LaplacianPyramid(c, config.canvas_size, config.direct_levels)
            zero_outputs(self.texture_generator)  # G_f / G_b start at 0 beside their direct pyramids
            zero_outputs(self.background_generator)
        self.foreground_unet = _style_unet(config, 6, c + 1)  # S_1: [I_R, I_UV] -> features, m_fg
        self.image_unet = _style_unet(config, c, 3 + 1)  # S_2: features -> I_A, I_FM
        if config.rgb_skip:
            if c < 3:
                raise ValueError("rgb_skip needs feature_channels >= 3")
            zero_outputs(self.image_unet, slice(0, 3))
        # Per-frame temporal codes; N(0, 1) like z, learned with the networks.
        self.frame_codes = nn.Embedding(num_frames, config.latent_dim)
        nn.init.normal_(self.frame_codes.weight)
        if config.plate:
            # The person-free background on the canvas, in [-1, 1]; fixed (seed_plate), not learned.
            self.register_buffer("plate", torch.zeros(1, 3, config.canvas_size, config.canvas_size))
            self.plate: Tensor
        self._static_cache: StaticFeatures | None = None
        self._generated_cache: StaticFeatures | None = None
        self._generated_key: tuple[int, ...] = ()
        self._static_key: tuple[int, ...] = ()

    # ---- static generators -------------------------------------------------------------------

    def static_modules(self) -> list[nn.Module]:
        """G_f and G_b, the parts `freeze_static` freezes."""
        return [self.texture_generator, self.background_generator]

    def direct_modules(self) -> list[nn.Module]:
        """The direct pyramids: static too, but trained all run long (they are cheap)."""
        if self.texture_direct is None or self.background_direct is None:
            return []
        return [self.texture_direct, self.background_direct]

    def compute_static(self) -> StaticFeatures:
        """Runs G_f and G_b (with a graph when grad is enabled and they are not frozen), plus the
        direct pyramids. Once G_f and G_b are frozen their scaled outputs are cached."""
        if self.texture_direct is None or self.background_direct is None:
            return StaticFeatures(self.texture_generator(), self.background_generator())
        if self.static_frozen:
            generated = self._generated()
        else:
            generated = StaticFeatures(self.texture_generator(), self.background_generator())
        return StaticFeatures(
            generated.texture + self.texture_direct(), generated.background + self.background_direct()
        )

    def _generated(self) -> StaticFeatures:
        """G_f and G_b's outputs without a graph, recomputed only when their weights change."""
        key = self._static_version(direct=False)
        if self._generated_cache is None or key != self._generated_key:
            with torch.no_grad():
                self._generated_cache = StaticFeatures(self.texture_generator(), self.background_generator())
            self._generated_key = key
        return self._generated_cache

    DIRECT_PREFIXES = ("texture_direct.", "background_direct.")
    """State-dict prefixes of the direct pyramids: an .avatar file leaves them out (see absorb_direct)."""

    @torch.no_grad()
    def absorb_direct(self, static: StaticFeatures) -> None:
        """Set the direct pyramids so that compute_static() equals `static` again: the finest
        level takes what G_f / G_b do not produce, the coarser ones are zero. An .avatar file
        stores the static features rather than the pyramids (8 MB at cpu-256), and this restores
        an equivalent generator from them."""
        if self.texture_direct is None or self.background_direct is None:
            return
        for pyramid, generator, target in (
            (self.texture_direct, self.texture_generator, static.texture),
            (self.background_direct, self.background_generator, static.background),
        ):
            for level in pyramid.levels:
                level.zero_()
            pyramid.levels[0].copy_(target.to(pyramid.levels[0]) - generator())

    def seed_static(self, texture_rgb: Tensor | None, background_rgb: Tensor | None) -> None:
        """Start the direct pyramids' RGB channels from a photo texture [3, T', T'] and a
        background image [3, H, W] in [0, 1] (resized to the texture and canvas sides; the
        canvas's margin repeats the image's border)."""
        if self.texture_direct is None or self.background_direct is None:
            raise ValueError("seeding needs network.direct_levels > 0")
        cfg = self.config
        if texture_rgb is not None:
            t = F.interpolate(texture_rgb[None].float(), size=(cfg.texture_size,) * 2, mode="area")
            self.texture_direct.seed(t * 2 - 1)
        if background_rgb is not None:
            self.background_direct.seed(self._on_canvas(background_rgb) * 2 - 1)

    def seed_plate(self, plate_rgb: Tensor) -> None:
        """Set the background plate from an image [3, H, W] in [0, 1] (resized to image_size; the
        canvas's margin repeats its border, as in seed_static)."""
        if not self.config.plate:
            raise ValueError("seed_plate needs network.plate")
        with torch.no_grad():
            self.plate.copy_(self._on_canvas(plate_rgb) * 2 - 1)

    def _on_canvas(self, image: Tensor) -> Tensor:
        """[C, H', W'] -> [1, C, S', S']: resized to image_size and centred, the margin repeating the border."""
        cfg = self.config
        b = F.interpolate(image[None].float(), size=(cfg.image_size,) * 2, mode="area")
        pad = (cfg.canvas_size - cfg.image_size) // 2
        extra = cfg.canvas_size - cfg.image_size - pad
        return F.pad(b, (pad, extra, pad, extra), mode="replicate")

    def static_features(self) -> StaticFeatures:
        """G_f and G_b's outputs, recomputed only when their weights changed.

        Staleness is detected from each tensor's storage and in-place version counter, which
        optimizer steps, `load_state_dict` and `.to()` all bump, so the cache needs no manual
        invalidation. The cached tensors carry no graph.
        """
        key = self._static_version()
        if self._static_cache is None or key != self._static_key:
            with torch.no_grad():
                self._static_cache = self.compute_static()
            self._static_key = key
        return self._static_cache

    def use_static(self, features: StaticFeatures) -> None:
        """Adopt precomputed G_f / G_b outputs (e.g. from an .avatar file) as the cache, valid
        until their weights change, so loading an avatar does not rerun the static generators."""
        self._static_cache = StaticFeatures(features.texture.detach(), features.background.detach())
        self._static_key = self._static_version()

    def freeze_static(self) -> None:
        """Stops training G_f and G_b (StyleAvatar does after 10k iterations).

        Afterwards every forward uses the cache, so a training step only pays for the UNets.
        Optimizers skip parameters whose grad stays None, so they need no rebuild.
        """
        for module in self.static_modules():
            module.requires_grad_(False)

    @property
    def static_frozen(self) -> bool:
        """True when no parameter of G_f / G_b requires grad."""
        return not any(p.requires_grad for m in self.static_modules() for p in m.parameters())

    def _static_version(self, direct: bool = True) -> tuple[int, ...]:
        key: list[int] = []
        for module in [*self.static_modules(), *(self.direct_modules() if direct else [])]:
            for t in [*module.parameters(), *module.buffers()]:
                key += [t.data_ptr(), t._version]
        return tuple(key)

    # ---- per-frame codes -----------------------------------------------------------------------

    def mean_code(self) -> Tensor:
        """[1, latent_dim]: the average temporal code, used for frames not seen in training."""
        return self.frame_codes.weight.mean(dim=0, keepdim=True)

    def codes(self, frame: Tensor | None, batch: int) -> Tensor:
        """frame: [N] long (a negative index means 'unseen: use the mean code') or None (all
        unseen) -> [N, latent_dim]."""
        mean = self.mean_code()
        if frame is None:
            return mean.expand(batch, -1)
        assert_shape(frame, [batch], "frame indices")
        if frame.dtype != torch.long:
            raise TypeError(f"frame indices must be int64, got {frame.dtype}")
        if batch and int(frame.max()) >= self.num_frames:
            # CUDA would report this as an opaque device-side assert
            raise IndexError(f"frame index {int(frame.max())} >= num_frames {self.num_frames}")
        codes: Tensor = self.frame_codes(frame.clamp(min=0))
        return torch.where((frame < 0).unsqueeze(1), mean, codes)

    # ---- the per-frame pass --------------------------------------------------------------------

    def forward(
        self,
        uv: Tensor,  # [N, 3, H, W] I_UV in [0, 1]: u, v, region code (0 off the face)
        shaded: Tensor,  # [N, 3, H, W] I_R in [0, 1]
        frame: Tensor | None = None,  # [N] long frame indices; negative or None: mean code
        window: Tensor | None = None,  # [N, 2] long (top, left) of the crop in the canvas
        noise_mode: NoiseMode = "random",
    ) -> GeneratorOutput:
        n = uv.shape[0]
        cfg = self.config
        h = cfg.image_size
        c = cfg.feature_channels
        assert_shape(uv, [n, 3, h, h], "uv")
        assert_shape(shaded, [n, 3, h, h], "shaded")
        trains_static = not self.static_frozen or bool(self.direct_modules())
        static = self.compute_static() if torch.is_grad_enabled() and trains_static else self.static_features()
        code = self.codes(frame, n)  # [N, latent_dim]

        face_mask = (uv[:, 2:3] > 0).to(uv.dtype)  # [N, 1, H, W]
        face_features = sample_texture(static.texture, uv) * face_mask  # [N, C, H, W]

        conditioning = torch.cat([shaded, uv], dim=1) * 2 - 1  # [N, 6, H, W] in [-1, 1]
        fg = self.foreground_unet(conditioning, code, noise_mode)  # [N, C + 1, H, W]
        fg_features, fg_logit = fg[:, :c], fg[:, c:]
        foreground = face_mask + (1 - face_mask) * torch.sigmoid(fg_logit)  # [N, 1, H, W]
        person = face_mask * face_features + (1 - face_mask) * fg_features  # [N, C, H, W]
        background = crop_windows(static.background, window, n, h)  # [N, C, H, W]
        features = foreground * person + (1 - foreground) * background  # [N, C, H, W]

        out = self.image_unet(features, code, noise_mode)  # [N, 4, H, W]
        image = out[:, :3]
        mask = torch.sigmoid(out[:, 3:])
        if self.config.rgb_skip:
            image = rgb_residual(image, face_mask, face_features, background)
        if self.config.plate:
            image = over_plate(image, mask, crop_windows(self.plate, window, n, h))
        return GeneratorOutput(
            image=image,
            mask=mask,
            foreground=foreground,
            face_mask=face_mask,
            face_features=face_features,
            features=features,
        )

    def center_window(self, batch: int, device: torch.device | None = None) -> Tensor:
        """[N, 2] offsets of the centred crop, the window used when none is given."""
        offset = (self.config.canvas_size - self.config.image_size) // 2
        return torch.full((batch, 2), offset, dtype=torch.long, device=device)


def rgb_residual(residual: Tensor, face_mask: Tensor, face: Tensor, background: Tensor) -> Tensor:
    """I_A with network.rgb_skip: S_2's residual over an RGB base, the texture's RGB on the face
    and the canvas's RGB elsewhere. residual [N, 3, H, W], face_mask [N, 1, H, W], face and
    background features [N, C, H, W] -> [N, 3, H, W]."""
    return residual + face_mask * face[:, :3] + (1 - face_mask) * background[:, :3]


def over_plate(image: Tensor, mask: Tensor, plate: Tensor) -> Tensor:
    """network.plate's composite: image [N, 3, H, W] where the mask [N, 1, H, W] says person,
    the plate [N or 1, 3, H, W] elsewhere."""
    return mask * image + (1 - mask) * plate


def _style_unet(config: NetworkConfig, in_channels: int, out_channels: int) -> StyleUNet:
    return StyleUNet(
        in_channels,
        out_channels,
        config.image_size,
        min_res=config.unet_min_res,
        channel_base=config.unet_channel_base,
        channel_max=config.unet_channel_max,
        latent_dim=config.latent_dim,
        w_dim=config.w_dim,
        mapping_layers=config.mapping_layers,
        mapping_lr_mul=config.mapping_lr_mul,
        modulate_encoder=config.modulate_encoder,
    )


def sample_texture(
    texture: Tensor,  # [1 or N, C, T, T] neural texture in UV space
    uv: Tensor,  # [N, 3, H, W] u, v in [0, 1] in channels 0, 1
) -> Tensor:  # [N, C, H, W]
    """Looks the neural texture up at each pixel's (u, v); u runs along the texture's width."""
    n = uv.shape[0]
    grid = uv[:, :2].permute(0, 2, 3, 1) * 2 - 1  # [N, H, W, 2] as (x, y) in [-1, 1]
    texture = texture.expand(n, -1, -1, -1)
    return F.grid_sample(texture, grid, mode="bilinear", padding_mode="border", align_corners=False)


def crop_windows(
    canvas: Tensor,  # [1, C, S', S'] features on the enlarged canvas
    window: Tensor | None,  # [N, 2] long (top, left), each in [0, S' - size]; None: centred
    batch: int,
    size: int,
) -> Tensor:  # [N, C, size, size]
    """Cuts each sample's window out of the shared canvas (plain slicing: exact, differentiable)."""
    s = canvas.shape[-1]
    if window is None:
        o = (s - size) // 2
        return canvas[:, :, o : o + size, o : o + size].expand(batch, -1, -1, -1)
    assert_shape(window, [batch, 2], "window offsets")
    offsets: list[list[int]] = window.tolist()
    if any(not 0 <= v <= s - size for pair in offsets for v in pair):
        raise ValueError(f"window offsets must lie in [0, {s - size}], got {offsets}")
    return torch.cat([canvas[:, :, t : t + size, x : x + size] for t, x in offsets], dim=0)


class _DiscBlock(nn.Module):
    """StyleGAN2 residual discriminator block: two convs (the second halves the resolution)
    beside a 1x1 downsampling skip."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3, activation=True)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, activation=True, down=True)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, down=True)

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, I, R, R] -> [N, O, R/2, R/2]."""
        return (self.skip(x) + self.conv1(self.conv0(x))) * SQRT_HALF


class Discriminator(nn.Module):
    """D: StyleGAN2 residual discriminator conditioned on the texture rendering.

    Seeing I_R next to the image lets D judge whether the expression and pose match the
    conditioning, not only whether the image looks real.
    """

    def __init__(self, config: NetworkConfig, size: int = 0) -> None:
        super().__init__()
        self.size = size or config.image_size  # a smaller size judges full-resolution crops
        base, doublings = split_resolution(self.size)

        def ch(resolution: int) -> int:
            return channels_at(resolution, config.disc_channel_base, config.disc_channel_max)

        self.from_input = EqualConv2d(6, ch(self.size), 1, activation=True)
        self.blocks = nn.Sequential(*(_DiscBlock(ch(base << k), ch(base << (k - 1))) for k in range(doublings, 0, -1)))
        self.mbstd = MinibatchStd(config.mbstd_group)
        self.conv = EqualConv2d(ch(base) + 1, ch(base), 3, activation=True)
        self.fc = EqualLinear(ch(base) * base * base, ch(base), activation=True)
        self.out = EqualLinear(ch(base), 1)

    def forward(
        self,
        image: Tensor,  # [N, 3, H, W] real or generated, in [-1, 1]
        shaded: Tensor,  # [N, 3, H, W] I_R in [0, 1] (rescaled here like the generator's input)
    ) -> Tensor:  # [N, 1] logits
        n = image.shape[0]
        assert_shape(image, [n, 3, self.size, self.size], "D image")
        assert_shape(shaded, [n, 3, self.size, self.size], "D shaded")
        x = self.from_input(torch.cat([image, shaded * 2 - 1], dim=1))
        x = self.conv(self.mbstd(self.blocks(x)))
        logits: Tensor = self.out(self.fc(x.flatten(1)))
        return logits
