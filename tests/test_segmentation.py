"""Person segmentation on real frames of cap12, and the errors a user sees without the model."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import cv2.data
import numpy as np
import numpy.typing as npt
import pytest

from tracking.segmentation import (
    MODEL_SHA256,
    PersonSegmenter,
    SegmentationModelMissing,
    find_segmentation_model,
)
from tracking.video import read_frames

CAP12 = Path(__file__).resolve().parents[2] / "shared" / "data" / "512" / "cap12_512.mp4"

U8 = npt.NDArray[np.uint8]


@pytest.fixture(scope="module")
def frames() -> list[U8]:
    """Eight frames spread over the first 16 s, so head motion is covered."""
    if not CAP12.exists():
        pytest.skip(f"{CAP12} is absent: the real videos live in ../shared/data beside the checkout")
    return [rgb for index, _, rgb in read_frames(CAP12, 400) if index % 50 == 0]


@pytest.fixture(scope="module")
def segmenter() -> Iterator[PersonSegmenter]:
    with PersonSegmenter() as seg:
        yield seg


def inner_face_box(rgb: U8) -> tuple[slice, slice]:
    """Central half of the largest detected face: skin only, never hair or background.

    The alt2 cascade is used because the default one often places its box too high.
    """
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_alt2.xml")
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    faces = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(64, 64))
    assert len(faces) > 0, "no face found; the test's heuristic, not the segmenter, failed"
    x, y, w, h = max(faces, key=lambda f: int(f[2]) * int(f[3]))
    return slice(y + h // 4, y + 3 * h // 4), slice(x + w // 4, x + 3 * w // 4)


@pytest.mark.slow
def test_mask_is_the_person(frames: list[U8], segmenter: PersonSegmenter) -> None:
    for rgb in frames:
        mask = segmenter(rgb)
        corner = rgb.shape[0] // 8
        assert mask[inner_face_box(rgb)].mean() > 0.95
        assert mask[:corner, :corner].mean() < 0.05
        assert mask[:corner, -corner:].mean() < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("size", [(512, 512), (256, 256), (200, 300), (301, 157)])
def test_mask_has_input_size_and_range(frames: list[U8], segmenter: PersonSegmenter, size: tuple[int, int]) -> None:
    height, width = size
    rgb = np.asarray(cv2.resize(frames[0], (width, height), interpolation=cv2.INTER_AREA), np.uint8)
    mask = segmenter(rgb)
    assert mask.shape == (height, width)
    assert mask.dtype == np.float32
    assert float(mask.min()) >= 0.0
    assert float(mask.max()) <= 1.0


@pytest.mark.slow
def test_non_contiguous_input_gives_the_same_mask(frames: list[U8], segmenter: PersonSegmenter) -> None:
    flipped = frames[0][:, ::-1]
    np.testing.assert_array_equal(segmenter(flipped), segmenter(np.ascontiguousarray(flipped)))


@pytest.mark.slow
def test_one_instance_per_thread_matches_a_single_thread(frames: list[U8]) -> None:
    with PersonSegmenter() as seg:
        expected = [seg(rgb) for rgb in frames[:4]]
    results: dict[int, list[npt.NDArray[np.float32]]] = {}

    def work(slot: int) -> None:
        with PersonSegmenter() as own:
            results[slot] = [own(rgb) for rgb in frames[:4]]

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for slot in range(2):
        for got, want in zip(results[slot], expected, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-6)


def test_rejects_what_it_cannot_segment() -> None:
    with PersonSegmenter() as seg:
        with pytest.raises(ValueError, match="HxWx3 uint8"):
            seg(np.zeros((8, 8, 4), np.uint8))
        with pytest.raises(ValueError, match="HxWx3 uint8"):
            seg(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(RuntimeError, match="closed"):
        seg(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="num_threads"):
        PersonSegmenter(num_threads=2)


def test_installed_model_is_the_pinned_file() -> None:
    assert find_segmentation_model().stat().st_size == 249_505


def test_missing_default_model_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVATARCAM_HOME", str(tmp_path))
    with pytest.raises(SegmentationModelMissing) as caught:
        find_segmentation_model()
    message = str(caught.value)
    assert "-m tracking.segmentation --fetch" in message
    assert "make setup" in message
    assert str(tmp_path) in message


def test_missing_or_corrupt_explicit_model_names_the_fix(tmp_path: Path) -> None:
    absent = tmp_path / "absent.tflite"
    with pytest.raises(SegmentationModelMissing, match="does not exist") as caught:
        find_segmentation_model(absent)
    assert "--fetch" in str(caught.value)

    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(b"\0" * 249_505)
    with pytest.raises(SegmentationModelMissing, match="corrupt") as caught:
        PersonSegmenter(corrupt)
    assert MODEL_SHA256 in str(caught.value)
