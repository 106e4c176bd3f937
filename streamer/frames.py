"""The unit that moves through the live pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from streamer.compose import Layers

U8 = npt.NDArray[np.uint8]


@dataclass
class Frame:
    """One frame and its history.

    Attributes:
        image: [H, W, 3] uint8 RGB.
        captured: when the source captured it (the session clock's seconds); carried unchanged
            through every stage so end-to-end latency is measured from capture.
        index: the source's frame counter.
        tag: a frame identifier read from the input's stamp (`streamer.stamp`), echoed onto the
            output so a browser can measure glass-to-glass latency; None when absent.
        stages: seconds spent in each stage so far, by stage name.
        face_found: whether tracking found the driver's face (None before tracking).
        idle: no driver frame: the session made this tick itself (source silent or paused), so
            the avatar keeps moving in its idle pose.
        layers: what the published image was composed from (set by the generating stage).
    """

    image: U8
    captured: float
    index: int
    tag: int | None = None
    stages: dict[str, float] = field(default_factory=dict)
    face_found: bool | None = None
    idle: bool = False
    layers: Layers | None = None

    def derive(self, image: U8, layers: Layers | None = None) -> Frame:
        """The same frame's history with a new picture (the next stage's output)."""
        return Frame(image, self.captured, self.index, self.tag, dict(self.stages), self.face_found, self.idle, layers)
