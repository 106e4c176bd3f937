"""Self-describing, atomic training checkpoints.

A checkpoint is a folder `RUN/checkpoints/step-NNNNNNN/` holding `weights.safetensors` (every
module's and optimizer's tensors, keys prefixed by owner) and `meta.json` (format version,
step, preset, options, non-tensor optimizer state). It is written into a temporary folder
and renamed into place, so a run killed at any moment leaves either the whole checkpoint or
none. Loading reads tensors with safetensors and JSON with json: no pickle, no code.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

FORMAT_VERSION = 1
KEEP = 3  # newest checkpoints kept per run


class CheckpointError(RuntimeError):
    """A checkpoint is missing, from an unknown format version, or inconsistent."""


@dataclass(frozen=True)
class Checkpoint:
    """What `load` returns: the raw tensors by owner and the metadata."""

    path: Path
    step: int
    meta: dict[str, Any]
    tensors: dict[str, dict[str, Tensor]]


def _optimizer_split(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Optimizer state as flat tensors plus a JSON-able skeleton."""
    state = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    skeleton: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, entry in state["state"].items():
        skeleton["state"][str(pid)] = {}
        for name, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"{pid}.{name}"] = value.detach().cpu().contiguous()
                skeleton["state"][str(pid)][name] = {"tensor": f"{pid}.{name}"}
            else:
                skeleton["state"][str(pid)][name] = {"value": value}
    return tensors, skeleton


def _optimizer_join(tensors: dict[str, Tensor], skeleton: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for pid, entry in skeleton["state"].items():
        state[int(pid)] = {
            name: tensors[spec["tensor"]] if "tensor" in spec else spec["value"] for name, spec in entry.items()
        }
    return {"param_groups": skeleton["param_groups"], "state": state}


def save(
    run: Path,
    step: int,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    meta: dict[str, Any],
) -> Path:
    """Write checkpoint `step` atomically and prune old ones; returns its folder."""
    folder = run / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:07d}"
    partial = folder / f".partial-{step:07d}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    flat: dict[str, Tensor] = {}
    skeletons: dict[str, Any] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            flat[f"{name}/{key}"] = value.detach().cpu().contiguous()
    for name, opt in optimizers.items():
        tensors, skeleton = _optimizer_split(opt)
        flat.update({f"opt.{name}/{k}": v for k, v in tensors.items()})
        skeletons[name] = skeleton
    save_file(flat, str(partial / "weights.safetensors"))
    payload = {"format_version": FORMAT_VERSION, "step": step, "optimizers": skeletons, **meta}
    (partial / "meta.json").write_text(json.dumps(payload, indent=1, default=str))
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)
    for old in sorted(folder.glob("step-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(run: Path) -> Path | None:
    """The newest complete checkpoint of a run, if any."""
    found = sorted((run / "checkpoints").glob("step-*"))
    return found[-1] if found else None


def load(path: Path) -> Checkpoint:
    """Read a checkpoint folder (upgrading older format versions here when there are any)."""
    meta_path, weights_path = path / "meta.json", path / "weights.safetensors"
    if not meta_path.exists() or not weights_path.exists():
        raise CheckpointError(f"{path} is not a checkpoint (meta.json and weights.safetensors expected)")
    meta = json.loads(meta_path.read_text())
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version} is not supported (this avatarcam reads 1)")
    tensors: dict[str, dict[str, Tensor]] = {}
    for key, value in load_file(str(weights_path)).items():
        owner, _, name = key.partition("/")
        tensors.setdefault(owner, {})[name] = value
    return Checkpoint(path, int(meta["step"]), meta, tensors)


def restore(
    checkpoint: Checkpoint, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]
) -> None:
    """Load module weights and optimizer state from `checkpoint` (strict)."""
    for name, module in modules.items():
        module.load_state_dict(checkpoint.tensors[name], strict=True)
    for name, opt in optimizers.items():
        opt.load_state_dict(
            _optimizer_join(checkpoint.tensors.get(f"opt.{name}", {}), checkpoint.meta["optimizers"][name])
        )
