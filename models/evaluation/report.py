"""The HTML evaluation report: side-by-side frames, per-frame plots and the worst frames.

Images are PNG files next to ``index.html`` (frames/, plots.png), so the report opens from
disk in any browser and stays small enough to attach.
"""

from __future__ import annotations

import heapq
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]


def error_map(fake: U8, real: U8, gain: float = 4.0) -> U8:
    """[H, W, 3] uint8 pair -> [H, W, 3] uint8 RGB heat map of the mean absolute error (x gain)."""
    diff = np.abs(fake.astype(np.int16) - real.astype(np.int16)).mean(axis=2)
    level = np.clip(diff * gain, 0, 255).astype(np.uint8)
    return np.asarray(cv2.applyColorMap(level, cv2.COLORMAP_INFERNO)[..., ::-1], dtype=np.uint8)


def side_by_side(tiles: list[U8]) -> U8:
    """Tiles of one height, left to right, with a 2 px white gap."""
    h = tiles[0].shape[0]
    gap = np.full((h, 2, 3), 255, np.uint8)
    parts: list[U8] = []
    for tile in tiles:
        if tile.shape[0] != h:
            size = (round(tile.shape[1] * h / tile.shape[0]), h)
            tile = np.asarray(cv2.resize(tile, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
        parts += [tile, gap]
    return np.ascontiguousarray(np.concatenate(parts[:-1], axis=1))


@dataclass(order=True)
class _Ranked:
    badness: float
    index: int
    image: U8 = field(compare=False)
    values: dict[str, float] = field(compare=False)


class ReportWriter:
    """Collects frames while an evaluation runs and writes the report at the end.

    Args:
        out: the report folder.
        title: heading of the page.
        columns: the tile captions, e.g. ("real", "avatar", "error").
        samples: frame positions whose side-by-side image is always written.
        rank_by: the per-frame metric that orders the worst frames.
        higher_is_better: whether large `rank_by` values are good.
        worst: how many worst frames to show.
    """

    def __init__(
        self,
        out: Path,
        title: str,
        columns: tuple[str, ...],
        samples: set[int],
        rank_by: str,
        higher_is_better: bool,
        worst: int = 6,
    ) -> None:
        self.out = out
        self.title = title
        self.columns = columns
        self.samples = samples
        self.rank_by = rank_by
        self.sign = -1.0 if higher_is_better else 1.0
        self.worst = worst
        self._heap: list[_Ranked] = []
        self._written: list[tuple[int, str, dict[str, float]]] = []
        (out / "frames").mkdir(parents=True, exist_ok=True)

    def add(self, position: int, frame: int, tiles: list[U8], values: dict[str, float]) -> None:
        """One evaluated frame: its position in the evaluation, source frame index, tiles, metrics."""
        image: U8 | None = None
        if position in self.samples:
            image = side_by_side(tiles)
            self._written.append((frame, self._save(frame, image), values))
        if self.rank_by in values and np.isfinite(values[self.rank_by]) and self.worst > 0:
            ranked = _Ranked(
                self.sign * values[self.rank_by], frame, image if image is not None else side_by_side(tiles), values
            )
            if len(self._heap) < self.worst:
                heapq.heappush(self._heap, ranked)
            elif ranked.badness > self._heap[0].badness:
                heapq.heapreplace(self._heap, ranked)

    def _save(self, frame: int, image: U8) -> str:
        name = f"frames/frame-{frame:06d}.png"
        cv2.imwrite(str(self.out / name), image[..., ::-1])
        return name

    def _plot(self, per_frame: dict[str, list[float]], frames: list[int]) -> str | None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [k for k, v in per_frame.items() if v]
        if not names:
            return None
        fig, axes = plt.subplots(len(names), 1, figsize=(9, 1.9 * len(names)), sharex=True, squeeze=False)
        for ax, name in zip(axes[:, 0], names, strict=True):
            ax.plot(frames[: len(per_frame[name])], per_frame[name], lw=1)
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
        axes[-1, 0].set_xlabel("source frame")
        fig.tight_layout()
        fig.savefig(self.out / "plots.png", dpi=90)
        plt.close(fig)
        return "plots.png"

    def finish(
        self,
        summary: dict[str, Any],
        per_frame: dict[str, list[float]],
        frames: list[int],
        notes: list[str],
        sections: list[str] | None = None,
    ) -> Path:
        """Write index.html (and plots.png, the worst frames' images); returns index.html.
        `sections` are HTML blocks (already escaped) placed after the notes."""
        plot = self._plot(per_frame, frames)
        worst = sorted(self._heap, reverse=True)
        worst_files = [(r.index, self._save(r.index, r.image), r.values) for r in worst]
        caption = " | ".join(self.columns)
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>{html.escape(self.title)}</title>",
            "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}"
            "figure{margin:0 0 1em 0}figcaption{font-size:90%;color:#444}</style></head><body>",
            f"<h1>{html.escape(self.title)}</h1>",
            _table(summary),
        ]
        parts += [f"<p>{html.escape(n)}</p>" for n in notes]
        parts += sections or []
        if plot:
            parts.append(f"<h2>Per-frame metrics</h2><img src='{plot}' alt='per-frame metrics'>")
        parts.append(f"<h2>Frames ({html.escape(caption)})</h2>")
        parts += [_figure(f, name, v) for f, name, v in self._written]
        if worst_files:
            parts.append(f"<h2>Worst frames by {html.escape(self.rank_by)} ({html.escape(caption)})</h2>")
            parts += [_figure(f, name, v) for f, name, v in worst_files]
        parts.append("</body></html>")
        path = self.out / "index.html"
        path.write_text("\n".join(parts))
        return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def _table(summary: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th style='text-align:left'>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
        for k, v in summary.items()
    )
    return f"<table>{rows}</table>"


def _figure(frame: int, name: str, values: dict[str, float]) -> str:
    text = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
    caption = f"<figcaption>frame {frame}: {html.escape(text)}</figcaption>"
    return f"<figure><img src='{name}' alt='frame {frame}'>{caption}</figure>"
