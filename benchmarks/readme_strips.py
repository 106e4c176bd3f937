"""The README's picture strips, made by the avatar itself (no retouching, no picking by hand).

    .venv/bin/python benchmarks/readme_strips.py assets/demo/cap12.avatar --data data/cap12 -o docs/strips

- `self.jpg`: real | avatar for 4 evenly spaced frames of the test split (cap13 for the demo);
- `drive-NAME.jpg` per driver: the driver above, the avatar below, at the driver's frames with
  the 4 largest jawOpen values among 40 evenly spaced ones and 1 with the smallest, so a
  viewer sees whether the mouth opens with the driver.
Both go through the engine as users get it (the student when the file has one).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from models.avatar import load_avatar
from models.engines import create_engine
from models.evaluation.evaluate import evenly_spaced, split_frames
from tracking.neutral import driver_neutral
from tracking.tracker import BLENDSHAPE_NAMES, FaceTracker

DRIVERS = ("drv_aoc_512.mp4", "drv_lp_d9_512.mp4", "drv_lp_d10_512.mp4")


def self_strip(engine: object, data: Path, size: int) -> np.ndarray:
    _, batches = split_frames(data, "test", 4, size, 4)
    frames = next(batches)
    out = engine(frames.uv, frames.shaded)  # type: ignore[operator]
    return np.concatenate([np.concatenate([r, a], axis=0) for r, a in zip(frames.real, out.image, strict=True)], axis=1)


def drive_strip(avatar_path: Path, engine: object, video: Path, size: int) -> np.ndarray:
    from tracking.live import LiveDriver
    from tracking.mesh import load_canonical_mesh
    from tracking.render import FaceRenderer
    from tracking.video import probe, read_frames

    avatar = load_avatar(avatar_path)
    picks = set(evenly_spaced(probe(video).frames, 40))
    blend, pose, _ = driver_neutral(video, 1.0, None)
    jaw = BLENDSHAPE_NAMES.index("jawOpen")
    shots: list[tuple[float, np.ndarray, np.ndarray]] = []
    with FaceTracker() as tracker:
        live = LiveDriver(avatar.expression, avatar.crop, FaceRenderer(load_canonical_mesh(), size), tracker)
        live.retarget.calibrate(blend, pose)
        for index, seconds, rgb in read_frames(video):
            drive = live(rgb, seconds)
            if index not in picks or not drive.face_found:
                continue
            image = engine(drive.conditioning.uv_u16()[None], drive.conditioning.shaded_u8()[None]).image[0]  # type: ignore[operator]
            driver = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
            shots.append((float(drive.blendshapes[jaw]), driver, image))
    shots.sort(key=lambda s: s[0])
    chosen = [shots[0], *shots[-4:]]
    return np.concatenate([np.concatenate([d, a], axis=0) for _, d, a in chosen], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("avatar", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--drivers", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "512")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    engine = create_engine("torch", load_avatar(args.avatar), "cpu")
    size = engine.resolution
    cv2.imwrite(
        str(args.out / "self.jpg"), self_strip(engine, args.data, size)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90]
    )
    for name in DRIVERS:
        strip = drive_strip(args.avatar, engine, args.drivers / name, size)
        path = args.out / f"drive-{Path(name).stem}.jpg"
        cv2.imwrite(str(path), strip[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
