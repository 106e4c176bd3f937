"""`avatarcam train`: fit a SelfieAvatar generator to a prepared dataset.

One step = one discriminator update (non-saturating loss, lazy R1) and one generator update
(L1 + L_mask + ID-MRF + L_cos + non-saturating GAN, SelfieAvatar Eq. 4-7), then an EMA update of
the generator copy used for samples, evaluation and export. Batches are drawn by a generator
seeded from (seed, step), and checkpoints hold every weight and optimizer moment, so a run
killed at any point resumes with `--resume` and continues the same schedule.

Distributed: launched under `torchrun`, each process takes a disjoint slice of every batch's
frames and gradients are averaged by DistributedDataParallel; rank 0 alone writes.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from models import checkpoint as ckpt
from models.data import Batch, FrameSet
from models.networks import Discriminator, SelfieAvatarGenerator
from models.objective import LossTerms, TrainingLosses
from models.presets import Preset, get_preset


@dataclass(frozen=True)
class TrainOptions:
    """Options of `avatarcam train`.

    Attributes:
        data: a prepared dataset folder.
        out: the run folder (checkpoints, options.json, logs, samples).
        preset: a preset name (tiny, cpu-256, 256, 512).
        steps: total steps of the run (default: the preset's).
        batch: frames per step (default: the preset's).
        device: "cpu", "cuda" or "auto".
        seed: seeds weights, batch order and noise.
        resume: continue from the run's newest checkpoint.
        checkpoint_every: steps between checkpoints.
        sample_every: steps between sample grids and TensorBoard images.
        max_frames: use only the first N training frames (quick runs).
        losses: override loss weights, e.g. {"cos": 0} for an ablation.
    """

    data: Path
    out: Path
    preset: str = "cpu-256"
    steps: int | None = None
    batch: int | None = None
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    checkpoint_every: int = 500
    sample_every: int = 250
    max_frames: int | None = None
    losses: tuple[tuple[str, float], ...] = ()

    def resolved_preset(self) -> Preset:
        preset = get_preset(self.preset)
        train = preset.train
        if self.steps is not None:
            train = replace(train, steps=self.steps)
        if self.batch is not None:
            train = replace(train, batch_size=self.batch)
        known = {f for f in preset.loss.__dataclass_fields__ if not f.endswith(("layers", "positions"))}
        unknown = sorted(set(dict(self.losses)) - known)
        if unknown:
            raise TrainError(f"unknown loss {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        overrides: dict[str, Any] = {
            k: int(v) if isinstance(getattr(preset.loss, k), int) else v for k, v in self.losses
        }
        loss = replace(preset.loss, **overrides)
        return replace(preset, train=train, loss=loss)


class TrainError(RuntimeError):
    """Training cannot start; the message says what to do."""


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA device is visible; use --device cpu")
    return torch.device(name)


@dataclass
class Trainer:
    """The networks, optimizers and schedule of one run."""

    preset: Preset
    frames: FrameSet
    device: torch.device
    generator: SelfieAvatarGenerator
    ema: SelfieAvatarGenerator
    discriminator: Discriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    losses: TrainingLosses
    seed: int
    step: int = 0
    rank: int = 0
    world: int = 1

    @staticmethod
    def build(preset: Preset, frames: FrameSet, device: torch.device, seed: int, rank: int, world: int) -> Trainer:
        torch.manual_seed(seed)
        net = preset.network
        generator = SelfieAvatarGenerator(net, num_frames=len(frames)).to(device)
        discriminator = Discriminator(net).to(device)
        ema = copy.deepcopy(generator).eval().requires_grad_(False)
        t = preset.train
        r1 = preset.loss.r1_interval
        d_ratio = r1 / (r1 + 1) if preset.loss.r1_gamma > 0 else 1.0  # lazy-regularization correction
        opt_g = torch.optim.Adam(generator.parameters(), lr=t.lr_g, betas=t.adam_betas)
        opt_d = torch.optim.Adam(
            discriminator.parameters(), lr=t.lr_d * d_ratio, betas=tuple(b**d_ratio for b in t.adam_betas)
        )
        losses = TrainingLosses(preset.loss, device)
        return Trainer(
            preset, frames, device, generator, ema, discriminator, opt_g, opt_d, losses, seed, 0, rank, world
        )

    # ------------------------------------------------------------------ state

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "ema": self.ema, "discriminator": self.discriminator}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"g": self.opt_g, "d": self.opt_d}

    def save(self, run: Path, extra: dict[str, Any]) -> Path:
        meta = {"preset": self.preset.to_dict(), "num_frames": len(self.frames), **extra}
        return ckpt.save(run, self.step, self.modules(), self.optimizers(), meta)

    def restore(self, path: Path) -> None:
        loaded = ckpt.load(path)
        ckpt.restore(loaded, self.modules(), self.optimizers())
        self.step = loaded.step
        if self.step >= self.preset.train.freeze_static_after:
            self.generator.freeze_static()

    # ------------------------------------------------------------------ one step

    def _batch(self) -> Batch:
        """This step's frames: the same on every rank and after any resume; each rank takes its slice."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
        n = self.preset.train.batch_size
        picks = torch.randint(0, len(self.frames), (n * self.world,), generator=g)[self.rank :: self.world]
        canvas = self.preset.network.canvas_size
        return self.frames.batch(picks, canvas, self.device, g, random_window=self.preset.train.sliding_window)

    def _discriminator_step(self, batch: Batch, real: Tensor) -> dict[str, float]:
        """Non-saturating D loss, plus R1 every `r1_interval` steps (lazy regularization).

        D takes two forward passes on R1 steps, which DistributedDataParallel's one forward,
        one backward contract does not allow; across processes its gradients are averaged here.
        """
        d_module = self.discriminator
        loss_cfg = self.preset.loss
        logs: dict[str, float] = {}
        self.discriminator.requires_grad_(True)
        with torch.no_grad():
            fake = self.generator(batch.uv, batch.shaded, batch.frame, batch.window).image
        d_loss = self.losses.discriminator(d_module(real, batch.shaded), d_module(fake, batch.shaded))
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        if loss_cfg.r1_gamma > 0 and self.step % loss_cfg.r1_interval == 0:
            real_r1 = real.detach().requires_grad_(True)
            penalty = self.losses.r1(d_module(real_r1, batch.shaded), real_r1) * loss_cfg.r1_interval
            penalty.backward()
            logs["r1"] = penalty.item()
        if self.world > 1:
            for p in d_module.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world
        self.opt_d.step()
        logs["d"] = d_loss.item()

        return logs

    def train_step(self, g_module: nn.Module) -> dict[str, float]:
        """One D and one G update. `g_module` is the generator, or its DDP wrapper."""
        torch.manual_seed(self.seed * 1_000_003 + self.step * 101 + self.rank)  # noise inputs: resumable
        batch = self._batch()
        real = batch.image * 2 - 1
        loss_cfg = self.preset.loss
        logs: dict[str, float] = {}

        if loss_cfg.gan_g > 0 or loss_cfg.gan_d > 0:
            logs.update(self._discriminator_step(batch, real))

        # Generator.
        self.discriminator.requires_grad_(False)
        out = g_module(batch.uv, batch.shaded, batch.frame, batch.window)
        terms: LossTerms = self.losses.generator(out, batch, self.discriminator(out.image, batch.shaded))
        self.opt_g.zero_grad(set_to_none=True)
        terms.total.backward()
        nn.utils.clip_grad_norm_(self.generator.parameters(), self.preset.train.grad_clip)
        self.opt_g.step()
        logs.update({k: v.item() for k, v in terms.parts.items()})
        logs["g"] = terms.total.item()

        self._update_ema()
        self.step += 1
        if self.step == self.preset.train.freeze_static_after:
            self.generator.freeze_static()
        return logs

    @torch.no_grad()
    def _update_ema(self) -> None:
        beta = self.preset.train.ema_beta(self.step)
        for p_ema, p in zip(self.ema.parameters(), self.generator.parameters(), strict=True):
            p_ema.lerp_(p, 1 - beta)
        for b_ema, b in zip(self.ema.buffers(), self.generator.buffers(), strict=True):
            b_ema.copy_(b)

    # ------------------------------------------------------------------ outputs

    @torch.no_grad()
    def sample_grid(self, count: int = 4) -> np.ndarray:
        """Rows of real | generated (EMA) | predicted mask | texture render | UV render, as uint8 HWC."""
        picks = torch.linspace(0, len(self.frames) - 1, min(count, len(self.frames))).round().long()
        batch = self.frames.batch(picks, self.preset.network.canvas_size, self.device, random_window=False)
        out = self.ema(batch.uv, batch.shaded, batch.frame, batch.window, noise_mode="const")
        fake = (out.image.clamp(-1, 1) + 1) / 2
        mask = out.mask.expand(-1, 3, -1, -1)
        tiles = [batch.image, fake, mask, batch.shaded, batch.uv]
        rows = torch.cat([torch.cat(list(t), dim=2) for t in zip(*tiles, strict=True)], dim=1)  # [3, H*n, W*5]
        return (rows.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def _distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun; (0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def run(options: TrainOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or resume) and return a summary."""
    import cv2

    rank, world = _distributed()
    device = _device(options.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    preset = options.resolved_preset()
    frames = FrameSet(options.data, "train", preset.network.image_size, options.max_frames)
    run_dir = options.out
    existing = ckpt.latest(run_dir)
    if existing is not None and not options.resume:
        raise TrainError(f"{run_dir} already has checkpoints; pass --resume to continue it, or choose another -o")

    trainer = Trainer.build(preset, frames, device, options.seed, rank, world)
    if options.resume and existing is not None:
        trainer.restore(existing)
        log(f"resumed from {existing.name}")
    g_module: nn.Module = trainer.generator
    if world > 1:
        # Unused parameters: G_f and G_b stop receiving gradients once frozen.
        g_module = nn.parallel.DistributedDataParallel(trainer.generator, find_unused_parameters=True)

    writer = None
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "samples").mkdir(exist_ok=True)
        resolved = {"options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}}
        resolved["preset"] = preset.to_dict()
        (run_dir / "options.json").write_text(json.dumps(resolved, indent=2, default=str) + "\n")
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "logs"))
        except ImportError:
            log("tensorboard is not installed: scalars go to logs/scalars.jsonl only (pip install tensorboard)")

    total = preset.train.steps
    began, start_step = time.perf_counter(), trainer.step
    bar = tqdm(total=total, initial=trainer.step, desc="train", unit="step", disable=rank != 0, dynamic_ncols=True)
    scalars = (run_dir / "logs" / "scalars.jsonl") if rank == 0 else None
    if scalars is not None:
        scalars.parent.mkdir(parents=True, exist_ok=True)
    logs: dict[str, float] = {}
    while trainer.step < total:
        logs = trainer.train_step(g_module)
        if not all(math.isfinite(v) for v in logs.values()):
            raise TrainError(f"step {trainer.step}: a loss is not finite ({logs}); lower the learning rate or resume")
        bar.update()
        if rank != 0:
            continue
        bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items() if k in ("g", "d", "l1", "mask")})
        with scalars.open("a") as f:  # type: ignore[union-attr]
            f.write(json.dumps({"step": trainer.step, **logs}) + "\n")
        if writer is not None:
            for key, value in logs.items():
                writer.add_scalar(f"loss/{key}", value, trainer.step)
        if trainer.step % options.sample_every == 0 or trainer.step == total:
            grid = trainer.sample_grid()
            cv2.imwrite(str(run_dir / "samples" / f"step-{trainer.step:07d}.png"), grid[..., ::-1])
            if writer is not None:
                writer.add_image("samples", grid, trainer.step, dataformats="HWC")
        if trainer.step % options.checkpoint_every == 0 or trainer.step == total:
            trainer.save(run_dir, {"options": json.loads(json.dumps(asdict(options), default=str))})
    bar.close()
    if writer is not None:
        writer.close()
    if world > 1:
        dist.barrier()
    seconds = time.perf_counter() - began
    done = trainer.step - start_step
    return {
        "step": trainer.step,
        "steps_run": done,
        "seconds": seconds,
        "seconds_per_step": seconds / max(done, 1),
        "last_losses": logs,
        "checkpoint": str(ckpt.latest(run_dir)) if rank == 0 else None,
    }


def psnr(a: Tensor, b: Tensor) -> float:
    """PSNR (dB) between image batches in [0, 1]."""
    mse = F.mse_loss(a.clamp(0, 1), b.clamp(0, 1)).item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


@torch.no_grad()
def heldout_psnr(generator: SelfieAvatarGenerator, frames: FrameSet, batch: int = 8) -> float:
    """PSNR of the generator on `frames` (unseen: the mean temporal code, centred window)."""
    generator.eval()
    device = next(generator.parameters()).device
    canvas = generator.config.canvas_size
    fakes, reals = [], []
    for start in range(0, len(frames), batch):
        picks = torch.arange(start, min(start + batch, len(frames)))
        b = frames.batch(picks, canvas, device, random_window=False)
        out = generator(b.uv, b.shaded, None, b.window, noise_mode="const")
        fakes.append(((out.image + 1) / 2).cpu())
        reals.append(b.image.cpu())
    return psnr(torch.cat(fakes), torch.cat(reals))
