from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from tests.media import first_frames, shared_video


@pytest.fixture(scope="session")
def cap12() -> Path:
    return shared_video("cap12_512.mp4")


@pytest.fixture(scope="session")
def cap13() -> Path:
    return shared_video("cap13_512.mp4")


@pytest.fixture(scope="session")
def driver_video() -> Path:
    return shared_video("drv_lp_d10_512.mp4")


@pytest.fixture(scope="session")
def cap12_track_256(cap12: Path) -> npt.NDArray[np.float32]:
    """Landmarks of cap12's first frame, scaled to a 256 x 256 render."""
    from tracking.tracker import FaceTracker

    with FaceTracker(mode="image") as tracker:
        track = tracker(first_frames(cap12, 1)[0])
    assert track is not None
    return track.landmarks * np.float32(256 / 512)
