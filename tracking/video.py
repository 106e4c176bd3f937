"""Reading videos with PyAV, with errors a user can act on."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from tracking.tracker import FaceTrack

U8 = npt.NDArray[np.uint8]


class VideoError(RuntimeError):
    """The input is not a usable video; the message is one line that says what to do."""


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream.

    Attributes:
        path: the file.
        width, height: frame size in pixels.
        fps: average frame rate.
        frames: frame count (from the container; estimated from the duration when absent).
        seconds: duration.
    """

    path: Path
    width: int
    height: int
    fps: float
    frames: int
    seconds: float


def probe(path: Path) -> VideoInfo:
    """Open `path` and describe its video stream, or raise VideoError saying what is wrong."""
    if not path.exists():
        raise VideoError(f"{path}: no such file")
    if path.is_dir():
        raise VideoError(f"{path}: is a folder; pass a video file (mp4, mov, webm, ...)")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: the file is empty; record or copy the video again")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: has no video stream (audio only?); pass a video file")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            fps = float(rate)
            seconds = 0.0
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                seconds = container.duration / 1_000_000
            frames = stream.frames or round(seconds * fps)
            width, height = stream.codec_context.width, stream.codec_context.height
    except av.error.FFmpegError as exc:
        raise VideoError(f"{path}: not a readable video ({exc.strerror or exc}); pass an mp4/mov/webm file") from exc
    if width <= 0 or height <= 0:
        raise VideoError(f"{path}: the video stream has no frame size; re-encode it (e.g. with ffmpeg)")
    if frames <= 0:
        frames = 0
    return VideoInfo(path, width, height, fps, int(frames), seconds or frames / fps)


def read_frames(path: Path, max_frames: int | None = None) -> Iterator[tuple[int, float, U8]]:
    """Yield (index, seconds, [H, W, 3] uint8 RGB) for each decoded frame.

    A file that breaks part-way stops the iteration with VideoError after the frames that
    decoded; the caller decides whether what it has is enough.
    """
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise VideoError(f"{path}: not a readable video ({exc.strerror or exc})") from exc
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        index = 0
        try:
            for frame in container.decode(stream):
                if max_frames is not None and index >= max_frames:
                    return
                seconds = float(frame.time) if frame.time is not None else index / float(stream.average_rate or 25)
                yield index, seconds, np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)
                index += 1
        except av.error.FFmpegError as exc:
            raise VideoError(f"{path}: decoding failed after {index} frames ({exc.strerror or exc})") from exc


@dataclass(frozen=True)
class TrackedVideo:
    """Pass-1 result for one video: per-frame tracks (None where the face was lost), and the
    light on the face in each tracked frame (`tracking.recording.face_luma`; empty when unknown:
    a tracking cache written before it was kept)."""

    info: VideoInfo
    times: list[float]
    tracks: list[FaceTrack | None]
    face_luma: list[float] = field(default_factory=list)

    @property
    def tracked(self) -> list[int]:
        return [i for i, t in enumerate(self.tracks) if t is not None]
