from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from tests.cluster_env import cluster, fleet, gateway, janus  # noqa: F401  (fixtures of the cluster tests)
from tests.media import first_frames, shared_video


@pytest.fixture(scope="session")
def cap12() -> Path:
    return shared_video("cap12_512.mp4")


@pytest.fixture(scope="session")
def cap13() -> Path:
    return shared_video("cap13_512.mp4")


@pytest.fixture(scope="session")
def cap13_data(cap12: Path, cap13: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared 256 px dataset whose test split is cap13: the repository's data/cap12 (the
    demo avatar's, docs/prepare.md) when it is there, else cap12 + cap13's first 24 frames
    prepared here."""
    prepared = Path(__file__).resolve().parents[1] / "data" / "cap12"
    if (prepared / "test" / "tracking.npz").is_file() and (prepared / "train" / "tracking.npz").is_file():
        return prepared
    from tracking.prepare import PrepareConfig
    from tracking.prepare import run as prepare

    out = tmp_path_factory.mktemp("cap13-data") / "cap12"
    prepare(PrepareConfig(video=cap12, out=out, size=256, test_video=cap13, max_frames=24))
    return out


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


@pytest.fixture(scope="session")
def tiny_avatar(cap12: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 64 px avatar of cap12: prepared, trained briefly (L1 + mask) and exported.

    Quality is beside the point; engines, the live service and evaluation need a genuine
    `.avatar` file of the format users get, quickly.
    """
    from models.avatar import export
    from models.training.train import TrainOptions
    from models.training.train import run as train
    from tracking.prepare import PrepareConfig
    from tracking.prepare import run as prepare

    root = tmp_path_factory.mktemp("tiny-avatar")
    prepare(PrepareConfig(video=cap12, out=root / "data", size=64, max_frames=40))
    losses = (("mrf", 0.0), ("cos", 0.0), ("gan_g", 0.0), ("gan_d", 0.0))
    train(TrainOptions(root / "data", root / "run", preset="tiny", steps=30, device="cpu", losses=losses))
    return export(root / "run", root / "data", root / "tiny.avatar", subject="cap12 (test)", consent="MIT test data")


@pytest.fixture(scope="session")
def tiny_avatar_root(tiny_avatar: Path) -> Path:
    """The tiny avatar's folder: `data/` (its prepared dataset), `run/` (its training run) and the avatar."""
    return tiny_avatar.parent
