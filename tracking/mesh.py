"""MediaPipe's canonical face mesh (468 vertices with UV, 898 triangles), read from the model bundle.

The bundle `face_landmarker.task` is a zip; its member
`geometry_pipeline_metadata_landmarks.binarypb` is a protobuf whose field 1 holds the mesh
(field 3: float32 vertex buffer, 5 floats per vertex x, y, z, u, v; field 4: triangle indices)
and whose repeated field 2 holds the Procrustes landmark weights. No schema is shipped, so we
read the wire format directly: it is a handful of lines.

The mesh is closed: triangles span the eye and mouth openings. MediaPipe's own contour
connections (eyes, lips) tell which triangles those are, so eyes, lips and the mouth opening
get their own region in every render.
"""

from __future__ import annotations

import struct
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from enum import IntEnum
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tracking.assets import FACE_LANDMARKER, AssetMissing, locate

N_MESH_VERTICES = 468
N_LANDMARKS = 478  # 468 mesh vertices + 2 x 5 iris points
RIGHT_IRIS = tuple(range(468, 473))  # centre first, then 4 rim points (subject's right eye)
LEFT_IRIS = tuple(range(473, 478))

_METADATA_MEMBER = "geometry_pipeline_metadata_landmarks.binarypb"


class Region(IntEnum):
    """Per-pixel class of a render; the UV render's blue channel carries it."""

    BACKGROUND = 0
    SKIN = 1
    LIPS = 2
    EYE = 3
    IRIS = 4
    MOUTH = 5


@dataclass(frozen=True)
class CanonicalMesh:
    """The canonical face, with a Region per triangle.

    Attributes:
        vertices: [468, 3] float32, canonical space (cm, x right, y up, z towards the viewer).
        uv: [468, 2] float32 texture coordinates in [0, 1] (v grows downwards).
        triangles: [898, 3] int64 vertex indices.
        regions: [898] int64 Region of each triangle (SKIN, LIPS, EYE or MOUTH).
        procrustes_weights: [468] float32, MediaPipe's weights for the pose fit (mostly zero).
        eye_loops: (subject's right, subject's left) eye contours, in walking order.
        inner_lip_loop: the mouth opening's contour, in walking order.
        outer_lip_loop: the outer lip line, in walking order.
    """

    vertices: npt.NDArray[np.float32]
    uv: npt.NDArray[np.float32]
    triangles: npt.NDArray[np.int64]
    regions: npt.NDArray[np.int64]
    procrustes_weights: npt.NDArray[np.float32]
    eye_loops: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]
    inner_lip_loop: npt.NDArray[np.int64]
    outer_lip_loop: npt.NDArray[np.int64]


def _loops(edges: list[tuple[int, int]]) -> list[npt.NDArray[np.int64]]:
    """Split a set of undirected edges that form closed curves into loops in walking order."""
    neighbours: dict[int, list[int]] = defaultdict(list)
    for u, v in edges:
        neighbours[u].append(v)
        neighbours[v].append(u)
    loops, seen = [], set()
    for start in sorted(neighbours):
        if start in seen:
            continue
        loop, prev, cur = [start], -1, start
        seen.add(start)
        while True:
            nxt = next(n for n in neighbours[cur] if n != prev)
            if nxt == start:
                break
            loop.append(nxt)
            seen.add(nxt)
            prev, cur = cur, nxt
        loops.append(np.array(loop, dtype=np.int64))
    return loops


def _contours() -> tuple[list[npt.NDArray[np.int64]], list[npt.NDArray[np.int64]]]:
    """(eye loops [right, left], lip loops [inner, outer]) from MediaPipe's connection lists."""
    from mediapipe.tasks.python.vision import FaceLandmarksConnections as conn

    def edges(name: str) -> list[tuple[int, int]]:
        return [(c.start, c.end) for c in getattr(conn, name)]

    eyes = [
        _loops(edges("FACE_LANDMARKS_RIGHT_EYE"))[0],
        _loops(edges("FACE_LANDMARKS_LEFT_EYE"))[0],
    ]
    lips = _loops(edges("FACE_LANDMARKS_LIPS"))
    lips.sort(key=lambda loop: 0 if 13 in loop else 1)  # 13: upper inner-lip midpoint
    return eyes, lips


def _triangle_regions(
    vertices: npt.NDArray[np.float32],
    triangles: npt.NDArray[np.int64],
    eyes: list[npt.NDArray[np.int64]],
    inner: npt.NDArray[np.int64],
    outer: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    """A triangle with all corners on an eye (inner-lip) contour spans that opening; one whose
    centroid lies inside the outer lip line but is not the opening is lip."""
    from matplotlib.path import Path as Polygon

    regions = np.full(len(triangles), Region.SKIN, dtype=np.int64)
    centroids = vertices[triangles, :2].mean(axis=1)
    regions[Polygon(vertices[outer, :2]).contains_points(centroids)] = Region.LIPS
    for loop, region in ((eyes[0], Region.EYE), (eyes[1], Region.EYE), (inner, Region.MOUTH)):
        regions[np.isin(triangles, loop).all(axis=1)] = region
    return regions


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, pos


def _fields(buf: bytes) -> dict[int, list[int | bytes]]:
    """Decode one protobuf message into {field number: [values]} (varints as int, rest as bytes)."""
    out: dict[int, list[int | bytes]] = defaultdict(list)
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out[field].append(value)
    return out


def _floats(values: list[int | bytes]) -> list[float]:
    """Repeated float32 field, packed (one bytes blob) or not (4 bytes each)."""
    blob = b"".join(v for v in values if isinstance(v, bytes))
    return list(struct.unpack(f"<{len(blob) // 4}f", blob))


def _ints(values: list[int | bytes]) -> list[int]:
    """Repeated varint field, packed or not."""
    out: list[int] = []
    for v in values:
        if isinstance(v, int):
            out.append(v)
        else:
            pos = 0
            while pos < len(v):
                n, pos = _varint(v, pos)
                out.append(n)
    return out


def parse_canonical_mesh(metadata: bytes) -> CanonicalMesh:
    top = _fields(metadata)
    mesh_msg = top[1][0]
    assert isinstance(mesh_msg, bytes)
    mesh = _fields(mesh_msg)
    buffer = np.array(_floats(mesh[3]), dtype=np.float32).reshape(-1, 5)
    triangles = np.array(_ints(mesh[4]), dtype=np.int64).reshape(-1, 3)
    if buffer.shape[0] != N_MESH_VERTICES:
        raise ValueError(f"canonical mesh has {buffer.shape[0]} vertices, expected {N_MESH_VERTICES}")
    weights = np.zeros(N_MESH_VERTICES, dtype=np.float32)
    for entry in top[2]:
        assert isinstance(entry, bytes)
        item = _fields(entry)
        index = _ints(item[1])[0] if 1 in item else 0
        weights[index] = _floats(item[2])[0] if 2 in item else 0.0
    vertices = buffer[:, :3].copy()
    eyes, (inner, outer) = _contours()
    return CanonicalMesh(
        vertices=vertices,
        uv=buffer[:, 3:5].copy(),
        triangles=triangles,
        regions=_triangle_regions(vertices, triangles, eyes, inner, outer),
        procrustes_weights=weights,
        eye_loops=(eyes[0], eyes[1]),
        inner_lip_loop=inner,
        outer_lip_loop=outer,
    )


@cache
def load_canonical_mesh(bundle: Path | None = None) -> CanonicalMesh:
    """The canonical mesh from `bundle` (default: the verified FaceLandmarker bundle)."""
    path = locate(FACE_LANDMARKER, bundle)
    try:
        with zipfile.ZipFile(path) as archive:
            metadata = archive.read(_METADATA_MEMBER)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise AssetMissing(f"{path} is not a FaceLandmarker bundle ({exc}); {FACE_LANDMARKER.fix}") from exc
    return parse_canonical_mesh(metadata)
