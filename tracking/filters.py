"""Temporal smoothing for live tracking.

The One Euro filter (Casiez et al., CHI 2012) is a low-pass filter whose cutoff rises with
speed: still faces lose their jitter, fast turns pass with little lag.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


def _alpha(cutoff_hz: F64 | float, dt: float) -> F64 | float:
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff_hz))
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Element-wise One Euro filter over arrays of a fixed shape.

    Args:
        min_cutoff: cutoff (Hz) at rest; lower removes more jitter.
        beta: how fast the cutoff rises with speed; higher lags less on fast motion.
        d_cutoff: cutoff (Hz) of the speed estimate.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.05, d_cutoff: float = 1.0) -> None:
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.d_cutoff = d_cutoff
        self._x: F64 | None = None
        self._dx: F64 | None = None
        self._t: float | None = None

    def reset(self) -> None:
        self._x = self._dx = self._t = None

    def __call__(self, x: npt.ArrayLike, t: float) -> F64:
        """Filter sample `x` taken at time `t` (seconds, increasing)."""
        value = np.asarray(x, dtype=np.float64)
        if self._x is None or self._t is None or self._dx is None or t <= self._t:
            self._x, self._dx, self._t = value.copy(), np.zeros_like(value), t
            return value.copy()
        dt = t - self._t
        dx = (value - self._x) / dt
        self._dx = self._dx + _alpha(self.d_cutoff, dt) * (dx - self._dx)
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        self._x = self._x + _alpha(cutoff, dt) * (value - self._x)
        self._t = t
        return self._x.copy()
