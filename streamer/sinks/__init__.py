"""Sinks: where avatar frames go. One file per kind, one row per kind in `SINKS`.

`send` never blocks the pipeline: each sink keeps a one-frame slot (a slow sink drops its
oldest frame, counted) and delivers from its own task, with blocking work in a worker thread. A
new kind is a file with a class that has `open(target, context)` and a row here; `serve` and
`connect` both open sinks through `open_sink`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from streamer.sinks.base import Sink, SinkContext, SinkError, SinkSpec
from streamer.sinks.file import FileSink
from streamer.sinks.janus import JanusSink
from streamer.sinks.null import NullSink
from streamer.sinks.virtualcam import VirtualCamSink
from streamer.sinks.window import WindowSink


@dataclass(frozen=True)
class SinkKind:
    """One row of the registry.

    Attributes:
        open: makes the sink from its target; None for the kind made per WebRTC peer by the
            service (`streamer.sinks.webrtc.AvatarTrack`).
        target: what the kind takes after the colon, as shown in help ("OUT.mp4"; "": nothing).
        shared: needs one stream for everyone (a camera or file source), not a per-peer one.
    """

    open: Callable[[str, SinkContext], Sink] | None
    target: str = ""
    shared: bool = True


SINKS: dict[str, SinkKind] = {
    "virtualcam": SinkKind(VirtualCamSink.open),
    "webrtc": SinkKind(None, shared=False),  # each WebRTC peer gets the avatar as its own track
    "file": SinkKind(FileSink.open, "OUT.mp4"),
    "null": SinkKind(NullSink.open, shared=False),
    "janus": SinkKind(JanusSink.open, "URL#room=N&pin=PIN"),  # published into a Janus room as AVATAR
    "window": SinkKind(WindowSink.open),
}


def usage(*, peers: bool = True) -> str:
    """The accepted --sink values, for messages (`peers`: with the per-peer kind)."""
    forms = [f"{k}:{row.target}" if row.target else k for k, row in SINKS.items() if peers or row.open is not None]
    return ", ".join(forms[:-1]) + " or " + forms[-1]


def parse_sink(text: str, *, peers: bool = True) -> SinkSpec:
    """A `--sink` value as a spec; SinkError naming the accepted forms otherwise. Without
    `peers` (for connect, which receives the avatar over WebRTC), the per-peer kind is refused."""
    kind, _, target = text.partition(":")
    row = SINKS.get(kind)
    if row is not None and row.open is None and not peers:
        raise SinkError(f"--sink {kind}: connect receives the avatar over WebRTC; use {usage(peers=False)}")
    if row is not None and bool(target) == bool(row.target):
        return SinkSpec(kind, target)
    raise SinkError(f"--sink {text!r}: use {usage(peers=peers)}")


def open_sink(spec: SinkSpec, context: SinkContext) -> Sink:
    """Open a sink of a kind that is opened directly (not the per-peer WebRTC track)."""
    row = SINKS[spec.kind]
    if row.open is None:
        raise SinkError(f"sink {spec} is made per WebRTC peer, not opened directly")
    return row.open(spec.target, context)
