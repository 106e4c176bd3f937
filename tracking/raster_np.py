"""The CPU rasterizer: `tracking.raster`'s algorithm in NumPy, without per-pixel gathers.

Same rules as the PyTorch rasterizer (pixel centres at +0.5, a centre is inside when all three
barycentric weights are >= 0, the nearest quantized depth wins, ties to the lower triangle id)
and the same float32 arithmetic per candidate pixel, so on the same mesh it produces the same
fragments. What differs is how candidates are enumerated: triangles are grouped by their
bounding box rounded up to a power of two per side, and each group is evaluated as one
[triangles, rows, columns] broadcast, so a candidate costs a few multiply-adds, and index
arithmetic is left for the candidates found inside. NumPy's elementwise work runs on the calling
thread, so the renderer does not compete with the engine's and MediaPipe's threads for the cores
(PyTorch's intra-op threads did, on a 2-core machine).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tracking.raster import DEPTH_BITS, ID_BITS

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
_MIN_BOX = 4  # the smallest group side: fewer, larger groups cost less than tight boxes
_FAR = np.iinfo(np.int64).max


@dataclass(frozen=True)
class NpFragments:
    """The visible fragment of every covered pixel (as `tracking.raster.Fragments`, in NumPy).

    Attributes:
        height, width: image size.
        pixel: [P] int64 flat index (y * width + x) of each covered pixel, ascending.
        triangle: [P] int64 triangle drawn there.
        bary: [P, 3] float32 barycentric weights of that triangle's corners.
    """

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


def _side(extent: I64) -> I64:
    """Each box side rounded up to a power of two, at least _MIN_BOX."""
    return np.maximum(_MIN_BOX, 1 << np.ceil(np.log2(np.maximum(extent, 1))).astype(np.int64))


class NpRasterizer:
    """Rasterizes meshes into `height` x `width` with a z-buffer (the conventions of
    `tracking.raster.rasterize`), reusing its per-pixel buffers from frame to frame. One
    instance per thread."""

    def __init__(self, height: int, width: int) -> None:
        if height < 1 or width < 1:
            raise ValueError(f"the image must be at least 1 x 1, got {height} x {width}")
        self.height, self.width = height, width
        self._best = np.full(height * width, _FAR, dtype=np.int64)  # kept all _FAR between calls
        self._row = np.full(height * width, -1, dtype=np.int64)  # kept all -1 between calls
        self._covered = np.zeros(height * width, dtype=bool)  # kept all False between calls

    def __call__(self, vertices: npt.NDArray[np.floating], triangles: I64) -> NpFragments:
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
        box_w, box_h = x1 - x0 + 1, y1 - y0 + 1

        # Barycentric weights and depth, affine in the pixel centre relative to corner 0, exactly
        # as tracking.raster computes them (float32, the same operations in the same order).
        nx, ny = np.roll(xs, -1, axis=1), np.roll(ys, -1, axis=1)  # corner k+1
        px_, py_ = np.roll(xs, -2, axis=1), np.roll(ys, -2, axis=1)  # corner k+2
        area = (xs[:, 1] - xs[:, 0]) * (ys[:, 2] - ys[:, 0]) - (ys[:, 1] - ys[:, 0]) * (xs[:, 2] - xs[:, 0])
        ok = np.abs(area) > 1e-12
        inv = np.where(ok, np.float32(1.0) / np.where(ok, area, np.float32(1.0)), np.float32(0.0))
        coef_a = -(py_ - ny) * inv[:, None]  # [T, 3]: d w_k / dx
        coef_b = (px_ - nx) * inv[:, None]  # d w_k / dy
        depth_a, depth_b = (zs * coef_a).sum(axis=1), (zs * coef_b).sum(axis=1)
        depth_c = zs[:, 0]  # w_k at corner 0 is 1 for k = 0, else 0

        live = np.flatnonzero(ok & (box_w > 0) & (box_h > 0))
        if live.size == 0:
            return _empty(height, width)
        groups = _side(box_w[live]) * (1 << 20) + _side(box_h[live])
        tri_parts, pixel_parts, value_parts = [], [], []
        for group in np.unique(groups):
            t = live[groups == group]
            gw, gh = int(group >> 20), int(group & ((1 << 20) - 1))
            px = x0[t, None] + np.arange(gw)  # [n, gw]
            py = y0[t, None] + np.arange(gh)  # [n, gh]
            cx = px.astype(np.float32) + np.float32(0.5) - xs[t, 0, None]  # centres relative to corner 0
            cy = py.astype(np.float32) + np.float32(0.5) - ys[t, 0, None]
            # Centres outside the triangle's box (or the image) are never inside: NaN fails every test.
            cx[px > x1[t, None]] = np.nan
            cy[py > y1[t, None]] = np.nan
            a, b = coef_a[t], coef_b[t]
            weights = [
                a[:, k, None, None] * cx[:, None, :] + b[:, k, None, None] * cy[:, :, None] + np.float32(k == 0)
                for k in range(3)
            ]  # [n, gh, gw] each
            flat = np.flatnonzero((weights[0] >= 0) & (weights[1] >= 0) & (weights[2] >= 0))
            ti, rest = np.divmod(flat, gh * gw)
            ri, ci = np.divmod(rest, gw)
            fx, fy = cx.ravel()[ti * gw + ci], cy.ravel()[ti * gh + ri]
            tt = t[ti]
            depth = depth_a[tt] * fx + depth_b[tt] * fy + depth_c[tt]
            tri_parts.append(tt)
            pixel_parts.append(py.ravel()[ti * gh + ri] * width + px.ravel()[ti * gw + ci])
            value_parts.append(np.stack([*(w.ravel()[flat] for w in weights), depth], axis=1))
        tri = np.concatenate(tri_parts)
        if tri.size == 0:
            return _empty(height, width)
        pixel = np.concatenate(pixel_parts)
        values = np.concatenate(value_parts)  # [N, 4]: w0, w1, w2, z

        # Nearest fragment per pixel: quantized depth packed above the triangle id, the min wins.
        lo, hi = float(v[:, 2].min()), float(v[:, 2].max())
        unit = (values[:, 3].astype(np.float64) - lo) / max(hi - lo, 1e-6)
        q = np.round(np.clip(unit, 0, 1) * ((1 << DEPTH_BITS) - 1)).astype(np.int64)
        key = (q << ID_BITS) | tri
        best, row, covered = self._best, self._row, self._covered
        try:
            np.minimum.at(best, pixel, key)
            won = np.flatnonzero(key == best[pixel])
            row[pixel[won]] = won
            covered[pixel] = True
            pixels = np.flatnonzero(covered)
            rows = row[pixels]
        finally:  # back to blank for the next call, touching only what this one wrote
            best[pixel] = _FAR
            row[pixel] = -1
            covered[pixel] = False
        return NpFragments(height, width, pixels, tri[rows], np.ascontiguousarray(values[rows, :3]))


def _empty(height: int, width: int) -> NpFragments:
    none = np.zeros(0, dtype=np.int64)
    return NpFragments(height, width, none, none, np.zeros((0, 3), dtype=np.float32))
