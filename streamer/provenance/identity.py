"""The demo-identity policy: which avatar is the shipped demo's (it is always badged,
watermarked and signed), and whether an avatar may be published unmarked.

An avatar file is the demo's when its tensors are (`tensors_digest`: a SHA-256 over the weights,
whatever its header says, so editing the identity JSON does not make it someone else's) or when
its identity record is (a student distilled from it keeps the record). Every refusal
(`refuse_undisclosed`) and every forced badge and mark derives from `is_demo_avatar`.

The demo's files live in `assets/demo/` with their sources and licenses in
`assets/demo/NOTICE.md`."""

from __future__ import annotations

import functools
import hashlib
import json
import struct
from pathlib import Path
from typing import Any, BinaryIO

from streamer.provenance.watermark import Watermarker, identity_digest

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "demo"
DEMO_AVATAR = ASSETS / "cap12.avatar"
DEMO_CLIP = ASSETS / "driver.mp4"


class WatermarkRequired(ValueError):
    """The watermark (or another disclosure) was turned off for an avatar that must always carry it."""


IDENTITY_FIELDS = ("subject", "consent", "source_sha256", "preset", "steps")
"""What the mark's digest and a recording's content credentials are made of (not the metrics)."""

STUDENT_PREFIX = "student/"  # a distilled student added to a file (`models.avatar.add_student`)

HEADER_LIMIT = 100_000_000  # bytes: safetensors' own bound on a header


def _tensor_table(f: BinaryIO) -> tuple[int, dict[str, Any]]:
    """(where the data starts, the tensors' entries without any student) of an open safetensors file."""
    (size,) = struct.unpack("<Q", f.read(8))
    if not 2 <= size <= HEADER_LIMIT:
        raise ValueError("not a safetensors file")
    header = json.loads(f.read(size))
    tensors = {k: v for k, v in header.items() if k != "__metadata__" and not k.startswith(STUDENT_PREFIX)}
    return 8 + size, tensors


def _layout(tensors: dict[str, Any]) -> list[Any]:
    return [[name, tensors[name]["dtype"], tensors[name]["shape"]] for name in sorted(tensors)]


def tensors_digest(path: Path) -> str:
    """SHA-256 (hex) over an avatar file's tensors (names, dtypes, shapes and bytes), its header
    metadata and any distilled student left out. Reads the safetensors layout directly: no torch."""
    with path.open("rb") as f:
        start, tensors = _tensor_table(f)
        digest = hashlib.sha256(json.dumps(_layout(tensors)).encode())
        for name in sorted(tensors):
            begin, end = (int(x) for x in tensors[name]["data_offsets"])
            f.seek(start + begin)
            digest.update(f.read(end - begin))
    return digest.hexdigest()


def _same_layout(path: Path, other: Path) -> bool:
    """Whether two files hold tensors of the same names, dtypes and shapes (cheap: headers only)."""
    with path.open("rb") as a, other.open("rb") as b:
        return _layout(_tensor_table(a)[1]) == _layout(_tensor_table(b)[1])


@functools.cache
def _demo_tensors() -> str | None:
    """The tensors digest of the shipped demo avatar (None when its file is absent)."""
    try:
        return tensors_digest(DEMO_AVATAR)
    except (OSError, ValueError, KeyError, TypeError):
        return None


@functools.cache
def _demo_digest() -> int | None:
    """The identity digest of the shipped demo avatar (None when its file is absent)."""
    from models.avatar import AvatarError, read_header

    try:
        return identity_digest(json.loads(read_header(DEMO_AVATAR)["identity"]))
    except (AvatarError, KeyError, ValueError):
        return None


def is_demo_identity(identity: Any) -> bool:
    """Whether this identity record is the shipped demo avatar's (a copy or a student of it too)."""
    return identity_digest(identity) == _demo_digest()


def is_demo_avatar(path: Path) -> bool:
    """Whether the avatar file is the shipped demo's: its tensors, or its identity record.

    A file that cannot be read as safetensors is not the demo (its loader refuses it anyway)."""
    from models.avatar import AvatarError, read_header

    try:
        demo = _demo_tensors()
        if demo is not None and _same_layout(path, DEMO_AVATAR) and tensors_digest(path) == demo:
            return True
        return is_demo_identity(json.loads(read_header(path)["identity"]))
    except (OSError, ValueError, KeyError, TypeError, AvatarError):
        return False


def refuse_undisclosed(path: Path, *, badge: bool = True, watermark: bool = True, credentials: bool = True) -> None:
    """Raise WatermarkRequired when a disclosure is turned off (False) for the shipped demo avatar."""
    off = [
        (flag, what)
        for flag, what, on in (
            ("--no-badge", "badged", badge),
            ("--no-watermark", "watermarked", watermark),
            ("--no-credentials", "signed", credentials),
        )
        if not on
    ]
    if off and is_demo_avatar(path):
        flag, what = off[0]
        raise WatermarkRequired(f"the shipped demo avatar is always {what}: {flag} is only for your own avatar")


def maybe_watermark(identity: Any, *, enabled: bool = True, required: bool = False) -> Watermarker | None:
    """The avatar's mark; None only when the user turned it off for an avatar that may go unmarked.

    Like the badge, the mark is forced on for avatars that require disclosure (`required`) and
    for the shipped demo avatar, whatever `enabled` says.
    """
    if enabled or required or is_demo_identity(identity):
        return Watermarker(identity_digest(identity))
    return None


def public_identity(identity: Any) -> dict[str, Any]:
    """The identity record's `IDENTITY_FIELDS`: what a client (connect) needs to sign a recording
    of the avatar with the same digest as its mark."""
    fields = identity if isinstance(identity, dict) else identity.__dict__
    return {k: fields[k] for k in IDENTITY_FIELDS}


def identity_record(value: Any) -> dict[str, Any] | None:
    """An identity record received from elsewhere (a server's /api/info), checked field by field;
    None when it is not one."""
    if not isinstance(value, dict) or not all(k in value for k in IDENTITY_FIELDS):
        return None
    record = public_identity(value)
    texts = all(isinstance(record[k], str) for k in IDENTITY_FIELDS if k != "steps")
    steps = record["steps"]
    return record if texts and isinstance(steps, int) and not isinstance(steps, bool) else None
