"""Per-frame face tracking on MediaPipe's FaceLandmarker (Tasks API).

One call gives 478 landmarks (468 mesh vertices + 10 iris points), the 52 ARKit blendshape
coefficients and MediaPipe's facial transformation matrix; we add the head pose and the
pose-free face shape from our own similarity fit (tracking.pose), which re-projects exactly.
"""

from __future__ import annotations

import atexit
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from tracking.assets import FACE_LANDMARKER, locate
from tracking.mesh import N_LANDMARKS, N_MESH_VERTICES, CanonicalMesh, load_canonical_mesh
from tracking.pose import Pose, depose, fit_pose

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
BLENDSHAPE_NAMES = [
    "_neutral",
    "browDownLeft",
    "browDownRight",
    "browInnerUp",
    "browOuterUpLeft",
    "browOuterUpRight",
    "cheekPuff",
    "cheekSquintLeft",
    "cheekSquintRight",
    "eyeBlinkLeft",
    "eyeBlinkRight",
    "eyeLookDownLeft",
    "eyeLookDownRight",
    "eyeLookInLeft",
    "eyeLookInRight",
    "eyeLookOutLeft",
    "eyeLookOutRight",
    "eyeLookUpLeft",
    "eyeLookUpRight",
    "eyeSquintLeft",
    "eyeSquintRight",
    "eyeWideLeft",
    "eyeWideRight",
    "jawForward",
    "jawLeft",
    "jawOpen",
    "jawRight",
    "mouthClose",
    "mouthDimpleLeft",
    "mouthDimpleRight",
    "mouthFrownLeft",
    "mouthFrownRight",
    "mouthFunnel",
    "mouthLeft",
    "mouthLowerDownLeft",
    "mouthLowerDownRight",
    "mouthPressLeft",
    "mouthPressRight",
    "mouthPucker",
    "mouthRight",
    "mouthRollLower",
    "mouthRollUpper",
    "mouthShrugLower",
    "mouthShrugUpper",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthStretchLeft",
    "mouthStretchRight",
    "mouthUpperUpLeft",
    "mouthUpperUpRight",
    "noseSneerLeft",
    "noseSneerRight",
]  # MediaPipe's output order
N_BLENDSHAPES = len(BLENDSHAPE_NAMES)

# MediaPipe's C++ core logs to stderr through glog/absl unless told otherwise.
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaceTrack:
    """One tracked face in one frame.

    Attributes:
        landmarks: [478, 3] float32 pixels: x right, y down, z away from the camera (x's scale).
        blendshapes: [52] float32 ARKit coefficients in [0, 1]; index 0 is MediaPipe's `_neutral`.
        matrix: [4, 4] float32 MediaPipe facial transformation matrix (canonical cm -> camera).
        pose: our similarity fit of the landmarks to the canonical mesh.
        shape: [478, 3] float32 the landmarks in canonical space, head pose removed.
        faces: how many faces the frame held (the largest is tracked).
    """

    landmarks: F32
    blendshapes: F32
    matrix: F32
    pose: Pose
    shape: F32
    faces: int


def face_size(landmarks: F32) -> float:
    """Largest side (pixels) of the landmarks' bounding box: the face's scale in the image."""
    extent = landmarks[:, :2].max(axis=0) - landmarks[:, :2].min(axis=0)
    return float(extent.max())


def track_from_landmarks(landmarks: F32, blendshapes: F32, matrix: F32, faces: int, mesh: CanonicalMesh) -> FaceTrack:
    """Complete a FaceTrack from MediaPipe's outputs (pixel landmarks)."""
    pose = fit_pose(landmarks[:N_MESH_VERTICES], mesh.vertices, _pose_weights(mesh))
    return FaceTrack(landmarks, blendshapes, matrix, pose, depose(landmarks, pose), faces)


def _pose_weights(mesh: CanonicalMesh) -> F32:
    """MediaPipe's Procrustes weights, floored so every vertex contributes a little.

    Their non-zero weights sit on rigid points (nose bridge, forehead, cheekbones); the floor
    keeps the fit well posed if a few of them are noisy.
    """
    w = mesh.procrustes_weights
    return np.maximum(w, 0.02 * float(w.max())).astype(np.float32)


_UNCLOSED: set[Any] = set()
"""Landmarkers not closed yet. MediaPipe's FaceLandmarker closes itself in __del__, and a garbage
collection that runs it on a worker thread can deadlock in MediaPipe's dispatcher (seen in a
test run); holding every open landmarker here means a tracker that was never closed leaks until
exit, where they are closed on the main thread, instead of hanging its process."""


@atexit.register
def _close_unclosed() -> None:
    while _UNCLOSED:
        _UNCLOSED.pop().close()


class FaceTracker:
    """FaceLandmarker in VIDEO mode (temporal tracking) or IMAGE mode (independent frames).

    Not thread-safe: give each thread its own tracker. Close it (or use `with`) to release the
    native graph.

    Args:
        bundle: path to `face_landmarker.task`; default: the verified copy from `make setup`.
        mode: "video" uses the previous frame to find the face (fast, needs increasing
            timestamps); "image" detects from scratch each call.
        max_faces: how many faces to look for; more than one lets us warn about extra people.
        min_confidence: detection and presence threshold.
    """

    def __init__(
        self,
        bundle: Path | None = None,
        mode: Literal["video", "image"] = "video",
        max_faces: int = 2,
        min_confidence: float = 0.5,
    ) -> None:
        from mediapipe.tasks.python import BaseOptions, vision

        path = locate(FACE_LANDMARKER, bundle)
        self.mesh = load_canonical_mesh(bundle)
        self.mode = mode
        running = vision.RunningMode.VIDEO if mode == "video" else vision.RunningMode.IMAGE
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(path)),
            running_mode=running,
            num_faces=max_faces,
            min_face_detection_confidence=min_confidence,
            min_face_presence_confidence=min_confidence,
            min_tracking_confidence=min_confidence,
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=True,
        )
        self._landmarker = vision.FaceLandmarker.create_from_options(options)
        _UNCLOSED.add(self._landmarker)
        self._last_ms = -1

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._landmarker is not None:
            _UNCLOSED.discard(self._landmarker)
            self._landmarker.close()
            self._landmarker = None

    def __call__(self, rgb: U8, timestamp_ms: int = 0) -> FaceTrack | None:
        """Track the largest face in an [H, W, 3] uint8 RGB frame; None when no face is found."""
        import mediapipe as mp

        assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8, (rgb.shape, rgb.dtype)
        if self._landmarker is None:
            raise RuntimeError("FaceTracker is closed")
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        if self.mode == "video":
            timestamp_ms = max(int(timestamp_ms), self._last_ms + 1)  # MediaPipe needs strictly increasing
            self._last_ms = timestamp_ms
            result = self._landmarker.detect_for_video(image, timestamp_ms)
        else:
            result = self._landmarker.detect(image)
        if not result.face_landmarks:
            return None
        height, width = rgb.shape[:2]
        scale = np.array([width, height, width], dtype=np.float32)
        candidates = [
            np.array([(p.x, p.y, p.z) for p in face], dtype=np.float32) * scale for face in result.face_landmarks
        ]
        best = int(np.argmax([face_size(c) for c in candidates]))
        landmarks = candidates[best]
        if landmarks.shape[0] != N_LANDMARKS:
            raise RuntimeError(f"FaceLandmarker returned {landmarks.shape[0]} landmarks, expected {N_LANDMARKS}")
        blendshapes = np.array([c.score for c in result.face_blendshapes[best]], dtype=np.float32)
        matrix = np.asarray(result.facial_transformation_matrixes[best], dtype=np.float32)
        return track_from_landmarks(landmarks, blendshapes, matrix, len(candidates), self.mesh)
