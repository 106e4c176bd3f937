"""The canonical mesh, the pose fit and the One Euro filter on known cases."""

from __future__ import annotations

import numpy as np
import pytest

from tracking.filters import OneEuroFilter
from tracking.mesh import Region, load_canonical_mesh
from tracking.pose import Pose, depose, fit_pose, repose, rotation_from_euler


def test_canonical_mesh_has_mediapipe_topology() -> None:
    mesh = load_canonical_mesh()
    assert mesh.vertices.shape == (468, 3)
    assert mesh.triangles.shape == (898, 3)
    assert mesh.uv.min() >= 0 and mesh.uv.max() <= 1
    counts = np.bincount(mesh.regions, minlength=len(Region))
    assert counts[Region.SKIN] > 600
    assert counts[Region.EYE] > 0 and counts[Region.MOUTH] > 0 and counts[Region.LIPS] > 0
    # The subject's right eye is on the image's left (negative canonical x).
    assert mesh.vertices[mesh.eye_loops[0], 0].mean() < 0 < mesh.vertices[mesh.eye_loops[1], 0].mean()
    assert (mesh.procrustes_weights > 0).sum() > 20


def test_pose_fit_recovers_a_known_similarity() -> None:
    mesh = load_canonical_mesh()
    truth = Pose(rotation_from_euler(10.0, -25.0, 5.0), np.array([256.0, -240.0, 3.0]), 9.5)
    pixels = repose(mesh.vertices, truth)
    fitted = fit_pose(pixels, mesh.vertices, np.ones(468, dtype=np.float32))
    np.testing.assert_allclose(fitted.euler_degrees(), truth.euler_degrees(), atol=1e-3)
    assert fitted.scale == pytest.approx(truth.scale, rel=1e-5)
    np.testing.assert_allclose(depose(pixels, fitted), mesh.vertices, atol=1e-3)


def test_pose_vector_round_trip() -> None:
    pose = Pose(rotation_from_euler(-12.0, 33.0, -7.0), np.array([1.0, 2.0, 3.0]), 4.0)
    again = Pose.from_vector(pose.as_vector())
    np.testing.assert_allclose(again.rotation, pose.rotation, atol=1e-12)


def test_one_euro_removes_jitter_but_follows_fast_motion() -> None:
    rng = np.random.default_rng(0)
    fps = 30.0
    still = OneEuroFilter(min_cutoff=1.0, beta=0.05)
    noisy = 5.0 + rng.normal(0, 1.0, 300)
    smooth = np.array([still(x, i / fps) for i, x in enumerate(noisy)])
    assert smooth[30:].std() < 0.4 * noisy[30:].std()

    moving = OneEuroFilter(min_cutoff=1.0, beta=0.05)
    ramp = np.concatenate([np.zeros(30), np.linspace(0, 100, 15), np.full(30, 100.0)])
    out = np.array([moving(x, i / fps) for i, x in enumerate(ramp)])
    plain = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    lagging = np.array([plain(x, i / fps) for i, x in enumerate(ramp)])
    # 5 frames after the ramp ends, the adaptive filter is much closer than a fixed low-pass.
    assert abs(out[50] - 100) < 0.5 * abs(lagging[50] - 100)
