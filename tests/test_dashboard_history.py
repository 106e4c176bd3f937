"""The dashboard's history: the service keeps a few minutes of latency and load, and a
dashboard's first snapshot carries it, so charts opened late are not empty."""

from __future__ import annotations

from typing import Any

from streamer.provenance.identity import DEMO_AVATAR
from streamer.serve.config import ServeConfig
from streamer.serve.service import Service
from streamer.serve.status import HISTORY_SECONDS
from streamer.sources.base import SourceSpec


def _snapshot(t: float, e2e: float) -> dict[str, Any]:
    session = {"id": "main", "fps": 30.0, "e2e_ms": {"p50": e2e, "p99": e2e * 2}, "glass_ms": None}
    session |= {"stages_ms": {"infer": {"p50": 5.0, "p99": 9.0}}, "frames": 10, "state": "running"}
    return {"time": t, "system": {"cpu_percent": 50.0, "rss_mb": 300.0, "gpu": None}, "sessions": [session]}


def test_history_keeps_the_last_minutes_compactly_and_reaches_a_new_dashboard() -> None:
    service = Service(ServeConfig(avatars=(DEMO_AVATAR,), source=SourceSpec("webrtc", "")))
    start = 1000.0
    for n in range(int(HISTORY_SECONDS * 2 / 0.5)):  # twice the kept span, every 0.5 s
        service.record(_snapshot(start + n * 0.5, e2e=float(n)))
    kept = list(service.history)
    span = kept[-1]["time"] - kept[0]["time"]
    assert HISTORY_SECONDS - 0.5 <= span <= HISTORY_SECONDS  # the last five minutes, no more
    assert kept[-1]["sessions"][0]["e2e_ms"]["p50"] == float(int(HISTORY_SECONDS * 2 / 0.5) - 1)  # the newest
    assert set(kept[0]["sessions"][0]) == {"id", "fps", "e2e_ms", "glass_ms", "stages_ms"}  # compact
    assert "rss_mb" not in kept[0]["system"]
    first = service.first_snapshot()
    assert first["type"] == "snapshot" and first["history"] == kept and first["history_seconds"] == HISTORY_SECONDS
