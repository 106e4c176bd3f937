"""Conditioning images for the generators, rendered from a tracked or retargeted face mesh.

Two pixel-aligned images per frame, as in StyleAvatar:
- the UV rendering I_UV: R, G = the (u, v) texture coordinate of the face surface under each
  pixel, B = the pixel's Region code (skin, lips, eye, iris, mouth opening), 0 off the face;
- the texture rendering I_R: the face with a fixed per-region albedo under a fixed light.
The prepare step and the live path both call `FaceRenderer`, so identical meshes give identical
renders; the rasterizer is plain PyTorch and runs the same on CPU and CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from tracking.mesh import LEFT_IRIS, N_MESH_VERTICES, RIGHT_IRIS, CanonicalMesh, Region
from tracking.raster import rasterize

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
        return (self.uv.clamp(0, 1) * 65535).round().to(torch.int32).permute(1, 2, 0).cpu().numpy().astype(np.uint16)

    def shaded_u8(self) -> npt.NDArray[np.uint8]:
        """[H, W, 3] uint8 RGB image of `shaded`."""
        return (self.shaded.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


class FaceRenderer:
    """Renders conditioning images at `size` x `size` on `device` from pixel landmarks.

    Args:
        mesh: the canonical mesh (triangles, UVs, regions).
        size: output side in pixels.
        device: where rasterization runs; results are identical on CPU and CUDA up to float
            rounding at triangle edges.
    """

    def __init__(self, mesh: CanonicalMesh, size: int, device: str | torch.device = "cpu") -> None:
        self.size = size
        self.device = torch.device(device)
        self.triangles = torch.as_tensor(mesh.triangles, device=self.device)
        self.tri_region = torch.as_tensor(mesh.regions, device=self.device)
        self.uv = torch.as_tensor(mesh.uv, device=self.device)
        self.albedo = _ALBEDO.to(self.device)
        self.light = _LIGHT.to(self.device)
        # Winding of the canonical mesh, so that normals point towards the viewer.
        canonical = torch.as_tensor(mesh.vertices, device=self.device)
        self.facing = torch.sign(self._face_normals(canonical)[:, 2].sum())

    def _face_normals(self, vertices_y_up: Tensor) -> Tensor:
        corners = vertices_y_up[self.triangles]
        return torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])

    def __call__(self, landmarks: F32 | Tensor) -> Conditioning:
        """Render from [478, 3] landmarks in output pixels (x right, y down, z away)."""
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
