"""Sources: where live frames come from. One file per kind, one row per kind in `SOURCES`.

Each source has one coroutine, `recv()`, that returns the next `Frame` or raises `SourceEnded`;
blocking capture and decoding run in the source's own worker thread. A new kind is a file with
a class that has `open(target, context)` and a row here; `serve`, `connect`, `bench` and
`reenact` all open sources through `open_source`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from streamer.janus.client import Room
from streamer.sources.base import Source, SourceContext, SourceError, SourceSpec
from streamer.sources.camera import CameraSource
from streamer.sources.file import FileSource
from streamer.sources.janus import JanusSource


@dataclass(frozen=True)
class SourceKind:
    """One row of the registry.

    Attributes:
        open: makes the source from its target; None for a kind made per WebRTC peer by the
            service (its track arrives with the peer).
        target: what the kind takes after the colon, as shown in help ("N", "PATH"; "": nothing).
        valid: whether a target is acceptable (checked when the spec is parsed).
    """

    open: Callable[[str, SourceContext], Source] | None
    target: str = ""
    valid: Callable[[str], bool] = bool


SOURCES: dict[str, SourceKind] = {
    "camera": SourceKind(CameraSource.open, "N", str.isdigit),
    "file": SourceKind(FileSource.open, "PATH"),
    "janus": SourceKind(JanusSource.open, "URL#room=N&pin=PIN", Room.valid),  # a Janus room's DRIVER
    "webrtc": SourceKind(None),  # each browser's (or connect's) camera: `streamer.sources.track`
}


def usage() -> str:
    """The accepted --source values, for messages."""
    forms = [f"{kind}:{row.target}" if row.target else kind for kind, row in SOURCES.items()]
    return ", ".join(forms[:-1]) + " or " + forms[-1]


def parse_source(text: str) -> SourceSpec:
    """A `--source` value as a spec; SourceError naming the accepted forms otherwise."""
    kind, _, target = text.partition(":")
    row = SOURCES.get(kind)
    if row is not None and (row.valid(target) if row.target else not target):
        return SourceSpec(kind, target)
    raise SourceError(f"--source {text!r}: use {usage()} (e.g. camera:0)")


def open_source(spec: SourceSpec, context: SourceContext) -> Source:
    """Open a source of a kind that is opened directly (not one made per WebRTC peer)."""
    row = SOURCES[spec.kind]
    if row.open is None:
        raise SourceError(f"source {spec} is created per WebRTC peer, not opened directly")
    return row.open(spec.target, context)
