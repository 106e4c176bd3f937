"""The `.avatar` file: everything needed to drive one person's avatar, in one safe file.

It is a safetensors file. Tensors: the EMA generator's inference weights, the cached static
feature maps (neural texture and background) and the personal expression model. Header
metadata (strings): format name and version, the network config, the avatar's crop, and the
identity record (who it depicts, their consent statement, the source video's SHA-256, preset,
steps, measured metrics). Optionally a distilled student for the CPU tier (header `student`
with its config, tensors `student/*`; see models/networks/student.py). Loading reads a JSON header and
raw tensors: it never unpickles code. `load_avatar` is the one reader and upgrades older format versions as they appear.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from models.networks.presets import NetworkConfig, Preset
from models.networks.selfieavatar import SelfieAvatarGenerator, StaticFeatures
from models.networks.student import StudentConfig, StudentNet
from models.training import checkpoint as ckpt
from tracking.assets import sha256_of
from tracking.crop import Crop
from tracking.expression import ExpressionModel

FORMAT = "avatarcam-avatar"
FORMAT_VERSION = 1


class AvatarError(RuntimeError):
    """The avatar file is missing, not an avatar, or from an unknown version."""


@dataclass(frozen=True)
class Identity:
    """Who an avatar depicts, and on what terms (written at export, shown by every consumer).

    Attributes:
        subject: the person the avatar depicts.
        consent: their consent statement, verbatim.
        source_sha256: digest of the training video.
        preset: the preset it was trained with.
        steps: training steps.
        metrics: measured quality numbers (e.g. held-out PSNR), if any.
    """

    subject: str
    consent: str
    source_sha256: str
    preset: str
    steps: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class Avatar:
    """A loaded avatar, ready for an engine."""

    network: NetworkConfig
    generator: SelfieAvatarGenerator
    expression: ExpressionModel
    crop: Crop
    identity: Identity
    student: StudentNet | None = None
    """A distilled student for the CPU tier (`avatarcam distill`), when the file carries one."""


def export(
    run: Path,
    data: Path,
    out: Path,
    subject: str,
    consent: str,
    metrics: dict[str, float] | None = None,
) -> Path:
    """Write `out` from a run's newest checkpoint and its dataset (expression model, crop)."""
    if not consent.strip():
        raise AvatarError("an avatar needs the depicted person's consent statement: pass --consent '...'")
    latest = ckpt.latest(run)
    if latest is None:
        raise AvatarError(f"{run} has no checkpoint; train first (avatarcam train)")
    loaded = ckpt.load(latest)
    preset = Preset.from_dict(loaded.meta["preset"])
    generator = SelfieAvatarGenerator(preset.network, int(loaded.meta["num_frames"]))
    generator.load_state_dict(loaded.tensors["ema"])
    static = generator.static_features()

    manifest = json.loads((data / "manifest.json").read_text())
    source = manifest["sources"][0]
    crop = Crop(**{k: float(v) for k, v in source["crop"].items() if k != "size"}, size=int(source["crop"]["size"]))
    with np.load(data / "expression.npz") as arrays:
        expression = ExpressionModel.from_arrays(dict(arrays))

    tensors: dict[str, Tensor] = {
        f"generator/{k}": v
        for k, v in generator.state_dict().items()
        if not k.startswith(SelfieAvatarGenerator.DIRECT_PREFIXES)  # the static features stand in for them
    }
    tensors["static/texture"] = static.texture.contiguous()
    tensors["static/background"] = static.background.contiguous()
    tensors.update(
        {f"expression/{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in expression.to_arrays().items()}
    )
    identity = Identity(
        subject=subject,
        consent=consent,
        source_sha256=sha256_of(Path(source["video"])) if Path(source["video"]).exists() else "unknown",
        preset=preset.name,
        steps=loaded.step,
        metrics=metrics or {},
    )
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "network": json.dumps(asdict(preset.network)),
        "num_frames": str(loaded.meta["num_frames"]),
        "crop": json.dumps(crop.to_dict()),
        "identity": json.dumps(asdict(identity)),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    save_file(tensors, str(partial), metadata=header)
    partial.replace(out)
    return out


def read_header(path: Path) -> dict[str, str]:
    """The avatar's metadata without loading its tensors."""
    if not path.is_file():
        raise AvatarError(f"{path}: no such avatar file")
    try:
        with safe_open(str(path), framework="pt") as f:
            header: dict[str, str] = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for any malformed header
        raise AvatarError(f"{path}: not an avatar file ({exc})") from exc
    if header.get("format") != FORMAT:
        raise AvatarError(f"{path}: not an avatarcam avatar (format {header.get('format')!r})")
    version = int(header.get("format_version", "0"))
    if version != FORMAT_VERSION:
        raise AvatarError(f"{path}: avatar format {version} is not supported (this avatarcam reads {FORMAT_VERSION})")
    return header


def load_avatar(path: Path, device: str | torch.device = "cpu") -> Avatar:
    """Read an avatar file; the generator is in eval mode with its static features cached."""
    header = read_header(path)
    with safe_open(str(path), framework="pt", device="cpu") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    network = NetworkConfig(**_tuples(json.loads(header["network"])))
    generator = SelfieAvatarGenerator(network, int(header["num_frames"]))
    missing, unexpected = generator.load_state_dict(
        {k.removeprefix("generator/"): v for k, v in tensors.items() if k.startswith("generator/")}, strict=False
    )
    if unexpected or any(not k.startswith(SelfieAvatarGenerator.DIRECT_PREFIXES) for k in missing):
        raise AvatarError(f"{path}: generator weights do not match its network (missing {missing}, extra {unexpected})")
    static = StaticFeatures(tensors["static/texture"], tensors["static/background"])
    generator.absorb_direct(static)
    generator.freeze_static()
    generator.eval().to(device)
    generator.use_static(StaticFeatures(static.texture.to(device), static.background.to(device)))
    expression = ExpressionModel.from_arrays(
        {k.removeprefix("expression/"): v.numpy() for k, v in tensors.items() if k.startswith("expression/")}
    )
    crop_fields = json.loads(header["crop"])
    crop = Crop(crop_fields["x0"], crop_fields["y0"], crop_fields["side"], int(crop_fields["size"]))
    identity = Identity(**json.loads(header["identity"]))
    student = _student(header, tensors, device)
    return Avatar(network, generator, expression, crop, identity, student)


def add_student(source: Path, student: StudentNet, out: Path, metrics: dict[str, float]) -> Path:
    """Write `out`: the avatar `source` plus a distilled student and its measured metrics.

    The teacher stays in the file (GPU tiers run it; the student is checked against it), and the
    identity record is carried over unchanged apart from the student's metrics.
    """

    def update(header: dict[str, str], tensors: dict[str, Tensor]) -> None:
        for key in [k for k in tensors if k.startswith("student/")]:
            del tensors[key]
        tensors.update({f"student/{k}": v.detach().cpu().contiguous() for k, v in student.state_dict().items()})
        identity = json.loads(header["identity"])
        identity["metrics"] = {**identity.get("metrics", {}), **metrics}
        header["identity"] = json.dumps(identity)
        header["student"] = json.dumps(student.config.to_dict())

    return _rewrite(source, out, update)


def replace_expression(source: Path, model: ExpressionModel, out: Path) -> Path:
    """Write `out`: the avatar `source` with another personal expression model (a refit)."""

    def update(header: dict[str, str], tensors: dict[str, Tensor]) -> None:
        for key, value in model.to_arrays().items():
            tensors[f"expression/{key}"] = torch.from_numpy(np.ascontiguousarray(value))

    return _rewrite(source, out, update)


def _rewrite(source: Path, out: Path, update: Callable[[dict[str, str], dict[str, Tensor]], None]) -> Path:
    """Copy an avatar file through `update(header, tensors)`, replacing `out` atomically."""
    header = dict(read_header(source))
    with safe_open(str(source), framework="pt", device="cpu") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    update(header, tensors)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    save_file(tensors, str(partial), metadata=header)
    partial.replace(out)
    return out


def _student(header: dict[str, str], tensors: dict[str, Tensor], device: str | torch.device) -> StudentNet | None:
    """The file's student network (optional header key `student` + tensors `student/*`)."""
    if "student" not in header:
        return None
    try:
        config = StudentConfig.from_dict(json.loads(header["student"]))
    except (ValueError, json.JSONDecodeError) as exc:
        raise AvatarError(f"the avatar's student record is malformed ({exc})") from exc
    student = StudentNet(config)
    student.load_state_dict({k.removeprefix("student/"): v for k, v in tensors.items() if k.startswith("student/")})
    return student.eval().requires_grad_(False).to(device)


def _tuples(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
