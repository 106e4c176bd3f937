"""A training run that saves its own rank's weights, for tests/test_train.py's DDP test.

Run under `torch.distributed.run` (each rank writes OUT/rank-R.safetensors) or alone (writes
OUT/rank-0.safetensors), so a test can check that the ranks agree and that two ranks on half
batches equal one process on the whole batch. Besides the weights it saves the first step's
gradients ("grad.generator/..." before clipping, "grad.discriminator/..." as D's optimizer gets
them): the averaged gradients themselves, before Adam turns float noise into sign-sized steps. For that
comparison the run is made batch-separable: constant noise inputs, centred windows and
minibatch-std groups of one (otherwise each process draws its own noise and D's std layer mixes
samples across the batch).

    python -m tests.train_ddp_worker DATA --steps 3 OUT --batch 2
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from models.networks.selfieavatar import SelfieAvatarGenerator
from models.training import train

SEPARABLE = (("train.sliding_window", "false"), ("network.mbstd_group", "1"))
LOSSES = (("mrf", 0.0), ("cos", 0.0), ("r1_interval", 2.0))  # GAN and R1 on; R1 on steps 0 and 2


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()

    forward = SelfieAvatarGenerator.forward

    def constant_noise(self: SelfieAvatarGenerator, *a: Any, **k: Any) -> Any:
        k["noise_mode"] = "const"
        return forward(self, *a, **k)

    SelfieAvatarGenerator.forward = constant_noise  # type: ignore[method-assign]
    built: list[train.Trainer] = []
    build = train.Trainer.build
    first_grads: dict[str, torch.Tensor] = {}

    def record_once(owner: str, module: nn.Module) -> None:
        if not any(key.startswith(f"grad.{owner}/") for key in first_grads):
            for name, p in module.named_parameters():
                if p.grad is not None:
                    first_grads[f"grad.{owner}/{name}"] = p.grad.detach().clone()

    def keep(*a: Any, **k: Any) -> train.Trainer:
        trainer = build(*a, **k)
        d_step = trainer.opt_d.step

        def d_recorded(*a: Any, **k: Any) -> Any:
            record_once("discriminator", trainer.discriminator)
            return d_step(*a, **k)

        trainer.opt_d.step = d_recorded  # type: ignore[method-assign]
        built.append(trainer)
        return trainer

    clip = nn.utils.clip_grad_norm_

    def g_recorded(parameters: Any, *a: Any, **k: Any) -> Any:
        record_once("generator", built[0].generator)  # before clipping, which could hide a wrong scale
        return clip(parameters, *a, **k)

    nn.utils.clip_grad_norm_ = g_recorded
    train.Trainer.build = keep  # type: ignore[method-assign]
    options = train.TrainOptions(
        data=args.data,
        out=args.out / "run",
        preset="tiny",
        steps=args.steps,
        batch=args.batch,
        device="cpu",
        checkpoint_every=1000,
        sample_every=1000,
        losses=LOSSES,
        overrides=SEPARABLE,
    )
    train.run(options, log=lambda _: None)
    trainer = built[0]
    tensors = {
        f"{owner}/{key}": value.detach().contiguous()
        for owner, module in trainer.modules().items()
        for key, value in module.state_dict().items()
    }
    tensors.update({key: value.contiguous() for key, value in first_grads.items()})
    save_file(tensors, str(args.out / f"rank-{os.environ.get('RANK', '0')}.safetensors"))


if __name__ == "__main__":
    main()
