"""`avatarcam evaluate AVATAR` with only the avatar file: `--driver` and `--video` need no
`--data` (the file carries the expression model and crop); what does need it says so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avatarcam_cli import main
from models.evaluation.evaluate import EvaluateError, EvaluateOptions
from streamer.provenance.identity import DEMO_AVATAR
from tests.media import first_frames, one_torch_thread, write_video

pytestmark = pytest.mark.slow
_threads = pytest.fixture(autouse=True, scope="module")(one_torch_thread)


def test_driver_without_data_measures_cross_reenactment(driver_video: Path, tmp_path: Path) -> None:
    driver = write_video(tmp_path / "driver.mp4", first_frames(driver_video, 30), fps=30)
    out = tmp_path / "report"
    args = ["evaluate", str(DEMO_AVATAR), "--driver", str(driver), "--max-frames", "4", "-o", str(out)]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "cross" and metrics["frames"] == 4 and metrics["data"] is None
    assert metrics["csim_reference"].startswith("the avatar's neutral render")
    # The demo avatar's output has a face: expression and pose errors were measured, and its
    # identity is close to its own neutral render (another person's would not be).
    assert metrics["compared_frames"] >= 3 and np.isfinite(metrics["aed"]) and np.isfinite(metrics["apd"])
    assert 0.5 < metrics["csim"] <= 1.0
    assert (out / "index.html").is_file()


def test_video_without_data_self_reenacts_it(cap13: Path, tmp_path: Path) -> None:
    video = write_video(tmp_path / "cap13.mp4", first_frames(cap13, 10), fps=30)
    out = tmp_path / "report"
    extra = ["--metrics", "psnr", "--region", "full", "--max-frames", "3"]
    assert main(["evaluate", str(DEMO_AVATAR), "--video", str(video), "-o", str(out), *extra]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "self" and metrics["frames"] == 3 and "baselines" not in metrics
    assert 10 < metrics["psnr"] < 60


def test_what_needs_the_dataset_says_so(tmp_path: Path) -> None:
    with pytest.raises(EvaluateError, match="needs --data"):
        EvaluateOptions(DEMO_AVATAR, None, tmp_path).validate()  # the test split lives in the dataset
    with pytest.raises(EvaluateError, match="run folder: pass --data"):
        EvaluateOptions(tmp_path, None, tmp_path / "out", driver=DEMO_AVATAR).validate()
