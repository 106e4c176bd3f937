"""Person (selfie) segmentation: a soft mask that separates the user from the room.

The model is Google's MediaPipe "selfie segmentation" (general, 256x256 input,
Apache-2.0). mediapipe 1.2.2, which the project depends on, no longer ships any
model files, but the identical file is inside the ``mediapipe==0.10.21`` wheel
on PyPI. That wheel cannot be installed next to mediapipe 1.2.2 (same import
name), so ``--fetch`` downloads it with pip, copies the single 249,505-byte
model out of it into avatarcam's model cache and pins it by SHA-256. Inference goes
through the mediapipe 1.2.2 Tasks ``ImageSegmenter``, which accepts this model
because it carries TFLite metadata and which brings the
``Convolution2DTransposeBias`` custom op that plain TFLite runtimes lack.

Run ``python -m tracking.segmentation --fetch`` once (``make setup`` does).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from tracking.assets import cache_dir

MODEL_FILENAME = "selfie_segmentation.tflite"
MODEL_SIZE = 249_505
MODEL_SHA256 = "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c"

# The model is data, identical in every platform's wheel; pinning one wheel makes
# the download reproducible whatever machine or Python runs the fetch.
SOURCE_REQUIREMENT = "mediapipe==0.10.21"
_PIP_DOWNLOAD = (
    "--disable-pip-version-check --no-deps --only-binary=:all: "
    "--platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311"
)
_MEMBER = "mediapipe/modules/selfie_segmentation/" + MODEL_FILENAME


class SegmentationModelMissing(RuntimeError):
    """The segmentation model is absent or not the expected file."""


def fetch_command() -> str:
    """The shell command that installs the model into the running environment."""
    return f"{shlex.quote(sys.executable)} -m tracking.segmentation --fetch"


def default_model_path() -> Path:
    """Where ``--fetch`` puts the model: avatarcam's model cache, like the other models.

    Outside the virtualenv on purpose, so ``make clean`` does not cost a 35 MB
    re-download.
    """
    return cache_dir() / MODEL_FILENAME


def _problem_with(data: bytes) -> str | None:
    if len(data) != MODEL_SIZE:
        return f"size {len(data)} bytes, expected {MODEL_SIZE}"
    digest = hashlib.sha256(data).hexdigest()
    if digest != MODEL_SHA256:
        return f"sha256 {digest}, expected {MODEL_SHA256}"
    return None


def _missing(detail: str, explicit: bool = False) -> SegmentationModelMissing:
    install = (
        f"run\n    {fetch_command()}\nfrom the repository root (`make setup` runs it too); "
        f"it downloads the {SOURCE_REQUIREMENT} wheel with pip and installs "
        f"{MODEL_FILENAME} to {default_model_path()}"
    )
    if explicit:
        fix = f"pass the path of an intact {MODEL_FILENAME} (sha256 {MODEL_SHA256}), or pass no path and {install}"
    else:
        fix = install
    return SegmentationModelMissing(f"Person segmentation model unavailable: {detail}.\nFix: {fix}.")


def _verified_bytes(path: Path | None = None) -> tuple[Path, bytes]:
    candidate = default_model_path() if path is None else path
    explicit = path is not None
    try:
        data = candidate.read_bytes()
    except FileNotFoundError:
        raise _missing(f"{candidate} does not exist", explicit) from None
    except OSError as exc:
        raise _missing(f"{candidate} is unreadable ({exc})", explicit) from exc
    problem = _problem_with(data)
    if problem is not None:
        raise _missing(f"{candidate} is corrupt or a different file ({problem})", explicit)
    return candidate, data


def find_segmentation_model(path: Path | None = None) -> Path:
    """Return the model file, checked against the pinned size and SHA-256.

    An explicit ``path`` is checked too: a truncated or different model would
    still load and produce plausible-looking but wrong masks.

    There is no installed package to look in: the PyPI package that carries this
    file (mediapipe 0.10.x) would replace mediapipe 1.2.2 if installed, so the
    cache filled by ``--fetch`` is the one default location.
    """
    found, _ = _verified_bytes(path)
    return found


def fetch_model(dest: Path | None = None) -> Path:
    """Download the source wheel with pip and install the verified model to ``dest``.

    Only this one file is kept; the 35 MB wheel goes to a temporary directory.
    """
    target = default_model_path() if dest is None else dest
    with tempfile.TemporaryDirectory(prefix="avatarcam-seg-") as tmp:
        command = [sys.executable, "-m", "pip", "download", *_PIP_DOWNLOAD.split()]
        subprocess.run([*command, "--dest", tmp, SOURCE_REQUIREMENT], check=True)
        wheels = sorted(Path(tmp).glob("mediapipe-*.whl"))
        if not wheels:
            raise _missing(f"pip did not produce a {SOURCE_REQUIREMENT} wheel")
        with zipfile.ZipFile(wheels[0]) as archive:
            data = archive.read(_MEMBER)
    problem = _problem_with(data)
    if problem is not None:
        raise _missing(f"{_MEMBER} in {wheels[0].name} has {problem}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, target)  # never leave a half-written model behind
    return target


class PersonSegmenter:
    """Soft person mask for RGB frames, at the frame's own resolution.

    Thread-safety: one instance may be called from several threads, but calls
    are serialized (mediapipe funnels each task through one dispatcher thread,
    and a lock here keeps ``close()`` from racing a call). For parallel work give
    each thread its own instance; they share nothing. Each instance costs four to
    six OS threads inside mediapipe, so do not create one per frame.

    IMAGE running mode is used on purpose: it is as fast as VIDEO mode for this
    model and needs no monotonically increasing timestamps, so frames may come
    from any source, in any order.
    """

    def __init__(self, model_path: Path | None = None, num_threads: int = 1) -> None:
        if num_threads != 1:
            # mediapipe 1.2.2 Tasks has no thread-count option and runs this model
            # on one thread; accepting other values would silently mislead.
            raise ValueError(f"num_threads must be 1 for the mediapipe backend, got {num_threads}")
        _, model = _verified_bytes(model_path)
        # Imported here so that model lookup and its error stay fast (~1 s import).
        import mediapipe as mp
        from mediapipe.tasks.python.core.base_options import BaseOptions
        from mediapipe.tasks.python.vision.core.vision_task_running_mode import (
            VisionTaskRunningMode,
        )
        from mediapipe.tasks.python.vision.image_segmenter import (
            ImageSegmenter,
            ImageSegmenterOptions,
        )

        options = ImageSegmenterOptions(
            # The verified bytes are what runs, so the file cannot change in between.
            base_options=BaseOptions(model_asset_buffer=model),
            running_mode=VisionTaskRunningMode.IMAGE,
            output_confidence_masks=True,
            output_category_mask=False,
        )
        self._mp: Any = mp
        self._segmenter: Any = ImageSegmenter.create_from_options(options)
        self._lock = threading.Lock()

    def __call__(self, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """Return an HxW float32 mask in [0, 1], 1 where the person is."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB image, got {rgb.shape} {rgb.dtype}")
        height, width = rgb.shape[:2]
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        with self._lock:
            if self._segmenter is None:
                raise RuntimeError("PersonSegmenter is closed")
            result = self._segmenter.segment(image)
        # Copy: the view belongs to mediapipe's image object. reshape fails loudly
        # should mediapipe ever stop returning the mask at input resolution.
        mask = np.array(result.confidence_masks[0].numpy_view(), dtype=np.float32)
        mask = mask.reshape(height, width)
        np.clip(mask, 0.0, 1.0, out=mask)
        return mask

    def close(self) -> None:
        """Release the mediapipe graph and its threads; safe to call twice.

        Call it (or use ``with``): left to the garbage collector at interpreter
        exit, mediapipe's own finalizer raises an ignored-exception traceback.
        """
        with self._lock:
            segmenter, self._segmenter = self._segmenter, None
        if segmenter is not None:
            segmenter.close()

    def __enter__(self) -> PersonSegmenter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    """``--fetch`` installs the model; without it, report where it is or what to do."""
    parser = argparse.ArgumentParser(prog="python -m tracking.segmentation", description=__doc__)
    parser.add_argument("--fetch", action="store_true", help="download and install the model")
    args = parser.parse_args(argv)
    try:
        path = fetch_model() if args.fetch else find_segmentation_model()
    except SegmentationModelMissing as exc:
        print(exc, file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(
            f"pip could not download {SOURCE_REQUIREMENT} (exit {exc.returncode}); "
            "check access to the package index and retry",
            file=sys.stderr,
        )
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
