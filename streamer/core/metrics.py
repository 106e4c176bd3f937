"""Latency and throughput: Prometheus series for scrapers, rolling windows for the dashboard.

Every server owns one `Metrics` (its own CollectorRegistry, no module globals), and every
session one `SessionStats` that feeds both.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from streamer.core.figures import percentiles
from streamer.core.split import FrameTimes

STAGES = ("track", "render", "infer", "compose", "sink")
"""Pipeline stages timed per frame, in order."""
WINDOW = 300
"""Frames the dashboard's percentiles are taken over."""
_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """The Prometheus series of one server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames = Counter("avatarcam_frames_total", "Avatar frames made", registry=r)
        self.dropped = Counter(
            "avatarcam_frames_dropped_total", "Frames dropped to keep latency bounded", ["stage"], registry=r
        )
        self.stage = Histogram(
            "avatarcam_stage_seconds", "Time spent in each pipeline stage", ["stage"], buckets=_BUCKETS, registry=r
        )
        self.end_to_end = Histogram(
            "avatarcam_end_to_end_seconds", "Capture to sink, per frame", buckets=_BUCKETS, registry=r
        )
        self.glass = Histogram(
            "avatarcam_glass_to_glass_seconds",
            "Browser capture to avatar frame displayed, as reported by pages",
            buckets=_BUCKETS,
            registry=r,
        )
        self.sessions = Gauge("avatarcam_sessions", "Live avatar sessions", registry=r)

    def exposition(self) -> bytes:
        """The text format served at /metrics."""
        return generate_latest(self.registry)


@dataclass
class SessionStats:
    """Counters and rolling latency windows of one session (event-loop thread only)."""

    metrics: Metrics
    frames: int = 0
    dropped: int = 0
    face_found: bool | None = None
    stages: dict[str, deque[float]] = field(default_factory=lambda: {s: deque(maxlen=WINDOW) for s in STAGES})
    end_to_end: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    glass: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    handoffs: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    produced_at: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    timeline: deque[tuple[int, FrameTimes]] = field(default_factory=lambda: deque(maxlen=WINDOW))
    split: dict[str, Any] | None = None
    _sequence: int = 0

    def stage(self, name: str, seconds: float) -> None:
        self.stages[name].append(seconds)
        self.metrics.stage.labels(name).observe(seconds)

    def drop(self, stage: str, count: int = 1) -> None:
        if count > 0:
            self.dropped += count
            self.metrics.dropped.labels(stage).inc(count)

    def produced(self) -> None:
        """The pipeline made one avatar frame (before the fan-out to sinks)."""
        self.frames += 1
        self.produced_at.append(time.monotonic())
        self.metrics.frames.inc()

    def delivered(self, end_to_end: float) -> None:
        """A sink published a frame `end_to_end` seconds after its capture."""
        self.end_to_end.append(end_to_end)
        self.metrics.end_to_end.observe(end_to_end)

    def handed_off(self, seconds: float) -> None:
        """A sink handed on a frame (to the device, the packetizer, the encoder) `seconds` after
        the generating stage made it: waiting for the sink's turn, plus the sink's own work."""
        self.handoffs.append(seconds)

    def glass_to_glass(self, seconds: float) -> None:
        self.glass.append(seconds)
        self.metrics.glass.observe(seconds)

    def timed(self, times: FrameTimes) -> None:
        """A stamped frame was handed to the encoder: keep its times for the page's split."""
        if self.timeline and self.timeline[-1][1].tag == times.tag:
            return  # a second sink of the same frame
        self._sequence += 1
        self.timeline.append((self._sequence, times))

    def timed_since(self, sequence: int) -> tuple[list[FrameTimes], int]:
        """The frames timed after `sequence`, and the sequence to ask from next time."""
        return [t for n, t in self.timeline if n > sequence], self._sequence

    def split_reported(self, split: dict[str, Any]) -> None:
        """The page's latest split of glass-to-glass (`streamer.core.split`), milliseconds."""
        self.split = split

    def fps(self) -> float:
        """Frames made per second over the last two seconds."""
        now = time.monotonic()
        recent = [t for t in self.produced_at if now - t <= 2.0]
        if len(recent) < 2:
            return 0.0
        return round((len(recent) - 1) / max(recent[-1] - recent[0], 1e-6), 2)

    def snapshot(self) -> dict[str, Any]:
        return {
            "face_found": self.face_found,
            "fps": self.fps(),
            "frames": self.frames,
            "dropped": self.dropped,
            "stages_ms": {s: percentiles(v) for s, v in self.stages.items()},
            "e2e_ms": percentiles(self.end_to_end),
            "handoff_ms": percentiles(self.handoffs),
            "glass_ms": percentiles(self.glass),
            "split_ms": self.split,
        }
