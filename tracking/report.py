"""Pictures a person reads to check a prepared dataset: a contact sheet and a tracking plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt

from tracking.mesh import load_canonical_mesh
from tracking.tracker import BLENDSHAPE_NAMES

if TYPE_CHECKING:
    from tracking.video import TrackedVideo

U8 = npt.NDArray[np.uint8]
TILE = 192
PLOTTED = ("jawOpen", "eyeBlinkLeft", "mouthSmileLeft", "browInnerUp", "mouthPucker")


def _read_rgb(path: Path) -> U8:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FileNotFoundError(path)
    if image.dtype == np.uint16:
        image = (image // 257).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., ::-1])


def _mesh_overlay(frame: U8, landmarks: npt.NDArray[np.float32]) -> U8:
    """The frame with the tracked mesh's edges drawn on it."""
    out = frame.copy()
    edges = set()
    for a, b, c in load_canonical_mesh().triangles.tolist():
        edges.update({(min(a, b), max(a, b)), (min(b, c), max(b, c)), (min(a, c), max(a, c))})
    pts = landmarks[:, :2]
    lines = [np.array([pts[a], pts[b]], dtype=np.int32) for a, b in edges]
    cv2.polylines(out, lines, False, (80, 255, 120), 1, cv2.LINE_AA)
    return out


def contact_sheet(root: Path, split: str, out: Path, rows: int = 6) -> None:
    """Evenly spaced frames of `split`, one row each: frame+mesh | texture render over the
    frame | UV render | person mask."""
    folder = root / split
    with np.load(folder / "tracking.npz") as data:
        frames, landmarks = data["frame"], data["landmarks"]
    picks = np.linspace(0, len(frames) - 1, min(rows, len(frames))).round().astype(int)
    lines = []
    for i in picks:
        name = f"{int(frames[i]):06d}.png"
        frame = _read_rgb(folder / "frames" / name)
        render = _read_rgb(folder / "render" / name)
        uv = _read_rgb(folder / "uv" / name)
        mask = _read_rgb(folder / "mask" / name)
        face = (uv[..., 2:3] > 0).astype(np.float32)
        blend = (frame * (1 - 0.6 * face) + render * 0.6 * face).astype(np.uint8)
        tiles = [_mesh_overlay(frame, landmarks[i]), blend, uv, mask]
        row = np.concatenate([cv2.resize(t, (TILE, TILE), interpolation=cv2.INTER_AREA) for t in tiles], axis=1)
        cv2.putText(row, f"frame {int(frames[i])}", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 0), 1)
        lines.append(row)
    cv2.imwrite(str(out), np.concatenate(lines, axis=0)[..., ::-1])


def tracking_plot(videos: Sequence[TrackedVideo], out: Path) -> None:
    """Head pose and a few expression coefficients over time, one column per video; gaps are
    frames where the face was lost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(videos), figsize=(7 * len(videos), 6), squeeze=False, sharex="col")
    for col, video in enumerate(videos):
        times = np.array(video.times)
        pose = np.full((len(times), 3), np.nan)
        blend = np.full((len(times), len(BLENDSHAPE_NAMES)), np.nan)
        for i, t in enumerate(video.tracks):
            if t is not None:
                pose[i] = t.pose.as_vector()[:3]
                blend[i] = t.blendshapes
        ax = axes[0, col]
        for k, label in enumerate(("pitch", "yaw", "roll")):
            lo, hi = np.nanpercentile(pose[:, k], [5, 95])
            ax.plot(times, pose[:, k], lw=0.8, label=f"{label} (5-95%: {lo:.0f}..{hi:.0f}°)")
        ax.set_title(f"{video.info.path.name}: head pose")
        ax.set_ylabel("degrees")
        ax.legend(fontsize=8, loc="upper right")
        ax = axes[1, col]
        for name in PLOTTED:
            ax.plot(times, blend[:, BLENDSHAPE_NAMES.index(name)], lw=0.8, label=name)
        lost = ~np.isfinite(pose[:, 0])
        if lost.any():
            ax.fill_between(times, 0, 1, where=lost, color="red", alpha=0.15, label="face lost")
        ax.set_ylim(0, 1)
        ax.set_title("expression (blendshape coefficients)")
        ax.set_xlabel("seconds")
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
