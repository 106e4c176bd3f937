"""Engines: the folded teacher equals the generator, ONNX and CUDA match the torch CPU reference
on real renders, the ONNX graph's contract, the student in the .avatar file, and the registry.

Tolerances, on uint8 outputs (0..255):
- ONNX vs torch CPU (both float32): every pixel within 2 levels, mean difference < 0.05.
- torch-bf16 vs torch (CPU): every pixel within 8 levels; mean < 0.1 for the demo avatar's
  student, < 1.0 for the tiny trained teacher. Measured here: the demo student's image 2 / 0.03
  (max / mean), its mask 7 / 0.014 (edges where the logit is near 0); the teacher's image 5 / 0.61.
- CUDA fp16 vs torch CPU: every pixel within 12 levels, mean < 1.0 (fp16 has 11 bits of
  mantissa; differences concentrate at saturated edges); CUDA fp32: within 2 levels.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from torch import nn

from models.avatar import add_student, load_avatar, read_header
from models.engines import ENGINES, EngineUnavailable, create_engine
from models.engines.inference import TeacherNet
from models.engines.onnx_engine import OnnxEngine, export_beside, onnx_path_for
from models.engines.torch_engine import TorchEngine, cpu_has_bf16
from models.networks.student import StudentNet
from models.training.data import FrameSet
from streamer.provenance.identity import DEMO_AVATAR
from tests.media import one_torch_thread

_threads = pytest.fixture(autouse=True, scope="module")(one_torch_thread)
pytestmark = pytest.mark.slow
U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none visible)")


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVATARCAM_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def renders(tiny_avatar: Path) -> tuple[U16, U8]:
    """Real conditioning renders (tracked cap12 frames, rendered by `prepare`), as engines get them."""
    frames = FrameSet(tiny_avatar.parent / "data", "train", 64, limit=6)
    uv = frames.uv.permute(0, 2, 3, 1).numpy().astype(np.uint16)
    shaded = frames.shaded.permute(0, 2, 3, 1).numpy()
    assert (uv[..., 2] > 0).mean() > 0.05, "the renders should show a face"
    return np.ascontiguousarray(uv), np.ascontiguousarray(shaded)


@pytest.fixture(scope="module")
def student_avatar(tiny_avatar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny avatar plus an (untrained) student with random, non-trivial weights."""
    avatar = load_avatar(tiny_avatar)
    torch.manual_seed(0)
    student = StudentNet.for_teacher(avatar.generator.static_features().texture, 64)
    nn.init.normal_(student.head.weight, std=0.05)
    out = tmp_path_factory.mktemp("student") / "student.avatar"
    return add_student(tiny_avatar, student, out, {"student_psnr_vs_teacher": 1.0})


def _close(a: U8, b: U8, max_levels: int, mean_levels: float) -> None:
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= max_levels and diff.mean() < mean_levels, (diff.max(), diff.mean())


def test_registry_and_errors(tiny_avatar: Path) -> None:
    assert {"torch", "onnx", "tensorrt"} <= set(ENGINES)
    avatar = load_avatar(tiny_avatar)
    with pytest.raises(EngineUnavailable, match="unknown engine backend 'nope'"):
        create_engine("nope", avatar)
    engine = create_engine("torch", avatar)
    assert (engine.name, engine.device, engine.resolution) == ("torch", "cpu", 64)
    with pytest.raises(ValueError, match="uint16"):
        engine(np.zeros((1, 64, 64, 3), np.uint8), np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="shaded"):
        engine(np.zeros((1, 64, 64, 3), np.uint16), np.zeros((1, 32, 32, 3), np.uint8))


def test_the_live_engine_leaves_a_core_to_the_pipeline() -> None:
    from models.engines.base import live_threads

    assert [live_threads(n) for n in (1, 2, 4, 16)] == [1, 1, 3, 15]
    assert live_threads() >= 1


def test_serve_refuses_a_thread_count_below_one(tiny_avatar: Path) -> None:
    from streamer.serve.config import ServeConfig
    from streamer.sources import SourceSpec

    with pytest.raises(ValueError, match="threads must be at least 1"):
        ServeConfig(avatars=(tiny_avatar,), source=SourceSpec("webrtc", ""), threads=0).resolved()


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed here; the parity test below covers it")
def test_tensorrt_missing_is_a_clear_error(tiny_avatar: Path) -> None:
    with pytest.raises(EngineUnavailable, match="TensorRT"):
        create_engine("tensorrt", load_avatar(tiny_avatar), "cuda")


def test_folded_teacher_equals_generator(tiny_avatar: Path, renders: tuple[U16, U8]) -> None:
    """Style folding (modulated -> plain convolutions) changes nothing but float rounding."""
    generator = load_avatar(tiny_avatar).generator
    uv = torch.from_numpy(renders[0].astype(np.int32)).permute(0, 3, 1, 2).float() / 65535
    shaded = torch.from_numpy(renders[1]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        expected = generator(uv, shaded, None, generator.center_window(len(uv)), noise_mode="const")
        image, mask = TeacherNet(generator)(uv, shaded)
    torch.testing.assert_close(image, expected.image, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mask, expected.mask, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("network", ["teacher", "student"])
def test_onnx_matches_torch_on_real_renders(
    network: str, tiny_avatar: Path, student_avatar: Path, renders: tuple[U16, U8]
) -> None:
    avatar = load_avatar(student_avatar if network == "student" else tiny_avatar)
    reference = create_engine("torch", avatar)(*renders)
    got = create_engine("onnx", avatar)(*renders)
    assert got.image.shape == reference.image.shape == (6, 64, 64, 3) and got.mask.shape == (6, 64, 64)
    assert got.image.dtype == got.mask.dtype == np.uint8
    assert reference.image.std() > 5, "the reference output should not be flat"
    _close(got.image, reference.image, 2, 0.05)
    _close(got.mask, reference.mask, 2, 0.05)


needs_bf16 = pytest.mark.skipif(
    not cpu_has_bf16(), reason="the CPU lacks avx512_bf16 / amx_bf16 (/proc/cpuinfo): bf16 would be emulated"
)


@needs_bf16
@pytest.mark.parametrize(("network", "mean_levels"), [("demo student", 0.1), ("teacher", 1.0)])
def test_bf16_matches_fp32_on_real_renders(
    network: str, mean_levels: float, tiny_avatar: Path, renders: tuple[U16, U8]
) -> None:
    if network == "demo student":
        if not DEMO_AVATAR.is_file():
            pytest.skip("the demo avatar is not in this checkout")
        avatar = load_avatar(DEMO_AVATAR)
        # The tiny avatar's real 64 px renders of cap12, nearest-upsampled to the demo's 256 px.
        scale = avatar.network.image_size // renders[0].shape[1]
        uv, shaded = (np.ascontiguousarray(a.repeat(scale, axis=1).repeat(scale, axis=2)) for a in renders)
    else:
        avatar, (uv, shaded) = load_avatar(tiny_avatar), renders
    reference = create_engine("torch", avatar)(uv, shaded)
    engine = create_engine("torch-bf16", avatar)
    got = engine(uv, shaded)
    assert engine.name == "torch-bf16"
    assert reference.image.std() > 5, "the reference output should not be flat"
    assert (got.image != reference.image).any(), "bf16 should round somewhere: is autocast on?"
    _close(got.image, reference.image, 8, mean_levels)
    _close(got.mask, reference.mask, 8, mean_levels)


def test_bf16_is_refused_where_it_would_be_emulated(
    tiny_avatar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models.engines import torch_engine

    plain = tmp_path / "cpuinfo"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert not cpu_has_bf16(plain) and not cpu_has_bf16(tmp_path / "missing")
    plain.write_text("flags\t\t: fpu avx512f amx_bf16\n")
    assert cpu_has_bf16(plain)
    avatar = load_avatar(tiny_avatar)
    with pytest.raises(EngineUnavailable, match="runs on the CPU only"):
        create_engine("torch-bf16", avatar, "cuda")
    monkeypatch.setattr(torch_engine, "cpu_has_bf16", lambda: False)
    with pytest.raises(EngineUnavailable, match="avx512_bf16 or amx_bf16"):
        create_engine("torch-bf16", avatar)


def test_onnx_export_round_trip(tiny_avatar: Path, tmp_path: Path, renders: tuple[U16, U8]) -> None:
    """`export --onnx` writes NAME.onnx with the uint8/uint16 contract in the graph; it loads,
    takes any batch size, and seeds the engine cache."""
    import onnx

    path = tmp_path / "me.avatar"
    path.write_bytes(tiny_avatar.read_bytes())
    written = export_beside(path)
    assert written == tmp_path / "me.onnx"
    model = onnx.load(str(written))
    assert model.opset_import[0].version == 17  # docs/engines.md promises opset 17
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)}
    proto = onnx.TensorProto
    assert types == {"uv": proto.UINT16, "shaded": proto.UINT8, "image": proto.UINT8, "mask": proto.UINT8}
    avatar = load_avatar(path)
    assert onnx_path_for(avatar).read_bytes() == written.read_bytes()
    from_file = OnnxEngine(avatar, model=written)
    one = from_file(renders[0][:1], renders[1][:1])
    batch = from_file(*renders)
    np.testing.assert_array_equal(one.image[0], batch.image[0])
    np.testing.assert_array_equal(batch.image, create_engine("onnx", avatar)(*renders).image)


def test_student_in_the_avatar_file(tiny_avatar: Path, student_avatar: Path, renders: tuple[U16, U8]) -> None:
    plain = load_avatar(tiny_avatar)
    assert plain.student is None
    loaded = load_avatar(student_avatar)
    assert loaded.student is not None
    header = read_header(student_avatar)
    assert "student" in header and '"student_psnr_vs_teacher": 1.0' in header["identity"]
    assert loaded.identity.subject == plain.identity.subject
    # The engines run the student when the file has one, the teacher when told to ignore it.
    student_out = TorchEngine(loaded)(*renders)
    uv = torch.from_numpy(renders[0].astype(np.int32)).permute(0, 3, 1, 2).float() / 65535
    shaded = torch.from_numpy(renders[1]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        image, _ = loaded.student(uv, shaded)
    direct = ((image + 1) * 127.5).clamp(0, 255).round().byte().permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(student_out.image, direct)
    teacher_out = TorchEngine(dataclasses.replace(loaded, student=None))(*renders)
    np.testing.assert_array_equal(teacher_out.image, TorchEngine(plain)(*renders).image)


def test_an_engine_leaves_the_avatars_student_alone(student_avatar: Path, renders: tuple[U16, U8]) -> None:
    # The GPU check found this: a CUDA half engine moved the avatar's own student to the GPU in
    # half precision, and the next engine made from the same avatar (onnx on CPU) then failed.
    avatar = load_avatar(student_avatar)
    assert avatar.student is not None
    before = TorchEngine(avatar)(*renders)
    engine = TorchEngine(avatar)
    engine.network.half()  # what a half-precision engine does to its network
    assert next(avatar.student.parameters()).dtype == torch.float32
    np.testing.assert_array_equal(TorchEngine(avatar)(*renders).image, before.image)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(("half", "max_levels", "mean_levels"), [(False, 2, 0.05), (True, 12, 1.0)])
def test_cuda_matches_torch_cpu(
    tiny_avatar: Path, renders: tuple[U16, U8], half: bool, max_levels: int, mean_levels: float
) -> None:
    from models.engines.cuda_engine import CudaTorchEngine

    avatar = load_avatar(tiny_avatar)
    reference = TorchEngine(avatar)(*renders)
    engine = CudaTorchEngine(avatar, "cuda", half=half)
    got = engine(*renders)
    _close(got.image, reference.image, max_levels, mean_levels)
    _close(got.mask, reference.mask, max_levels, mean_levels)
    # Pipelined use: two frames in flight give the same results as one at a time.
    first = engine.submit(renders[0][:1], renders[1][:1])
    second = engine.submit(renders[0][1:2], renders[1][1:2])
    np.testing.assert_array_equal(first.result().image[0], got.image[0])
    np.testing.assert_array_equal(second.result().image[0], got.image[1])
    engine.close()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.skipif(not _has_tensorrt(), reason="TensorRT is not installable from the registries these machines reach")
def test_tensorrt_matches_torch_cpu(tiny_avatar: Path, renders: tuple[U16, U8]) -> None:
    avatar = load_avatar(tiny_avatar)
    reference = TorchEngine(avatar)(*renders)
    got = create_engine("tensorrt", avatar, "cuda")(*renders)
    _close(got.image, reference.image, 12, 1.0)


def test_export_command_engine_flags(tiny_avatar: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from avatarcam_cli import main

    run, data = tiny_avatar.parent / "run", tiny_avatar.parent / "data"
    args = ["export", str(run), "--data", str(data), "--subject", "cap12 (test)", "--consent", "MIT test data"]
    assert main([*args, "-o", str(tmp_path / "a.avatar"), "--onnx"]) == 0
    assert (tmp_path / "a.onnx").is_file() and (tmp_path / "a.avatar").is_file()
    if not _has_tensorrt():
        assert main([*args, "-o", str(tmp_path / "b.avatar"), "--tensorrt"]) == 2
        assert "TensorRT" in capsys.readouterr().err and not (tmp_path / "b.avatar").exists()
