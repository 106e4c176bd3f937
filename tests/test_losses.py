"""SelfieAvatar losses on hand-made tensors and a fixed random feature extractor."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.networks.losses import (
    IDMRFLoss,
    discriminator_gan_loss,
    generator_gan_loss,
    id_mrf_loss,
    identity_loss,
    l1_loss,
    mask_loss,
    perceptual_loss,
    r1_penalty,
)
from tests.media import one_torch_thread


class RandomFeatures(nn.Module):
    """A fixed random conv net standing in for VGG19: two 'layers' at 1/2 and 1/4 resolution."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 32, 3, padding=1)
        self.requires_grad_(False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        a = F.relu(self.a(F.avg_pool2d(x, 2)))
        b = F.relu(self.b(F.avg_pool2d(a, 2)))
        return {"relu3_2": a, "relu4_2": b}


def shuffle_blocks(x: Tensor, block: int, seed: int = 0) -> Tensor:
    """Permutes the image's block x block tiles."""
    n, c, h, w = x.shape
    tiles = x.reshape(n, c, h // block, block, w // block, block).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(n, -1, c, block, block)
    perm = torch.randperm(tiles.shape[1], generator=torch.Generator().manual_seed(seed))
    tiles = tiles[:, perm].reshape(n, h // block, w // block, c, block, block)
    return tiles.permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


@pytest.fixture(scope="module")
def features() -> RandomFeatures:
    return RandomFeatures()


@pytest.fixture(scope="module")
def image() -> Tensor:
    # smooth random image: structure at several scales, like a photo
    g = torch.Generator().manual_seed(1)
    coarse = torch.rand(2, 3, 8, 8, generator=g)
    fine = torch.rand(2, 3, 64, 64, generator=g)
    return F.interpolate(coarse, size=64, mode="bilinear", align_corners=False) * 0.8 + fine * 0.2


WEIGHTS: Mapping[str, float] = {"relu3_2": 1.0, "relu4_2": 1.0}


def test_id_mrf_is_zero_for_identical_inputs(features: RandomFeatures, image: Tensor) -> None:
    f = features(image)
    assert float(id_mrf_loss(f, f, WEIGHTS)) == pytest.approx(0.0, abs=1e-3)


def test_id_mrf_grows_with_shuffled_patches(features: RandomFeatures, image: Tensor) -> None:
    target = features(image)
    same = float(id_mrf_loss(features(image), target, WEIGHTS))
    small = float(id_mrf_loss(features(shuffle_blocks(image, 16)), target, WEIGHTS))
    large = float(id_mrf_loss(features(shuffle_blocks(image, 4)), target, WEIGHTS))
    assert same < 1e-3 < small < large


def test_id_mrf_punishes_collapse_more_than_shuffling(features: RandomFeatures, image: Tensor) -> None:
    # One patch repeated everywhere: locally plausible, no diversity; the 'diversified' part.
    target = features(image)
    collapsed = image[:, :, 20:24, 20:24].repeat(1, 1, 16, 16)
    shuffled = float(id_mrf_loss(features(shuffle_blocks(image, 8)), target, WEIGHTS))
    assert float(id_mrf_loss(features(collapsed), target, WEIGHTS)) > shuffled


def test_id_mrf_module_trains_its_prediction(features: RandomFeatures, image: Tensor) -> None:
    pred = shuffle_blocks(image, 4).requires_grad_(True)
    loss = IDMRFLoss(features, input_size=32)(pred, image)
    loss.backward()
    assert pred.grad is not None
    assert float(pred.grad.abs().sum()) > 0


def test_id_mrf_pools_large_maps(image: Tensor) -> None:
    f = {"x": torch.randn(1, 8, 32, 32)}
    g = {"x": f["x"] + 0.1 * torch.randn(1, 8, 32, 32)}
    pooled = id_mrf_loss(g, f, {"x": 1.0}, max_positions=64)
    assert torch.isfinite(pooled)
    assert float(id_mrf_loss(f, f, {"x": 1.0}, max_positions=64)) == pytest.approx(0.0, abs=1e-3)


def test_id_mrf_with_larger_patches(features: RandomFeatures, image: Tensor) -> None:
    f = features(image)
    assert float(id_mrf_loss(f, f, WEIGHTS, patch_size=3)) == pytest.approx(0.0, abs=1e-3)
    shuffled = features(shuffle_blocks(image, 4))
    assert float(id_mrf_loss(shuffled, f, WEIGHTS, patch_size=3)) > 1e-2


def test_cosine_identity_loss() -> None:
    e = torch.randn(4, 128)
    assert float(identity_loss(e, e)) == pytest.approx(0.0, abs=1e-6)
    assert float(identity_loss(e, 3 * e)) == pytest.approx(0.0, abs=1e-6)  # length does not matter
    assert float(identity_loss(e, -e)) == pytest.approx(2.0, abs=1e-6)
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    assert float(identity_loss(a, b)) == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)


def test_mask_loss_known_value() -> None:
    background = torch.zeros(1, 1, 4, 4)
    background[..., :, 2:] = 1  # right half is background, so the person mask is the left half
    assert float(mask_loss(1 - background, background)) == 0.0
    pred = torch.full((1, 1, 4, 4), 0.25)
    # left half |0.25 - 1| = 0.75, right half |0.25 - 0| = 0.25 -> mean 0.5
    assert float(mask_loss(pred, background)) == pytest.approx(0.5)
    with pytest.raises(AssertionError):
        mask_loss(pred, background[..., :2])


def test_l1_known_value() -> None:
    a = torch.tensor([[1.0, -1.0], [0.5, 0.0]])
    b = torch.tensor([[0.0, 1.0], [0.5, 1.0]])
    assert float(l1_loss(a, b)) == pytest.approx((1 + 2 + 0 + 1) / 4)
    with pytest.raises(ValueError, match="shapes differ"):
        l1_loss(a, b[:1])


def test_perceptual_loss_sums_layers() -> None:
    f = {"a": torch.zeros(1, 2, 2, 2), "b": torch.zeros(1, 1, 1, 1)}
    g = {"a": torch.ones(1, 2, 2, 2), "b": torch.full((1, 1, 1, 1), 3.0)}
    assert float(perceptual_loss(g, f, ["a", "b"])) == pytest.approx(4.0)


def test_non_saturating_gan_losses_at_known_logits() -> None:
    zero = torch.zeros(4, 1)
    assert float(generator_gan_loss(zero)) == pytest.approx(math.log(2))
    assert float(discriminator_gan_loss(zero, zero)) == pytest.approx(2 * math.log(2))
    big = torch.full((4, 1), 30.0)
    assert float(generator_gan_loss(big)) == pytest.approx(0.0, abs=1e-6)  # D fooled
    assert float(discriminator_gan_loss(big, -big)) == pytest.approx(0.0, abs=1e-6)  # D right
    assert float(generator_gan_loss(-big)) == pytest.approx(30.0, rel=1e-6)  # still a gradient


def test_r1_zero_for_constant_discriminator() -> None:
    real = torch.randn(2, 3, 8, 8, requires_grad=True)
    bias = nn.Parameter(torch.tensor(0.3))
    logits = real.sum(dim=(1, 2, 3), keepdim=True) * 0 + bias
    assert float(r1_penalty(logits, real, gamma=10.0)) == 0.0
    assert float(r1_penalty(bias.expand(2, 1), real, gamma=10.0)) == 0.0  # input unused


def test_r1_known_value_and_positive() -> None:
    real = torch.randn(2, 3, 8, 8, requires_grad=True)
    weight = nn.Parameter(torch.full((1, 3, 1, 1), 2.0))
    logits = (real * weight).sum(dim=(1, 2, 3)).unsqueeze(1)
    # dD/dx = 2 everywhere: ||grad||^2 = 4 * 192 per sample; gamma / 2 * that = 5 * 768
    penalty = r1_penalty(logits, real, gamma=10.0)
    assert float(penalty.detach()) == pytest.approx(5 * 768)
    penalty.backward()
    assert weight.grad is not None
    assert float(weight.grad.abs().sum()) > 0  # the penalty trains D
    with pytest.raises(ValueError, match="require grad"):
        r1_penalty(logits, real.detach(), gamma=10.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    yield from one_torch_thread()
