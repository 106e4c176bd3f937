"""The training schedule docs/training.md promises, on the tiny preset and a few steps: G_f and G_b
freeze after `freeze_static_after` (also when a resume lands after it), R1 runs every
`r1_interval` steps, the generator's gradients are clipped, and only the newest 3 checkpoints
are kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from models.networks.presets import get_preset
from models.training import checkpoint as ckpt
from models.training.train import TrainOptions, run
from tests.media import one_torch_thread

pytestmark = pytest.mark.slow
_threads = pytest.fixture(autouse=True, scope="module")(one_torch_thread)

L1_MASK = (("mrf", 0.0), ("cos", 0.0), ("gan_g", 0.0), ("gan_d", 0.0), ("r1_gamma", 0.0))
STATIC = ("texture_generator.", "background_generator.")  # G_f and G_b in the generator's state


@pytest.fixture(scope="module")
def data(tiny_avatar_root: Path) -> Path:
    return tiny_avatar_root / "data"


def _train(data: Path, out: Path, steps: int, **kw: Any) -> None:
    kw.setdefault("losses", L1_MASK)
    run(TrainOptions(data=data, out=out, preset="tiny", steps=steps, device="cpu", sample_every=1000, **kw))


def _weights(out: Path, step: int, owner: str = "generator") -> dict[str, torch.Tensor]:
    return ckpt.load(out / "checkpoints" / f"step-{step:07d}").tensors[owner]


def _split(weights: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    static = {k: v for k, v in weights.items() if k.startswith(STATIC)}
    return static, {k: v for k, v in weights.items() if not k.startswith(STATIC)}


def _moved(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_static_generators_freeze_after_freeze_static_after_also_across_a_resume(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    freeze = (("train.freeze_static_after", "2"),)
    _train(data, out, 1, overrides=freeze, checkpoint_every=1)
    step1 = _weights(out, 1)
    _train(data, out, 4, overrides=freeze, checkpoint_every=1, resume=True)  # freezes during the run
    step2, step4 = _weights(out, 2), _weights(out, 4)
    _train(data, out, 6, overrides=freeze, checkpoint_every=1, resume=True)  # resumes already frozen
    step6 = _weights(out, 6)

    (static1, _), (static2, unet2), (static4, unet4), (static6, unet6) = map(_split, (step1, step2, step4, step6))
    assert static1 and unet2, "the generator's state should hold G_f / G_b and the UNets"
    assert _moved(static1, static2) > 1e-5, "G_f and G_b train before freeze_static_after"
    assert _moved(static2, static4) == 0.0, "G_f and G_b must not change after freeze_static_after"
    assert _moved(static4, static6) == 0.0, "a resume past freeze_static_after must keep them frozen"
    assert _moved(unet2, unet4) > 1e-5 and _moved(unet4, unet6) > 1e-5, "the UNets keep training"


def test_only_the_newest_three_checkpoints_are_kept(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _train(data, out, 5, checkpoint_every=1)
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["step-0000003", "step-0000004", "step-0000005"]
    assert ckpt.latest(out) == out / "checkpoints" / "step-0000005"


def test_r1_runs_every_r1_interval_steps(data: Path, tmp_path: Path) -> None:
    preset = get_preset("tiny")
    assert (preset.loss.r1_interval, preset.loss.r1_gamma) == (16, 10.0)  # docs/training.md's schedule
    out = tmp_path / "run"
    gan = (("mrf", 0.0), ("cos", 0.0), ("r1_interval", 3.0))
    _train(data, out, 7, losses=gan, checkpoint_every=100)
    rows = [json.loads(line) for line in (out / "logs" / "scalars.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 8)) and all("d" in r for r in rows)
    with_r1 = [r["step"] for r in rows if "r1" in r]
    assert with_r1 == [1, 4, 7], "R1 runs on the first step and every r1_interval steps after it"
    assert all(r["r1"] > 0 for r in rows if "r1" in r)


def test_generator_gradients_are_clipped(data: Path, tmp_path: Path) -> None:
    """Clipped to a vanishing norm, Adam's steps (lr * g / (|g| + eps)) vanish too; unclipped,
    the same step moves weights by about the learning rate."""
    clipped, free = tmp_path / "clipped", tmp_path / "free"
    _train(data, clipped, 2, overrides=(("train.grad_clip", "1e-12"),), checkpoint_every=1)
    _train(data, free, 2, checkpoint_every=1)
    assert _moved(_weights(clipped, 1), _weights(clipped, 2)) < 1e-6
    assert _moved(_weights(free, 1), _weights(free, 2)) > 1e-4
