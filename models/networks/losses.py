"""SelfieAvatar's losses (Eq. 4-7) and StyleGAN2's adversarial terms, as plain functions.

Feature extractors (VGG19, face recognition) are passed in rather than loaded here, so every
loss is testable with random networks and the trainer decides devices, precision and caching.
A feature extractor is any callable image [N, 3, H, W] -> {layer name: [N, C, h, w]}.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.networks.layers import assert_shape

FeatureExtractor = Callable[[Tensor], Mapping[str, Tensor]]


def l1_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L_1: mean absolute error over every pixel and channel."""
    if pred.shape != target.shape:
        raise ValueError(f"l1_loss: shapes differ, {list(pred.shape)} vs {list(target.shape)}")
    return (pred - target).abs().mean()


def mask_loss(
    pred_mask: Tensor,  # [N, 1, H, W] I_FM in [0, 1]
    background: Tensor,  # [N, 1, H, W] I_back: 1 on the background, 0 on the person
) -> Tensor:
    """L_mask = MAE(I_FM, 1 - I_back): teaches S_2 where the person is, so the person can later
    be composited or faded on its own."""
    n = pred_mask.shape[0]
    assert_shape(pred_mask, [n, 1, None, None], "mask_loss pred")
    assert_shape(background, list(pred_mask.shape), "mask_loss background")
    return (pred_mask - (1 - background)).abs().mean()


def identity_loss(
    emb_pred: Tensor,  # [N, D] face-recognition embedding of the generated frame
    emb_real: Tensor,  # [N, D] of the real frame
) -> Tensor:
    """L_cos = 1 - cos(f(I_A), f(I_real)), batch mean. Identity embeddings are compared by angle
    because their length carries image quality, not identity."""
    n = emb_pred.shape[0]
    assert_shape(emb_pred, [n, None], "identity_loss pred")
    assert_shape(emb_real, list(emb_pred.shape), "identity_loss real")
    return (1 - F.cosine_similarity(emb_pred, emb_real, dim=1, eps=1e-8)).mean()


def generator_gan_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating G loss: softplus(-D(G(x))), strong gradients even when D wins easily."""
    return F.softplus(-fake_logits).mean()


def discriminator_gan_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """D loss: softplus(D(fake)) + softplus(-D(real)) (the logistic loss on both sides)."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def r1_penalty(
    real_logits: Tensor,  # [N, 1] D's output on `real_inputs`
    real_inputs: Tensor,  # [N, ...] the real images, created with requires_grad=True
    gamma: float,
) -> Tensor:
    """R1 = γ/2 · E ||∇_x D(x)||² on real data: keeps D smooth around the data so that GAN
    training converges (Mescheder et al. 2018). The graph is kept so the penalty trains D.

    A D whose output does not depend on its input has zero gradient; that is returned as 0
    rather than raising, so a frozen or constant D is not an error.
    """
    if not real_inputs.requires_grad:
        raise ValueError("r1_penalty: real_inputs must require grad before D is called on them")
    if not real_logits.requires_grad:
        return real_logits.new_zeros(())
    (grad,) = torch.autograd.grad(real_logits.sum(), real_inputs, create_graph=True, allow_unused=True)
    if grad is None:
        return real_logits.new_zeros(())
    return 0.5 * gamma * grad.square().flatten(1).sum(dim=1).mean()


def perceptual_loss(
    pred_features: Mapping[str, Tensor],
    target_features: Mapping[str, Tensor],
    layers: Sequence[str],
) -> Tensor:
    """Sum over `layers` of the L1 between feature maps (an optional extra, not in the paper)."""
    terms = [l1_loss(pred_features[k], target_features[k]) for k in layers]
    if not terms:
        raise ValueError("perceptual_loss: no layers given")
    return torch.stack(terms).sum()


def id_mrf_loss(
    pred_features: Mapping[str, Tensor],
    target_features: Mapping[str, Tensor],
    layer_weights: Mapping[str, float],
    *,
    bias: float = 1.0,
    sigma: float = 0.5,
    patch_size: int = 1,
    max_positions: int = 4096,
    eps: float = 1e-5,
) -> Tensor:
    """ID-MRF (implicit diversified Markov random field, Wang et al. 2018), Σ_layers weighted.

    For each target feature patch it asks: is there a generated patch that is *its* nearest
    neighbour, relative to how close that generated patch is to all other target patches?
    Matching every target patch that way demands both the target's local statistics and their
    diversity, without the pixel alignment L1 needs, so it sharpens hair and clothing that the
    conditioning does not pin down.

    Per sample and layer, with cosine distances d(i, j) between generated patch i and target
    patch j (features centred on the target's mean):
        d̃(i, j)  = d(i, j) / (min_k d(i, k) + eps)           relative distance
        cx(i, j) = softmax_j((bias - d̃(i, j)) / sigma)        contextual similarity
        L        = -log( mean_j max_i cx(i, j) )
    L is 0 when every target patch has a distinct generated twin; averaged over the batch.
    Maps with more than `max_positions` positions are average-pooled (the cost is quadratic).
    """
    terms = []
    for name, weight in layer_weights.items():
        if weight == 0:
            continue
        pred, target = pred_features[name], target_features[name]
        n, c = target.shape[:2]
        assert_shape(target, [n, c, None, None], f"id_mrf target {name}")
        assert_shape(pred, [n, c, None, None], f"id_mrf pred {name}")
        pred = _pool_to(pred, max_positions)
        target = _pool_to(target, max_positions)
        terms.append(weight * _mrf_layer(pred, target, bias, sigma, patch_size, eps))
    if not terms:
        raise ValueError("id_mrf_loss: no layer with a non-zero weight")
    return torch.stack(terms).sum()


def _pool_to(x: Tensor, max_positions: int) -> Tensor:
    while x.shape[-2] * x.shape[-1] > max_positions and min(x.shape[-2:]) >= 2:
        x = F.avg_pool2d(x, 2)
    return x


def _patches(x: Tensor, patch_size: int) -> Tensor:
    """[N, C, H, W] -> [N, L, C * p * p] patch vectors (p = 1: the per-pixel feature vectors)."""
    if patch_size == 1:
        return x.flatten(2).transpose(1, 2)
    return F.unfold(x, patch_size).transpose(1, 2)


def _mrf_layer(
    pred: Tensor,  # [N, C, H, W]
    target: Tensor,  # [N, C, H', W']
    bias: float,
    sigma: float,
    patch_size: int,
    eps: float,
) -> Tensor:  # scalar
    # Cosine distances are taken on features centred on the target's mean: uncentred ReLU
    # features all point into the positive orthant and would look alike.
    mean = target.mean(dim=(2, 3), keepdim=True)  # [N, C, 1, 1]
    p = F.normalize(_patches(pred - mean, patch_size), dim=2, eps=1e-8)  # [N, Lp, D]
    t = F.normalize(_patches(target - mean, patch_size), dim=2, eps=1e-8)  # [N, Lt, D]
    dist = (1 - p @ t.transpose(1, 2)) / 2  # [N, Lp, Lt] in [0, 1]
    relative = dist / (dist.amin(dim=2, keepdim=True) + eps)  # [N, Lp, Lt]
    cx = torch.softmax((bias - relative) / sigma, dim=2)  # [N, Lp, Lt]
    best = cx.amax(dim=1)  # [N, Lt]: each target patch's best generated match
    return -torch.log(best.mean(dim=1)).mean()


class IDMRFLoss(nn.Module):
    """L_mrf on images: runs the given extractor on both and calls `id_mrf_loss`.

    The target's features are computed without a graph (they are data). Images can be resized
    to `input_size` first, which is how a CPU preset keeps VGG19's cost bounded.
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        layers: Sequence[str] = ("relu3_2", "relu4_2"),
        *,
        input_size: int = 0,
        max_positions: int = 4096,
    ) -> None:
        super().__init__()
        self.extractor = extractor
        self.layer_weights = dict.fromkeys(layers, 1.0)
        self.input_size = input_size
        self.max_positions = max_positions

    def _resize(self, x: Tensor) -> Tensor:
        if self.input_size <= 0 or x.shape[-1] == self.input_size:
            return x
        return F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True)

    def forward(
        self,
        pred: Tensor,  # [N, 3, H, W] I_FM ⊙ I_A
        target: Tensor,  # [N, 3, H, W] (1 - I_back) ⊙ I_real
    ) -> Tensor:
        assert_shape(target, list(pred.shape), "IDMRFLoss target")
        with torch.no_grad():
            target_features = self.extractor(self._resize(target))
        pred_features = self.extractor(self._resize(pred))
        return id_mrf_loss(pred_features, target_features, self.layer_weights, max_positions=self.max_positions)
