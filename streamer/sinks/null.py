"""`null`: discards frames (benchmarks, headless runs)."""

from __future__ import annotations

from streamer.core.frames import Frame
from streamer.sinks.base import QueuedSink, SinkContext


class NullSink(QueuedSink):
    """Discards frames (benchmarks, headless runs)."""

    name = "null"

    @classmethod
    def open(cls, target: str, context: SinkContext) -> NullSink:
        return cls(context.clock)

    def deliver(self, frame: Frame) -> None:
        pass
