"""The fast training recipe's mechanisms: the photo texture, the direct pyramids, the detail crops,
bf16 autocast, the time budget and the evaluation baselines. No wall-clock assertions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.engines.inference import TeacherNet
from models.evaluation.evaluate import Baselines, beats_baselines, expression_correlations
from models.networks.layers import ToRGB
from models.networks.selfieavatar import LaplacianPyramid, SelfieAvatarGenerator, sample_texture
from models.training.data import FrameSet, cut, detail_boxes
from models.training.train import TrainError, TrainOptions, override_preset, run
from tracking.prepare import PrepareConfig, estimate_background
from tracking.prepare import run as prepare
from tracking.texture import back_project

ROOT = Path(__file__).resolve().parents[1]
QUICK = (("mrf", 0.0), ("cos", 0.0), ("r1_gamma", 0.0))
RECIPE = (
    ("network.direct_levels", "3"),
    ("network.rgb_skip", "true"),
    ("train.photo_texture", "true"),
    ("train.detail_crop", "32"),
)


@pytest.fixture(scope="module")
def data128(cap12: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("recipe") / "cap12-128"
    prepare(PrepareConfig(video=cap12, out=out, size=128, max_frames=24))
    return out


@pytest.mark.slow
def test_photo_texture_reprojects_onto_its_frames(data128: Path) -> None:
    """prepare's texture.png, looked up through a training frame's UV render, reproduces that
    frame's face far better than the face's mean colour does."""
    frames = FrameSet(data128, "train", 128)
    texture = frames.photo_texture()
    assert texture.shape == (3, 128, 128)
    uv = frames.uv.float() / 65535
    face = (uv[:, 2:3] > 0).float()
    real = frames.image.float() / 255
    again = sample_texture(texture[None], uv) * face
    error = ((again - real).abs() * face).sum() / (3 * face.sum())
    colour = (real * face).sum(dim=(0, 2, 3)) / face.sum()
    constant = ((colour.view(1, 3, 1, 1) - real).abs() * face).sum() / (3 * face.sum())
    assert error < 0.06, error
    assert error < 0.5 * constant, (error, constant)


def test_weighted_median_ignores_a_minority() -> None:
    """A texel seen as grey in 7 frames and white in 2 is grey: the median, not the mean."""
    h = w = 8
    uv = torch.zeros(9, 3, h, w)
    uv[:, 0], uv[:, 1], uv[:, 2] = 0.3, 0.6, 0.2  # every pixel shows one texel
    frames = torch.full((9, 3, h, w), 100, dtype=torch.uint8)
    frames[:2] = 250
    texture = back_project(frames, uv, size=4)
    u, v = int(0.3 * 4), int(0.6 * 4)
    assert texture.coverage[v, u] > 0
    assert torch.allclose(texture.rgb[:, v, u], torch.full((3,), 100 / 255), atol=1e-6)
    assert texture.coverage.count_nonzero() == 1
    # Texels no frame saw are filled from coarser levels, not left black.
    assert torch.allclose(texture.rgb, torch.full_like(texture.rgb, 100 / 255), atol=1e-6)


def test_pyramid_seed_reconstructs_the_image() -> None:
    torch.manual_seed(0)
    pyramid = LaplacianPyramid(5, 32, 4)
    image = torch.rand(1, 3, 32, 32)
    pyramid.seed(image)
    out = pyramid()
    assert torch.allclose(out[:, :3], image, atol=1e-5)
    assert out[:, 3:].abs().max() == 0
    assert pyramid.levels[-1].abs().sum() > 0  # low frequencies live in the coarse level


def test_seeded_generator_starts_from_the_photo() -> None:
    """With rgb_skip and a seeded texture, the untrained generator already shows the texture on
    the face: the image there is the texture's RGB plus a small residual."""
    preset = override_preset(TrainOptions(Path("."), Path("."), preset="tiny").resolved_preset(), RECIPE)
    torch.manual_seed(0)
    generator = SelfieAvatarGenerator(preset.network, 4)
    texture = torch.rand(3, 64, 64)
    generator.seed_static(texture, torch.rand(3, 64, 64))
    uv = torch.zeros(1, 3, 64, 64)
    ys, xs = torch.meshgrid(torch.linspace(0.2, 0.8, 64), torch.linspace(0.2, 0.8, 64), indexing="ij")
    uv[0, 0], uv[0, 1], uv[0, 2] = xs, ys, 0.2
    with torch.no_grad():
        out = generator(uv, torch.zeros(1, 3, 64, 64), None, None, noise_mode="const")
    expected = sample_texture(texture[None] * 2 - 1, uv)
    unseeded = SelfieAvatarGenerator(preset.network, 4)
    with torch.no_grad():
        plain = unseeded(uv, torch.zeros(1, 3, 64, 64), None, None, noise_mode="const")
    seeded_error = (out.image - expected).abs().mean()
    assert seeded_error < 0.5 * (plain.image - expected).abs().mean()
    assert seeded_error < 0.25


def test_plate_shows_where_the_mask_says_background() -> None:
    """network.plate: the image is the plate where I_FM is 0 and S_2's image where it is 1, in the
    generator and in the folded engine alike."""
    preset = override_preset(
        TrainOptions(Path("."), Path("."), preset="tiny").resolved_preset(), (*RECIPE, ("network.plate", "true"))
    )
    torch.manual_seed(0)
    generator = SelfieAvatarGenerator(preset.network, 4).eval()
    plate = torch.rand(3, 64, 64)
    generator.seed_plate(plate)
    last_rgb = [m for m in generator.image_unet.modules() if isinstance(m, ToRGB)][-1]
    uv, shaded = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    uv[:, 2] = (uv[:, 2] > 0.5).float() * 0.2
    for logit, expect_plate in ((-40.0, True), (40.0, False)):
        with torch.no_grad():
            last_rgb.bias[3] = logit  # the last ToRGB's mask channel: I_FM saturates at 0 or 1
            out = generator(uv, shaded, None, None, noise_mode="const")
            folded, mask = TeacherNet(generator)(uv, shaded)
        without = SelfieAvatarGenerator(replace(preset.network, plate=False), 4)
        without.load_state_dict({k: v for k, v in generator.state_dict().items() if k != "plate"})
        with torch.no_grad():
            plain = without(uv, shaded, None, None, noise_mode="const")
        target = plate[None].expand(2, -1, -1, -1) * 2 - 1 if expect_plate else plain.image
        torch.testing.assert_close(out.image, target, atol=1e-5, rtol=0)
        torch.testing.assert_close(folded, out.image, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(mask, out.mask, atol=1e-5, rtol=1e-4)


def test_background_plate_ignores_rare_glimpses() -> None:
    """A pixel the mask missed in one frame out of twenty does not paint the person into the plate."""
    wall, person = np.full((64, 64, 3), 200, np.uint8), np.full((64, 64, 3), 30, np.uint8)
    covered = np.zeros((64, 64), np.uint8)
    covered[16:48, 16:48] = 255
    samples = [(np.where(covered[..., None] > 0, person, wall), covered) for _ in range(19)]
    missed = covered.copy()
    missed[20:30, 20:30] = 0  # one frame where segmentation lost part of the person
    samples.append((np.where(covered[..., None] > 0, person, wall), missed))
    plate = estimate_background(samples).astype(int)
    assert abs(plate[25, 25] - 200).max() < 40, plate[25, 25]  # inpainted from the wall, not the person
    assert (plate[:8] == 200).all()


def test_detail_boxes_follow_the_face() -> None:
    face = torch.zeros(3, 1, 128, 128)
    face[0, :, 10:30, 90:120] = 1  # top right
    face[1, :, 100:128, 0:20] = 1  # bottom left, near the border
    boxes = detail_boxes(face, 48, torch.Generator().manual_seed(0))
    assert boxes.shape == (3, 2)
    for (top, left), (cy, cx) in zip(boxes[:2].tolist(), [(20, 105), (114, 10)], strict=True):
        assert 0 <= top <= 80 and 0 <= left <= 80
        assert top <= cy < top + 48 and left <= cx < left + 48
    crops = cut(face, boxes, 48)
    assert crops.shape == (3, 1, 48, 48)
    assert crops[0].sum() > 0 and crops[1].sum() > 0


def test_bf16_autocast_agrees_with_fp32() -> None:
    preset = TrainOptions(Path("."), Path("."), preset="tiny").resolved_preset()  # every layer contributes
    torch.manual_seed(0)
    generator = SelfieAvatarGenerator(preset.network, 4).eval()
    uv, shaded = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        full = generator(uv, shaded, None, None, noise_mode="const")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = generator(uv, shaded, None, None, noise_mode="const")
    difference = (half.image.float() - full.image).abs()
    assert difference.max() > 0  # autocast really ran the convolutions in bf16
    assert difference.mean() < 0.02 * full.image.abs().mean() + 0.01, difference.mean()
    assert difference.max() < 0.2


def test_set_overrides_are_validated() -> None:
    base = TrainOptions(Path("."), Path("."), preset="tiny").resolved_preset()
    assert override_preset(base, (("train.bf16", "true"),)).train.bf16 is True
    with pytest.raises(TrainError, match="not a preset field"):
        override_preset(base, (("train.nonsense", "1"),))
    with pytest.raises(TrainError, match="JSON"):
        override_preset(base, (("train.bf16", "yes please"),))
    with pytest.raises(TrainError, match="expected true/false"):
        override_preset(base, (("network.rgb_skip", "1"),))


def _rows(run_dir: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run_dir / "logs" / "scalars.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_minutes_budget_ends_within_a_step_and_resume_keeps_it(data128: Path, tmp_path: Path) -> None:
    """A budgeted run stops at the first step past its budget; killed mid-run, --resume without
    --minutes continues the same budget to its end instead of starting a new one."""
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "avatarcam_cli",
        "train",
        str(data128),
        "-o",
        str(out),
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--checkpoint-every",
        "3",
        "--max-frames",
        "8",
        *[arg for key, value in QUICK for arg in ("--loss", f"{key}={value}")],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*command, "--minutes", "0.5"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((out / "checkpoints").glob("step-*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _rows(out)
    assert before and before[-1]["progress"] < 1.0
    subprocess.run([*command, "--resume"], cwd=ROOT, env=env, check=True, capture_output=True)
    rows = _rows(out)
    progress = [r["progress"] for r in rows]
    assert progress[-1] >= 1.0 and all(p < 1.0 for p in progress[:-1])  # stopped at the first step past it
    meta = json.loads(sorted((out / "checkpoints").glob("step-*"))[-1].joinpath("meta.json").read_text())
    assert meta["progress"] >= 1.0 and meta["options"]["minutes"] == 0.5


def test_minutes_must_be_positive(data128: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="--minutes"):
        run(TrainOptions(data128, tmp_path / "run", preset="tiny", minutes=0, device="cpu", losses=QUICK))


@pytest.mark.slow
def test_baselines_are_the_trivial_answers(data128: Path) -> None:
    """The nearest-frame baseline returns the training frame itself when asked with that
    frame's own pose and expression; the mean baseline is the mean training frame."""
    from models.evaluation.evaluate import split_frames

    baselines = Baselines(data128, 128)
    _, batches = split_frames(data128, "train", None, 128, 4)
    batch = next(batches)
    nearest = baselines("nearest_frame", batch)
    assert np.array_equal(nearest[0], batch.real[0])  # frame 0 is a candidate (stride 2)
    mean = baselines("mean_frame", batch)
    assert mean.shape == batch.real.shape and np.ptp(mean.reshape(4, -1), axis=0).max() == 0
    results = {"full": {"psnr": 20.0, "lpips": 0.2}}
    assert beats_baselines(results, {"a": {"full": {"psnr": 19.0, "lpips": 0.3}}}) == {
        "full": {"psnr": True, "lpips": True}
    }
    assert beats_baselines(results, {"a": {"full": {"psnr": 21.0, "lpips": 0.1}}}) == {
        "full": {"psnr": False, "lpips": False}
    }


def test_expression_correlations() -> None:
    from tracking.tracker import BLENDSHAPE_NAMES

    jaw = BLENDSHAPE_NAMES.index("jawOpen")
    rng = np.random.default_rng(0)
    driver, same, flat = [], [], []
    for t in range(20):
        b = rng.random(52).astype(np.float32)
        driver.append((b, np.zeros(7)))
        follow = b.copy()
        follow[jaw] = 0.5 * b[jaw] + 0.1
        same.append((follow, np.zeros(7)))
        still = b.copy()
        still[jaw] = 0.3
        flat.append((still, np.zeros(7)))
        del t
    got = expression_correlations(driver, same)
    assert got["jawOpen_correlation"] == pytest.approx(1.0)
    assert got["eyeBlink_correlation"] == pytest.approx(1.0)
    assert expression_correlations(driver, flat)["jawOpen_correlation"] is None
    assert expression_correlations(driver[:2], same[:2])["jawOpen_correlation"] is None
