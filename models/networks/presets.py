"""Architecture and training presets: frozen, validated, round-trippable through JSON.

A preset is the complete recipe a run folder needs to rebuild its networks, so `to_dict` /
`from_dict` are exact and `from_dict` rejects unknown or ill-typed keys: a typo in a hand-edited
config must fail, not silently train something else.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args, get_origin

from models.networks.layers import channels_at, split_resolution

PresetName = Literal["tiny", "cpu-256", "256", "512"]


@dataclass(frozen=True)
class NetworkConfig:
    """Sizes and widths of the SelfieAvatar networks.

    Widths follow StyleGAN's rule channels(res) = min(base // res, max), one (base, max) pair per
    network, so a preset scales all resolutions of a network with two numbers.
    """

    image_size: int
    """H = W of the conditioning crops (I_UV, I_R) and of the output image I_A."""
    canvas_size: int
    """S': side of the enlarged canvas that sliding windows are cut from; G_b's output size."""
    texture_size: int
    """T: side of the neural texture G_f makes in UV space."""
    feature_channels: int
    """C: channels of the neural texture, background and foreground feature maps."""
    texture_channel_base: int
    """G_f width rule numerator."""
    texture_channel_max: int
    """G_f width cap."""
    background_channel_base: int
    """G_b width rule numerator."""
    background_channel_max: int
    """G_b width cap."""
    unet_channel_base: int
    """Both StyleUNets' width rule numerator."""
    unet_channel_max: int
    """Both StyleUNets' width cap (the bottleneck widths)."""
    unet_min_res: int
    """Resolution of the StyleUNet bottleneck; image_size / unet_min_res must be a power of 2."""
    disc_channel_base: int
    """Discriminator width rule numerator."""
    disc_channel_max: int
    """Discriminator width cap."""
    modulate_encoder: bool = False
    """Also modulate the StyleUNet encoders by the temporal style (decoders always are)."""
    latent_dim: int = 64
    """Size of the per-frame temporal codes and of G_f / G_b's learned codes (StyleAvatar: 64)."""
    w_dim: int = 64
    """Size of the style vector w the mapping networks produce."""
    mapping_layers: int = 4
    """Depth of every mapping network (StyleAvatar: 4)."""
    mapping_lr_mul: float = 0.01
    """Learning-rate multiplier of the mapping networks (StyleGAN2's value)."""
    mbstd_group: int = 4
    """Discriminator minibatch-std group size (shrinks to a divisor of the batch)."""
    direct_levels: int = 0
    """Levels of the directly optimised Laplacian pyramids (Deferred Neural Rendering) added to
    G_f's texture and G_b's canvas, so every texel gets gradient from the first step; 0: off."""
    rgb_skip: bool = False
    """S_2 predicts a residual over the first three feature channels, which hold RGB (the photo
    texture on the face, the canvas behind): the image is right at step 0 where the
    features are, and the network learns what the features cannot say."""
    plate: bool = False
    """The image is composited over a fixed background plate (the person-free median of the
    training frames) with the predicted person mask: I = I_FM * I_A + (1 - I_FM) * plate. Without
    it the frame around the person is the canvas, which holds the mean frame's ghost of the head
    and shoulders wherever the person sometimes was; with it that ring is the real background."""

    def __post_init__(self) -> None:
        counts = [f.name for f in dataclasses.fields(self) if f.type == "int" and f.name != "direct_levels"]
        _require_positive(self, counts)
        if self.direct_levels < 0:
            raise ValueError(f"direct_levels must be >= 0, got {self.direct_levels}")
        if self.canvas_size < self.image_size:
            raise ValueError(f"canvas_size {self.canvas_size} must be >= image_size {self.image_size}")
        ratio = self.image_size // self.unet_min_res
        if self.image_size % self.unet_min_res or ratio & (ratio - 1) or ratio < 2:
            raise ValueError(
                f"image_size {self.image_size} must be unet_min_res {self.unet_min_res} times a power of two >= 2"
            )
        for name in ("image_size", "canvas_size", "texture_size"):
            base, _ = split_resolution(getattr(self, name))
            if base > 16:
                raise ValueError(
                    f"{name} {getattr(self, name)} must be b * 2**k with 4 <= b <= 16 "
                    "so a StyleGAN network can start from a small constant"
                )
        for net in ("texture", "background", "unet", "disc"):
            if getattr(self, f"{net}_channel_max") < 1 or getattr(self, f"{net}_channel_base") < 1:
                raise ValueError(f"{net} widths must be positive")

    def unet_channels(self, resolution: int) -> int:
        """StyleUNet width at `resolution`."""
        return channels_at(resolution, self.unet_channel_base, self.unet_channel_max)


@dataclass(frozen=True)
class LossConfig:
    """Loss weights (SelfieAvatar Eq. 4-7 and StyleAvatar's regularizers).

    A weight of 0 switches a term off, which is how the paper's ablations are run.
    """

    l1: float = 1.0
    """λ_1: L1 between I_A and the real frame over the whole image."""
    mask: float = 3.0
    """λ_mask: MAE between I_FM and the person mask 1 - I_back."""
    mrf: float = 0.05
    """λ_mrf: ID-MRF between I_FM ⊙ I_A and (1 - I_back) ⊙ I_RA on VGG19 features."""
    cos: float = 1.0
    """λ_cos: 1 - cosine similarity of face-recognition embeddings of I_A and the real frame."""
    gan_g: float = 1.0
    """λ_g: non-saturating adversarial loss of the generator."""
    gan_d: float = 1.0
    """λ_d: non-saturating loss of the discriminator."""
    r1_gamma: float = 10.0
    """γ of the R1 penalty γ/2 E||∇D(real)||² (rosinality StyleGAN2 default that StyleAvatar's
    code inherits); 0 switches R1 off."""
    r1_interval: int = 16
    """Lazy regularization: R1 runs every this many D steps, its weight multiplied by it."""
    perceptual: float = 0.0
    """Optional VGG perceptual L1 (not in the paper; off by default)."""
    mrf_layers: tuple[str, ...] = ("relu3_2", "relu4_2")
    """VGG19 layers the ID-MRF compares (Wang et al. 2018)."""
    perceptual_layers: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_2", "relu4_2")
    """VGG19 layers of the optional perceptual loss."""
    mrf_max_positions: int = 4096
    """ID-MRF compares every generated position with every target one (quadratic memory);
    larger feature maps are average-pooled down to at most this many positions."""
    vgg_size: int = 0
    """Side images are resized to before VGG19 (ID-MRF, perceptual); 0 keeps the image size.
    VGG19 up to relu4_2 costs more than the whole generator, so CPU presets shrink it."""

    def __post_init__(self) -> None:
        weights = ("l1", "mask", "mrf", "cos", "gan_g", "gan_d", "r1_gamma", "perceptual")
        for name in weights:
            if getattr(self, name) < 0:
                raise ValueError(f"loss weight {name} must be >= 0, got {getattr(self, name)}")
        _require_positive(self, ["r1_interval", "mrf_max_positions"])
        if self.vgg_size < 0:
            raise ValueError(f"vgg_size must be >= 0, got {self.vgg_size}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimization schedule (StyleAvatar's choices where it publishes them)."""

    batch_size: int
    """Frames per step."""
    steps: int
    """Default length of a run (the CLI's --steps overrides it)."""
    freeze_static_after: int
    """Step after which G_f and G_b are frozen and cached (StyleAvatar: 10k)."""
    ema_half_life_images: int
    """Images after which the EMA generator's weight of a past value halves (StyleGAN: 10k)."""
    lr_g: float = 0.002
    """Adam learning rate of the generator."""
    lr_d: float = 0.002
    """Adam learning rate of the discriminator."""
    adam_betas: tuple[float, float] = (0.0, 0.99)
    """Adam betas; β1 = 0 as in StyleGAN2 and StyleAvatar."""
    grad_clip: float = 10.0
    """Max global gradient norm; StyleAvatar clips gradients, this value is our choice."""
    sliding_window: bool = True
    """Train on random image_size crops of the canvas_size canvas (off: always the centre)."""
    photo_texture: bool = False
    """Seed the RGB channels of the direct texture with the dataset's photo texture and those of
    the direct canvas with its background plate (needs network.direct_levels > 0)."""
    detail_crop: int = 0
    """Side of the full-resolution crops, around the face, that ID-MRF and the discriminator see
    (0: whole frames, shrunk to loss.vgg_size for VGG19)."""
    bf16: bool = False
    """bfloat16 autocast for the forward passes (CPUs with AVX512-BF16 / AMX, and GPUs)."""
    detail_warmup_fraction: float = 0.0
    """The detail losses (ID-MRF and both GAN terms) ramp in linearly over this first fraction of
    the run, so colour and geometry settle under L1 before texture is pushed; 0: on from step 0."""
    person_gan: bool = False
    """The discriminator sees the person only: real frames times their person mask, generated
    ones times the predicted mask I_FM (as ID-MRF does), so it never drives background texture."""
    freeze_static_fraction: float = 0.0
    """With a time budget (--minutes), freeze G_f / G_b after this fraction of it (0: use
    freeze_static_after steps, converted at the measured step rate)."""
    lr_decay_fraction: float = 0.0
    """The last fraction of the run (steps or budget) over which the learning rates decay
    (cosine) to lr_final_ratio of their value; 0: constant learning rates."""
    lr_final_ratio: float = 0.1
    """Learning rate at the end of the decay, relative to the start."""

    def __post_init__(self) -> None:
        _require_positive(self, ["batch_size", "steps", "ema_half_life_images"])
        if self.freeze_static_after < 0:
            raise ValueError("freeze_static_after must be >= 0")
        if self.lr_g <= 0 or self.lr_d <= 0 or self.grad_clip <= 0:
            raise ValueError("learning rates and grad_clip must be > 0")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas must be two values in [0, 1), got {self.adam_betas}")
        for name in ("freeze_static_fraction", "lr_decay_fraction", "lr_final_ratio", "detail_warmup_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.detail_crop < 0:
            raise ValueError(f"detail_crop must be >= 0, got {self.detail_crop}")

    def detail_scale(self, progress: float) -> float:
        """Weight multiplier of the detail losses at `progress` in [0, 1]."""
        if self.detail_warmup_fraction <= 0:
            return 1.0
        return min(progress / self.detail_warmup_fraction, 1.0)

    def lr_scale(self, progress: float) -> float:
        """Learning-rate multiplier at `progress` in [0, 1] of the run: 1, then a cosine decay
        to lr_final_ratio over the last lr_decay_fraction."""
        start = 1 - self.lr_decay_fraction
        if self.lr_decay_fraction <= 0 or progress <= start:
            return 1.0
        t = min((progress - start) / self.lr_decay_fraction, 1.0)
        return self.lr_final_ratio + (1 - self.lr_final_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    ema_rampup: float = 0.05
    """Early in training the EMA half-life is at most this fraction of the images seen so far
    (StyleGAN2-ADA's ramp-up), so a short run's EMA is not dominated by its random start."""

    def ema_beta(self, step: int | None = None) -> float:
        """Per-step EMA decay that gives `ema_half_life_images` at this batch size, ramped up
        over the first steps when `step` is given."""
        half_life = float(self.ema_half_life_images)
        if step is not None and self.ema_rampup > 0:
            half_life = min(half_life, max(step * self.batch_size * self.ema_rampup, 1e-8))
        return float(0.5 ** (self.batch_size / half_life))


@dataclass(frozen=True)
class Preset:
    """Everything that defines a SelfieAvatar model and how it is trained."""

    name: str
    network: NetworkConfig
    train: TrainConfig
    loss: LossConfig = field(default_factory=LossConfig)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        out: dict[str, Any] = _jsonable(dataclasses.asdict(self))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preset:
        """Inverse of `to_dict`; raises ValueError on unknown keys, missing keys or bad types."""
        return _build(cls, data, "preset")


def _require_positive(obj: object, names: list[str]) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be > 0, got {getattr(obj, name)}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


T = TypeVar("T")


def _build(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; valid keys are {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"{where}: missing key {name!r}")
            continue
        kwargs[name] = _convert(hints[name], data[name], f"{where}.{name}")
    return cls(**kwargs)


def _convert(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _build(hint, value, where)
    origin = get_origin(hint)
    if origin is tuple:
        args = get_args(hint)
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where) for v in value)
        if len(args) != len(value):
            raise ValueError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, where) for a, v in zip(args, value, strict=True))
    if origin is Literal or origin in (typing.Union, types.UnionType):
        raise TypeError(f"{where}: unsupported field type {hint}")  # none in these configs
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported field type {hint}")


_FAST: dict[str, Any] = {
    "photo_texture": True,
    "bf16": True,
    "freeze_static_fraction": 0.3,
    "lr_decay_fraction": 0.3,
    "detail_warmup_fraction": 0.2,
    "person_gan": True,
}
"""The fast recipe's schedule and switches, shared by the cpu-256, 256 and 512 presets (each sets
its own detail_crop; the network side is direct_levels and rgb_skip)."""

_TINY = Preset(
    name="tiny",
    network=NetworkConfig(
        image_size=64,
        canvas_size=80,
        texture_size=64,
        feature_channels=8,
        texture_channel_base=512,
        texture_channel_max=32,
        background_channel_base=512,
        background_channel_max=32,
        unet_channel_base=1024,
        unet_channel_max=64,
        unet_min_res=8,
        disc_channel_base=1024,
        disc_channel_max=64,
        latent_dim=32,
        w_dim=32,
    ),
    train=TrainConfig(batch_size=2, steps=400, freeze_static_after=200, ema_half_life_images=100),
)
"""CI and smoke runs: 64 px, under a million parameters; trains on a CPU in a minute or two."""

_CPU_256 = Preset(
    name="cpu-256",
    network=NetworkConfig(
        image_size=256,
        canvas_size=320,
        texture_size=128,
        feature_channels=16,
        texture_channel_base=1024,
        texture_channel_max=64,
        background_channel_base=1024,
        background_channel_max=64,
        unet_channel_base=2048,
        unet_channel_max=128,
        unet_min_res=16,
        disc_channel_base=2048,
        disc_channel_max=256,
        direct_levels=4,
        rgb_skip=True,
        plate=True,
    ),
    train=TrainConfig(
        batch_size=2,
        steps=30_000,
        freeze_static_after=10_000,
        ema_half_life_images=2_000,
        detail_crop=128,
        **_FAST,
    ),
    loss=LossConfig(vgg_size=128),
)
"""256 px with narrow networks: trains on two CPU cores within an hour or so (--minutes) and runs in the CPU tier."""

_256 = Preset(
    name="256",
    network=NetworkConfig(
        image_size=256,
        canvas_size=320,
        texture_size=256,
        feature_channels=32,
        texture_channel_base=8192,
        texture_channel_max=256,
        background_channel_base=8192,
        background_channel_max=256,
        unet_channel_base=8192,
        unet_channel_max=256,
        unet_min_res=8,
        disc_channel_base=16384,
        disc_channel_max=512,
        direct_levels=4,
        rgb_skip=True,
        plate=True,
    ),
    train=TrainConfig(
        batch_size=8,
        steps=50_000,
        freeze_static_after=10_000,
        ema_half_life_images=10_000,
        detail_crop=128,
        **_FAST,
    ),
)
"""GPU, StyleAvatar-like widths at 256 px."""

_512 = Preset(
    name="512",
    network=NetworkConfig(
        image_size=512,
        canvas_size=640,
        texture_size=512,
        feature_channels=32,
        texture_channel_base=16384,
        texture_channel_max=256,
        background_channel_base=16384,
        background_channel_max=256,
        unet_channel_base=16384,
        unet_channel_max=256,
        unet_min_res=8,
        disc_channel_base=16384,
        disc_channel_max=512,
        direct_levels=4,
        rgb_skip=True,
        plate=True,
    ),
    train=TrainConfig(
        batch_size=4,
        steps=100_000,
        freeze_static_after=10_000,
        ema_half_life_images=10_000,
        detail_crop=256,
        **_FAST,
    ),
)
"""GPU, StyleAvatar-like widths at 512 px (the data's native size)."""

PRESETS: Mapping[str, Preset] = types.MappingProxyType({p.name: p for p in (_TINY, _CPU_256, _256, _512)})


def get_preset(name: str) -> Preset:
    """The preset called `name`; ValueError naming the valid ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        valid = ", ".join(repr(n) for n in PRESETS)
        raise ValueError(f"unknown preset {name!r}; valid presets: {valid}") from None
