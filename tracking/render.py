"""Conditioning images for the generators, rendered from a tracked or retargeted face mesh.

Two pixel-aligned images per frame, as in StyleAvatar:
- the UV rendering I_UV: R, G = the (u, v) texture coordinate of the face surface under each
  pixel, B = the pixel's Region code (skin, lips, eye, iris, mouth opening), 0 off the face;
- the texture rendering I_R: the face with a fixed per-region albedo under a fixed light.
The prepare step and the live path both call `FaceRenderer`, so identical meshes give identical
renders. On CUDA the rasterizer is plain PyTorch (`tracking.raster`); on the CPU it is the same
algorithm in NumPy (`tracking.raster_np`: the same fragments, single-threaded, several times
cheaper per frame), with the shading in NumPy too; `kernel="torch"` keeps the PyTorch path on the
CPU (benchmarks/bench_render.py compares the two).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from tracking.mesh import LEFT_IRIS, N_MESH_VERTICES, RIGHT_IRIS, CanonicalMesh, Region
from tracking.raster import rasterize
from tracking.raster_np import NpRasterizer

F32 = npt.NDArray[np.float32]
N_REGIONS = len(Region)

# Albedo per Region (linear RGB): a neutral skin, reddish lips, white eyes, dark iris and mouth.
_ALBEDO = torch.tensor(
    [
        [0.0, 0.0, 0.0],  # background
        [0.78, 0.66, 0.58],  # skin
        [0.72, 0.36, 0.36],  # lips
        [0.93, 0.93, 0.90],  # eye white
        [0.12, 0.09, 0.08],  # iris
        [0.16, 0.04, 0.05],  # mouth opening
    ]
)
_LIGHT = torch.tensor([0.25, 0.35, 1.0]) / torch.tensor([0.25, 0.35, 1.0]).norm()  # y-up, towards viewer
_AMBIENT = 0.35
Kernel = Literal["auto", "torch", "numpy"]


@dataclass(frozen=True)
class Conditioning:
    """Renders of one frame.

    Attributes:
        uv: [3, H, W] float32: u, v in [0, 1] and region / (N_REGIONS - 1); zeros off the face.
        shaded: [3, H, W] float32 texture rendering in [0, 1].
        region: [H, W] int64 Region per pixel.
    """

    uv: Tensor
    shaded: Tensor
    region: Tensor

    @property
    def face_mask(self) -> Tensor:
        """[H, W] bool: pixels on the face mesh."""
        return self.region > 0

    def uv_u16(self) -> npt.NDArray[np.uint16]:
        """[H, W, 3] uint16 image of `uv` for lossless 16-bit PNG storage."""
        return _quantize(self.uv, 65535, np.uint16)

    def shaded_u8(self) -> npt.NDArray[np.uint8]:
        """[H, W, 3] uint8 RGB image of `shaded`."""
        return _quantize(self.shaded, 255, np.uint8)


def _quantize(image: Tensor, scale: int, dtype: type[np.unsignedinteger]) -> npt.NDArray[Any]:
    """[3, H, W] float in [0, 1] -> [H, W, 3] `dtype`, rounded half to even (as torch.round), in
    NumPy on one thread: PyTorch's threaded elementwise ops on these small images cost more in
    hand-offs than in arithmetic on a busy 2-core machine."""
    hwc = image.detach().permute(1, 2, 0).cpu().numpy().astype(np.float32, copy=False)
    return np.rint(np.clip(hwc, np.float32(0), np.float32(1)) * np.float32(scale)).astype(dtype)


class FaceRenderer:
    """Renders conditioning images at `size` x `size` on `device` from pixel landmarks.

    Args:
        mesh: the canonical mesh (triangles, UVs, regions).
        size: output side in pixels.
        device: where rasterization runs; results are identical on CPU and CUDA up to float
            rounding at triangle edges.
        kernel: "numpy" (the CPU default: `tracking.raster_np` and NumPy shading) or "torch"
            (the CUDA default, and on the CPU the older, slower path).
    """

    def __init__(
        self, mesh: CanonicalMesh, size: int, device: str | torch.device = "cpu", kernel: Kernel = "auto"
    ) -> None:
        self.size = size
        self.device = torch.device(device)
        if kernel == "numpy" and self.device.type != "cpu":
            raise ValueError(f"the numpy kernel renders on the CPU, not on {self.device}")
        self.kernel: Kernel = kernel if kernel != "auto" else ("numpy" if self.device.type == "cpu" else "torch")
        self.triangles = torch.as_tensor(mesh.triangles, device=self.device)
        self.tri_region = torch.as_tensor(mesh.regions, device=self.device)
        self.uv = torch.as_tensor(mesh.uv, device=self.device)
        self.albedo = _ALBEDO.to(self.device)
        self.light = _LIGHT.to(self.device)
        # Winding of the canonical mesh, so that normals point towards the viewer.
        canonical = torch.as_tensor(mesh.vertices, device=self.device)
        self.facing = torch.sign(self._face_normals(canonical)[:, 2].sum())
        if self.kernel == "numpy":
            self._np = _NumpyShading(mesh, size, float(self.facing))

    def _face_normals(self, vertices_y_up: Tensor) -> Tensor:
        corners = vertices_y_up[self.triangles]
        return torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])

    def __call__(self, landmarks: F32 | Tensor) -> Conditioning:
        """Render from [478, 3] landmarks in output pixels (x right, y down, z away)."""
        if self.kernel == "numpy":
            return self._np(np.asarray(landmarks.cpu() if isinstance(landmarks, Tensor) else landmarks, np.float32))
        points = torch.as_tensor(landmarks, dtype=torch.float32, device=self.device)
        assert points.shape[0] >= N_MESH_VERTICES and points.shape[1] == 3, points.shape
        vertices = points[:N_MESH_VERTICES]
        frags = rasterize(vertices, self.triangles, self.size, self.size)

        region = self.tri_region[frags.triangle]
        if points.shape[0] > RIGHT_IRIS[-1]:
            region = self._paint_irises(region, points, frags.pixel)

        y_up = vertices * torch.tensor([1.0, -1.0, -1.0], device=self.device)
        face_n = self._face_normals(y_up) * self.facing
        vertex_n = torch.zeros_like(vertices).index_add_(0, self.triangles.reshape(-1), face_n.repeat_interleave(3, 0))
        both = frags.interpolate(torch.cat([self.uv, vertex_n], dim=1), self.triangles)  # [P, 2 + 3]
        uv, normal = both[:, :2], both[:, 2:]
        normal = normal / normal.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        code = region.to(torch.float32).unsqueeze(-1) / (N_REGIONS - 1)
        uv_image = frags.dense(torch.cat([uv, code], dim=-1)).permute(2, 0, 1)
        light = _AMBIENT + (1 - _AMBIENT) * (normal @ self.light).clamp(min=0)
        flat = (region == Region.EYE) | (region == Region.IRIS) | (region == Region.MOUTH)
        light = torch.where(flat, torch.ones_like(light), light)
        shaded = frags.dense(self.albedo[region] * light.unsqueeze(-1)).permute(2, 0, 1)
        return Conditioning(uv_image.contiguous(), shaded.contiguous(), frags.dense(region))

    def _paint_irises(self, region: Tensor, points: Tensor, pixel: Tensor) -> Tensor:
        """Iris discs (centre + 4 rim landmarks each), visible only through the eye opening."""
        xy = torch.stack([pixel % self.size, torch.div(pixel, self.size, rounding_mode="floor")], dim=1)
        xy = xy.to(torch.float32) + 0.5
        for iris in (RIGHT_IRIS, LEFT_IRIS):
            centre = points[iris[0], :2]
            radius = (points[list(iris[1:]), :2] - centre).norm(dim=1).mean()
            inside = ((xy - centre) ** 2).sum(-1) <= radius**2
            region = torch.where(inside & (region == Region.EYE), torch.full_like(region, Region.IRIS), region)
        return region


class _NumpyShading:
    """`FaceRenderer` on the CPU in NumPy: what depends only on the mesh (triangles, regions, UVs,
    the iris rims) is set up once; per frame, `NpRasterizer` (with its reused buffers), vertex
    normals, interpolation and shading, as the PyTorch path computes them."""

    def __init__(self, mesh: CanonicalMesh, size: int, facing: float) -> None:
        self.size = size
        self.triangles = np.ascontiguousarray(mesh.triangles, dtype=np.int64)
        self.corner_index = self.triangles.reshape(-1)
        self.tri_region = np.asarray(mesh.regions, dtype=np.int64)
        self.uv = np.asarray(mesh.uv, dtype=np.float32)
        self.albedo = _ALBEDO.numpy()
        self.light = _LIGHT.numpy()
        self.facing = np.float32(facing)
        self._local = threading.local()  # one rasterizer per thread: it reuses per-pixel buffers
        self.flat = np.zeros(N_REGIONS, dtype=bool)  # regions drawn unshaded
        self.flat[[Region.EYE, Region.IRIS, Region.MOUTH]] = True

    @property
    def raster(self) -> NpRasterizer:
        """This thread's rasterizer (`prepare` renders on a thread pool with one renderer)."""
        raster: NpRasterizer | None = getattr(self._local, "raster", None)
        if raster is None:
            raster = self._local.raster = NpRasterizer(self.size, self.size)
        return raster

    def __call__(self, points: npt.NDArray[np.float32]) -> Conditioning:
        assert points.ndim == 2 and points.shape[0] >= N_MESH_VERTICES and points.shape[1] == 3, points.shape
        vertices = points[:N_MESH_VERTICES]
        frags = self.raster(vertices, self.triangles)
        region = self.tri_region[frags.triangle]
        if points.shape[0] > RIGHT_IRIS[-1]:
            region = self._paint_irises(region, points, frags.pixel)

        y_up = vertices * np.array([1.0, -1.0, -1.0], np.float32)
        corners = y_up[self.triangles]
        face_n = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]) * self.facing
        vertex_n = np.zeros_like(vertices)
        np.add.at(vertex_n, self.corner_index, np.repeat(face_n, 3, axis=0))
        corners_at = np.concatenate([self.uv, vertex_n], axis=1)[self.triangles]  # [T, 3, 5] per triangle
        both = np.einsum("pk,pkc->pc", frags.bary, corners_at[frags.triangle])  # [P, 5]
        uv, normal = both[:, :2], both[:, 2:]
        normal = normal / np.maximum(np.sqrt((normal * normal).sum(axis=1, keepdims=True)), np.float32(1e-8))
        uv_flat = np.zeros((self.size * self.size, 3), np.float32)
        uv_flat[frags.pixel, :2] = uv
        uv_flat[frags.pixel, 2] = region.astype(np.float32) / np.float32(N_REGIONS - 1)
        uv_image = uv_flat.reshape(self.size, self.size, 3)
        light = np.float32(_AMBIENT) + np.float32(1 - _AMBIENT) * np.maximum(normal @ self.light, np.float32(0))
        light = np.where(self.flat[region], np.float32(1), light)
        shaded = frags.dense(self.albedo[region] * light[:, None])
        return Conditioning(
            torch.from_numpy(uv_image).permute(2, 0, 1),
            torch.from_numpy(shaded).permute(2, 0, 1),
            torch.from_numpy(frags.dense(region)),
        )

    def _paint_irises(
        self, region: npt.NDArray[np.int64], points: F32, pixel: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.int64]:
        """Iris discs (centre + 4 rim landmarks each), visible only through the eye opening."""
        x = (pixel % self.size).astype(np.float32) + np.float32(0.5)
        y = (pixel // self.size).astype(np.float32) + np.float32(0.5)
        eye = region == Region.EYE
        for iris in (RIGHT_IRIS, LEFT_IRIS):
            centre = points[iris[0], :2]
            rim = points[list(iris[1:]), :2] - centre
            radius = np.sqrt((rim * rim).sum(axis=1)).mean(dtype=np.float32)
            inside = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= radius**2
            region = np.where(inside & eye, Region.IRIS, region)
        return region
