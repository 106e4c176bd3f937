"""`avatarcam evaluate` end to end on the tiny avatar: self-reenactment (full and masked),
cross-reenactment, the ablation, the report, and bad inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from avatarcam_cli import main
from tests.media import first_frames, one_torch_thread, write_video

_threads = pytest.fixture(autouse=True, scope="module")(one_torch_thread)
SELF_KEYS = {"psnr", "ssim", "lpips", "fid", "csim", "frames"}


@pytest.mark.slow
def test_self_reenactment_writes_metrics_and_report(tiny_avatar: Path, tiny_avatar_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    argv = ["evaluate", str(tiny_avatar), "--data", str(tiny_avatar_root / "data"), "-o", str(out)]
    assert main([*argv, "--max-frames", "3", "--batch", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= SELF_KEYS and metrics["frames"] == 3 and metrics["mode"] == "self"
    assert SELF_KEYS - {"frames"} <= set(metrics["masked"])
    for value in [metrics[k] for k in SELF_KEYS] + list(metrics["masked"].values()):
        assert math.isfinite(value)
    assert 0 < metrics["psnr"] < 60 and -1 <= metrics["ssim"] <= 1 and metrics["lpips"] > 0
    assert metrics["masked"]["psnr"] != metrics["psnr"]  # the mask changes what is compared
    per_frame = json.loads((out / "per_frame.json").read_text())
    assert len(per_frame["frame"]) == 3 and len(per_frame["lpips"]) == 3 and len(per_frame["masked_psnr"]) == 3
    assert abs(sum(per_frame["psnr"]) / 3 - metrics["psnr"]) < 1e-9
    page = (out / "index.html").read_text()
    assert "plots.png" in page and "Worst frames" in page
    images = sorted((out / "frames").glob("frame-*.png"))
    assert len(images) == 3 and (out / "plots.png").stat().st_size > 0
    regions = sorted((out / "frames").glob("region-*.png"))  # the worst frames of each region
    assert regions and "Worst frames per region" in page
    for image in images + regions:
        assert image.name in page
    assert metrics["regions"]["face"]["frames"] == 3 and metrics["temporal"]["pairs"] == 0  # spaced: no pairs


DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo" / "cap12.avatar"


@pytest.mark.slow
def test_cross_reenactment_measures_expression_pose_and_identity(
    tiny_avatar_root: Path, driver_video: Path, tmp_path: Path
) -> None:
    """The shipped demo avatar (256 px, its face re-tracks) driven by another person: every
    output frame is re-tracked and compared, so AED and APD are really measured. (The 64 px
    test avatar's face is too small and blurry to re-track.) Its identity reference comes from
    the tiny dataset of the same person."""
    if not DEMO.is_file():
        pytest.skip(f"{DEMO} is absent")
    driver = write_video(tmp_path / "driver.mp4", first_frames(driver_video, 20))
    out = tmp_path / "cross"
    argv = ["evaluate", str(DEMO), "--data", str(tiny_avatar_root / "data"), "-o", str(out), "--network", "student"]
    assert main([*argv, "--driver", str(driver), "--max-frames", "3"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "cross" and metrics["frames"] == 3
    assert metrics["compared_frames"] == 3, metrics
    assert metrics["output_face_missing"] == metrics["driver_face_missing"] == 0
    # Two different people: expressions and poses differ, but not wildly (docs/results.md: AED ~0.1, APD ~7°).
    assert 0.01 < metrics["aed"] < 0.3 and 0.1 < metrics["apd"] < 30, metrics
    assert metrics["aed_centred"] is not None and 0 <= metrics["aed_centred"] <= metrics["aed"] + 1e-9
    assert 0.2 < metrics["csim"] <= 1
    per_frame = json.loads((out / "per_frame.json").read_text())
    assert per_frame["frame"] == [0, 10, 19]
    assert np.mean(per_frame["aed"]) == pytest.approx(metrics["aed"], abs=1e-12)
    assert np.mean(per_frame["apd"]) == pytest.approx(metrics["apd"], abs=1e-12)
    assert "driver | avatar" in (out / "index.html").read_text()
    _assert_errors_match_an_independent_retrack(driver, out, per_frame)


def _assert_errors_match_an_independent_retrack(driver: Path, out: Path, per_frame: dict[str, list]) -> None:
    """Each frame's AED and APD, recomputed here: the driver re-tracked (every frame, video mode,
    the same timestamps) against the avatar frame the report saved (its right-hand tile, 256 px,
    lossless), re-tracked the same way. An error that compares the wrong faces, leaves out a pose
    angle or is offset fails this."""
    import cv2

    from tracking.tracker import FaceTracker
    from tracking.video import read_frames

    picked, drivers, stamps = per_frame["frame"], {}, {}
    with FaceTracker() as tracker:
        for index, seconds, rgb in read_frames(driver):
            stamps[index] = round(seconds * 1000)
            track = tracker(rgb, stamps[index])
            if index in picked:
                drivers[index] = track
    with FaceTracker() as tracker:
        for index, aed, apd in zip(picked, per_frame["aed"], per_frame["apd"], strict=True):
            tile = cv2.imread(str(out / "frames" / f"frame-{index:06d}.png"))[:, -256:, ::-1]
            got, want = tracker(np.ascontiguousarray(tile), stamps[index]), drivers[index]
            assert got is not None and want is not None, index
            expression = np.abs(got.blendshapes[1:] - want.blendshapes[1:]).mean()
            turn = (got.pose.as_vector()[:3] - want.pose.as_vector()[:3] + 180) % 360 - 180
            assert aed == pytest.approx(expression, abs=1e-4) and apd == pytest.approx(np.abs(turn).mean(), abs=1e-3)


@pytest.mark.slow
def test_ablation_trains_both_variants_and_writes_the_table(tiny_avatar_root: Path, tmp_path: Path) -> None:
    """A run with L_cos and L_mrf on (GAN off, for speed): each variant is trained for the
    requested steps with exactly its loss switched off, and evaluated."""
    from models.training import checkpoint as ckpt
    from models.training.train import TrainOptions
    from models.training.train import run as train

    data, source = tiny_avatar_root / "data", tmp_path / "run"
    no_gan = (("gan_g", 0.0), ("gan_d", 0.0), ("r1_gamma", 0.0))
    train(TrainOptions(data=data, out=source, preset="tiny", steps=1, device="cpu", losses=no_gan))
    out = tmp_path / "ablate"
    argv = ["evaluate", str(source), "--data", str(data), "-o", str(out)]
    assert main([*argv, "--ablate", "--ablate-steps", "1", "--max-frames", "2", "--metrics", "psnr,ssim"]) == 0
    summary = json.loads((out / "metrics.json").read_text())["ablation"]
    assert summary["steps"] == 1
    full = ckpt.load(ckpt.latest(source)).tensors["generator"]  # type: ignore[arg-type]
    for variant, folder, off, on in (("w/o L_cos", "wo_L_cos", "cos", "mrf"), ("w/o L_mrf", "wo_L_mrf", "mrf", "cos")):
        row = summary["variants"][variant]
        assert "same_as" not in row and row["steps"] == 1 and math.isfinite(row["psnr"]), row
        run_dir = out / "ablation" / folder / "run"
        logged = json.loads((run_dir / "logs" / "scalars.jsonl").read_text().splitlines()[0])
        assert off not in logged and on in logged and "l1" in logged, (variant, logged)  # what it trained with
        weights = ckpt.load(ckpt.latest(run_dir)).tensors["generator"]  # type: ignore[arg-type]
        assert max(float((weights[k] - full[k]).abs().max()) for k in full) > 0, "the variant did not train"
        assert (out / "ablation" / folder / "report" / "metrics.json").is_file()
    table = (out / "ablation.md").read_text()
    assert "w/o L_cos" in table and "w/o L_mrf" in table and "already trains" not in table


def test_bad_inputs_fail_with_one_line(tiny_avatar: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_data = tmp_path / "empty"
    not_data.mkdir()
    assert main(["evaluate", str(tiny_avatar), "--data", str(not_data), "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("avatarcam: error: ") and "avatarcam prepare" in err and "\n" not in err
    assert main(["evaluate", str(tmp_path / "missing.avatar"), "--data", str(not_data), "-o", str(tmp_path)]) == 2
    assert "no such run folder or avatar file" in capsys.readouterr().err


def test_pose_and_expression_errors() -> None:
    from models.evaluation.evaluate import _angle_diff, _centred_errors

    assert np.allclose(_angle_diff(np.array([179.0, -170.0, 10.0]), np.array([-179.0, 170.0, 10.0])), [-2, 20, 0])
    rng = np.random.default_rng(0)
    blend = rng.uniform(0, 1, (6, 52)).astype(np.float32)
    pose = np.concatenate([rng.normal(0, 10, (6, 3)), np.zeros((6, 4))], axis=1)
    driver = list(zip(blend, pose, strict=True))
    offset = [(b + np.float32(0.2), p + np.array([5.0, -3.0, 1.0, 0, 0, 0, 0])) for b, p in driver]
    assert _centred_errors(driver, offset) == pytest.approx({"aed_centred": 0.0, "apd_centred": 0.0}, abs=1e-6)
    moved = [(b * np.float32(2), p * 2) for b, p in driver]
    errors = _centred_errors(driver, moved)
    assert errors["aed_centred"] > 0.1 and errors["apd_centred"] > 1
