"""Distillation: a student learns the teacher's per-frame behaviour on a short real clip, on CPU.

The trivial baseline, measured in the same test, is the best constant image: the mean of the
teacher's training labels (which is also where the student starts, as its backdrop). Beating
it on held-out frames, with heads shifted by amounts never seen in training, means the student
learned how the output follows the conditioning rather than memorizing one picture.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from avatarcam_cli import main
from models.avatar import load_avatar
from models.engines.inference import TeacherNet
from models.training.data import FrameSet
from models.training.distill import DistillError, DistillOptions, distill, label, shifted, translate
from models.training.train import psnr
from tests.media import one_torch_thread

_threads = pytest.fixture(autouse=True, scope="module")(one_torch_thread)
pytestmark = pytest.mark.slow


def test_translate_moves_and_zero_fills() -> None:
    x = torch.arange(1, 17, dtype=torch.int32).reshape(1, 4, 4)
    moved = translate(x, 1, -2)
    assert moved[0, 0].tolist() == [0, 0, 0, 0]
    assert moved[0, 1].tolist() == [3, 4, 0, 0]
    assert torch.equal(translate(x, 0, 0), x)


def test_student_beats_the_constant_baseline(tiny_avatar: Path) -> None:
    data = tiny_avatar.parent / "data"
    avatar = load_avatar(tiny_avatar)
    train, test = FrameSet(data, "train", 64), FrameSet(data, "test", 64)
    options = DistillOptions(
        tiny_avatar, data, tiny_avatar.with_name("unused.avatar"), steps=200, frame_stride=1, shifted_copies=2
    )
    lines: list[str] = []
    student = distill(avatar, train, options, lines.append)
    assert any("teacher labelled 96 examples" in line for line in lines)

    teacher = TeacherNet(avatar.generator).eval()
    train_image, _ = label(teacher, train.uv, train.shaded)
    held_uv, held_shaded = shifted(test.uv, test.shaded, 4, torch.Generator().manual_seed(123))
    target, _ = label(teacher, held_uv, held_shaded)
    with torch.no_grad():
        image, _ = student(held_uv.float() / 65535, held_shaded.float() / 255)
    got = ((image + 1) / 2).clamp(0, 1)
    expected = target.float() / 255
    baseline = (train_image.float() / 255).mean(dim=0, keepdim=True).expand_as(expected)
    student_db, baseline_db = psnr(got, expected), psnr(baseline, expected)
    assert student_db > baseline_db + 1.0, (student_db, baseline_db)


def test_distill_command_writes_a_loadable_student(tiny_avatar: Path, tmp_path: Path) -> None:
    out = tmp_path / "student.avatar"
    data = tiny_avatar.parent / "data"
    args = [str(tiny_avatar), "--data", str(data), "-o", str(out), "--steps", "5", "--eval-frames", "4"]
    assert main(["distill", *args]) == 0
    avatar = load_avatar(out)
    assert avatar.student is not None
    metrics = json.loads(json.dumps(avatar.identity.metrics))
    assert {"student_psnr_vs_teacher", "student_psnr", "teacher_psnr", "baseline_psnr_vs_teacher"} <= set(metrics)
    with pytest.raises(DistillError, match="new file"):
        DistillOptions(tiny_avatar, data, tiny_avatar).validate()
    assert main(["distill", str(tiny_avatar), "--data", str(data), "-o", str(tiny_avatar)]) == 2
