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

from models.networks.presets import Preset, get_preset
from models.networks.selfieavatar import Discriminator, SelfieAvatarGenerator
from models.pretrained.cache import AssetMissing
from models.training import checkpoint as ckpt
from models.training.data import Batch, DatasetError, FrameSet, cut, detail_boxes
from models.training.heldout import HeldOut
from models.training.objective import LossTerms, TrainingLosses


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
        minutes: a wall-clock budget; the schedule (learning-rate decay, freezing G_f / G_b)
            follows the fraction of it used, and the run stops once it is spent. Overrides steps.
        overrides: preset fields as (section.field, JSON value), e.g. ("network.rgb_skip", "false").
        heldout_frames: at each checkpoint, LPIPS of the EMA generator and of the mean training
            frame on this many test frames, into logs/heldout.jsonl (0: off; `heldout.HeldOut`).
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
    minutes: float | None = None
    overrides: tuple[tuple[str, str], ...] = ()
    heldout_frames: int = 0

    def resolved_preset(self) -> Preset:
        preset = override_preset(get_preset(self.preset), self.overrides)
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


DIRECT_BETAS = (0.9, 0.99)
"""Adam betas of the directly optimised pyramids (the networks keep the preset's, β1 = 0)."""


class TrainError(RuntimeError):
    """Training cannot start; the message says what to do."""


def override_preset(preset: Preset, overrides: tuple[tuple[str, str], ...]) -> Preset:
    """`preset` with ("network.rgb_skip", "false")-style overrides, validated like a preset file."""
    if not overrides:
        return preset
    data = preset.to_dict()
    for key, raw in overrides:
        section, _, name = key.partition(".")
        if section not in ("network", "train", "loss") or name not in data[section]:
            raise TrainError(f"--set {key}: not a preset field; see `avatarcam train --dry-run` for the fields")
        try:
            data[section][name] = json.loads(raw)
        except json.JSONDecodeError:
            raise TrainError(f"--set {key}={raw}: the value must be JSON (true, 0.5, 128, ...)") from None
    try:
        return Preset.from_dict(data)
    except ValueError as e:
        raise TrainError(f"--set: {e}") from None


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
    progress: float = 0.0
    """Fraction of the run done, in [0, 1]: of the steps, or of the time budget."""

    @staticmethod
    def build(preset: Preset, frames: FrameSet, device: torch.device, seed: int, rank: int, world: int) -> Trainer:
        torch.manual_seed(seed)
        net = preset.network
        generator = SelfieAvatarGenerator(net, num_frames=len(frames))
        if preset.train.photo_texture:
            # The canvas starts as the mean training frame rather than the person-free plate: with
            # rgb_skip it is the image wherever the face mesh is not, and the mean frame already
            # holds the average hair, neck and shoulders there.
            generator.seed_static(
                frames.photo_texture(), frames.image.sum(dim=0, dtype=torch.float32) / (255 * len(frames))
            )
        if net.plate:
            generator.seed_plate(frames.background.float() / 255)
        generator = generator.to(device)
        discriminator = Discriminator(net, preset.train.detail_crop).to(device)
        ema = copy.deepcopy(generator).eval().requires_grad_(False)
        t = preset.train
        r1 = preset.loss.r1_interval
        d_ratio = r1 / (r1 + 1) if preset.loss.r1_gamma > 0 else 1.0  # lazy-regularization correction
        direct = {id(p) for m in generator.direct_modules() for p in m.parameters()}
        groups: list[dict[str, Any]] = [{"params": [p for p in generator.parameters() if id(p) not in direct]}]
        if direct:
            # The direct pyramids are images, not a GAN generator: with β1 = 0 each texel steps by
            # the learning rate in the sign of every noisy gradient (ID-MRF, GAN) and random-walks
            # into a crumpled pattern; momentum averages that noise out.
            groups.append(
                {"params": [p for m in generator.direct_modules() for p in m.parameters()], "betas": DIRECT_BETAS}
            )
        opt_g = torch.optim.Adam(groups, lr=t.lr_g, betas=t.adam_betas)
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
        meta = {"preset": self.preset.to_dict(), "num_frames": len(self.frames), "progress": self.progress, **extra}
        return ckpt.save(run, self.step, self.modules(), self.optimizers(), meta)

    def restore(self, path: Path) -> None:
        loaded = ckpt.load(path)
        ckpt.restore(loaded, self.modules(), self.optimizers())
        self.step = loaded.step
        self.progress = float(loaded.meta.get("progress", 0.0))

    def should_freeze(self) -> bool:
        """G_f / G_b freeze at freeze_static_fraction of the run when set, else at freeze_static_after steps."""
        t = self.preset.train
        if t.freeze_static_fraction > 0:
            return self.progress >= t.freeze_static_fraction
        return self.step >= t.freeze_static_after

    def set_progress(self, progress: float) -> None:
        """Advance the schedule: learning rates and the freezing of G_f / G_b follow `progress`."""
        self.progress = min(max(progress, 0.0), 1.0)
        t = self.preset.train
        scale = t.lr_scale(self.progress)
        for opt, lr in ((self.opt_g, t.lr_g), (self.opt_d, t.lr_d * self._d_ratio())):
            for group in opt.param_groups:
                group["lr"] = lr * scale
        if not self.generator.static_frozen and self.should_freeze():
            self.generator.freeze_static()

    def _d_ratio(self) -> float:
        r1 = self.preset.loss.r1_interval
        return r1 / (r1 + 1) if self.preset.loss.r1_gamma > 0 else 1.0

    # ------------------------------------------------------------------ one step

    def _batch(self) -> Batch:
        """This step's frames: the same on every rank and after any resume; each rank takes its slice."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
        n = self.preset.train.batch_size
        picks = torch.randint(0, len(self.frames), (n * self.world,), generator=g)[self.rank :: self.world]
        canvas = self.preset.network.canvas_size
        return self.frames.batch(picks, canvas, self.device, g, random_window=self.preset.train.sliding_window)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.preset.train.bf16)

    def _boxes(self, batch: Batch) -> Tensor | None:
        """This step's detail crops (train.detail_crop): around each face, seeded by (seed, step)."""
        size = self.preset.train.detail_crop
        if size <= 0:
            return None
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step + 7_777_777)
        return detail_boxes(batch.uv[:, 2:3], size, g)

    @property
    def detail(self) -> float:
        """This step's weight multiplier of the detail losses (ID-MRF, GAN): the warm-up."""
        return self.preset.train.detail_scale(self.progress)

    def _gan_view(self, image: Tensor, mask: Tensor) -> Tensor:
        """What D sees of an image in [-1, 1]: all of it, or with train.person_gan the person only
        (the background set to 0, mid-grey)."""
        return image * mask if self.preset.train.person_gan else image

    def _crop(self, x: Tensor, boxes: Tensor | None) -> Tensor:
        return x if boxes is None else cut(x, boxes, self.preset.train.detail_crop)

    def _discriminator_step(self, batch: Batch, real: Tensor, boxes: Tensor | None) -> dict[str, float]:
        """Non-saturating D loss, plus R1 every `r1_interval` steps (lazy regularization).

        D takes two forward passes on R1 steps, which DistributedDataParallel's one forward,
        one backward contract does not allow; across processes its gradients are averaged here.
        With detail crops D judges full-resolution crops around the face, not whole frames.
        """
        d_module = self.discriminator
        loss_cfg = self.preset.loss
        logs: dict[str, float] = {}
        self.discriminator.requires_grad_(True)
        shaded, real = self._crop(batch.shaded, boxes), self._crop(self._gan_view(real, batch.person), boxes)
        with torch.no_grad(), self._autocast():
            out = self.generator(batch.uv, batch.shaded, batch.frame, batch.window)
            fake = self._crop(self._gan_view(out.image, out.mask), boxes)
        with self._autocast():
            d_loss = self.detail * self.losses.discriminator(d_module(real, shaded), d_module(fake.float(), shaded))
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.float().backward()
        if loss_cfg.r1_gamma > 0 and self.step % loss_cfg.r1_interval == 0:
            real_r1 = real.detach().requires_grad_(True)
            penalty = self.losses.r1(d_module(real_r1, shaded), real_r1) * loss_cfg.r1_interval
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
        boxes = self._boxes(batch)
        real = batch.image * 2 - 1
        loss_cfg = self.preset.loss
        logs: dict[str, float] = {}

        detail = self.detail
        gan = (loss_cfg.gan_g > 0 or loss_cfg.gan_d > 0) and detail > 0
        if gan:
            logs.update(self._discriminator_step(batch, real, boxes))

        # Generator.
        self.discriminator.requires_grad_(False)
        with self._autocast():
            out = g_module(batch.uv, batch.shaded, batch.frame, batch.window)
            fake_logits = (
                self.discriminator(
                    self._crop(self._gan_view(out.image, out.mask), boxes), self._crop(batch.shaded, boxes)
                )
                if gan
                else None
            )
            terms: LossTerms = self.losses.generator(
                out, batch, fake_logits, boxes, self.preset.train.detail_crop, detail
            )
        self.opt_g.zero_grad(set_to_none=True)
        terms.total.float().backward()
        nn.utils.clip_grad_norm_(self.generator.parameters(), self.preset.train.grad_clip)
        self.opt_g.step()
        logs.update({k: v.item() for k, v in terms.parts.items()})
        logs["g"] = terms.total.item()

        self._update_ema()
        self.step += 1
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


def budget_seconds(options: TrainOptions, resumed: Path | None) -> float | None:
    """The run's time budget in seconds: --minutes, or on --resume the budget it was started with."""
    if options.minutes is not None:
        if options.minutes <= 0:
            raise TrainError(f"--minutes must be > 0, got {options.minutes}")
        return options.minutes * 60
    if resumed is not None:
        minutes = json.loads((resumed / "meta.json").read_text()).get("options", {}).get("minutes")
        return float(minutes) * 60 if minutes else None
    return None


def _heldout(
    options: TrainOptions, frames: FrameSet, device: torch.device, log: Callable[[str], None]
) -> HeldOut | None:
    """The held-out LPIPS probe when asked for; None (with a line saying why) when the dataset has
    no test split or the LPIPS weights are not installed: training goes on without the curve."""
    if options.heldout_frames <= 0:
        return None
    try:
        return HeldOut(options.data, frames, options.heldout_frames, device)
    except (DatasetError, AssetMissing) as exc:
        log(f"no held-out LPIPS: {exc}")
        return None


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
    budget = budget_seconds(options, existing if options.resume else None)
    if budget is not None:
        options = replace(options, minutes=budget / 60)  # checkpoints keep the budget across resumes
    spent = float(trainer.progress * budget) if budget else 0.0  # seconds of the budget already used
    began, start_step = time.perf_counter(), trainer.step
    if budget:  # the bar counts seconds of the budget, so its ETA is the budget's end
        bar = tqdm(total=round(budget), initial=round(spent), desc="train", unit="s", disable=rank != 0)
    else:
        bar = tqdm(total=total, initial=trainer.step, desc="train", unit="step", disable=rank != 0)
    scalars = (run_dir / "logs" / "scalars.jsonl") if rank == 0 else None
    if scalars is not None:
        scalars.parent.mkdir(parents=True, exist_ok=True)
    logs: dict[str, float] = {}
    heldout = _heldout(options, frames, device, log) if rank == 0 else None

    def used() -> float:
        """Seconds of the budget spent, agreed by every rank (rank 0's clock)."""
        seconds = torch.tensor([spent + time.perf_counter() - began], dtype=torch.float64)
        if world > 1:
            dist.broadcast(seconds, 0)
        return float(seconds.item())

    trainer.set_progress(used() / budget if budget else trainer.step / total)
    while (trainer.progress < 1.0) if budget else (trainer.step < total):
        logs = trainer.train_step(g_module)
        if not all(math.isfinite(v) for v in logs.values()):
            raise TrainError(f"step {trainer.step}: a loss is not finite ({logs}); lower the learning rate or resume")
        trainer.set_progress(used() / budget if budget else trainer.step / total)
        finished = trainer.progress >= 1.0 if budget else trainer.step == total
        if budget:
            bar.update(min(round(trainer.progress * budget), round(budget)) - bar.n)
        else:
            bar.update()
        if rank != 0:
            continue
        bar.set_postfix({"step": trainer.step, **{k: f"{v:.3f}" for k, v in logs.items() if k in ("g", "d", "l1")}})
        with scalars.open("a") as f:  # type: ignore[union-attr]
            f.write(json.dumps({"step": trainer.step, "progress": round(trainer.progress, 5), **logs}) + "\n")
        if writer is not None:
            for key, value in logs.items():
                writer.add_scalar(f"loss/{key}", value, trainer.step)
        if trainer.step % options.sample_every == 0 or finished:
            grid = trainer.sample_grid()
            cv2.imwrite(str(run_dir / "samples" / f"step-{trainer.step:07d}.png"), grid[..., ::-1])
            if writer is not None:
                writer.add_image("samples", grid, trainer.step, dataformats="HWC")
        if trainer.step % options.checkpoint_every == 0 or finished:
            trainer.save(run_dir, {"options": json.loads(json.dumps(asdict(options), default=str))})
            if heldout is not None:
                heldout.record(run_dir, trainer.step, spent + time.perf_counter() - began, trainer.ema)
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
        "progress": trainer.progress,
        "budget_minutes": budget / 60 if budget else None,
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
