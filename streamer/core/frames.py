"""The unit that moves through the live pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]


class Mark(Protocol):
    """An invisible mark applied to a published frame (`streamer.provenance.watermark.Watermarker`)."""

    def __call__(self, frame: U8, *, inplace: bool = False) -> U8: ...


class Background(StrEnum):
    """What is shown behind the person."""

    LEARNED = "learned"  # the avatar's own background, as generated
    BLUR = "blur"  # the generated background, strongly blurred
    IMAGE = "image"  # a replacement picture (ComposeConfig.image)


@dataclass(frozen=True)
class Layers:
    """What a frame was composed from, for a sink that composes it again at another size (the
    virtual camera frames it into a 16:9 webcam picture; `streamer.stages.framing`).

    Attributes:
        image: [r, r, 3] uint8 RGB, the engine's output (its learned background).
        mask: [r, r] uint8, the predicted person mask I_FM.
        background: the stream's background mode when the frame was made.
        badge: the published frame carries the visible badge.
        watermark: the avatar's invisible mark (None: unmarked).
    """

    image: U8
    mask: U8
    background: Background
    badge: bool
    watermark: Mark | None


@dataclass
class Frame:
    """One frame and its history.

    Attributes:
        image: [H, W, 3] uint8 RGB.
        captured: when the source captured it (the session clock's seconds); carried unchanged
            through every stage so end-to-end latency is measured from capture.
        index: the source's frame counter.
        tag: a frame identifier read from the input's stamp (`streamer.core.stamp`), echoed onto the
            output so a browser can measure glass-to-glass latency; None when absent.
        stages: seconds spent in each stage so far, by stage name.
        face_found: whether tracking found the driver's face (None before tracking).
        idle: no driver frame: the session made this tick itself (source silent or paused), so
            the avatar keeps moving in its idle pose.
        layers: what the published image was composed from (set by the generating stage).
        produced: when the generating stage handed the avatar frame to the sinks (the session
            clock's seconds; None before): the start of the sink's share of the latency.
    """

    image: U8
    captured: float
    index: int
    tag: int | None = None
    stages: dict[str, float] = field(default_factory=dict)
    face_found: bool | None = None
    idle: bool = False
    layers: Layers | None = None
    produced: float | None = None

    def derive(self, image: U8, layers: Layers | None = None) -> Frame:
        """The same frame's history with a new picture (the next stage's output)."""
        return Frame(image, self.captured, self.index, self.tag, dict(self.stages), self.face_found, self.idle, layers)
