"""What every source shares: the `Source` interface, its parsed spec and what a source may be
opened with (`SourceContext`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from streamer.core.clock import Clock
from streamer.core.frames import Frame


class SourceError(RuntimeError):
    """A source cannot start; the message says what to do."""


class SourceEnded(Exception):
    """The source has no more frames (end of file, camera gone for good, peer left)."""


class Source(Protocol):
    """A stream of frames."""

    name: str

    async def recv(self) -> Frame: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class SourceSpec:
    """A parsed `--source` value.

    Attributes:
        kind: a kind of `streamer.sources.SOURCES` ("camera", "file", "webrtc").
        target: what follows the colon (the camera index, the file path); "" for none.
    """

    kind: str
    target: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}" if self.target else self.kind


@dataclass(frozen=True)
class SourceContext:
    """What a source may be opened with; each kind takes what it needs.

    Attributes:
        clock: the session clock (capture times, pacing).
        loop: play a file again from the start when it ends.
        fps: pace a file at this rate instead of its own (None: its own).
        stamps: read the frame identifier (`streamer.core.stamp`) painted into each received
            frame (sources whose frames come from a page or another program: `janus`).
    """

    clock: Clock
    loop: bool = False
    fps: float | None = None
    stamps: bool = False
