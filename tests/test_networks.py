"""SelfieAvatar networks: shapes, masks, gradients, sliding windows, the static cache, layers."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

from models.networks.layers import MinibatchStd, ModulatedConv2d, assert_shape, modulated_conv2d, split_resolution
from models.networks.presets import PRESETS, LossConfig, NetworkConfig, Preset, get_preset
from models.networks.selfieavatar import Discriminator, SelfieAvatarGenerator, crop_windows, sample_texture
from tests.media import one_torch_thread

TINY = get_preset("tiny")
NUM_FRAMES = 3

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")],
    ),
]


def renders(n: int, size: int, device: str = "cpu", seed: int = 0) -> tuple[Tensor, Tensor]:
    """A UV render with a face disk (u, v ramps, region code) in the middle, and a shaded render."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    disk = (((ys - 0.5) ** 2 + (xs - 0.5) ** 2) < 0.09).float()
    uv = torch.stack([xs * disk, ys * disk, 0.2 * disk]).expand(n, -1, -1, -1)
    shaded = torch.rand(n, 3, size, size, generator=g)
    return uv.contiguous().to(device), shaded.to(device)


@pytest.fixture(scope="module")
def tiny_generator() -> SelfieAvatarGenerator:
    torch.manual_seed(0)
    return SelfieAvatarGenerator(TINY.network, NUM_FRAMES)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds(name: str) -> None:
    preset = get_preset(name)
    g = SelfieAvatarGenerator(preset.network, NUM_FRAMES)
    d = Discriminator(preset.network)
    assert n_params(g) > 0
    assert n_params(d) > 0
    static = g.texture_generator.size, g.background_generator.size
    assert static == (preset.network.texture_size, preset.network.canvas_size)


def test_presets_grow_with_their_names() -> None:
    counts = [n_params(SelfieAvatarGenerator(get_preset(n).network, 1)) for n in ("tiny", "cpu-256", "256", "512")]
    assert counts == sorted(counts)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [1, 2])
def test_tiny_forward_shapes_and_ranges(device: str, batch: int) -> None:
    torch.manual_seed(0)
    g = SelfieAvatarGenerator(TINY.network, NUM_FRAMES).to(device)
    size, c = TINY.network.image_size, TINY.network.feature_channels
    uv, shaded = renders(batch, size, device)
    frame = torch.arange(batch, device=device)
    out = g(uv, shaded, frame, g.center_window(batch, uv.device))
    assert out.image.shape == (batch, 3, size, size)
    assert out.mask.shape == (batch, 1, size, size)
    assert out.features.shape == (batch, c, size, size)
    assert out.face_features.shape == (batch, c, size, size)
    for m in (out.mask, out.foreground):
        assert 0 <= float(m.detach().min()) <= float(m.detach().max()) <= 1
    assert torch.equal(out.face_mask, (uv[:, 2:3] > 0).float())
    # The blend mask is 1 on the face, so face pixels are exactly the neural texture.
    face = out.face_mask.bool().expand_as(out.features)
    assert torch.equal(out.features[face], out.face_features[face])
    assert torch.isfinite(out.image).all()


@pytest.mark.parametrize("name", ["cpu-256"])
def test_cpu_preset_forward_shape(name: str) -> None:
    torch.manual_seed(0)
    preset = get_preset(name)
    g = SelfieAvatarGenerator(preset.network, 1).eval()
    uv, shaded = renders(1, preset.network.image_size)
    with torch.no_grad():
        out = g(uv, shaded, noise_mode="const")
    assert out.image.shape == (1, 3, 256, 256)
    assert out.mask.shape == (1, 1, 256, 256)


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    g = SelfieAvatarGenerator(TINY.network, 2)
    uv, shaded = renders(2, TINY.network.image_size)
    out = g(uv, shaded, torch.tensor([0, 1]), torch.tensor([[0, 16], [8, 3]]))
    (out.image.square().mean() + out.mask.mean()).backward()
    missing = [n for n, p in g.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing

    d = Discriminator(TINY.network)
    d(out.image.detach(), shaded).sum().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in d.parameters())


def test_frozen_static_generators_get_no_gradients() -> None:
    torch.manual_seed(0)
    g = SelfieAvatarGenerator(TINY.network, 2)
    g.freeze_static()
    assert g.static_frozen
    uv, shaded = renders(1, TINY.network.image_size)
    g(uv, shaded, torch.tensor([1])).image.mean().backward()
    for module in g.static_modules():
        assert all(p.grad is None for p in module.parameters())
    assert g.image_unet.mapping.layers[0].weight.grad is not None


def test_window_offsets_move_the_background(tiny_generator: SelfieAvatarGenerator) -> None:
    uv, shaded = renders(1, TINY.network.image_size)
    frame = torch.tensor([0])
    with torch.no_grad():
        a = tiny_generator(uv, shaded, frame, torch.tensor([[0, 0]]), noise_mode="const")
        b = tiny_generator(uv, shaded, frame, torch.tensor([[16, 16]]), noise_mode="const")
        centred = tiny_generator(uv, shaded, frame, noise_mode="const")
        explicit = tiny_generator(uv, shaded, frame, tiny_generator.center_window(1), noise_mode="const")
    assert not torch.allclose(a.features, b.features)
    assert not torch.allclose(a.image, b.image)
    assert torch.equal(centred.image, explicit.image)


def test_window_offsets_out_of_range_are_rejected(tiny_generator: SelfieAvatarGenerator) -> None:
    uv, shaded = renders(1, TINY.network.image_size)
    margin = TINY.network.canvas_size - TINY.network.image_size
    with pytest.raises(ValueError, match="window offsets"):
        tiny_generator(uv, shaded, torch.tensor([0]), torch.tensor([[0, margin + 1]]))


def test_crop_windows_is_exact_slicing() -> None:
    canvas = torch.arange(2 * 10 * 10, dtype=torch.float32).reshape(1, 2, 10, 10)
    crops = crop_windows(canvas, torch.tensor([[0, 0], [3, 4]]), 2, 6)
    assert torch.equal(crops[0], canvas[0, :, 0:6, 0:6])
    assert torch.equal(crops[1], canvas[0, :, 3:9, 4:10])


def test_texture_lookup_follows_uv() -> None:
    # texture value = column index, so u picks the column and v must not matter
    texture = torch.arange(8, dtype=torch.float32).reshape(1, 1, 1, 8).expand(1, 1, 8, 8)
    uv = torch.zeros(1, 3, 1, 2)
    uv[0, 0, 0] = torch.tensor([0.5 / 8, 7.5 / 8])  # pixel centres of columns 0 and 7
    uv[0, 1, 0] = torch.tensor([0.9, 0.1])
    assert torch.allclose(sample_texture(texture, uv).flatten(), torch.tensor([0.0, 7.0]))


def test_static_features_cached_equal_recomputed() -> None:
    torch.manual_seed(0)
    g = SelfieAvatarGenerator(TINY.network, NUM_FRAMES)
    cached = g.static_features()
    assert g.static_features() is cached  # no rerun while the weights are unchanged
    with torch.no_grad():
        fresh = g.compute_static()
    assert torch.equal(cached.texture, fresh.texture)
    assert torch.equal(cached.background, fresh.background)
    assert cached.texture.shape == (1, TINY.network.feature_channels, 64, 64)
    assert cached.background.shape == (1, TINY.network.feature_channels, 80, 80)
    # An in-place weight update (what an optimizer step does) invalidates the cache.
    with torch.no_grad():
        g.texture_generator.const.add_(0.5)
    updated = g.static_features()
    assert updated is not cached
    assert not torch.equal(updated.texture, cached.texture)
    assert torch.equal(updated.background, cached.background)
    # So does loading other weights.
    torch.manual_seed(1)
    other = SelfieAvatarGenerator(TINY.network, NUM_FRAMES)
    g.load_state_dict(other.state_dict())
    assert torch.equal(g.static_features().texture, other.static_features().texture)


def test_inference_is_deterministic_with_const_noise(tiny_generator: SelfieAvatarGenerator) -> None:
    uv, shaded = renders(1, TINY.network.image_size)
    with torch.no_grad():
        a = tiny_generator(uv, shaded, torch.tensor([1]), noise_mode="const").image
        b = tiny_generator(uv, shaded, torch.tensor([1]), noise_mode="const").image
    assert torch.equal(a, b)


def test_unseen_frames_use_the_mean_code(tiny_generator: SelfieAvatarGenerator) -> None:
    g = tiny_generator
    codes = g.codes(torch.tensor([-1, 2]), 2)
    assert torch.allclose(codes[0], g.frame_codes.weight.mean(dim=0))
    assert torch.equal(codes[1], g.frame_codes.weight[2])
    assert torch.equal(g.codes(None, 3), g.mean_code().expand(3, -1))
    with pytest.raises(TypeError, match="int64"):
        g.codes(torch.tensor([0.0]), 1)
    with pytest.raises(IndexError, match="num_frames"):
        g.codes(torch.tensor([NUM_FRAMES]), 1)


def test_wrong_input_size_fails_at_the_boundary(tiny_generator: SelfieAvatarGenerator) -> None:
    uv, shaded = renders(1, 32)
    with pytest.raises(AssertionError, match="uv"):
        tiny_generator(uv, shaded)


@pytest.mark.parametrize("device", DEVICES)
def test_discriminator_output_shape(device: str) -> None:
    torch.manual_seed(0)
    d = Discriminator(TINY.network).to(device)
    _, shaded = renders(3, TINY.network.image_size, device)
    logits = d(torch.rand(3, 3, 64, 64, device=device) * 2 - 1, shaded)
    assert logits.shape == (3, 1)
    with pytest.raises(AssertionError, match="D shaded"):
        d(torch.zeros(3, 3, 64, 64, device=device), shaded[:, :2])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("demodulate", [True, False])
def test_fused_and_unfused_modulated_conv_agree(device: str, demodulate: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 5, 9, 9, device=device)
    weight = torch.randn(7, 5, 3, 3, device=device)
    styles = torch.randn(3, 5, device=device)
    fused = modulated_conv2d(x, weight, styles, demodulate=demodulate, fused=True)
    unfused = modulated_conv2d(x, weight, styles, demodulate=demodulate, fused=False)
    # reference: an explicit per-sample loop
    ref = []
    for i in range(3):
        w = weight * styles[i].reshape(1, 5, 1, 1)
        if demodulate:
            w = w / w.square().sum(dim=[1, 2, 3], keepdim=True).add(1e-8).sqrt()
        ref.append(torch.nn.functional.conv2d(x[i : i + 1], w, padding=1))
    assert torch.allclose(fused, torch.cat(ref), atol=1e-4)
    assert torch.allclose(unfused, torch.cat(ref), atol=1e-4)


def test_demodulated_conv_keeps_unit_variance() -> None:
    torch.manual_seed(0)
    conv = ModulatedConv2d(64, 64, 3, 16)
    y = conv(torch.randn(4, 64, 32, 32), torch.randn(4, 16))
    assert 0.7 < float(y.detach().std()) < 1.3


def test_minibatch_std_handles_any_batch() -> None:
    layer = MinibatchStd(group_size=4)
    for n in (1, 3, 6):
        assert layer(torch.randn(n, 4, 2, 2)).shape == (n, 5, 2, 2)


def test_split_resolution() -> None:
    assert split_resolution(64) == (4, 4)
    assert split_resolution(80) == (5, 4)
    assert split_resolution(320) == (5, 6)


def test_assert_shape() -> None:
    assert_shape(torch.zeros(2, 3, 4), [2, None, 4])
    with pytest.raises(AssertionError, match="expected shape"):
        assert_shape(torch.zeros(2, 3, 4), [2, 3])
    with pytest.raises(AssertionError, match="expected shape"):
        assert_shape(torch.zeros(2, 3, 4), [2, 4, None])


# ---- presets ----------------------------------------------------------------------------------


def test_get_preset_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="'tiny', 'cpu-256', '256', '512'"):
        get_preset("huge")


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_json_round_trip(name: str) -> None:
    preset = get_preset(name)
    assert Preset.from_dict(json.loads(json.dumps(preset.to_dict()))) == preset


def test_preset_rejects_typos_and_bad_values() -> None:
    data = TINY.to_dict()
    data["loss"]["mrf_wieght"] = 1.0
    with pytest.raises(ValueError, match="unknown keys \\['mrf_wieght'\\]"):
        Preset.from_dict(data)
    data = TINY.to_dict()
    data["network"]["image_size"] = "64"
    with pytest.raises(ValueError, match=r"network\.image_size: expected an integer"):
        Preset.from_dict(data)
    data = TINY.to_dict()
    del data["network"]["canvas_size"]
    with pytest.raises(ValueError, match="missing key 'canvas_size'"):
        Preset.from_dict(data)
    with pytest.raises(ValueError, match="canvas_size"):
        NetworkConfig(**{**TINY.to_dict()["network"], "canvas_size": 32})
    with pytest.raises(ValueError, match="unet_min_res"):
        NetworkConfig(**{**TINY.to_dict()["network"], "unet_min_res": 48})


def test_loss_defaults_are_the_papers() -> None:
    loss = LossConfig()
    assert (loss.mask, loss.mrf, loss.l1, loss.cos, loss.gan_g, loss.gan_d) == (3.0, 0.05, 1.0, 1.0, 1.0, 1.0)
    assert loss.mrf_layers == ("relu3_2", "relu4_2")
    with pytest.raises(ValueError, match="mrf"):
        LossConfig(mrf=-1.0)


def test_ema_beta_matches_half_life() -> None:
    train = TINY.train
    steps = train.ema_half_life_images / train.batch_size
    assert train.ema_beta() ** steps == pytest.approx(0.5)
    # ramp-up: at the first step the EMA is the generator; the half-life then grows with the images seen
    betas = [train.ema_beta(step) for step in (0, 10, 100, 10**6)]
    assert betas[0] == 0 and betas == sorted(betas) and betas[-1] == pytest.approx(train.ema_beta())
    assert train.ema_beta(100) ** (100 * train.batch_size * train.ema_rampup / train.batch_size) == pytest.approx(0.5)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    yield from one_torch_thread()
