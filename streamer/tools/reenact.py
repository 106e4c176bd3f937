"""`avatarcam reenact`: drive an avatar offline with any video and write an mp4.

The driver goes through the live path (`tracking.live.LiveDriver`: tracking, One Euro
smoothing, retargeting through the avatar's expression model) after a neutral calibration
from the driver's most neutral frame in its first seconds, or a frame the user names. Every
output frame carries the visible "synthetic" badge (`streamer.stages.compose.Compositor`) and the
invisible watermark (`streamer.provenance.watermark`), and the file a signed C2PA manifest
(`streamer.provenance.credentials`) naming the avatar's subject and consent. The output has the driver's
frame count and frame rate; the driver's audio is copied into it (re-encoded to AAC only when
MP4 cannot carry its codec).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import cv2
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from models.avatar import Avatar, load_avatar
from models.engines import Engine, create_engine
from streamer.provenance.identity import WatermarkRequired, refuse_undisclosed

if TYPE_CHECKING:
    from streamer.stages.compose import Compositor

U8 = npt.NDArray[np.uint8]
MP4_AUDIO = {"aac", "mp3", "alac", "opus", "flac", "ac3"}  # codecs MP4 carries as they are


class ReenactError(RuntimeError):
    """The reenactment cannot run; the message says what to change."""


@dataclass(frozen=True)
class ReenactOptions:
    """Options of `avatarcam reenact`.

    Attributes:
        avatar: the `.avatar` file to drive.
        driver: the driving video (any person).
        out: the mp4 to write.
        side_by_side: write driver | avatar next to each other.
        calibrate_seconds: the driver's neutral is its most neutral frame in this many first seconds.
        calibrate_frame: use this driver frame as the neutral instead.
        engine: inference backend name (see `models.engines.ENGINES`).
        device: "cpu" or "cuda".
        max_frames: drive only the first N frames.
        crf: H.264 quality (lower is better, 18 is visually lossless).
        watermark: embed the invisible watermark (refused off for the shipped demo avatar).
        credentials: sign a C2PA manifest into the mp4 (refused off for the shipped demo avatar).
        c2pa_cert, c2pa_key: your own signing certificate chain and key (PEM); default: the
            local key generated into the cache.
    """

    avatar: Path
    driver: Path
    out: Path
    side_by_side: bool = False
    calibrate_seconds: float = 1.0
    calibrate_frame: int | None = None
    engine: str = "torch"
    device: str = "cpu"
    max_frames: int | None = None
    crf: int = 18
    watermark: bool = True
    credentials: bool = True
    c2pa_cert: Path | None = None
    c2pa_key: Path | None = None

    def validate(self) -> None:
        if not self.driver.is_file():
            raise ReenactError(f"{self.driver}: no such driver video")
        if self.out.suffix.lower() != ".mp4":
            raise ReenactError(f"{self.out}: the output must be an .mp4 file")
        if self.calibrate_seconds <= 0:
            raise ReenactError("--calibrate-seconds must be positive")
        if (self.c2pa_cert is None) != (self.c2pa_key is None):
            raise ReenactError("--c2pa-cert and --c2pa-key go together")
        try:
            refuse_undisclosed(self.avatar, watermark=self.watermark, credentials=self.credentials)
        except WatermarkRequired as exc:
            raise ReenactError(str(exc)) from None


def _driver_view(rgb: U8, height: int) -> U8:
    """The driver frame scaled to `height`, its width rounded to an even number (for yuv420p)."""
    width = max(2, round(rgb.shape[1] * height / rgb.shape[0] / 2) * 2)
    return np.asarray(cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA), dtype=np.uint8)


def _copy_audio(driver: Path, container: Any, stream: Any, until: float) -> int:
    """Mux the driver's first audio stream up to `until` seconds into `stream`, copied when MP4
    carries its codec, else re-encoded; returns the packets or frames written."""
    written = 0
    with av.open(str(driver)) as source:
        audio = source.streams.audio[0]
        copy = audio.codec_context.name in MP4_AUDIO
        for packet in source.demux(audio):
            if packet.dts is None:
                continue  # the demuxer's flush packet
            if packet.pts is not None and packet.time_base is not None and packet.pts * packet.time_base >= until:
                break
            if copy:
                packet.stream = stream
                container.mux(packet)
                written += 1
            else:
                for frame in packet.decode():
                    frame.pts = None
                    container.mux(stream.encode(frame))
                    written += 1
        if not copy:
            container.mux(stream.encode(None))
    return written


def drive_frames(
    avatar: Avatar,
    engine: Engine,
    driver: Path,
    neutral: tuple[Any, ...],
    compositor: Compositor,
    max_frames: int | None = None,
) -> Iterator[tuple[int, U8, U8, bool]]:
    """(index, driver frame, composed avatar frame, face found) for each driver frame, through the
    live path after calibrating on `neutral` (blendshapes, pose vector)."""
    from tracking.live import LiveDriver
    from tracking.mesh import load_canonical_mesh
    from tracking.render import FaceRenderer
    from tracking.tracker import FaceTracker
    from tracking.video import read_frames

    with FaceTracker() as tracker:
        size = engine.resolution
        live = LiveDriver(avatar.expression, avatar.crop, FaceRenderer(load_canonical_mesh(), size), tracker)
        live.retarget.calibrate(neutral[0], neutral[1])
        for index, seconds, rgb in read_frames(driver, max_frames):
            drive = live(rgb, seconds)
            out = engine(drive.conditioning.uv_u16()[None], drive.conditioning.shaded_u8()[None])
            yield index, rgb, compositor(out.image[0], out.mask[0]), drive.face_found


def _disclosure(options: ReenactOptions, avatar: Avatar) -> tuple[Any, Any]:
    """(watermark or None, signing key or None), refused before any work when not allowed."""
    from streamer.provenance.credentials import CredentialsError, local_key, user_key
    from streamer.provenance.identity import maybe_watermark

    key = None
    if options.credentials:
        try:
            import c2pa  # noqa: F401  - fail now, not after the whole video

            key = (
                user_key(options.c2pa_cert, options.c2pa_key) if options.c2pa_cert and options.c2pa_key else local_key()
            )
        except ImportError:
            raise ReenactError("content credentials need c2pa-python: `make setup`, or pass --no-credentials") from None
        except CredentialsError as exc:
            raise ReenactError(str(exc)) from None
    return maybe_watermark(avatar.identity, enabled=options.watermark), key


def run(options: ReenactOptions) -> dict[str, Any]:
    """Write the reenacted video; returns a summary (frames, fps, size, audio, face-found share)."""
    from streamer.provenance.credentials import CredentialsError, sign_mp4
    from streamer.stages.compose import ComposeConfig, Compositor
    from tracking.neutral import NoNeutralFace, driver_neutral
    from tracking.video import probe

    options.validate()
    info = probe(options.driver)
    avatar = load_avatar(options.avatar, options.device)
    watermark, key = _disclosure(options, avatar)
    engine = create_engine(options.engine, avatar, options.device)
    size = engine.resolution
    try:
        neutral = driver_neutral(options.driver, options.calibrate_seconds, options.calibrate_frame)
    except NoNeutralFace as exc:
        raise ReenactError(str(exc)) from None
    compositor = Compositor(ComposeConfig(), size, badge_required=True, watermark=watermark)
    with av.open(str(options.driver)) as probe_container:
        video_in = probe_container.streams.video[0]
        rate = video_in.average_rate or video_in.guessed_rate or Fraction(round(info.fps))
        has_audio = bool(probe_container.streams.audio)
        audio_codec = probe_container.streams.audio[0].codec_context.name if has_audio else None
        audio_rate = probe_container.streams.audio[0].codec_context.sample_rate if has_audio else None

    options.out.parent.mkdir(parents=True, exist_ok=True)
    partial = options.out.with_name(options.out.stem + ".partial.mp4")
    frames = found = 0
    width = size
    try:
        with av.open(str(partial), "w") as container:
            video = container.add_stream("libx264", rate=rate)
            video.pix_fmt = "yuv420p"
            video.options = {"crf": str(options.crf)}
            audio = None
            if has_audio:
                with av.open(str(options.driver)) as source:
                    template = source.streams.audio[0]
                    if audio_codec in MP4_AUDIO:
                        audio = container.add_stream_from_template(template)
                    else:
                        audio = container.add_stream("aac", rate=audio_rate)
            total = min(info.frames, options.max_frames or info.frames) or None
            driven = drive_frames(avatar, engine, options.driver, neutral, compositor, options.max_frames)
            for index, rgb, shown, face_found in tqdm(driven, total=total, desc="reenact", unit="frame"):
                if options.side_by_side:
                    shown = np.ascontiguousarray(np.concatenate([_driver_view(rgb, size), shown], axis=1))
                if frames == 0:
                    video.height, video.width = shown.shape[:2]
                    width = shown.shape[1]
                frame = av.VideoFrame.from_ndarray(shown, format="rgb24")
                frame.pts = index
                frame.time_base = 1 / Fraction(rate)
                container.mux(video.encode(frame))
                frames += 1
                found += int(face_found)
            container.mux(video.encode(None))
            if audio is not None:
                _copy_audio(options.driver, container, audio, until=frames / float(rate))
        if key is not None:
            signed = options.out.with_name(options.out.stem + ".signed.partial.mp4")
            try:
                sign_mp4(partial, signed, avatar.identity, key)
            except CredentialsError as exc:
                raise ReenactError(str(exc)) from None
            signed.replace(options.out)
        else:
            partial.replace(options.out)
    finally:
        engine.close()
        partial.unlink(missing_ok=True)
    return {
        "out": str(options.out),
        "frames": frames,
        "fps": float(rate),
        "width": width,
        "height": size,
        "audio": audio_codec if has_audio else None,
        "face_found": found / max(frames, 1),
        "calibration_frame": neutral[2],
        "watermark": f"{watermark.digest:08x}" if watermark is not None else None,
        "credentials": key is not None,
    }
