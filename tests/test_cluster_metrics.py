"""What a session actor hands Ray's metrics (the figures themselves, not Ray's export of them)."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from streamer.cluster.actor import GAUGES, gauge_values


def test_a_running_sessions_figures_become_gauges() -> None:
    snapshot = {"fps": 29.5, "e2e_ms": {"p50": 31.0, "p99": 55.5}, "dropped": 3, "face_found": True, "id": "s"}
    values = gauge_values(snapshot)
    assert values == {
        "avatarcam_session_fps": 29.5,
        "avatarcam_session_e2e_p50_ms": 31.0,
        "avatarcam_session_e2e_p99_ms": 55.5,
        "avatarcam_session_dropped": 3.0,
        "avatarcam_session_face_found": 1.0,
    }
    assert set(values) == set(GAUGES)


def test_figures_not_measured_yet_are_left_out_not_zero() -> None:
    assert gauge_values({"fps": 0.0, "e2e_ms": {}, "face_found": None}) == {"avatarcam_session_fps": 0.0}
