"""Real media for tests: the project's shared videos, and a small H.264 writer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "512"
ORIGINALS = SHARED.parent / "originals"  # the same videos as published: their own sizes and framing


def shared_video(name: str, folder: Path = SHARED) -> Path:
    path = folder / name
    if not path.exists():
        pytest.skip(f"{path} is absent: the project's real videos live in ../shared/data beside the checkout")
    return path


def first_frames(path: Path, count: int) -> list[npt.NDArray[np.uint8]]:
    from tracking.video import read_frames  # PyAV: imported here so `pytest -m gpu` collects without it

    return [rgb for _, _, rgb in read_frames(path, count)]


def write_video(path: Path, frames: list[npt.NDArray[np.uint8]], fps: int = 25) -> Path:
    """Encode RGB frames as H.264 with PyAV (the project's own writer)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return path


def one_torch_thread() -> Iterator[None]:
    """Small tensors gain nothing from threads, and on a shared machine OpenMP barriers between
    busy cores cost more than the work: run with one thread, then restore the setting."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
