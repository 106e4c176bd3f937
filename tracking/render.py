"""Conditioning images for the generators, rendered from a tracked or retargeted face mesh.

Two pixel-aligned images per frame, as in StyleAvatar:
- the UV rendering I_UV: R, G = the (u, v) texture coordinate of the face surface under each
  pixel, B = the pixel's Region code (skin, lips, eye, iris, mouth opening), 0 off the face;
- the texture rendering I_R: the face with a fixed per-region albedo under a fixed light.
The prepare step and the live path both call `FaceRenderer`, so identical meshes give identical
renders. On CUDA the rasterizer is plain PyTorch (`tracking.raster`); on the CPU it is the same
algorithm compiled with Numba (`tracking.raster_cpu`: the same fragments, on the calling thread),
and the shading is one compiled pass too; `kernel="torch"` keeps the PyTorch path on the CPU
(benchmarks/bench_render.py compares the two).
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

try:
    from tracking import raster_cpu
except ImportError:  # no Numba (a GPU machine's bare Python, `benchmarks/gpu_check`): the PyTorch kernel
    raster_cpu = None  # type: ignore[assignment]

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
Kernel = Literal["auto", "torch", "cpu"]


@dataclass(frozen=True)
class Conditioning:
    """Renders of one frame, quantized as the generators take them (and `prepare` stores them).

    Attributes:
        uv16: [H, W, 3] uint16 UV rendering: u, v and region / (N_REGIONS - 1), each x 65535;
            zeros off the face.
        shaded8: [H, W, 3] uint8 RGB texture rendering.
        region: [H, W] int64 Region per pixel.
    """

    uv16: npt.NDArray[np.uint16]
    shaded8: npt.NDArray[np.uint8]
    region: Tensor

    @property
    def face_mask(self) -> Tensor:
        """[H, W] bool: pixels on the face mesh."""
        return self.region > 0

    @property
    def uv(self) -> Tensor:
        """[3, H, W] float32 `uv16` in [0, 1]."""
        return torch.from_numpy(self.uv16).permute(2, 0, 1).float() / 65535

    @property
    def shaded(self) -> Tensor:
        """[3, H, W] float32 `shaded8` in [0, 1]."""
        return torch.from_numpy(self.shaded8).permute(2, 0, 1).float() / 255

    def uv_u16(self) -> npt.NDArray[np.uint16]:
        """[H, W, 3] uint16 image of the UV rendering, for lossless 16-bit PNG storage."""
        return self.uv16

    def shaded_u8(self) -> npt.NDArray[np.uint8]:
        """[H, W, 3] uint8 RGB image of the texture rendering."""
        return self.shaded8


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
        kernel: "cpu" (the CPU default: `tracking.raster_cpu`'s compiled kernels) or "torch" (the
            CUDA default, and on the CPU the older, slower path, and the one used without Numba).
    """

    def __init__(
        self, mesh: CanonicalMesh, size: int, device: str | torch.device = "cpu", kernel: Kernel = "auto"
    ) -> None:
        self.size = size
        self.device = torch.device(device)
        if kernel == "cpu" and self.device.type != "cpu":
            raise ValueError(f"the cpu kernel renders on the CPU, not on {self.device}")
        if kernel == "cpu" and raster_cpu is None:
            raise ValueError("the cpu kernel needs Numba: pip install numba (or kernel='torch')")
        cpu = self.device.type == "cpu" and raster_cpu is not None
        self.kernel: Kernel = kernel if kernel != "auto" else ("cpu" if cpu else "torch")
        self.triangles = torch.as_tensor(mesh.triangles, device=self.device)
        self.tri_region = torch.as_tensor(mesh.regions, device=self.device)
        self.uv = torch.as_tensor(mesh.uv, device=self.device)
        self.albedo = _ALBEDO.to(self.device)
        self.light = _LIGHT.to(self.device)
        # Winding of the canonical mesh, so that normals point towards the viewer.
        canonical = torch.as_tensor(mesh.vertices, device=self.device)
        self.facing = torch.sign(self._face_normals(canonical)[:, 2].sum())
        if self.kernel == "cpu":
            self._cpu = _CpuShading(mesh, size, float(self.facing))

    def _face_normals(self, vertices_y_up: Tensor) -> Tensor:
        corners = vertices_y_up[self.triangles]
        return torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])

    def __call__(self, landmarks: F32 | Tensor) -> Conditioning:
        """Render from [478, 3] landmarks in output pixels (x right, y down, z away)."""
        if self.kernel == "cpu":
            return self._cpu(np.asarray(landmarks.cpu() if isinstance(landmarks, Tensor) else landmarks, np.float32))
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
        uv16, shaded8 = _quantize(uv_image, 65535, np.uint16), _quantize(shaded, 255, np.uint8)
        return Conditioning(uv16, shaded8, frags.dense(region).cpu())

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


class _CpuShading:
    """`FaceRenderer` on the CPU: `raster_cpu.CpuRasterizer`, then one compiled pass (`raster_cpu.shade`) that paints
    the irises, interpolates UVs and vertex normals, shades and quantizes, with the PyTorch path's
    rules. What depends only on the mesh (triangles, regions, UVs) is set up once."""

    def __init__(self, mesh: CanonicalMesh, size: int, facing: float) -> None:
        self.size = size
        self.triangles = np.ascontiguousarray(mesh.triangles, dtype=np.int64)
        self.tri_region = np.asarray(mesh.regions, dtype=np.int64)
        self.uv = np.ascontiguousarray(mesh.uv, dtype=np.float32)
        self.albedo = np.ascontiguousarray(_ALBEDO.numpy())
        self.light = np.ascontiguousarray(_LIGHT.numpy())
        self.facing = np.float32(facing)
        self.ambient, self.diffuse = np.float32(_AMBIENT), np.float32(1 - _AMBIENT)
        self._local = threading.local()  # one rasterizer per thread: it reuses per-pixel buffers
        self.flat = np.zeros(N_REGIONS, dtype=np.bool_)  # regions drawn unshaded
        self.flat[[Region.EYE, Region.IRIS, Region.MOUTH]] = True
        # The kernels compile (or load from Numba's cache) on first use; do it now, so that a live
        # session's first frame does not wait for it.
        canonical = np.asarray(mesh.vertices, np.float32) * np.float32(size / 20) + np.float32(size / 2)
        self(canonical)

    @property
    def raster(self) -> raster_cpu.CpuRasterizer:
        """This thread's rasterizer (`prepare` renders on a thread pool with one renderer)."""
        raster: raster_cpu.CpuRasterizer | None = getattr(self._local, "raster", None)
        if raster is None:
            raster = self._local.raster = raster_cpu.CpuRasterizer(self.size, self.size)
        return raster

    def __call__(self, points: npt.NDArray[np.float32]) -> Conditioning:
        assert points.ndim == 2 and points.shape[0] >= N_MESH_VERTICES and points.shape[1] == 3, points.shape
        vertices = np.ascontiguousarray(points[:N_MESH_VERTICES])
        frags = self.raster(vertices, self.triangles)
        irises = np.zeros((0, 3), np.float32)  # per iris: centre x, y and radius squared
        if points.shape[0] > RIGHT_IRIS[-1]:
            irises = np.array([_iris_disc(points, iris) for iris in (RIGHT_IRIS, LEFT_IRIS)], np.float32)
        side = self.size
        uv16 = np.zeros((side, side, 3), np.uint16)
        shaded8 = np.zeros((side, side, 3), np.uint8)
        region = np.zeros((side, side), np.int64)
        raster_cpu.shade(
            frags.pixel, frags.triangle, frags.bary, vertices, self.triangles, self.tri_region, self.uv,
            self.facing, irises, self.albedo, self.light, self.ambient, self.diffuse, self.flat, side,
            uv16.reshape(-1, 3), shaded8.reshape(-1, 3), region.reshape(-1),
        )  # fmt: skip
        return Conditioning(uv16, shaded8, torch.from_numpy(region))


def _iris_disc(points: F32, iris: tuple[int, ...]) -> tuple[np.float32, np.float32, np.float32]:
    """An iris disc (centre + 4 rim landmarks): centre x, y and radius squared, in float32."""
    centre = points[iris[0], :2].astype(np.float32)
    rim = points[list(iris[1:]), :2].astype(np.float32) - centre
    radius = np.sqrt((rim * rim).sum(axis=1)).mean(dtype=np.float32)
    return centre[0], centre[1], radius**2
