"""Head pose from landmarks: a weighted similarity fit to the canonical mesh.

Landmarks arrive in pixels (x right, y down, z away from the camera, in x's scale). We move
them to a right-handed y-up frame, P = (x, -y, -z), and solve P ≈ s·R·C + t (Umeyama) against
the canonical mesh C. What the fit leaves over, (1/s)·Rᵀ·(P - t), is the face's shape in
canonical space: identity plus expression, free of head pose. This weak-perspective model is
exact for re-projection (s·R·S + t gives the landmarks back), which keeps renders pixel-aligned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

_FLIP = np.array([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class Pose:
    """Similarity transform from canonical space to the y-up image frame.

    Attributes:
        rotation: [3, 3] rotation matrix (det +1).
        translation: [3] pixels (x, -y, -z frame).
        scale: pixels per canonical centimetre.
    """

    rotation: F64
    translation: F64
    scale: float

    def euler_degrees(self) -> tuple[float, float, float]:
        """(pitch, yaw, roll) in degrees; yaw > 0 when the face turns towards image-right."""
        r = self.rotation
        yaw = math.degrees(math.asin(float(np.clip(r[0, 2], -1.0, 1.0))))
        pitch = math.degrees(math.atan2(-float(r[1, 2]), float(r[2, 2])))
        roll = math.degrees(math.atan2(-float(r[0, 1]), float(r[0, 0])))
        return pitch, yaw, roll

    def as_vector(self) -> F64:
        """[pitch, yaw, roll (deg), tx, ty, tz, scale]: a flat form for storage and smoothing."""
        return np.array([*self.euler_degrees(), *self.translation, self.scale])

    @staticmethod
    def from_vector(vec: F64) -> Pose:
        return Pose(rotation_from_euler(*vec[:3]), np.asarray(vec[3:6], dtype=np.float64), float(vec[6]))


def rotation_from_euler(pitch: float, yaw: float, roll: float) -> F64:
    """Inverse of Pose.euler_degrees: R = Rx(pitch) · Ry(yaw) · Rz(roll)."""
    p, y, r = (math.radians(a) for a in (pitch, yaw, roll))
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rx @ ry @ rz


def to_y_up(points_px: F32 | F64) -> F64:
    """[N, 3] pixel landmarks (y down, z away) -> the y-up, z-towards-viewer frame."""
    return np.asarray(points_px, dtype=np.float64) * _FLIP


def to_pixels(points: F64) -> F32:
    """Inverse of to_y_up."""
    return (points * _FLIP).astype(np.float32)


def fit_pose(points_px: F32, canonical: F32, weights: F32) -> Pose:
    """Weighted Umeyama fit of pixel landmarks [N, 3] to canonical vertices [N, 3]."""
    p = to_y_up(points_px)
    c = canonical.astype(np.float64)
    w = weights.astype(np.float64) / float(weights.sum())
    mu_p, mu_c = w @ p, w @ c
    pc, cc = p - mu_p, c - mu_c
    cov = (pc * w[:, None]).T @ cc
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(3)
    d[2] = np.sign(np.linalg.det(u @ vt)) or 1.0
    rotation = u @ np.diag(d) @ vt
    var_c = float(w @ (cc**2).sum(axis=1))
    scale = float((sig * d).sum() / var_c)
    translation = mu_p - scale * rotation @ mu_c
    return Pose(rotation, translation, scale)


def depose(points_px: F32, pose: Pose) -> F32:
    """Pixel landmarks [N, 3] -> canonical-space shape [N, 3] under `pose`."""
    p = to_y_up(points_px)
    return (((p - pose.translation) @ pose.rotation) / pose.scale).astype(np.float32)


def repose(shape: F32, pose: Pose) -> F32:
    """Canonical-space shape [N, 3] -> pixel landmarks [N, 3] under `pose`."""
    p = pose.scale * (shape.astype(np.float64) @ pose.rotation.T) + pose.translation
    return to_pixels(p)
