"""The PyTorch rasterizer on hand-checkable scenes, and against an independent per-triangle reference on a
real tracked face (on CPU, and on CUDA where there is one)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import torch

from tracking.raster import Fragments, rasterize
from tracking.raster_cpu import CpuRasterizer

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


def _reference_triangle_ids(vertices: np.ndarray, triangles: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An independent rasterizer: for each triangle in turn, test every pixel centre of its
    bounding box against the three edges (numpy, float64) and keep the nearest depth.
    Returns [size, size] triangle ids (-1 where no triangle covers the pixel) and how many
    triangles cover each pixel."""
    depth = np.full((size, size), np.inf)
    ids = np.full((size, size), -1, dtype=np.int64)
    layers = np.zeros((size, size), dtype=np.int64)
    for t, (a, b, c) in enumerate(vertices[triangles]):
        x0, x1 = max(int(np.floor(min(a[0], b[0], c[0]))), 0), min(int(np.ceil(max(a[0], b[0], c[0]))), size)
        y0, y1 = max(int(np.floor(min(a[1], b[1], c[1]))), 0), min(int(np.ceil(max(a[1], b[1], c[1]))), size)
        if x0 >= x1 or y0 >= y1:
            continue
        px, py = np.meshgrid(np.arange(x0, x1) + 0.5, np.arange(y0, y1) + 0.5)
        area = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        if abs(area) < 1e-12:
            continue
        w_a = ((b[0] - px) * (c[1] - py) - (b[1] - py) * (c[0] - px)) / area
        w_b = ((c[0] - px) * (a[1] - py) - (c[1] - py) * (a[0] - px)) / area
        w_c = 1 - w_a - w_b
        inside = (w_a >= 0) & (w_b >= 0) & (w_c >= 0)
        layers[y0:y1, x0:x1] += inside
        z = w_a * a[2] + w_b * b[2] + w_c * c[2]
        window = depth[y0:y1, x0:x1]
        nearer = inside & (z < window)
        window[nearer] = z[nearer]
        ids[y0:y1, x0:x1][nearer] = t
    return ids, layers


def _turned(points: np.ndarray, yaw_degrees: float) -> np.ndarray:
    """The face turned about the vertical axis through its centre, so the nose hides a cheek."""
    centre = points.mean(axis=0)
    a = np.radians(yaw_degrees)
    x, z = points[:, 0] - centre[0], points[:, 2] - centre[2]
    out = points.copy()
    out[:, 0] = centre[0] + x * np.cos(a) + z * np.sin(a)
    out[:, 2] = centre[2] - x * np.sin(a) + z * np.cos(a)
    return out


@pytest.mark.parametrize("yaw", [0.0, 50.0])
@pytest.mark.parametrize("device", DEVICES)
def test_rasterizer_matches_an_independent_reference_on_a_tracked_face(
    device: str, yaw: float, cap12_track_256: npt.NDArray[np.float32]
) -> None:
    """Coverage, visibility and barycentrics of a real tracked face against a plain per-triangle
    loop; on CUDA the same comparison checks the device path against the same reference."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    from tracking.mesh import N_MESH_VERTICES, load_canonical_mesh

    mesh = load_canonical_mesh()
    vertices = _turned(cap12_track_256[:N_MESH_VERTICES].astype(np.float64), yaw)
    expected, layers = _reference_triangle_ids(vertices, mesh.triangles, 256)
    triangles = torch.as_tensor(mesh.triangles, device=device)
    frags = rasterize(torch.as_tensor(vertices, dtype=torch.float32, device=device), triangles, 256, 256)
    got = frags.dense(frags.triangle, fill=-1).cpu().numpy()
    covered = expected >= 0
    assert covered.sum() > 5000, "the tracked face should cover a good part of the frame"
    if yaw:
        assert (layers > 1).sum() > 500, "the turned face should hide some of itself (a depth test)"
    # Pixels whose centre lies on a shared edge (or where two depths tie) may go either way.
    assert ((got >= 0) == covered).mean() > 0.999
    same = (got == expected)[covered].mean()
    assert same > 0.995, f"only {same:.4f} of the covered pixels show the reference's triangle"
    # Barycentric weights reproduce each pixel centre from its triangle's corners.
    corners = torch.as_tensor(vertices, dtype=torch.float32, device=device)[triangles[frags.triangle]][..., :2]
    centres = torch.stack([frags.pixel % 256, frags.pixel // 256], dim=1).to(torch.float32) + 0.5
    torch.testing.assert_close(torch.einsum("pk,pkc->pc", frags.bary, corners), centres, atol=1e-3, rtol=0)


@pytest.mark.parametrize("yaw", [0.0, 50.0])
def test_cpu_rasterizer_matches_the_reference_and_gives_the_torch_fragments(
    yaw: float, cap12_track_256: npt.NDArray[np.float32]
) -> None:
    """The CPU rasterizer against the same independent reference, and fragment for fragment the
    PyTorch rasterizer's (same rules, same float32 arithmetic), twice through one instance (its
    buffers are reused)."""
    from tracking.mesh import N_MESH_VERTICES, load_canonical_mesh

    mesh = load_canonical_mesh()
    vertices = _turned(cap12_track_256[:N_MESH_VERTICES].astype(np.float64), yaw)
    expected, _ = _reference_triangle_ids(vertices, mesh.triangles, 256)
    raster = CpuRasterizer(256, 256)
    v32 = vertices.astype(np.float32)
    for _ in range(2):
        frags = raster(v32, mesh.triangles)
        got = frags.dense(frags.triangle, fill=-1)
        covered = expected >= 0
        assert ((got >= 0) == covered).mean() > 0.999
        assert (got == expected)[covered].mean() > 0.995
    torch_frags: Fragments = rasterize(torch.as_tensor(v32), torch.as_tensor(mesh.triangles), 256, 256)
    np.testing.assert_array_equal(frags.pixel, torch_frags.pixel.numpy())
    np.testing.assert_array_equal(frags.triangle, torch_frags.triangle.numpy())
    np.testing.assert_array_equal(frags.bary, torch_frags.bary.numpy())


def test_cpu_rasterizer_edges_and_bad_input() -> None:
    """Exact coverage of a square clipped by the image border; nothing for an empty or
    degenerate mesh; one clear error for the wrong shapes."""
    v, t = _square(-5, 60, 10, 70, 0.0)
    frags = CpuRasterizer(64, 64)(v.numpy(), t.numpy())
    assert len(frags.pixel) == 10 * 4  # x 0..9, y 60..63: clipped at the left and bottom edges
    flat = np.array([[0, 0, 0], [10, 10, 0], [20, 20, 0]], np.float32)  # collinear
    assert len(CpuRasterizer(32, 32)(flat, np.array([[0, 1, 2]])).pixel) == 0
    with pytest.raises(ValueError, match=r"\[V, 3\]"):
        CpuRasterizer(32, 32)(flat[:, :2], np.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match="at least 1 x 1"):
        CpuRasterizer(0, 32)


def test_cpu_renderer_matches_the_torch_renderer(cap12_track_256: npt.NDArray[np.float32]) -> None:
    """The conditioning images of the compiled CPU path against the PyTorch path on a tracked face:
    UV and regions identical, the shaded image within one 8-bit level (float summation order in
    the vertex normals)."""
    from tracking.mesh import load_canonical_mesh
    from tracking.render import FaceRenderer

    mesh = load_canonical_mesh()
    cpu, reference = FaceRenderer(mesh, 256), FaceRenderer(mesh, 256, kernel="torch")
    assert cpu.kernel == "cpu"
    for yaw in (0.0, 30.0):
        points = _turned(cap12_track_256.astype(np.float64), yaw).astype(np.float32)
        a, b = cpu(points), reference(points)
        assert (a.face_mask.sum() > 5000) and a.uv.shape == b.uv.shape == (3, 256, 256)
        np.testing.assert_array_equal(a.uv_u16(), b.uv_u16())
        assert torch.equal(a.region, b.region) and (a.region == 4).any(), "the irises are painted the same"
        assert np.abs(a.shaded_u8().astype(np.int16) - b.shaded_u8()).max() <= 1
    with pytest.raises(ValueError, match="on the CPU"):
        FaceRenderer(mesh, 64, "meta", kernel="cpu")


def test_one_cpu_renderer_shared_by_threads_renders_each_frame_right(
    cap12_track_256: npt.NDArray[np.float32],
) -> None:
    """`prepare` renders on a thread pool with one shared FaceRenderer: each thread's frames must
    come out as a lone renderer makes them (the CPU rasterizer reuses per-pixel buffers, which
    threads sharing one made wrong, or crashed with an IndexError, on obama_512)."""
    from concurrent.futures import ThreadPoolExecutor

    from tracking.mesh import load_canonical_mesh
    from tracking.render import FaceRenderer

    mesh = load_canonical_mesh()
    frames = [_turned(cap12_track_256.astype(np.float64), yaw).astype(np.float32) for yaw in range(-30, 31, 3)]
    alone = FaceRenderer(mesh, 256)
    expected = [alone(p).uv_u16() for p in frames]
    shared = FaceRenderer(mesh, 256)
    with ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            got = list(pool.map(lambda p: shared(p).uv_u16(), frames))
            for i, (a, b) in enumerate(zip(got, expected, strict=True)):
                np.testing.assert_array_equal(a, b, err_msg=f"frame {i}")


def test_kernels_compile_without_a_writable_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only install run by a user without a writable home leaves Numba no cache folder:
    the kernels must still compile (in the process) instead of failing at import."""
    from numba.core import caching

    from tracking.raster_cpu import compiled

    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])  # no folder Numba may write

    def add(a: int, b: int) -> int:
        return a + b

    assert compiled(add)(2, 3) == 5
