"""Training, checkpoints, resume after SIGKILL, DDP on two CPU processes, and the .avatar file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.avatar import AvatarError, export, load_avatar, read_header
from models.networks.presets import Preset
from models.networks.selfieavatar import SelfieAvatarGenerator
from models.training import checkpoint as ckpt
from models.training.data import FrameSet
from models.training.train import TrainError, TrainOptions, heldout_psnr, psnr, run
from tracking.prepare import PrepareConfig
from tracking.prepare import run as prepare

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
QUICK = (("mrf", 0.0), ("cos", 0.0), ("gan_g", 0.0), ("gan_d", 0.0), ("r1_gamma", 0.0))


@pytest.fixture(scope="module")
def data64(cap12: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "cap12-64"
    prepare(PrepareConfig(video=cap12, out=out, size=64, max_frames=60))
    return out


def _generator(run_dir: Path, which: str = "ema") -> SelfieAvatarGenerator:
    loaded = ckpt.load(ckpt.latest(run_dir))  # type: ignore[arg-type]
    preset = Preset.from_dict(loaded.meta["preset"])
    generator = SelfieAvatarGenerator(preset.network, loaded.meta["num_frames"])
    generator.load_state_dict(loaded.tensors[which])
    return generator


def test_tiny_learns_from_a_real_clip(data64: Path, tmp_path: Path) -> None:
    """Every loss on: the losses fall, and held-out PSNR beats the untrained network and the
    mean-colour image by a clear margin. (The mean training *frame* is a much stronger baseline
    on this static-camera clip, ~30 dB at 64 px; a short tiny run does not reach it.)"""
    out = tmp_path / "run"
    steps = 200
    run(TrainOptions(data=data64, out=out, preset="tiny", steps=steps, sample_every=100, checkpoint_every=100))
    rows = [json.loads(line) for line in (out / "logs" / "scalars.jsonl").read_text().splitlines()]
    assert len(rows) == steps and {"l1", "mask", "mrf", "cos", "gan", "d"} <= set(rows[0])
    for term in ("l1", "mask"):
        first = sum(r[term] for r in rows[:20]) / 20
        last = sum(r[term] for r in rows[-20:]) / 20
        assert last < 0.7 * first, (term, first, last)
    train, test = FrameSet(data64, "train", 64), FrameSet(data64, "test", 64)
    colour = train.image.float().mean(dim=(0, 2, 3)).div(255).view(1, 3, 1, 1).expand(len(test), 3, 64, 64)
    colour_psnr = psnr(colour, test.image.float() / 255)
    torch.manual_seed(0)
    untrained = heldout_psnr(SelfieAvatarGenerator(Preset.from_dict(_preset(out)).network, len(train)), test)
    trained = heldout_psnr(_generator(out, "generator"), test)
    assert trained > colour_psnr + 2.0 and trained > untrained + 8.0, (trained, colour_psnr, untrained)
    assert (out / "samples" / f"step-{steps:07d}.png").exists()
    assert json.loads((out / "options.json").read_text())["preset"]["name"] == "tiny"


def _preset(run_dir: Path) -> dict[str, object]:
    return json.loads((run_dir / "options.json").read_text())["preset"]  # type: ignore[no-any-return]


def _assert_same_weights(a_run: Path, b_run: Path, atol: float, owners: tuple[str, ...]) -> None:
    """The newest checkpoints of two runs hold the same tensors for `owners` (modules and the
    optimizers' moments: "opt.g", "opt.d")."""
    a = ckpt.load(ckpt.latest(a_run)).tensors  # type: ignore[arg-type]
    b = ckpt.load(ckpt.latest(b_run)).tensors  # type: ignore[arg-type]
    for owner in owners:
        assert a[owner] and set(a[owner]) == set(b[owner]), owner
        for key, value in a[owner].items():
            torch.testing.assert_close(b[owner][key], value, rtol=0, atol=atol, msg=f"{owner}/{key}")


def test_resume_continues_the_same_schedule(data64: Path, tmp_path: Path) -> None:
    """With the GAN and R1 on (R1 every 2 steps, so on both sides of the split), a run resumed
    at step 3 ends with the weights and optimizer moments of one that never stopped."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    gan = (("mrf", 0.0), ("cos", 0.0), ("r1_interval", 2.0))
    options = {"data": data64, "preset": "tiny", "checkpoint_every": 3, "sample_every": 100, "losses": gan}
    run(TrainOptions(out=straight, steps=6, **options))  # type: ignore[arg-type]
    run(TrainOptions(out=split, steps=3, **options))  # type: ignore[arg-type]
    with pytest.raises(TrainError, match="--resume"):
        run(TrainOptions(out=split, steps=6, **options))  # type: ignore[arg-type]
    run(TrainOptions(out=split, steps=6, resume=True, **options))  # type: ignore[arg-type]
    rows = [json.loads(line) for line in (straight / "logs" / "scalars.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "r1" in r] == [1, 3, 5] and all("d" in r for r in rows)
    _assert_same_weights(straight, split, 1e-6, ("generator", "discriminator", "ema", "opt.g", "opt.d"))


def test_sigkill_then_resume(data64: Path, tmp_path: Path) -> None:
    """A training process killed with SIGKILL resumes from its last checkpoint and ends where a
    run that was never interrupted ends."""
    out, straight = tmp_path / "run", tmp_path / "straight"
    steps = 24
    command = [sys.executable, "-m", "avatarcam_cli", "train", str(data64), "-o", str(out), "--preset", "tiny"]
    command += ["--steps", str(steps), "--checkpoint-every", "2", "--sample-every", "100"]
    command += [arg for name, value in QUICK for arg in ("--loss", f"{name}={value}")]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same float sums as in here
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while ckpt.latest(out) is None or ckpt.load(ckpt.latest(out)).step < 4:  # type: ignore[arg-type]
            assert proc.poll() is None, "training exited before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = ckpt.load(ckpt.latest(out)).step  # type: ignore[arg-type]
    assert killed_at < steps
    options = {"data": data64, "preset": "tiny", "steps": steps, "checkpoint_every": 2, "losses": QUICK}
    summary = run(TrainOptions(out=out, resume=True, **options))  # type: ignore[arg-type]
    assert summary["step"] == steps and summary["steps_run"] == steps - killed_at
    run(TrainOptions(out=straight, **options))  # type: ignore[arg-type]
    _assert_same_weights(straight, out, 1e-5, ("generator", "ema", "opt.g"))  # the GAN is off: D never trains


def test_restore_brings_back_every_module_and_optimizer(data64: Path, tmp_path: Path) -> None:
    """A resumed trainer holds exactly the checkpoint's state, whatever it was built with: every
    module and both optimizers. (The EMA needs this check: in a run of a few steps its ramp-up
    makes it track the generator so closely that an EMA left unrestored still ends within the
    resume tests' tolerance.)"""
    from models.training.train import Trainer

    first = tmp_path / "first"
    options = TrainOptions(
        data=data64, out=first, preset="tiny", steps=2, checkpoint_every=2, sample_every=100, losses=(("mrf", 0.0),)
    )
    run(options)
    saved = ckpt.latest(first)
    assert saved is not None
    preset = options.resolved_preset()
    frames = FrameSet(data64, "train", preset.network.image_size, None)
    trainer = Trainer.build(preset, frames, torch.device("cpu"), seed=7, rank=0, world=1)  # other weights
    trainer.restore(saved)
    want, got = ckpt.load(saved), ckpt.load(trainer.save(tmp_path / "again", {}))
    assert got.step == want.step == 2 and got.meta["optimizers"] == want.meta["optimizers"]
    assert set(got.tensors) == set(want.tensors) == {"generator", "ema", "discriminator", "opt.g", "opt.d"}
    for owner, tensors in want.tensors.items():
        assert set(got.tensors[owner]) == set(tensors), owner
        for key, value in tensors.items():
            assert torch.equal(got.tensors[owner][key], value), (owner, key)


def test_ddp_on_two_gloo_processes(data64: Path, tmp_path: Path) -> None:
    """Two gloo ranks on half batches: the run completes with rank 0 alone writing, the ranks end
    with identical weights, their averaged gradients (G's by DDP, D's by hand, with the GAN and
    lazy R1 on) are those of one process on the whole batch, and so are the weights they reach."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = ["-m", "tests.train_ddp_worker", str(data64), "--steps", "3"]
    ranks, single = tmp_path / "ranks", tmp_path / "single"
    distributed = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *worker]
    for command in ([*distributed, str(ranks), "--batch", "1"], [sys.executable, *worker, str(single), "--batch", "2"]):
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    assert ckpt.load(ckpt.latest(ranks / "run")).step == 3  # type: ignore[arg-type]
    assert len((ranks / "run" / "logs" / "scalars.jsonl").read_text().splitlines()) == 3  # rank 0 alone writes
    rank0, rank1 = load_file(str(ranks / "rank-0.safetensors")), load_file(str(ranks / "rank-1.safetensors"))
    whole = load_file(str(single / "rank-0.safetensors"))
    assert set(rank0) == set(rank1) == set(whole)
    for key, value in rank0.items():
        torch.testing.assert_close(rank1[key], value, rtol=0, atol=0, msg=f"the ranks disagree on {key}")
    # The first step's gradients differ from the whole batch's by summation order only: measured,
    # the largest difference is 1.6e-3 (G, before clipping) and 1.3e-6 (D) of the largest
    # gradient. Ranks that sum instead of averaging are off by 100 %, and Adam, blind to a
    # gradient's scale, then reaches the same weights: only the gradients show it.
    for owner, tolerance in (("generator", 1e-2), ("discriminator", 1e-4)):
        keys = [k for k in whole if k.startswith(f"grad.{owner}/")]
        assert keys, f"no {owner} gradients recorded"
        expected = torch.cat([whole[k].flatten() for k in keys])
        averaged = torch.cat([rank0[k].flatten() for k in keys])
        error = float((averaged - expected).abs().max() / expected.abs().max())
        assert error < tolerance, (owner, error)
        # After three Adam steps (about lr * sign(g) at first) the last-bit differences have
        # become full steps for near-zero gradients: compare elementwise, allowing some.
        # Not the EMA: its decay counts each rank's own batch.
        keys = [k for k in rank0 if k.startswith(f"{owner}/")]
        diff = torch.cat([(whole[k] - rank0[k]).abs().flatten() for k in keys])
        # Measured: 3.5 % (G) and 0.4 % (D) of the elements past 1e-4, the largest 4.6e-3.
        past = float((diff > 1e-4).float().mean())
        assert past < 0.1 and diff.max() < 1e-2, (owner, past, diff.max())


def test_checkpoint_rejects_unknown_versions(data64: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(TrainOptions(data=data64, out=out, preset="tiny", steps=1, losses=QUICK))
    latest = ckpt.latest(out)
    assert latest is not None and not list((out / "checkpoints").glob(".partial-*"))
    meta = json.loads((latest / "meta.json").read_text())
    meta["format_version"] = 99
    (latest / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ckpt.CheckpointError, match="format 99"):
        ckpt.load(latest)


def test_avatar_round_trip(data64: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(TrainOptions(data=data64, out=out, preset="tiny", steps=2, losses=QUICK))
    path = export(out, data64, tmp_path / "me.avatar", subject="Test Person", consent="I agree to this test.")
    header = read_header(path)
    identity = json.loads(header["identity"])
    assert identity["subject"] == "Test Person" and identity["consent"] == "I agree to this test."
    assert identity["steps"] == 2 and len(identity["source_sha256"]) == 64
    avatar = load_avatar(path)
    reference = _generator(out, "ema").eval()
    frames = FrameSet(data64, "test", 64, limit=2)
    batch = frames.batch(torch.arange(2), avatar.network.canvas_size, torch.device("cpu"), random_window=False)
    with torch.no_grad():
        expected = reference(batch.uv, batch.shaded, None, batch.window, noise_mode="const").image
        got = avatar.generator(batch.uv, batch.shaded, None, batch.window, noise_mode="const").image
    torch.testing.assert_close(got, expected)
    assert avatar.expression.neutral.shape == (478, 3) and avatar.crop.size == 64

    with pytest.raises(AvatarError, match="consent"):
        export(out, data64, tmp_path / "x.avatar", subject="Someone", consent="  ")
    stranger = tmp_path / "other.avatar"
    save_file({"x": torch.zeros(1)}, str(stranger), metadata={"format": "something-else"})
    with pytest.raises(AvatarError, match="not an avatarcam avatar"):
        load_avatar(stranger)
    garbage = tmp_path / "garbage.avatar"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(AvatarError, match="not an avatar file"):
        load_avatar(garbage)


def test_heldout_lpips_at_each_checkpoint(data64: Path, tmp_path: Path) -> None:
    """--heldout-frames: one line per checkpoint, the avatar's LPIPS on test frames beside the
    mean training frame's on the same frames (a constant), and the trained EMA is what is measured."""
    from models.training.heldout import LOG, HeldOut

    out = tmp_path / "run"
    run(TrainOptions(data64, out, preset="tiny", steps=6, checkpoint_every=3, losses=QUICK, heldout_frames=4))
    rows = [json.loads(line) for line in (out / LOG).read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6] and all(r["frames"] == 4 for r in rows)
    assert rows[0]["baseline_lpips"] == rows[1]["baseline_lpips"] > 0
    assert all(0 < r["lpips"] < 1 for r in rows) and rows[0]["seconds"] < rows[1]["seconds"]
    probe = HeldOut(data64, FrameSet(data64, "train", 64), 4, torch.device("cpu"))
    assert probe.measure(_generator(out)) == pytest.approx(rows[1]["lpips"], abs=1e-4)
