"""The personal expression model and retargeting for cross-reenactment.

Blendshape coefficients are (mostly) identity-independent; the face shape they produce is not.
We fit, on the person's own video, a linear map from their blendshapes to their pose-free face
shape: shape ≈ neutral + Σ_k β_k · basis_k (ridge regression over all tracked frames). Any
driver's blendshapes then move *this* person's face, and the avatar renders only its own
identity.

Retargeting is relative to a neutral reference on both sides: the driver's neutral
(calibration: their resting face and head pose) maps to the avatar's neutral, and the driver's
deviation from it is added to the avatar's, then clamped to what the avatar's video covered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tracking.mesh import N_LANDMARKS
from tracking.pose import Pose, repose, rotation_from_euler
from tracking.tracker import BLENDSHAPE_NAMES, N_BLENDSHAPES

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

RIDGE = 1e-4
"""Ridge regularization per coefficient (blendshapes are in [0, 1]), chosen on held-out frames by
benchmarks/bench_expression.py (cap12 -> cap13): 1e-2 gave a landmark error of 0.077 and opened
the mouth to 0.75 and closed the eyes to 0.51 of what the person did; 1e-4 gives 0.063, 1.02 and
0.97. A stronger ridge shrinks the coefficients a person moves rarely (jaw, blinks) towards zero."""

FREE_TOP = ("eyeBlinkLeft", "eyeBlinkRight")
"""Coefficients a driver may push past the top of the avatar's tracked range, up to 1: a training
video holds few blinks (the demo avatar's 99th percentile of eyeBlink is 0.22), so clamping there
leaves the avatar's eyes half open while the driver's close."""


@dataclass(frozen=True)
class ExpressionModel:
    """A person's face as a linear function of blendshapes, plus their neutral reference.

    Attributes:
        neutral: [478, 3] canonical-space shape at zero blendshapes.
        basis: [52, 478, 3] displacement per unit of each coefficient (index 0 unused, zero).
        neutral_blendshapes: [52] this person's resting coefficients.
        neutral_pose: [7] this person's typical pose vector (see Pose.as_vector).
        blend_range: [2, 52] low/high coefficients seen in the video (1st/99th percentile).
        pose_range: [2, 3] low/high pitch, yaw, roll (degrees) seen in the video.
    """

    neutral: F32
    basis: F32
    neutral_blendshapes: F32
    neutral_pose: F64
    blend_range: F32
    pose_range: F64

    def shape(self, blendshapes: F32) -> F32:
        """[52] coefficients -> [478, 3] canonical-space shape."""
        assert blendshapes.shape == (N_BLENDSHAPES,), blendshapes.shape
        return self.neutral + np.tensordot(blendshapes, self.basis, axes=1).astype(np.float32)

    @staticmethod
    def fit(shapes: F32, blendshapes: F32, poses: F64) -> ExpressionModel:
        """Fit from tracked frames: shapes [N, 478, 3], blendshapes [N, 52], poses [N, 7]."""
        n = shapes.shape[0]
        assert shapes.shape == (n, N_LANDMARKS, 3) and blendshapes.shape == (n, N_BLENDSHAPES), (
            shapes.shape,
            blendshapes.shape,
        )
        x = np.concatenate([np.ones((n, 1)), blendshapes[:, 1:].astype(np.float64)], axis=1)
        y = shapes.reshape(n, -1).astype(np.float64)
        penalty = RIDGE * n * np.eye(x.shape[1])
        penalty[0, 0] = 0.0  # the mean shape is not regularized
        weights = np.linalg.solve(x.T @ x + penalty, x.T @ y)
        basis = np.zeros((N_BLENDSHAPES, N_LANDMARKS, 3), dtype=np.float32)
        basis[1:] = weights[1:].reshape(-1, N_LANDMARKS, 3)
        neutral_index = _most_neutral_frame(blendshapes, poses)
        return ExpressionModel(
            neutral=weights[0].reshape(N_LANDMARKS, 3).astype(np.float32),
            basis=basis,
            neutral_blendshapes=blendshapes[neutral_index].astype(np.float32),
            neutral_pose=np.median(poses, axis=0),
            blend_range=np.percentile(blendshapes, [1, 99], axis=0).astype(np.float32),
            pose_range=np.percentile(poses[:, :3], [1, 99], axis=0),
        )

    def to_arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        return {f"expr_{k}": getattr(self, k) for k in self.__dataclass_fields__}

    @staticmethod
    def from_arrays(arrays: dict[str, npt.NDArray[np.generic]]) -> ExpressionModel:
        fields = ExpressionModel.__dataclass_fields__
        return ExpressionModel(**{k: np.asarray(arrays[f"expr_{k}"]) for k in fields})


def _most_neutral_frame(blendshapes: F32, poses: F64) -> int:
    """A frame with little expression and a near-median head pose."""
    expression = blendshapes[:, 1:].sum(axis=1)
    turn = np.abs(poses[:, :3] - np.median(poses[:, :3], axis=0)).sum(axis=1)
    return int(np.argmin(expression / (expression.std() + 1e-6) + turn / (turn.std() + 1e-6)))


@dataclass(frozen=True)
class Calibration:
    """A driver's neutral reference: their resting blendshapes [52] and pose vector [7]."""

    blendshapes: F32
    pose: F64


class Retargeter:
    """Maps a driver's blendshapes and pose onto the avatar's face, in the avatar's frame.

    Until `calibrate` is called the driver is assumed to share the avatar's neutral, which is
    right for the avatar's own person and a fair start for anyone else.
    """

    def __init__(self, model: ExpressionModel) -> None:
        self.model = model
        self.reference = Calibration(model.neutral_blendshapes, model.neutral_pose)
        top = np.maximum(model.blend_range[1], model.neutral_blendshapes)
        top[[BLENDSHAPE_NAMES.index(name) for name in FREE_TOP]] = 1.0
        self._top = top

    def calibrate(self, blendshapes: F32, pose: F64) -> None:
        self.reference = Calibration(blendshapes.astype(np.float32), np.asarray(pose, dtype=np.float64))

    def coefficients(self, blendshapes: F32) -> F32:
        """The avatar's coefficients: its neutral plus the driver's change, clamped to its range
        (blinks only to 1: see FREE_TOP)."""
        m = self.model
        moved = m.neutral_blendshapes + (blendshapes - self.reference.blendshapes)
        return np.clip(moved, m.blend_range[0], self._top)

    def pose(self, pose: F64) -> F64:
        """The avatar's pose vector: its neutral pose moved as the driver moved from theirs."""
        m, ref = self.model, self.reference
        rel = rotation_from_euler(*ref.pose[:3]).T @ rotation_from_euler(*pose[:3])
        rotation = rotation_from_euler(*m.neutral_pose[:3]) @ rel
        angles = Pose(rotation, np.zeros(3), 1.0).euler_degrees()
        lo, hi = m.pose_range
        angles_clamped = np.clip(angles, np.minimum(lo, m.neutral_pose[:3]), np.maximum(hi, m.neutral_pose[:3]))
        ratio = m.neutral_pose[6] / ref.pose[6]
        translation = m.neutral_pose[3:6] + (pose[3:6] - ref.pose[3:6]) * ratio
        scale = m.neutral_pose[6] * pose[6] / ref.pose[6]
        return np.array([*angles_clamped, *translation, scale])

    def __call__(self, blendshapes: F32, pose: F64) -> F32:
        """The avatar's [478, 3] landmarks in its source-frame pixels."""
        target = self.pose(pose)
        return repose(self.model.shape(self.coefficients(blendshapes)), Pose.from_vector(target))
