"""The training objective: SelfieAvatar's weighted losses, with their feature networks.

Keeps the trainer free of loss bookkeeping: it owns the frozen VGG19 (ID-MRF, perceptual) and
FaceNet (identity cosine) on the training device, loaded only when their weight is non-zero,
and returns every term for logging. L1 and L_mask count only the pixels that came from the real
frame (sliding-window padding is not supervised).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from models.networks.losses import (
    IDMRFLoss,
    discriminator_gan_loss,
    generator_gan_loss,
    identity_loss,
    perceptual_loss,
    r1_penalty,
)
from models.networks.presets import LossConfig
from models.networks.selfieavatar import GeneratorOutput
from models.training.data import Batch, cut, face_crops

FACE_CROP = 160
"""Side of the face crops the identity network sees (FaceNet's input size)."""


@dataclass(frozen=True)
class LossTerms:
    """The generator's total loss and its weighted parts (for logging)."""

    total: Tensor
    parts: dict[str, Tensor]


def _vgg_input(x: Tensor, size: int) -> Tensor:
    """Images resized to the preset's VGG19 input side (0: unchanged)."""
    if size <= 0 or x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)


def _masked_mae(a: Tensor, b: Tensor, valid: Tensor) -> Tensor:
    weight = valid.expand_as(a)
    return ((a - b).abs() * weight).sum() / weight.sum().clamp(min=1.0)


class TrainingLosses:
    """Callable pieces of the objective; feature networks load on first construction."""

    def __init__(self, config: LossConfig, device: torch.device) -> None:
        self.config = config
        self.vgg = None
        self.facenet = None
        if config.mrf > 0 or config.perceptual > 0:
            from models.pretrained.vgg19 import load_vgg19

            layers = tuple(dict.fromkeys((*config.mrf_layers, *config.perceptual_layers)))
            self.vgg = load_vgg19(layers=layers).to(device)
        if config.cos > 0:
            from models.pretrained.facenet import load_facenet

            self.facenet = load_facenet().to(device)
        self.mrf = (
            IDMRFLoss(
                self.vgg,
                config.mrf_layers,
                input_size=config.vgg_size,
                max_positions=config.mrf_max_positions,
            )
            if self.vgg is not None and config.mrf > 0
            else None
        )

    def generator(
        self,
        out: GeneratorOutput,
        batch: Batch,
        fake_logits: Tensor | None,  # None: no GAN term this step
        boxes: Tensor | None = None,  # [N, 2] detail crops (top, left) for ID-MRF; None: whole frames
        crop: int = 0,
        detail: float = 1.0,  # weight multiplier of ID-MRF and the GAN term (the warm-up)
    ) -> LossTerms:
        c = self.config
        fake = (out.image.float() + 1) / 2  # [N, 3, H, W] in [0, 1] nominally
        real = batch.image
        parts: dict[str, Tensor] = {}
        if c.l1 > 0:
            parts["l1"] = c.l1 * _masked_mae(fake, real, batch.valid)
        if c.mask > 0:
            parts["mask"] = c.mask * _masked_mae(out.mask.float(), batch.person, batch.valid)
        if self.mrf is not None and detail > 0:
            pred, target = out.mask.float() * fake, batch.person * real
            if boxes is not None:
                pred, target = cut(pred, boxes, crop), cut(target, boxes, crop)
            parts["mrf"] = detail * c.mrf * self.mrf(pred, target)
        if self.facenet is not None:
            # On face crops, as the identity network was trained, and with the generated person
            # over the real background: on whole frames its gradient also reaches the
            # background, as an adversarial pattern the avatar then paints there.
            face = batch.uv[:, 2:3]
            person = fake.clamp(0, 1) * batch.person + real * (1 - batch.person)
            with torch.no_grad():
                target = self.facenet(face_crops(real, face, FACE_CROP))
            parts["cos"] = c.cos * identity_loss(self.facenet(face_crops(person, face, FACE_CROP)), target)
        if c.perceptual > 0 and self.vgg is not None:
            with torch.no_grad():
                target_features = self.vgg(real)
            parts["perceptual"] = c.perceptual * perceptual_loss(self.vgg(fake), target_features, c.perceptual_layers)
        if c.gan_g > 0 and fake_logits is not None:
            parts["gan"] = detail * c.gan_g * generator_gan_loss(fake_logits)
        total = torch.stack([p.float() for p in parts.values()]).sum()
        return LossTerms(total, parts)

    def discriminator(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        return self.config.gan_d * discriminator_gan_loss(real_logits, fake_logits)

    def r1(self, real_logits: Tensor, real: Tensor) -> Tensor:
        return r1_penalty(real_logits, real, self.config.r1_gamma)
