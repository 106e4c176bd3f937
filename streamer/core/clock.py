"""Time for the pipeline: an injectable clock and pacing against absolute deadlines."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds and a way to wait for one of them (tests inject a fake)."""

    def now(self) -> float: ...

    async def sleep_until(self, deadline: float) -> None: ...


class MonotonicClock:
    """The real clock: `time.monotonic`."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


class Pacer:
    """Ticks at start + n * period. A late consumer skips the ticks it missed rather than
    bursting to catch up; `missed` counts them.

    Args:
        fps: ticks per second.
        clock: where time comes from.
    """

    def __init__(self, fps: float, clock: Clock) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.period = 1.0 / fps
        self.clock = clock
        self.missed = 0
        self._start: float | None = None
        self._n = 0

    async def wait(self) -> float:
        """Sleep until the next tick; returns the tick's deadline."""
        now = self.clock.now()
        if self._start is None:
            self._start = now
            return now
        self._n += 1
        deadline = self._start + self._n * self.period
        if now > deadline + self.period:
            behind = int((now - deadline) / self.period)
            self.missed += behind
            self._n += behind
            deadline = self._start + self._n * self.period
        await self.clock.sleep_until(deadline)
        return deadline
