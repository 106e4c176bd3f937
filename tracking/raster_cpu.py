"""The CPU renderer's compiled kernels (Numba): `tracking.raster`'s algorithm as one loop, and
`tracking.render`'s shading as another.

Same rules as the PyTorch rasterizer (pixel centres at +0.5, a centre is inside when all three
barycentric weights are >= 0, the nearest quantized depth wins, ties to the lower triangle id)
and the same float32 arithmetic per candidate pixel, so on the same mesh it produces the same
fragments, bit for bit (tests/test_raster.py). The per-triangle coefficients are computed in
NumPy exactly as the PyTorch path computes them; the per-pixel work is a loop over each
triangle's bounding box that keeps, per pixel, the smallest (depth, triangle) key and the
weights that came with it. It runs on the calling thread without the GIL, so it neither
competes with the engine's and MediaPipe's threads for the cores nor blocks the event loop.

Numba compiles the kernel on first use and caches the machine code beside this file (or in
NUMBA_CACHE_DIR, or the user's cache folder), so a later process loads it in a fraction of a
second; where none of those is writable, each process compiles it afresh (`compiled`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from tracking.mesh import Region
from tracking.raster import DEPTH_BITS, ID_BITS

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
_FAR = np.iinfo(np.int64).max
_HALF, _ZERO, _ONE = np.float32(0.5), np.float32(0.0), np.float32(1.0)
_LEVELS = float((1 << DEPTH_BITS) - 1)
log = logging.getLogger(__name__)


def compiled(function: Callable[..., Any]) -> Any:
    """`numba.njit(nogil=True)`, with its machine code cached on disk where Numba finds a writable
    folder. A read-only install run by a user without a writable home has none, and Numba would
    refuse to decorate (RuntimeError at import); then it compiles in each process instead (about
    1.5 s, once per process)."""
    try:
        return numba.njit(cache=True, nogil=True)(function)
    except RuntimeError as exc:
        log.info("%s: %s; compiling it in this process (set NUMBA_CACHE_DIR to keep it)", function.__name__, exc)
        return numba.njit(nogil=True)(function)


@dataclass(frozen=True)
class CpuFragments:
    """`tracking.raster.Fragments` (the same fields, the same meaning) as NumPy arrays."""

    height: int
    width: int
    pixel: I64
    triangle: I64
    bary: F32

    def dense(self, values: npt.NDArray[np.generic], fill: float = 0.0) -> npt.NDArray[np.generic]:
        """Per-fragment values [P, C] (or [P]) -> an image [H, W, C] (or [H, W])."""
        shape = (self.height * self.width, *values.shape[1:])
        out = np.zeros(shape, values.dtype) if fill == 0 else np.full(shape, fill, values.dtype)
        out[self.pixel] = values
        return out.reshape(self.height, self.width, *values.shape[1:])


@compiled
def _rasterize(
    live: I64,
    x0: I64,
    x1: I64,
    y0: I64,
    y1: I64,
    origin: F32,
    coef_a: F32,
    coef_b: F32,
    depth: F32,
    lo: float,
    span: float,
    width: int,
    best: I64,
    weights: F32,
) -> tuple[I64, I64, F32]:
    """Per live triangle, every pixel centre of its box: the weights w_k = a_k cx + b_k cy + [k == 0]
    and depth z = a cx + b cy + z_0 (cx, cy relative to corner 0, float32, in the order the
    PyTorch path adds them); the smallest key (quantized depth above the triangle id) wins its
    pixel. `best` is all _FAR on entry and is left so; `weights` is scratch."""
    id_bits = ID_BITS
    far = _FAR
    top, bottom, left, right = 1 << 62, -1, 1 << 62, -1
    for t in live:
        ox, oy = origin[t, 0], origin[t, 1]
        a0, a1, a2 = coef_a[t, 0], coef_a[t, 1], coef_a[t, 2]
        b0, b1, b2 = coef_b[t, 0], coef_b[t, 1], coef_b[t, 2]
        da, db, dc = depth[t, 0], depth[t, 1], depth[t, 2]
        top, bottom = min(top, y0[t]), max(bottom, y1[t])
        left, right = min(left, x0[t]), max(right, x1[t])
        for py in range(y0[t], y1[t] + 1):
            cy = np.float32(py) + _HALF - oy
            for px in range(x0[t], x1[t] + 1):
                cx = np.float32(px) + _HALF - ox
                w0 = a0 * cx + b0 * cy + _ONE
                w1 = a1 * cx + b1 * cy + _ZERO
                w2 = a2 * cx + b2 * cy + _ZERO
                if w0 < _ZERO or w1 < _ZERO or w2 < _ZERO:
                    continue
                z = da * cx + db * cy + dc
                unit = min(max((np.float64(z) - lo) / span, 0.0), 1.0)
                key = (np.int64(np.rint(unit * _LEVELS)) << id_bits) | t
                p = py * width + px
                if key < best[p]:
                    best[p] = key
                    weights[p, 0], weights[p, 1], weights[p, 2] = w0, w1, w2
    count = 0
    for py in range(top, bottom + 1):
        for p in range(py * width + left, py * width + right + 1):
            count += best[p] != far
    pixel = np.empty(count, np.int64)
    triangle = np.empty(count, np.int64)
    bary = np.empty((count, 3), np.float32)
    i = 0
    mask = (1 << id_bits) - 1
    for py in range(top, bottom + 1):
        for p in range(py * width + left, py * width + right + 1):
            if best[p] != far:
                pixel[i], triangle[i] = p, best[p] & mask
                bary[i, 0], bary[i, 1], bary[i, 2] = weights[p, 0], weights[p, 1], weights[p, 2]
                best[p] = far
                i += 1
    return pixel, triangle, bary


class CpuRasterizer:
    """Rasterizes meshes into `height` x `width` with a z-buffer (the conventions of
    `tracking.raster.rasterize`), reusing its per-pixel buffers from frame to frame. One
    instance per thread."""

    def __init__(self, height: int, width: int) -> None:
        if height < 1 or width < 1:
            raise ValueError(f"the image must be at least 1 x 1, got {height} x {width}")
        self.height, self.width = height, width
        self._best = np.full(height * width, _FAR, dtype=np.int64)  # kept all _FAR between calls
        self._weights = np.zeros((height * width, 3), dtype=np.float32)

    def __call__(self, vertices: npt.NDArray[np.floating], triangles: I64) -> CpuFragments:
        """Args: vertices [V, 3] (x, y) in pixels, z depth (smaller is nearer); triangles [T, 3]
        int64 vertex indices, any winding."""
        if vertices.ndim != 2 or vertices.shape[1] != 3 or triangles.ndim != 2 or triangles.shape[1] != 3:
            raise ValueError(f"want vertices [V, 3] and triangles [T, 3], got {vertices.shape}, {triangles.shape}")
        height, width = self.height, self.width
        v = np.asarray(vertices, dtype=np.float32)
        corners = v[triangles]  # [T, 3, 3]
        xs, ys, zs = corners[..., 0], corners[..., 1], corners[..., 2]
        x0 = np.clip(np.ceil(xs.min(axis=1) - 0.5), 0, width).astype(np.int64)
        x1 = np.clip(np.floor(xs.max(axis=1) - 0.5), -1, width - 1).astype(np.int64)
        y0 = np.clip(np.ceil(ys.min(axis=1) - 0.5), 0, height).astype(np.int64)
        y1 = np.clip(np.floor(ys.max(axis=1) - 0.5), -1, height - 1).astype(np.int64)

        # Barycentric weights and depth, affine in the pixel centre relative to corner 0, with
        # tracking.raster's float32 operations in the same order.
        nx, ny = np.roll(xs, -1, axis=1), np.roll(ys, -1, axis=1)  # corner k+1
        px_, py_ = np.roll(xs, -2, axis=1), np.roll(ys, -2, axis=1)  # corner k+2
        area = (xs[:, 1] - xs[:, 0]) * (ys[:, 2] - ys[:, 0]) - (ys[:, 1] - ys[:, 0]) * (xs[:, 2] - xs[:, 0])
        ok = np.abs(area) > 1e-12
        inv = np.where(ok, np.float32(1.0) / np.where(ok, area, np.float32(1.0)), np.float32(0.0))
        coef_a = np.ascontiguousarray(-(py_ - ny) * inv[:, None])  # [T, 3]: d w_k / dx
        coef_b = np.ascontiguousarray((px_ - nx) * inv[:, None])  # d w_k / dy
        depth = np.stack([(zs * coef_a).sum(axis=1), (zs * coef_b).sum(axis=1), zs[:, 0]], axis=1)
        origin = np.ascontiguousarray(corners[:, 0, :2])

        live = np.flatnonzero(ok & (x1 >= x0) & (y1 >= y0))
        if live.size == 0:
            return _empty(height, width)
        lo, hi = float(v[:, 2].min()), float(v[:, 2].max())
        span = max(hi - lo, 1e-6)
        best, weights = self._best, self._weights
        pixel, triangle, bary = _rasterize(
            live, x0, x1, y0, y1, origin, coef_a, coef_b, depth, lo, span, width, best, weights
        )
        return CpuFragments(height, width, pixel, triangle, bary)


def _empty(height: int, width: int) -> CpuFragments:
    none = np.zeros(0, dtype=np.int64)
    return CpuFragments(height, width, none, none, np.zeros((0, 3), dtype=np.float32))


_EPS, _U16, _U8 = np.float32(1e-8), np.float32(65535), np.float32(255)
_CODE = np.float32(len(Region) - 1)
_EYE, _IRIS = int(Region.EYE), int(Region.IRIS)


@compiled
def shade(
    pixel: npt.NDArray[np.int64],
    triangle: npt.NDArray[np.int64],
    bary: F32,
    vertices: F32,
    triangles: npt.NDArray[np.int64],
    tri_region: npt.NDArray[np.int64],
    uv: F32,
    facing: np.float32,
    irises: F32,
    albedo: F32,
    light: F32,
    ambient: np.float32,
    diffuse: np.float32,
    flat: npt.NDArray[np.bool_],
    side: int,
    uv16: npt.NDArray[np.uint16],
    shaded8: npt.NDArray[np.uint8],
    region_out: npt.NDArray[np.int64],
) -> None:
    """`tracking.render`'s CPU shading. Per covered pixel: its region (an eye pixel inside an iris
    disc is iris), the UV and vertex normal interpolated from its triangle's corners, the shading
    (ambient + diffuse x Lambert, flat where `flat[region]`), all quantized into the flat output images
    (uint16 UV with region / (regions - 1) in blue, uint8 RGB, int64 regions). The vertex normals
    are the sums of their triangles' normals (y up, towards the viewer), added in triangle order,
    as np.add.at adds them."""
    normals = np.zeros((vertices.shape[0], 3), np.float32)
    for t in range(triangles.shape[0]):
        i, j, k = triangles[t, 0], triangles[t, 1], triangles[t, 2]
        # y and z flipped to y up, z towards the viewer; edges from corner i.
        ex, ey, ez = vertices[j, 0] - vertices[i, 0], vertices[i, 1] - vertices[j, 1], vertices[i, 2] - vertices[j, 2]
        fx, fy, fz = vertices[k, 0] - vertices[i, 0], vertices[i, 1] - vertices[k, 1], vertices[i, 2] - vertices[k, 2]
        nx, ny, nz = (ey * fz - ez * fy) * facing, (ez * fx - ex * fz) * facing, (ex * fy - ey * fx) * facing
        for v in (i, j, k):
            normals[v, 0] += nx
            normals[v, 1] += ny
            normals[v, 2] += nz
    for n in range(pixel.shape[0]):
        p, t = pixel[n], triangle[n]
        code = tri_region[t]
        if code == _EYE:
            x, y = np.float32(p % side) + _HALF, np.float32(p // side) + _HALF
            for d in range(irises.shape[0]):
                dx, dy = x - irises[d, 0], y - irises[d, 1]
                if dx * dx + dy * dy <= irises[d, 2]:
                    code = _IRIS
        region_out[p] = code
        c0, c1, c2 = triangles[t, 0], triangles[t, 1], triangles[t, 2]
        w0, w1, w2 = bary[n, 0], bary[n, 1], bary[n, 2]
        u = w0 * uv[c0, 0] + w1 * uv[c1, 0] + w2 * uv[c2, 0]
        v = w0 * uv[c0, 1] + w1 * uv[c1, 1] + w2 * uv[c2, 1]
        uv16[p, 0] = np.uint16(np.rint(min(max(u, _ZERO), _ONE) * _U16))
        uv16[p, 1] = np.uint16(np.rint(min(max(v, _ZERO), _ONE) * _U16))
        uv16[p, 2] = np.uint16(np.rint(min(max(np.float32(code) / _CODE, _ZERO), _ONE) * _U16))
        lit = _ONE
        if not flat[code]:
            mx = w0 * normals[c0, 0] + w1 * normals[c1, 0] + w2 * normals[c2, 0]
            my = w0 * normals[c0, 1] + w1 * normals[c1, 1] + w2 * normals[c2, 1]
            mz = w0 * normals[c0, 2] + w1 * normals[c1, 2] + w2 * normals[c2, 2]
            norm = max(np.sqrt(mx * mx + my * my + mz * mz), _EPS)
            lambert = (mx / norm) * light[0] + (my / norm) * light[1] + (mz / norm) * light[2]
            lit = ambient + diffuse * max(lambert, _ZERO)
        for c in range(3):
            shaded8[p, c] = np.uint8(np.rint(min(max(albedo[code, c] * lit, _ZERO), _ONE) * _U8))
