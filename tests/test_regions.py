"""The evaluation's face regions (models/evaluation/regions.py): a synthetic frame whose answer is
known by construction, the real cap13 test frames, and region PSNR / LPIPS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.evaluation.regions import (
    CHIN,
    FOREHEAD,
    REGIONS,
    RegionScores,
    presence,
    region_codes,
    region_masks,
    region_mean,
    region_psnr,
    summarise,
)
from tracking.mesh import Region

H = W = 32


def _uv(codes: np.ndarray) -> np.ndarray:
    """[N, H, W] Region codes -> [N, H, W, 3] uint16 UV renders as `Conditioning.uv_u16` stores them."""
    uv = np.zeros((*codes.shape, 3), np.uint16)
    uv[..., 2] = np.round(codes / (len(Region) - 1) * 65535).astype(np.uint16)
    return uv


def _synthetic(tilt: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One 32 x 32 frame: a mesh square (rows 8-19, columns 10-21) with skin, lips, one eye,
    one iris and a mouth opening; the person = the columns 6-25 from row 4 down; the chin at
    row 20 (forehead at row 8, so up is -y), or tilted 90 degrees (up is -x, chin column 16)."""
    codes = np.zeros((1, H, W), np.int64)
    codes[0, 8:20, 10:22] = Region.SKIN
    codes[0, 16, 12:20] = Region.LIPS
    codes[0, 11, 12:14] = Region.EYE
    codes[0, 11, 18:20] = Region.IRIS
    codes[0, 17, 13:19] = Region.MOUTH
    person = np.zeros((1, H, W), np.uint8)
    person[0, 4:, 6:26] = 255
    landmarks = np.zeros((1, 478, 3), np.float32)
    landmarks[0, CHIN, :2] = (16, 20) if not tilt else (16, 14)
    landmarks[0, FOREHEAD, :2] = (16, 8) if not tilt else (4, 14)
    return _uv(codes), person, landmarks, codes


def test_region_codes_round_trip_the_uv_render() -> None:
    codes = np.arange(len(Region)).reshape(1, 1, -1).repeat(2, axis=1)
    assert np.array_equal(region_codes(_uv(codes)), codes)


def test_synthetic_frame_splits_as_constructed() -> None:
    uv, person, landmarks, codes = _synthetic()
    masks = region_masks(uv, person, landmarks)[0]  # [R, H, W]
    got = dict(zip(REGIONS, masks, strict=True))
    assert np.array_equal(masks.sum(axis=0), np.ones((H, W)))  # disjoint, and cover the image
    assert np.array_equal(got["face"], (codes[0] == Region.SKIN) | (codes[0] == Region.LIPS))
    assert got["eyes"].sum() == 4 and got["eyes"][11, 12] and got["eyes"][11, 19]
    assert got["mouth"].sum() == 6 and got["mouth"][17, 13:19].all()
    on_mesh = codes[0] > 0
    off_person = (person[0] > 0) & ~on_mesh
    rows = np.arange(H)[:, None].repeat(W, axis=1)
    assert np.array_equal(got["hair"], off_person & (rows < 20))  # above the chin line (row 20)
    assert np.array_equal(got["neck"], off_person & (rows >= 20))
    assert np.array_equal(got["background"], (person[0] == 0) & ~on_mesh)
    assert got["hair"].sum() == 16 * 20 - 12 * 12 and got["neck"].sum() == 12 * 20


def test_chin_line_follows_a_tilted_head() -> None:
    """Up along -x: the 'neck' is to the right of the chin's column, whatever the row."""
    uv, person, landmarks, codes = _synthetic(tilt=True)
    masks = region_masks(uv, person, landmarks)[0]
    off_person = (person[0] > 0) & (codes[0] == 0)
    cols = np.arange(W)[None, :].repeat(H, axis=0)
    assert np.array_equal(masks[REGIONS.index("neck")], off_person & (cols >= 16))
    assert np.array_equal(masks[REGIONS.index("hair")], off_person & (cols < 16))


def test_region_psnr_and_mean_on_known_errors() -> None:
    uv, person, landmarks, _ = _synthetic()
    masks = torch.from_numpy(region_masks(uv, person, landmarks))
    real = torch.full((1, 3, H, W), 0.5, dtype=torch.float64)
    fake = real.clone()
    face = masks[0, REGIONS.index("face")]
    fake[0, :, face] += 0.1  # error only on the face: 20 dB there, perfect elsewhere
    psnr = region_psnr(fake, real, masks)[0]
    assert float(psnr[REGIONS.index("face")]) == pytest.approx(20.0)
    assert all(float(psnr[r]) == pytest.approx(100.0) for r in range(len(REGIONS)) if REGIONS[r] != "face")
    values = torch.zeros(1, H, W, dtype=torch.float64)
    values[0, 17, 13:16] = 1.0  # half of the mouth's six pixels
    mean = region_mean(values, masks)[0]
    assert float(mean[REGIONS.index("mouth")]) == pytest.approx(0.5) and float(mean[REGIONS.index("face")]) == 0
    empty = torch.zeros_like(masks)
    assert torch.isnan(region_psnr(fake, real, empty)).all() and torch.isnan(region_mean(values, empty)).all()


def test_summary_counts_only_frames_where_a_region_is_present() -> None:
    r = len(REGIONS)
    present = np.ones((2, r), bool)
    present[1, REGIONS.index("mouth")] = False
    fractions = np.where(present, 0.1, 0.0)
    avatar, mean_frame = RegionScores(), RegionScores()
    lpips = torch.tensor([[0.1] * r, [0.3] * r], dtype=torch.float64)
    avatar.add(torch.full((2, r), 30.0), lpips, present)
    mean_frame.add(torch.full((2, r), 20.0), lpips + 0.05, present)
    out = summarise(avatar, {"mean_frame": mean_frame}, [fractions])
    assert out["mouth"]["lpips"] == pytest.approx(0.1) and out["mouth"]["frames"] == 1  # frame 2 has no mouth
    assert out["face"]["lpips"] == pytest.approx(0.2) and out["face"]["pixels"] == pytest.approx(0.1)
    assert out["face"]["baselines"]["mean_frame"] == pytest.approx({"psnr": 20.0, "lpips": 0.25})
    assert out["face"]["beats_baselines"] == {"psnr": True, "lpips": True}
    worse = RegionScores()
    worse.add(torch.full((2, r), 40.0), lpips - 0.05, present)
    assert summarise(avatar, {"x": worse}, [fractions])["eyes"]["beats_baselines"] == {"psnr": False, "lpips": False}


def test_regions_on_real_cap13_frames(cap13_data: Path) -> None:
    """cap13 test frames at 256 px: the regions partition each frame, each region is present in
    some frames, and they sit where a face has them (eyes above the mouth, hair above the neck,
    background mostly at the border)."""
    from models.evaluation.evaluate import split_frames

    count, batches = split_frames(cap13_data, "test", 96, 256, 48)
    masks = np.concatenate([region_masks(b.uv, b.person, b.landmarks) for b in batches if b.landmarks is not None])
    assert masks.shape == (count, len(REGIONS), 256, 256)
    assert (masks.sum(axis=1) == 1).all()
    present, fraction = presence(masks)
    assert present.any(axis=0).all(), dict(zip(REGIONS, present.sum(axis=0), strict=True))
    assert present[:, REGIONS.index("mouth")].sum() < count  # the mouth is shut in some frames
    rows = np.arange(256, dtype=np.float64)

    def mean_row(region: str) -> float:
        m = masks[:, REGIONS.index(region)]
        return float((m.sum(axis=2) * rows).sum() / m.sum())

    assert mean_row("hair") < mean_row("eyes") < mean_row("face") < mean_row("mouth") < mean_row("neck")
    assert 0.3 < fraction[:, REGIONS.index("background")].mean() < 0.9
    assert 0.05 < fraction[:, REGIONS.index("face")].mean() < 0.3
