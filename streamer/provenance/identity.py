"""The demo-identity policy: which avatar is the shipped demo's (it is always badged and
watermarked), and whether an avatar may be published unmarked.

The demo's files live in `assets/demo/` with their sources and licenses in
`assets/demo/NOTICE.md`."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from streamer.provenance.watermark import Watermarker, identity_digest

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "demo"
DEMO_AVATAR = ASSETS / "cap12.avatar"
DEMO_CLIP = ASSETS / "driver.mp4"


class WatermarkRequired(ValueError):
    """The watermark was turned off for an avatar that must always carry it."""


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


def maybe_watermark(identity: Any, *, enabled: bool = True, required: bool = False) -> Watermarker | None:
    """The avatar's mark; None only when the user turned it off for an avatar that may go unmarked.

    Like the badge, the mark is forced on for avatars that require disclosure (`required`) and
    for the shipped demo avatar, whatever `enabled` says.
    """
    if enabled or required or is_demo_identity(identity):
        return Watermarker(identity_digest(identity))
    return None


def refuse_unmarked(identity: Any, *, required: bool = False) -> None:
    """Raise WatermarkRequired when this avatar may not be published unmarked (for --no-watermark)."""
    if required or is_demo_identity(identity):
        raise WatermarkRequired("the shipped demo avatar is always watermarked: --no-watermark is only for your own")
