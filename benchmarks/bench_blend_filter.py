"""The live blendshape filter's trade-off on real drivers: how much of a blink or a mouth opening
gets through against how much the expression still trembles at rest.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_blend_filter.py \
        [--drivers ../shared/data/512/drv_aoc_512.mp4 ...] [--settings 2,1 4,10 off] [--json OUT.json]

Each driver is tracked once (MediaPipe in video mode, as live), then its raw blendshapes go
through the One Euro filter (`tracking.filters.OneEuroFilter`) at each setting MIN_CUTOFF,BETA
("off": no filter). Per setting and driver:

- `follow_jaw`, `follow_blink`: Pearson correlation of the filtered jawOpen (mean eyeBlink) with
  the raw one; a filter that damps or delays fast movements lowers it;
- `step_rest`: the mean frame-to-frame change of the filtered coefficients on frames at rest
  (jawOpen < 0.05 and eyeBlink < 0.2), the tremble a filter is there to remove.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tracking.filters import OneEuroFilter
from tracking.tracker import BLENDSHAPE_NAMES, FaceTracker
from tracking.video import probe, read_frames

DRIVERS = [Path(f"../shared/data/512/{name}.mp4") for name in ("drv_aoc_512", "drv_lp_d9_512", "drv_lp_d10_512")]
JAW = BLENDSHAPE_NAMES.index("jawOpen")
BLINKS = [BLENDSHAPE_NAMES.index("eyeBlinkLeft"), BLENDSHAPE_NAMES.index("eyeBlinkRight")]


def raw_blendshapes(video: Path) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(times [N], blendshapes [N, 52]) of the tracked frames."""
    times, rows = [], []
    with FaceTracker(mode="video") as tracker:
        for _, seconds, rgb in read_frames(video):
            found = tracker(rgb, round(seconds * 1000))
            if found is not None:
                times.append(seconds)
                rows.append(found.blendshapes)
    return np.asarray(times), np.stack(rows).astype(np.float64)


def measure(times: npt.NDArray[np.float64], raw: npt.NDArray[np.float64], setting: str) -> dict[str, float]:
    if setting == "off":
        out = raw
    else:
        cutoff, beta = (float(v) for v in setting.split(","))
        smooth = OneEuroFilter(cutoff, beta)
        out = np.stack([smooth(b, t) for t, b in zip(times, raw, strict=True)])
    rest = (raw[1:, JAW] < 0.05) & (raw[1:, BLINKS].mean(1) < 0.2)
    return {
        "follow_jaw": float(np.corrcoef(out[:, JAW], raw[:, JAW])[0, 1]),
        "follow_blink": float(np.corrcoef(out[:, BLINKS].mean(1), raw[:, BLINKS].mean(1))[0, 1]),
        "step_rest": float(np.abs(np.diff(out[:, 1:], axis=0))[rest].mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drivers", type=Path, nargs="+", default=DRIVERS)
    parser.add_argument("--settings", nargs="+", default=["2,1", "4,10", "off"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {}
    print("driver            setting  follow jaw  follow blink  step at rest")
    for driver in args.drivers:
        times, raw = raw_blendshapes(driver)
        fps = probe(driver).fps
        results[driver.name] = {s: measure(times, raw, s) for s in args.settings}
        for setting, row in results[driver.name].items():
            print(
                f"{driver.stem:<17} {setting:<8} {row['follow_jaw']:.3f}       {row['follow_blink']:.3f}"
                f"         {row['step_rest']:.4f}  ({len(raw)} frames, {fps:g} fps)"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
