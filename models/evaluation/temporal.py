"""Evaluation over time: flicker and head-placement jitter of the avatar beside the real video's.

Flicker is the temporal LPIPS of Chu et al. 2020, "Learning temporal coherence via
self-supervision for GAN-based video generation" (TecoGAN, ACM ToG 39(4), sec. 5.1):

    tLP = | LPIPS(o_t, o_{t-1}) - LPIPS(g_t, g_{t-1}) |

averaged over consecutive frame pairs, o the generated and g the real frames. Beside it we
report both of its terms' means: `flicker`, how much consecutive avatar frames differ
perceptually, and `flicker_real`, how much the real video's do (motion included). An avatar that
shimmers has flicker > flicker_real; one that freezes has flicker < flicker_real; tLP counts both.

Jitter is how far the head moves on screen from one frame to the next: the centroid of the
478 MediaPipe landmarks, re-tracked on the avatar's output and, with the same tracker, on the
real frames, in pixels of the evaluated images. `jitter_px` and `jitter_px_real` are the mean
centroid steps |c_t - c_{t-1}|; `jitter_excess_px` = mean |(c_t - c_{t-1})_avatar -
(c_t - c_{t-1})_real| is the placement motion the real video does not have.

"Consecutive" means consecutive source frames (index t-1 and t): pairs across a gap (frames
skipped by `--max-frames`, or untracked) are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

U8 = npt.NDArray[np.uint8]
F64 = npt.NDArray[np.float64]


class PairDistance(Protocol):
    """An image distance on batches: a, b [N, 3, H, W] in [0, 1] -> [N] (LPIPS)."""

    def __call__(self, a: Tensor, b: Tensor) -> Tensor: ...


class Locator(Protocol):
    """Where the head is: [H, W, 3] uint8 RGB, timestamp in ms -> [2] pixel centroid, or None."""

    def __call__(self, rgb: U8, timestamp_ms: int) -> F64 | None: ...


def _tensor(images: U8) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255


def consecutive_runs(frames: list[int]) -> list[list[int]]:
    """Sorted source frame numbers -> [[first, last], ...] runs of consecutive numbers."""
    runs: list[list[int]] = []
    for f in frames:
        if runs and f == runs[-1][1] + 1:
            runs[-1][1] = f
        else:
            runs.append([f, f])
    return runs


@dataclass
class Temporal:
    """Accumulates the temporal figures over batches of frames in source order.

    Args:
        distance: LPIPS (or any pair distance) for flicker.
        locate_fake, locate_real: head locators for the avatar's and the real frames (two
            instances of one tracker, so each sees its own sequence); None: no jitter.
        fps: the source frame rate, for the trackers' timestamps.
    """

    distance: PairDistance
    locate_fake: Locator | None = None
    locate_real: Locator | None = None
    fps: float = 25.0
    flicker: list[float] = field(default_factory=list)
    flicker_real: list[float] = field(default_factory=list)
    pair_frames: list[int] = field(default_factory=list)
    steps: list[tuple[F64, F64]] = field(default_factory=list)
    _last: tuple[int, U8, U8, F64 | None, F64 | None] | None = None

    @torch.no_grad()
    def add(self, frames: list[int], fake: U8, real: U8) -> None:
        """frames [N] source numbers (increasing); fake, real [N, H, W, 3] uint8 RGB."""
        centres: list[tuple[F64 | None, F64 | None]] = []
        for i, frame in enumerate(frames):
            ms = round(frame * 1000 / self.fps)
            c_fake = self.locate_fake(fake[i], ms) if self.locate_fake is not None else None
            c_real = self.locate_real(real[i], ms) if self.locate_real is not None else None
            centres.append((c_fake, c_real))
        previous = [self._last] + [(frames[i], fake[i], real[i], *centres[i]) for i in range(len(frames) - 1)]
        pairs = [i for i, p in enumerate(previous) if p is not None and p[0] == frames[i] - 1]
        if pairs:
            before_fake = np.stack([previous[i][1] for i in pairs])
            before_real = np.stack([previous[i][2] for i in pairs])
            now = np.asarray(pairs)
            self.flicker += self.distance(_tensor(fake[now]), _tensor(before_fake)).double().cpu().tolist()
            self.flicker_real += self.distance(_tensor(real[now]), _tensor(before_real)).double().cpu().tolist()
            self.pair_frames += [frames[i] for i in pairs]
            for i in pairs:
                prev = previous[i]
                assert prev is not None
                was_fake, was_real = prev[3], prev[4]
                now_fake, now_real = centres[i]
                if was_fake is not None and was_real is not None and now_fake is not None and now_real is not None:
                    self.steps.append((now_fake - was_fake, now_real - was_real))
        self._last = (frames[-1], fake[-1].copy(), real[-1].copy(), *centres[-1])

    def results(self) -> dict[str, Any]:
        """metrics.json's ``temporal``; figures are None when no consecutive pair was evaluated."""
        if not self.flicker:
            return {
                "pairs": 0,
                "note": "no consecutive source frames were evaluated (use --consecutive with --max-frames)",
            }
        fake, real = np.asarray(self.flicker), np.asarray(self.flicker_real)
        out: dict[str, Any] = {
            "flicker": float(fake.mean()),
            "flicker_real": float(real.mean()),
            "flicker_ratio": float(fake.mean() / real.mean()) if real.mean() > 0 else None,
            "tlp": float(np.abs(fake - real).mean()),
            "pairs": len(self.flicker),
            "pair_frames": consecutive_runs(self.pair_frames),
        }
        if self.steps:
            d_fake = np.stack([s[0] for s in self.steps])
            d_real = np.stack([s[1] for s in self.steps])
            out["jitter_px"] = float(np.linalg.norm(d_fake, axis=1).mean())
            out["jitter_px_real"] = float(np.linalg.norm(d_real, axis=1).mean())
            out["jitter_excess_px"] = float(np.linalg.norm(d_fake - d_real, axis=1).mean())
        else:
            out.update({"jitter_px": None, "jitter_px_real": None, "jitter_excess_px": None})
        out["jitter_pairs"] = len(self.steps)
        return out


class LandmarkCentroid:
    """`Locator` from MediaPipe's face landmarker (video mode): the mean of the 478 landmarks'
    (x, y) in pixels, or None when no face is found."""

    def __init__(self) -> None:
        from tracking.tracker import FaceTracker

        self.tracker = FaceTracker()

    def __call__(self, rgb: U8, timestamp_ms: int) -> F64 | None:
        track = self.tracker(np.ascontiguousarray(rgb), timestamp_ms)
        if track is None:
            return None
        return np.asarray(track.landmarks[:, :2].astype(np.float64).mean(axis=0))

    def close(self) -> None:
        self.tracker.close()
