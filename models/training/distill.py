"""`avatarcam distill`: a small student network locked to one avatar, for the real-time CPU tier.

The teacher (the avatar's SelfieAvatar generator, as every engine runs it: mean temporal code,
centred window) labels the prepared dataset's training renders once; the student
(`models.networks.student.StudentNet`) then learns to reproduce the teacher's image and mask from the
same renders with plain L1. Head translations unseen in the recording are covered by shifted
copies of the renders, labelled by the teacher too (the teacher's sliding-window training is
what makes those labels sensible). Quality is reported on the test split, against the teacher
and against the real frames, beside the teacher's own PSNR and a trivial baseline.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from models.avatar import Avatar, add_student, load_avatar
from models.engines.inference import TeacherNet
from models.networks.student import StudentNet
from models.training.data import FrameSet
from models.training.train import psnr


class DistillError(RuntimeError):
    """Distillation cannot start; the message says what to do."""


@dataclass(frozen=True)
class DistillOptions:
    """Options of `avatarcam distill`.

    Attributes:
        avatar: the teacher .avatar file.
        data: the prepared dataset the avatar was trained on (its renders are the inputs).
        out: the student .avatar file to write (the teacher's file plus the student).
        steps: optimizer steps.
        batch: frames per step.
        lr: Adam learning rate (cosine-decayed to 5% over the run).
        frame_stride: use every k-th training frame (neighbouring video frames are near copies).
        shifted_copies: teacher-labelled copies of each frame with the head shifted (augmentation).
        max_shift: largest shift, as a fraction of the image side.
        eval_frames: test frames (evenly spaced) for the reported PSNR; 0 skips evaluation.
        widths: the student's channels per level (default: models.networks.student's).
        seed: seeds initialization, shifts and batch order.
    """

    avatar: Path
    data: Path
    out: Path
    steps: int = 1200
    batch: int = 8
    lr: float = 2e-3
    frame_stride: int = 4
    shifted_copies: int = 1
    max_shift: float = 0.06
    eval_frames: int = 200
    widths: tuple[int, ...] | None = None
    seed: int = 0

    def validate(self) -> None:
        if self.steps < 1 or self.batch < 1 or self.frame_stride < 1 or self.shifted_copies < 0:
            raise DistillError("steps, batch and frame stride must be >= 1 and shifted copies >= 0")
        if not 0 <= self.max_shift < 0.5 or self.lr <= 0 or self.eval_frames < 0:
            raise DistillError("max_shift must be in [0, 0.5), lr > 0 and eval_frames >= 0")
        if self.out.resolve() == self.avatar.resolve():
            raise DistillError("write the student to a new file (-o), not over the teacher")


@dataclass(frozen=True)
class Targets:
    """Teacher-labelled training examples (all uint8/int32 on CPU, N examples)."""

    uv: Tensor  # [N, 3, H, W] int32 raw 16-bit UV render
    shaded: Tensor  # [N, 3, H, W] uint8 texture render
    image: Tensor  # [N, 3, H, W] uint8 teacher image
    mask: Tensor  # [N, 1, H, W] uint8 teacher mask


def _as_float(uv: Tensor, shaded: Tensor) -> tuple[Tensor, Tensor]:
    return uv.float() / 65535, shaded.float() / 255


def _to_u8(x: Tensor) -> Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


@torch.no_grad()
def label(teacher: TeacherNet, uv: Tensor, shaded: Tensor, batch: int = 8) -> tuple[Tensor, Tensor]:
    """Teacher image and mask ([N, 3 | 1, H, W] uint8) for raw renders (int32 uv, uint8 shaded)."""
    images, masks = [], []
    for start in range(0, len(uv), batch):
        image, mask = teacher(*_as_float(uv[start : start + batch], shaded[start : start + batch]))
        images.append(_to_u8((image + 1) / 2))
        masks.append(_to_u8(mask))
    return torch.cat(images), torch.cat(masks)


def shifted(uv: Tensor, shaded: Tensor, max_shift: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Each render moved by its own random (dy, dx) in [-max_shift, max_shift] pixels; zeros fill
    what moves in, as where no face was rendered."""
    shifts = torch.randint(-max_shift, max_shift + 1, (len(uv), 2), generator=generator).tolist()
    out_uv = torch.stack([translate(u, dy, dx) for u, (dy, dx) in zip(uv, shifts, strict=True)])
    out_sh = torch.stack([translate(s, dy, dx) for s, (dy, dx) in zip(shaded, shifts, strict=True)])
    return out_uv, out_sh


def translate(x: Tensor, dy: int, dx: int) -> Tensor:
    """[C, H, W] moved down by dy and right by dx pixels, zero-filled."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def build_targets(
    teacher: TeacherNet, frames: FrameSet, options: DistillOptions, log: Callable[[str], None]
) -> Targets:
    """The training examples: every `frame_stride`-th frame, plus shifted copies, teacher-labelled."""
    picks = torch.arange(0, len(frames), options.frame_stride)
    uv, shaded = frames.uv[picks], frames.shaded[picks]
    g = torch.Generator().manual_seed(options.seed)
    pixels = round(options.max_shift * frames.size)
    for _ in range(options.shifted_copies):
        more_uv, more_sh = shifted(frames.uv[picks], frames.shaded[picks], pixels, g)
        uv, shaded = torch.cat([uv, more_uv]), torch.cat([shaded, more_sh])
    start = time.perf_counter()
    image, mask = label(teacher, uv, shaded)
    log(f"teacher labelled {len(uv)} examples in {time.perf_counter() - start:.0f} s")
    return Targets(uv, shaded, image, mask)


def distill_loss(student: StudentNet, batch: Targets) -> Tensor:
    """L1 to the teacher's image (in [-1, 1]) plus L1 to its mask."""
    image, mask = student(*_as_float(batch.uv, batch.shaded))
    target = batch.image.float() / 127.5 - 1
    return F.l1_loss(image, target) + F.l1_loss(mask, batch.mask.float() / 255)


def train_student(
    student: StudentNet, targets: Targets, options: DistillOptions, log: Callable[[str], None]
) -> list[float]:
    """Adam with cosine decay; returns the loss of every step."""
    opt = torch.optim.Adam(student.parameters(), lr=options.lr, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(step / options.steps, 1.0)))
    )
    g = torch.Generator().manual_seed(options.seed + 1)
    student.train()
    losses = []
    every = max(options.steps // 10, 1)
    for step in range(options.steps):
        picks = torch.randint(0, len(targets.uv), (options.batch,), generator=g)
        batch = Targets(targets.uv[picks], targets.shaded[picks], targets.image[picks], targets.mask[picks])
        loss = distill_loss(student, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % every == 0:
            log(f"step {step + 1}/{options.steps}: loss {sum(losses[-every:]) / every:.4f}")
    return losses


@torch.no_grad()
def evaluate(student: StudentNet, teacher: TeacherNet, frames: FrameSet, count: int) -> dict[str, float]:
    """PSNR (dB, whole image) on `count` evenly spaced frames of `frames`.

    Keys: student_psnr_vs_teacher, student_psnr (vs. the real frames), teacher_psnr, and
    baseline_psnr_vs_teacher: the teacher's mean output image, the trivial baseline a student
    has to beat to have learned anything per frame.
    """
    student.eval()
    picks = torch.linspace(0, len(frames) - 1, min(count, len(frames))).round().long().unique()
    uv, shaded = frames.uv[picks], frames.shaded[picks]
    teacher_u8, _ = label(teacher, uv, shaded)
    student_u8 = torch.cat(
        [_to_u8((student(*_as_float(uv[i : i + 8], shaded[i : i + 8]))[0] + 1) / 2) for i in range(0, len(uv), 8)]
    )
    real = frames.image[picks].float() / 255
    t, s = teacher_u8.float() / 255, student_u8.float() / 255
    mean = t.mean(dim=0, keepdim=True).expand_as(t)
    return {
        "student_psnr_vs_teacher": round(psnr(s, t), 2),
        "student_psnr": round(psnr(s, real), 2),
        "teacher_psnr": round(psnr(t, real), 2),
        "baseline_psnr_vs_teacher": round(psnr(mean, t), 2),
        "eval_frames": float(len(picks)),
    }


def distill(teacher_avatar: Avatar, train: FrameSet, options: DistillOptions, log: Callable[[str], None]) -> StudentNet:
    """Label, then train a fresh student for `teacher_avatar` on `train`."""
    torch.manual_seed(options.seed)
    teacher = TeacherNet(teacher_avatar.generator).eval()
    targets = build_targets(teacher, train, options, log)
    student = StudentNet.for_teacher(teacher.texture, teacher.size, options.widths, rgb_skip=teacher.rgb_skip)
    student.start_from_mean(
        targets.image.float().mean(dim=0, keepdim=True) / 127.5 - 1,
        targets.mask.float().mean(dim=0, keepdim=True) / 255,
    )
    train_student(student, targets, options, log)
    return student.eval().requires_grad_(False)


def run(options: DistillOptions, log: Callable[[str], None] = print) -> dict[str, float]:
    """`avatarcam distill`: writes `options.out` and returns the measured metrics."""
    options.validate()
    avatar = load_avatar(options.avatar)
    if avatar.student is not None:
        avatar = replace(avatar, student=None)  # distill again from the teacher
    size = avatar.network.image_size
    train = FrameSet(options.data, "train", size)
    if len(train) == 0:
        raise DistillError(f"{options.data} has no training frames")
    start = time.perf_counter()
    student = distill(avatar, train, options, log)
    metrics: dict[str, float] = {
        "distill_seconds": round(time.perf_counter() - start, 1),
        "distill_steps": options.steps,
    }
    if options.eval_frames:
        test = FrameSet(options.data, "test", size)
        metrics.update(evaluate(student, TeacherNet(avatar.generator).eval(), test, options.eval_frames))
    add_student(options.avatar, student, options.out, metrics)
    return metrics
