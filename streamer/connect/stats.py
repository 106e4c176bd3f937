"""The client's figures: glass-to-glass latency from the page's frame ids (`streamer.core.stamp`:
the client paints an id into each camera frame, the service echoes it onto the avatar frame),
fps, drops, round-trip time and the audio delay that keeps lip sync."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamer.core import stamp
from streamer.core.clock import Clock
from streamer.core.figures import percentiles
from streamer.core.frames import Frame
from streamer.core.split import SEGMENTS, SERVER_PARTS, ClockSync, FrameTimes, SplitJoin

WINDOW = 300  # samples in the rolling figures printed each second


MAX_GLASS = 10.0  # seconds; an older id than this is a wrapped one, not this frame's


@dataclass
class ConnectStats:
    """The client's counters and latency samples (event-loop thread only).

    Glass-to-glass is the page's measure: from when the camera frame was captured (the
    source's clock) to when the avatar frame carrying its id arrived here, decoded. Each id is
    taken once, so a repeated frame is not a new sample.
    """

    clock: Clock
    frames_sent: int = 0
    frames_received: int = 0
    echoed: int = 0
    capture_dropped: int = 0
    held: int = 0
    cards: int = 0
    reconnects: int = 0
    first_frame_at: float | None = None
    last_frame_at: float | None = None
    server: dict[str, Any] | None = None
    glass: list[float] = field(default_factory=list)
    sink: list[float] = field(default_factory=list)
    rtt: list[float] = field(default_factory=list)
    arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    sync: ClockSync = field(default_factory=ClockSync)
    split: SplitJoin = field(init=False)
    _sent_at: np.ndarray = field(default_factory=lambda: np.full(stamp.MODULUS, np.nan))
    _next_id: int = 0

    def __post_init__(self) -> None:
        self.split = SplitJoin(self.sync)

    def server_message(self, data: dict[str, Any]) -> None:
        """A data-channel message from the server: a clock ping's answer, or stats (kept) with
        the server's times of the frames it sent since the last (`streamer.core.split`)."""
        now = self.clock.now()
        if data.get("type") == "clock":
            t, server = data.get("t"), data.get("server")
            if isinstance(t, int | float) and isinstance(server, int | float):
                self.sync.observe(float(t), float(server), now)
        elif data.get("type") == "stats":
            self.server = {k: v for k, v in data.items() if k != "frames"}
            frames = data.get("frames")
            for item in frames if isinstance(frames, list) else []:
                if (times := FrameTimes.from_wire(item)) is not None:
                    self.split.server(times, now)

    def split_figures(self, rows: list[dict[str, float]] | None = None) -> dict[str, Any] | None:
        """p50/p90/p99 (ms) of each segment of glass-to-glass over `rows` (all the joined frames kept)."""
        rows = list(self.split.rows) if rows is None else rows
        if not rows:
            return None
        keys = ("glass", *SEGMENTS, *SERVER_PARTS)
        out: dict[str, Any] = {"frames": len(rows)}
        out.update({k: percentiles([r[k] for r in rows], (50, 90, 99), scale=1, digits=1) for k in keys})
        out["clock_error_ms"] = round(self.sync.error * 1000, 2) if self.sync.error is not None else None
        return out

    def stamped(self, frame: Frame) -> None:
        """Paint the next frame id into `frame` (in place) and remember its capture time."""
        tag = self._next_id
        self._next_id = (tag + 1) % stamp.MODULUS
        stamp.write(frame.image, tag)
        frame.tag = tag
        self._sent_at[tag] = frame.captured

    def received(self, frame: Frame) -> float | None:
        """An avatar frame arrived (`frame.captured` is its arrival); its glass-to-glass seconds."""
        self.frames_received += 1
        self.arrivals.append(frame.captured)
        if self.first_frame_at is None:
            self.first_frame_at = frame.captured
        self.last_frame_at = frame.captured
        if frame.tag is None:
            return None
        sent = float(self._sent_at[frame.tag])
        self._sent_at[frame.tag] = np.nan
        if math.isnan(sent) or not 0 <= frame.captured - sent <= MAX_GLASS:
            return None
        self.echoed += 1
        self.glass.append(frame.captured - sent)
        self.split.shown(frame.tag, sent, frame.captured)
        return frame.captured - sent

    def fps(self, window: float = 1.0) -> float:
        """Avatar frames received per second over the last `window` seconds."""
        now = self.clock.now()
        recent = [t for t in self.arrivals if now - t <= window]
        return round(len(recent) / window, 1)

    def audio_delay_ms(self) -> float | None:
        """How late the video reaches the sinks after its capture: the audio delay (e.g. OBS's
        sync offset) that keeps a meeting's microphone in sync with the avatar."""
        glass = figures(self.glass[-WINDOW:])
        if glass is None:
            return None
        sink = figures(self.sink[-WINDOW:])
        return round(glass["p50"] + (sink["p50"] if sink else 0.0))

    def dropped(self, sink_dropped: int) -> dict[str, int]:
        """Frames that did not make it, by where: `capture` (the encoder was busy with an
        older frame), `lost` (sent with an id that never came back: dropped by the server to
        keep latency bounded, or on the network), `server` (the server's own count), `sinks`
        (a busy sink replaced an avatar frame by a newer one)."""
        server = int(self.server.get("dropped") or 0) if self.server else 0
        lost = max(0, self.frames_sent - self.echoed) if self.echoed else 0
        return {"capture": self.capture_dropped, "lost": lost, "server": server, "sinks": sink_dropped}

    def line(self, state: str, sink_dropped: int) -> str:
        """The status line printed once a second."""
        glass = figures(self.glass[-WINDOW:])
        rtt = f"{self.rtt[-1] * 1000:.1f} ms" if self.rtt else "–"
        g = f"p50 {glass['p50']:.0f} ms p99 {glass['p99']:.0f} ms" if glass else "–"
        d = self.dropped(sink_dropped)
        delay = self.audio_delay_ms()
        return (
            f"avatarcam: {state} | {self.fps():.1f} fps | glass-to-glass {g} | rtt {rtt} | "
            f"dropped {d['capture'] + d['lost']} (lost {d['lost']}) | "
            f"set audio delay {'–' if delay is None else f'{delay:.0f} ms'}"
        )

    def report(self, sink_dropped: int) -> dict[str, Any]:
        """The final JSON."""
        streamed = None
        if self.first_frame_at is not None and self.last_frame_at is not None:
            streamed = self.last_frame_at - self.first_frame_at
        fps = round((self.frames_received - 1) / streamed, 2) if streamed and self.frames_received > 1 else None
        return {
            "seconds": round(streamed, 2) if streamed is not None else None,
            "frames_sent": self.frames_sent,
            "frames_received": self.frames_received,
            "fps": fps,
            "glass_ms": figures(self.glass),
            "split_ms": self.split_figures(),
            "sink_ms": figures(self.sink),
            "rtt_ms": figures(self.rtt),
            "dropped": self.dropped(sink_dropped),
            "held_frames": self.held,
            "card_frames": self.cards,
            "reconnects": self.reconnects,
            "audio_delay_ms": self.audio_delay_ms(),
            "server": self.server,
        }


def figures(values: Iterable[float]) -> dict[str, float] | None:
    """{"samples", "p50", "p90", "p99"} in milliseconds of `values` (seconds)."""
    return percentiles(values, (50, 90, 99), digits=1, samples=True)
