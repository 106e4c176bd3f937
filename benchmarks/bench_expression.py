"""The personal expression model's ridge, chosen on held-out frames: how well a linear map from
blendshapes reproduces a person's face, and how far it opens the mouth and closes the eyes.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_expression.py \
        [--train ../shared/data/512/cap12_512.mp4] [--test ../shared/data/512/cap13_512.mp4] \
        [--ridge 1e-2 3e-3 1e-3 3e-4 1e-4] [--json OUT.json] [--refit AVATAR OUT.avatar]

Both videos are tracked as `prepare` tracks them (MediaPipe in video mode). For each ridge value
the model is fitted on the training video's frames (as `prepare` fits it) and applied to the
blendshapes of the test video, another recording of the same person; reported:

- `landmark_error`: mean distance between predicted and tracked pose-free landmarks on the test
  frames, in canonical units (the face is about 15 wide), the figure a ridge should minimise;
- `mouth_ratio`: on test frames with jawOpen > 0.25, the predicted inner-lip gap (landmarks 13,
  14) over the tracked one; 1 means the model opens the mouth as far as the person did;
- `eye_ratio`: on test frames with eyeBlink > 0.3, the predicted closure of the eyelids (the gap
  at rest minus the gap then, landmarks 159/145 and 386/374) over the tracked closure.

`--refit AVATAR OUT` then writes OUT: AVATAR with its expression model fitted again on the training
video's frames with this checkout's `tracking.expression.RIDGE` (what `prepare` now fits), the way
the shipped demo avatar was refitted; pass the video the avatar was trained on as `--train`.

A ridge too strong shrinks the rarely moved coefficients (jaw, blinks) towards zero, so the live
face opens its mouth and closes its eyes less than the person in the training video did.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import tracking.expression as expression
from tracking.tracker import BLENDSHAPE_NAMES, FaceTracker
from tracking.video import read_frames

F32 = npt.NDArray[np.float32]

LIPS = (13, 14)
EYELIDS = ((159, 145), (386, 374))


def track(video: Path) -> tuple[F32, F32, npt.NDArray[np.float64]]:
    """(shapes [N, 478, 3], blendshapes [N, 52], poses [N, 7]) of every tracked frame."""
    rows = []
    with FaceTracker(mode="video") as tracker:
        for _, seconds, rgb in read_frames(video):
            found = tracker(rgb, round(seconds * 1000))
            if found is not None:
                rows.append((found.shape, found.blendshapes, found.pose.as_vector()))
    return (
        np.stack([r[0] for r in rows]),
        np.stack([r[1] for r in rows]),
        np.stack([r[2] for r in rows]),
    )


def gap(shapes: F32, pair: tuple[int, int]) -> npt.NDArray[np.float64]:
    return np.asarray(np.linalg.norm(shapes[:, pair[0]] - shapes[:, pair[1]], axis=-1), np.float64)


def eye_gap(shapes: F32) -> npt.NDArray[np.float64]:
    return np.asarray(np.mean([gap(shapes, pair) for pair in EYELIDS], axis=0))


def measure(ridge: float, train: tuple[F32, F32, Any], test: tuple[F32, F32, Any]) -> dict[str, float]:
    expression.RIDGE = ridge
    model = expression.ExpressionModel.fit(*train)
    shapes, blend, _ = test
    predicted = np.stack([model.shape(b) for b in blend])
    jaw = blend[:, BLENDSHAPE_NAMES.index("jawOpen")]
    blink = blend[:, [BLENDSHAPE_NAMES.index("eyeBlinkLeft"), BLENDSHAPE_NAMES.index("eyeBlinkRight")]].mean(1)
    opened, closed, rest = jaw > 0.25, blink > 0.3, blink < 0.1
    real_eye, model_eye = eye_gap(shapes), eye_gap(predicted)
    return {
        "ridge": ridge,
        "landmark_error": float(np.linalg.norm(predicted - shapes, axis=-1).mean()),
        "mouth_ratio": float(gap(predicted, LIPS)[opened].mean() / gap(shapes, LIPS)[opened].mean()),
        "eye_ratio": float(
            (model_eye[rest].mean() - model_eye[closed].mean()) / (real_eye[rest].mean() - real_eye[closed].mean())
        ),
        "open_mouth_frames": int(opened.sum()),
        "blink_frames": int(closed.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, default=Path("../shared/data/512/cap12_512.mp4"))
    parser.add_argument("--test", type=Path, default=Path("../shared/data/512/cap13_512.mp4"))
    parser.add_argument("--ridge", type=float, nargs="+", default=[1e-2, 3e-3, 1e-3, 3e-4, 1e-4])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--refit", type=Path, nargs=2, metavar=("AVATAR", "OUT"))
    args = parser.parse_args()
    train, test = track(args.train), track(args.test)
    chosen = expression.RIDGE
    rows = [measure(r, train, test) for r in args.ridge]
    expression.RIDGE = chosen
    print(f"train {args.train.name}: {len(train[0])} frames; test {args.test.name}: {len(test[0])} frames")
    print("ridge     landmark error  mouth ratio  eye ratio")
    for row in rows:
        ridge, error, mouth, eyes = (row[k] for k in ("ridge", "landmark_error", "mouth_ratio", "eye_ratio"))
        print(f"{ridge:<9g} {error:.4f}          {mouth:.2f}         {eyes:.2f}")
    print(f"(open-mouth test frames: {rows[0]['open_mouth_frames']}, blink test frames: {rows[0]['blink_frames']})")
    if args.refit:
        from models.avatar import replace_expression

        replace_expression(args.refit[0], expression.ExpressionModel.fit(*train), args.refit[1])
        print(f"wrote {args.refit[1]}: {args.refit[0].name} with its expression model refitted at ridge {chosen:g}")
    if args.json:
        args.json.write_text(json.dumps({"train": str(args.train), "test": str(args.test), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
