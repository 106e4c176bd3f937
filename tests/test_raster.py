"""The PyTorch rasterizer on hand-checkable scenes, and CPU/CUDA agreement on a real face."""

from __future__ import annotations

import pytest
import torch

from tracking.raster import rasterize

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _square(x0: float, y0: float, x1: float, y1: float, z: float) -> tuple[torch.Tensor, torch.Tensor]:
    v = torch.tensor([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]])
    return v, torch.tensor([[0, 1, 2], [0, 2, 3]])


def test_square_covers_exactly_its_pixels() -> None:
    v, t = _square(10, 20, 30, 25, 0.0)
    frags = rasterize(v, t, 64, 64)
    assert len(frags.pixel) == 20 * 5  # pixel centres strictly inside: x 10..29, y 20..24
    covered = frags.dense(torch.ones(len(frags.pixel)))
    assert covered[20:25, 10:30].all() and covered.sum() == 100
    torch.testing.assert_close(frags.bary.sum(dim=1), torch.ones(len(frags.pixel)))


def test_nearer_triangle_wins_regardless_of_order() -> None:
    far_v, far_t = _square(0, 0, 40, 40, 5.0)
    near_v, near_t = _square(10, 10, 20, 20, 1.0)
    for first_near in (True, False):
        parts = [(near_v, near_t), (far_v, far_t)] if first_near else [(far_v, far_t), (near_v, near_t)]
        vertices = torch.cat([parts[0][0], parts[1][0]])
        triangles = torch.cat([parts[0][1], parts[1][1] + 4])
        frags = rasterize(vertices, triangles, 48, 48)
        tri = frags.dense(frags.triangle, fill=-1)
        near_ids = {0, 1} if first_near else {2, 3}
        assert int(tri[15, 15]) in near_ids
        assert int(tri[5, 5]) not in near_ids and int(tri[5, 5]) >= 0


def test_interpolation_is_exact_for_linear_attributes() -> None:
    v = torch.tensor([[0.0, 0.0, 0.0], [64.0, 0.0, 0.0], [0.0, 64.0, 0.0]])
    frags = rasterize(v, torch.tensor([[0, 1, 2]]), 64, 64)
    x = frags.interpolate(v[:, :1], torch.tensor([[0, 1, 2]]))[:, 0]
    centres = (frags.pixel % 64).float() + 0.5
    torch.testing.assert_close(x, centres, atol=1e-4, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_devices_agree_on_a_tracked_face(device: str, cap12_track_256: torch.Tensor) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    from tracking.mesh import load_canonical_mesh
    from tracking.render import FaceRenderer

    mesh = load_canonical_mesh()
    reference = FaceRenderer(mesh, 256, "cpu")(cap12_track_256)
    other = FaceRenderer(mesh, 256, device)(cap12_track_256)
    same = (reference.region == other.region.cpu()).float().mean()
    assert same > 0.999
    both = reference.face_mask & other.face_mask.cpu()
    torch.testing.assert_close(other.uv.cpu()[:, both], reference.uv[:, both], atol=1e-3, rtol=0)
