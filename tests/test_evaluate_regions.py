"""`avatarcam evaluate`'s region and temporal figures end to end: the shipped demo avatar on four
consecutive cap13 test frames, each figure recomputed here from the frames the report saved."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from avatarcam_cli import main
from models.evaluation.regions import REGIONS, region_masks, region_psnr
from tests.media import one_torch_thread

_threads = pytest.fixture(autouse=True, scope="module")(one_torch_thread)
DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo" / "cap12.avatar"
FRAMES = 4


@pytest.fixture(scope="module")
def report(cap13_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not DEMO.is_file():
        pytest.skip(f"{DEMO} is absent")
    out = tmp_path_factory.mktemp("regions") / "report"
    argv = ["evaluate", str(DEMO), "--data", str(cap13_data), "-o", str(out), "--metrics", "psnr,lpips"]
    assert main([*argv, "--max-frames", str(FRAMES), "--consecutive", "--batch", "3"]) == 0
    return out


def _tiles(out: Path, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """(real, avatar) [256, 256, 3] RGB from the report's lossless side-by-side image."""
    image = cv2.imread(str(out / "frames" / f"frame-{frame:06d}.png"))[..., ::-1]
    return np.ascontiguousarray(image[:, :256]), np.ascontiguousarray(image[:, 258:514])


def test_regions_are_reported_beside_both_baselines(report: Path, cap13_data: Path) -> None:
    metrics = json.loads((report / "metrics.json").read_text())
    regions = metrics["regions"]
    assert list(regions) == list(REGIONS)
    assert sum(r["pixels"] for r in regions.values()) == pytest.approx(1.0)
    for name in ("face", "eyes", "hair", "neck", "background"):
        row = regions[name]
        assert row["frames"] == FRAMES and 5 < row["psnr"] < 60 and 0 < row["lpips"] < 1, (name, row)
        for baseline in ("mean_frame", "nearest_frame"):
            other = row["baselines"][baseline]
            assert 0 < other["lpips"] < 1 and other["psnr"] != row["psnr"], (name, baseline, other)
        assert set(row["beats_baselines"]) == {"psnr", "lpips"}
    # The avatar's face and hair are far closer to the real ones than the mean training frame's.
    assert regions["face"]["psnr"] > regions["face"]["baselines"]["mean_frame"]["psnr"] + 3
    per_frame = json.loads((report / "per_frame.json").read_text())
    frames = per_frame["frame"]
    assert frames == list(range(FRAMES))
    face = per_frame["regions"]["face"]
    assert np.mean(face["lpips"]) == pytest.approx(regions["face"]["lpips"], abs=1e-12)
    # Region PSNR recomputed from the saved frames and the regions of the dataset's tracking.
    from models.evaluation.evaluate import split_frames

    _, batches = split_frames(cap13_data, "test", FRAMES, 256, FRAMES, consecutive=True)
    b = next(iter(batches))
    assert b.landmarks is not None and b.index == frames
    masks = torch.from_numpy(region_masks(b.uv, b.person, b.landmarks))
    for i, frame in enumerate(frames):
        real, fake = _tiles(report, frame)
        assert np.array_equal(real, b.real[i])
        tensor = [torch.from_numpy(x).permute(2, 0, 1)[None].double() / 255 for x in (fake, real)]
        psnr = region_psnr(tensor[0], tensor[1], masks[i : i + 1])[0]
        for r, name in enumerate(REGIONS):
            got = per_frame["regions"][name]["psnr"][i]
            if got is not None:
                assert got == pytest.approx(float(psnr[r]), abs=1e-5), (frame, name)
    page = (report / "index.html").read_text()
    assert "By region" in page and "Worst frames per region" in page
    import re

    shown = re.findall(r"src='(frames/region-(\w+)-\d{6}\.png)'", page)
    for name in ("face", "eyes", "hair", "neck", "background"):
        assert 1 <= sum(region == name for _, region in shown) <= 3, name
    assert all((report / path).is_file() for path, _ in shown)


def test_temporal_figures_match_the_saved_frames(report: Path) -> None:
    from models.evaluation.metrics.lpips import load_lpips

    temporal = json.loads((report / "metrics.json").read_text())["temporal"]
    assert temporal["pairs"] == FRAMES - 1 and temporal["pair_frames"] == [[1, FRAMES - 1]]
    tiles = [_tiles(report, f) for f in range(FRAMES)]
    net = load_lpips()

    def consecutive(k: int) -> torch.Tensor:
        images = torch.stack([torch.from_numpy(t[k]).permute(2, 0, 1).float() / 255 for t in tiles])
        with torch.no_grad():
            return net(images[1:], images[:-1]).double()

    fake, real = consecutive(1), consecutive(0)
    assert temporal["flicker"] == pytest.approx(float(fake.mean()), rel=1e-4)
    assert temporal["flicker_real"] == pytest.approx(float(real.mean()), rel=1e-4)
    assert temporal["tlp"] == pytest.approx(float((fake - real).abs().mean()), rel=1e-4, abs=1e-6)
    assert 0 < temporal["flicker_real"] < 0.1  # consecutive frames of a webcam video differ, a little
    # The demo avatar's 256 px face re-tracks: jitter is measured on every pair, in pixels.
    assert temporal["jitter_pairs"] == FRAMES - 1
    assert 0 <= temporal["jitter_px"] < 5 and 0 <= temporal["jitter_px_real"] < 5
