"""Time for the pipeline: an injectable clock and pacing against absolute deadlines."""

from __future__ import annotations

import asyncio
import cmath
import math
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

    def phase(self, t: float) -> float:
        """Where `t` falls in its tick period: 0 on a tick, rising towards 1 before the next."""
        if self._start is None:
            return 0.0
        return ((t - self._start) / self.period) % 1.0

    def shift(self, seconds: float) -> None:
        """Move every later tick by `seconds` (positive: later)."""
        if self._start is not None:
            self._start += seconds


class PhaseLock:
    """Keeps a sink's ticks half a period away from the frames that feed it.

    A sink that publishes at its own rate shows each new frame on the next tick. When frames
    arrive close to the tick instant, jitter puts some just before it and some just after: the
    tick after a late one repeats the old picture, and the next tick finds two new frames and
    shows only the second. The lock watches where in the tick period frames arrive (a circular
    mean, so 0.99 and 0.01 average to 0) and moves the tick grid a little at a time until they
    arrive mid-period, where they have half a period of slack either way. Frames that do not keep
    one phase (a source at another rate) leave the ticks alone.

    Args:
        period: the sink's tick period, seconds.
        gain: the share of the phase error corrected per tick.
        max_step: the most one tick moves, seconds (the device's interval changes by at most this).
        memory: how many arrivals the mean remembers (its time constant, in frames).
        min_agreement: the least resultant length (0 = phases spread evenly, 1 = all alike)
            for which the ticks are moved.
    """

    def __init__(
        self,
        period: float,
        *,
        gain: float = 0.1,
        max_step: float = 0.001,
        memory: float = 20.0,
        min_agreement: float = 0.5,
    ) -> None:
        if period <= 0 or memory < 1:
            raise ValueError(f"period must be > 0 and memory >= 1, got {period}, {memory}")
        self.period = period
        self.gain = gain
        self.max_step = max_step
        self.alpha = 1.0 / memory
        self.min_agreement = min_agreement
        self._mean = 0j  # the mean of exp(2 pi i phase) over recent arrivals
        self.shifted = 0.0  # seconds the ticks have moved in all (positive: later)

    def arrived(self, phase: float) -> None:
        """A frame arrived `phase` (0..1) of a period after the last tick."""
        self._mean += self.alpha * (cmath.exp(2j * math.pi * phase) - self._mean)

    @property
    def agreement(self) -> float:
        return abs(self._mean)

    def correction(self) -> float:
        """Seconds to move the next tick (positive: later), within +-max_step."""
        if self.agreement < self.min_agreement:
            return 0.0
        error = cmath.phase(-self._mean) / (2 * math.pi)  # mean phase - 0.5, wrapped to (-0.5, 0.5]
        step = max(-self.max_step, min(self.max_step, self.gain * error * self.period))
        self.shifted += step
        return step
