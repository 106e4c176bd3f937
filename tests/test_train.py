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
from safetensors.torch import save_file

from models import checkpoint as ckpt
from models.avatar import AvatarError, export, load_avatar, read_header
from models.data import FrameSet
from models.networks import SelfieAvatarGenerator
from models.presets import Preset
from models.train import TrainError, TrainOptions, heldout_psnr, psnr, run
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


def test_resume_continues_the_same_schedule(data64: Path, tmp_path: Path) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    options = {"data": data64, "preset": "tiny", "checkpoint_every": 3, "sample_every": 100, "losses": QUICK}
    run(TrainOptions(out=straight, steps=6, **options))  # type: ignore[arg-type]
    run(TrainOptions(out=split, steps=3, **options))  # type: ignore[arg-type]
    with pytest.raises(TrainError, match="--resume"):
        run(TrainOptions(out=split, steps=6, **options))  # type: ignore[arg-type]
    run(TrainOptions(out=split, steps=6, resume=True, **options))  # type: ignore[arg-type]
    a = ckpt.load(ckpt.latest(straight)).tensors  # type: ignore[arg-type]
    b = ckpt.load(ckpt.latest(split)).tensors  # type: ignore[arg-type]
    for owner in ("generator", "discriminator", "ema"):
        for key, value in a[owner].items():
            torch.testing.assert_close(b[owner][key], value, rtol=0, atol=1e-6, msg=f"{owner}/{key}")


def test_sigkill_then_resume(data64: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "avatarcam_cli", "train", str(data64), "-o", str(out), "--preset", "tiny"]
    command += ["--steps", "40", "--checkpoint-every", "2", "--sample-every", "100"]
    command += [arg for name, value in QUICK for arg in ("--loss", f"{name}={value}")]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while ckpt.latest(out) is None or ckpt.load(ckpt.latest(out)).step < 4:  # type: ignore[arg-type]
            assert proc.poll() is None, "training exited before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = ckpt.load(ckpt.latest(out)).step  # type: ignore[arg-type]
    assert killed_at < 40
    summary = run(
        TrainOptions(data=data64, out=out, preset="tiny", steps=40, resume=True, checkpoint_every=2, losses=QUICK)
    )
    assert summary["step"] == 40 and summary["steps_run"] == 40 - killed_at


def test_ddp_on_two_gloo_processes(data64: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "avatarcam_cli", "train", str(data64), "-o", str(out), "--preset", "tiny", "--device", "cpu"]
    command += ["--steps", "4", "--checkpoint-every", "4", "--sample-every", "100"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = ckpt.load(ckpt.latest(out))  # type: ignore[arg-type]
    assert loaded.step == 4
    rows = (out / "logs" / "scalars.jsonl").read_text().splitlines()
    assert len(rows) == 4  # rank 0 alone writes


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
