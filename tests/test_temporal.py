"""Evaluation over time (models/evaluation/temporal.py) on synthetic sequences whose flicker and
jitter are known: frozen frames, shifted frames, gaps between source frames."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from torch import Tensor

from models.evaluation.temporal import Temporal, consecutive_runs

U8 = npt.NDArray[np.uint8]
F64 = npt.NDArray[np.float64]


def mean_abs(a: Tensor, b: Tensor) -> Tensor:
    """A stand-in pair distance: [N] mean absolute difference."""
    return (a - b).abs().mean(dim=(1, 2, 3))


def bright_centroid(rgb: U8, timestamp_ms: int) -> F64 | None:
    """A stand-in locator: the (x, y) centroid of the bright pixels, None when there are none."""
    ys, xs = np.nonzero(rgb[..., 0] > 127)
    return np.array([xs.mean(), ys.mean()]) if xs.size else None


def square(x: int, y: int, size: int = 32) -> U8:
    image = np.zeros((size, size, 3), np.uint8)
    image[y : y + 6, x : x + 6] = 255
    return image


def _temporal() -> Temporal:
    return Temporal(mean_abs, bright_centroid, bright_centroid)


def test_identical_frames_have_no_flicker_and_no_jitter() -> None:
    frames = np.stack([square(10, 10)] * 5)
    t = _temporal()
    t.add([0, 1, 2], frames[:3], frames[:3])
    t.add([3, 4], frames[3:], frames[3:])  # pairs across batches count too
    out = t.results()
    assert out["pairs"] == 4 and out["pair_frames"] == [[1, 4]]
    assert out["flicker"] == out["flicker_real"] == out["tlp"] == 0
    assert out["jitter_px"] == out["jitter_px_real"] == out["jitter_excess_px"] == 0


def test_a_shifted_frame_jitters_by_its_shift() -> None:
    """The avatar's head jumps 3 px right and back; the real one stays: jitter = (3 + 3) / 2 px."""
    real = np.stack([square(10, 10)] * 3)
    fake = np.stack([square(10, 10), square(13, 10), square(10, 10)])
    t = _temporal()
    t.add([7, 8, 9], fake, real)
    out = t.results()
    assert out["jitter_px"] == pytest.approx(3.0) and out["jitter_px_real"] == 0
    assert out["jitter_excess_px"] == pytest.approx(3.0)
    assert out["flicker"] > 0 and out["flicker_real"] == 0 and out["tlp"] == pytest.approx(out["flicker"])


def test_following_the_real_motion_is_not_jitter() -> None:
    """Both move 2 px down per frame: equal jitter, no excess, tLP 0."""
    seq = np.stack([square(10, 4 + 2 * i) for i in range(4)])
    t = _temporal()
    t.add([0, 1, 2, 3], seq, seq.copy())
    out = t.results()
    assert out["jitter_px"] == pytest.approx(2.0) and out["jitter_px_real"] == pytest.approx(2.0)
    assert out["jitter_excess_px"] == pytest.approx(0.0) and out["tlp"] == pytest.approx(0.0)
    assert out["flicker"] == pytest.approx(out["flicker_real"]) and out["flicker"] > 0


def test_pairs_across_gaps_are_skipped() -> None:
    """Frames 0, 1, 5, 6 (and 10 alone): only (0, 1) and (5, 6) are pairs; the jump at the gap
    would otherwise count as a 20 px step."""
    frames = [0, 1, 5, 6, 10]
    xs = [0, 1, 20, 21, 2]
    seq = np.stack([square(x, 10) for x in xs])
    t = _temporal()
    t.add(frames[:3], seq[:3], seq[:3])
    t.add(frames[3:], seq[3:], seq[3:])
    out = t.results()
    assert out["pairs"] == 2 and out["pair_frames"] == [[1, 1], [6, 6]]
    assert out["jitter_px"] == pytest.approx(1.0)


def test_without_consecutive_frames_there_is_no_figure() -> None:
    t = _temporal()
    t.add([0, 2, 4], np.stack([square(1, 1)] * 3), np.stack([square(1, 1)] * 3))
    out = t.results()
    assert out["pairs"] == 0 and "flicker" not in out and "--consecutive" in out["note"]


def test_lost_faces_leave_jitter_out_but_not_flicker() -> None:
    blank = np.zeros((32, 32, 3), np.uint8)
    fake = np.stack([square(10, 10), blank, square(12, 10), square(12, 10)])
    t = Temporal(mean_abs, bright_centroid, bright_centroid)
    t.add([0, 1, 2, 3], fake, np.stack([square(10, 10)] * 4))
    out = t.results()
    assert out["pairs"] == 3 and out["jitter_pairs"] == 1 and out["jitter_px"] == 0


def test_consecutive_runs() -> None:
    assert consecutive_runs([]) == []
    assert consecutive_runs([3, 4, 5, 9, 11, 12]) == [[3, 5], [9, 9], [11, 12]]


def test_flicker_uses_the_distance_on_the_right_pairs() -> None:
    """flicker is the mean distance of (o_t, o_t-1) pairs, flicker_real of (g_t, g_t-1)."""
    levels = [0, 10, 30]
    fake = np.stack([np.full((8, 8, 3), v, np.uint8) for v in levels])
    real = np.stack([np.full((8, 8, 3), 2 * v, np.uint8) for v in levels])
    t = Temporal(mean_abs)
    t.add([0, 1, 2], fake, real)
    out = t.results()
    assert out["flicker"] == pytest.approx((10 + 20) / 2 / 255)
    assert out["flicker_real"] == pytest.approx((20 + 40) / 2 / 255)
    assert out["tlp"] == pytest.approx(out["flicker_real"] - out["flicker"])
    assert out["jitter_px"] is None
