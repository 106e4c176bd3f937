"""Percentiles as the project reports them: the one helper behind every latency figure."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def percentiles(
    values: Iterable[float],
    qs: tuple[int, ...] = (50, 99),
    *,
    scale: float = 1000.0,
    digits: int = 2,
    samples: bool = False,
) -> dict[str, float] | None:
    """{"p50": ..., "p99": ...} (one key per q) of `values` times `scale` (default: seconds to
    milliseconds), rounded to `digits`; with `samples`, also their count. None without values."""
    data = np.fromiter(values, np.float64)
    if data.size == 0:
        return None
    figures: dict[str, float] = {"samples": int(data.size)} if samples else {}
    for q, value in zip(qs, np.percentile(data, qs) * scale, strict=True):
        figures[f"p{q}"] = round(float(value), digits)
    return figures
