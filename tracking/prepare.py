"""`avatarcam prepare`: a selfie video -> a training set.

Layout of DATA (all images size x size):
    manifest.json        counts, split, warnings, timings; written last: its presence means done
    options.json         the resolved PrepareConfig
    expression.npz       the personal expression model, fit on the training split
    contact_sheet.png    frames with the mesh and renders overlaid, for a person to check
    tracking_plot.png    head pose and expression over time
    train/, test/        one folder per split:
        frames/NNNNNN.png  the portrait crop (NNNNNN = the source frame index)
        mask/NNNNNN.png    person (foreground) mask, 8-bit
        uv/NNNNNN.png      UV rendering, 16-bit, R = u, G = v, B = region code
        render/NNNNNN.png  texture rendering, 8-bit RGB
        tracking.npz       per-frame tracking of the written frames (crop pixels)
        background.png     the background without the person
        texture.png        train only: the person's face back-projected into UV space (tracking/texture.py)

Two passes per video: (1) decode and track every frame (MediaPipe in VIDEO mode is sequential)
and pick one stable crop from all of them; (2) decode again and crop, segment, render and
write frames on a thread pool (the native work releases the GIL). Pass 1's result is cached
under DATA/.work, pass 2 skips frames already written, and every file lands by rename, so a
killed run resumes where it stopped and never leaves a frame half-written.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from tracking import recording
from tracking.assets import sha256_of
from tracking.crop import Crop, portrait_crop
from tracking.expression import ExpressionModel
from tracking.mesh import CanonicalMesh, load_canonical_mesh
from tracking.render import FaceRenderer
from tracking.texture import back_project
from tracking.tracker import FaceTrack, FaceTracker, face_size
from tracking.video import TrackedVideo, VideoInfo, probe, read_frames

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

FORMAT_VERSION = 1
MIN_TRACKED = 16  # fewer tracked frames than this cannot train anything
IN_FLIGHT = 8  # frames queued for the pass-2 pool: bounds memory, keeps both cores busy


class PrepareError(RuntimeError):
    """The video cannot become a training set; the message says why and what to do."""


@dataclass(frozen=True)
class PrepareConfig:
    """Options of `avatarcam prepare`.

    Attributes:
        video: the selfie video to learn from.
        out: the dataset folder to write.
        size: side of the square crops and renders (pixels).
        test_video: another recording of the same person for the test split; when absent the
            last `test_fraction` of `video` is held out.
        test_fraction: tail fraction of `video` held out for testing (without `test_video`).
        max_frames: use only the first N frames of each video (quick runs).
        workers: threads for pass 2.
        face_model: a FaceLandmarker bundle to use instead of the installed one.
        segmentation_model: a segmentation model to use instead of the installed one.
    """

    video: Path
    out: Path
    size: int = 256
    test_video: Path | None = None
    test_fraction: float = 0.2
    max_frames: int | None = None
    workers: int = 2
    face_model: Path | None = None
    segmentation_model: Path | None = None

    def validate(self) -> None:
        if self.size < 64 or self.size % 32:
            raise PrepareError(f"--size {self.size}: use a multiple of 32 of at least 64 (256 or 512)")
        if not 0.0 <= self.test_fraction < 1.0:
            raise PrepareError(f"--test-fraction {self.test_fraction}: use a value in [0, 1)")
        if self.max_frames is not None and self.max_frames < MIN_TRACKED:
            raise PrepareError(f"--max-frames {self.max_frames}: use at least {MIN_TRACKED}")
        if self.workers < 1:
            raise PrepareError("--workers must be at least 1")


@dataclass
class Stopwatch:
    """Seconds spent per stage, summed over threads."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, stage: str, start: float) -> float:
        now = time.perf_counter()
        with self.lock:
            self.seconds[stage] += now - start
        return now


# ---------------------------------------------------------------------------------- pass 1


def _save_tracks(path: Path, video: TrackedVideo) -> None:
    ok = np.array([t is not None for t in video.tracks])
    good = [t for t in video.tracks if t is not None]
    arrays = {
        "ok": ok,
        "times": np.array(video.times),
        "landmarks": np.stack([t.landmarks for t in good]) if good else np.zeros((0, 478, 3), np.float32),
        "blendshapes": np.stack([t.blendshapes for t in good]) if good else np.zeros((0, 52), np.float32),
        "matrix": np.stack([t.matrix for t in good]) if good else np.zeros((0, 4, 4), np.float32),
        "faces": np.array([t.faces for t in good], dtype=np.int32),
        "face_luma": np.array(video.face_luma, dtype=np.float32),
    }
    partial = path.with_name(path.name + ".partial.npz")
    np.savez(partial, **arrays)  # type: ignore[arg-type]
    partial.replace(path)


def _load_tracks(path: Path, info: VideoInfo, mesh: CanonicalMesh) -> TrackedVideo:
    from tracking.tracker import track_from_landmarks

    with np.load(path) as data:
        ok, times = data["ok"], data["times"].tolist()
        face_luma = data["face_luma"].tolist() if "face_luma" in data.files else []
        rows = iter(zip(data["landmarks"], data["blendshapes"], data["matrix"], data["faces"], strict=True))
        tracks: list[FaceTrack | None] = []
        for present in ok:
            if present:
                lm, bs, mx, faces = next(rows)
                tracks.append(track_from_landmarks(lm, bs, mx, int(faces), mesh))
            else:
                tracks.append(None)
    return TrackedVideo(info, times, tracks, face_luma)


def track_video(info: VideoInfo, config: PrepareConfig, work: Path, watch: Stopwatch) -> TrackedVideo:
    """Pass 1, cached in `work` by the video's digest and the frame limit."""
    key = f"{sha256_of(info.path)[:16]}-{config.max_frames or 'all'}"
    cache = work / f"{key}.tracks.npz"
    with FaceTracker(config.face_model, mode="video") as tracker:
        if cache.exists():
            return _load_tracks(cache, info, tracker.mesh)
        times: list[float] = []
        tracks: list[FaceTrack | None] = []
        face_luma: list[float] = []
        expected = min(info.frames, config.max_frames or info.frames) or None
        bar = tqdm(total=expected, desc=f"track {info.path.name}", unit="frame", dynamic_ncols=True)
        start = time.perf_counter()
        for _, seconds, rgb in read_frames(info.path, config.max_frames):
            start = watch.add("decode", start)
            track = tracker(rgb, round(seconds * 1000))
            tracks.append(track)
            times.append(seconds)
            if track is not None:
                face_luma.append(recording.face_luma(rgb, track.landmarks))
            start = watch.add("track", start)
            bar.update()
        bar.close()
    video = TrackedVideo(info, times, tracks, face_luma)
    _save_tracks(cache, video)
    return video


# ---------------------------------------------------------------------------------- pass 2


@dataclass(frozen=True)
class Split:
    """Frames of one video that go to one split folder."""

    name: str
    video: TrackedVideo
    crop: Crop
    frames: list[int]  # source frame indices, all tracked


def _write_png(path: Path, image: npt.NDArray[Any]) -> None:
    """Write atomically: a killed run leaves no truncated PNG under the final name."""
    ok, data = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise PrepareError(f"could not encode {path.name}")
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data.tobytes())
    partial.replace(path)


KINDS = ("frames", "uv", "render", "mask")


def _frame_done(folder: Path, name: str) -> bool:
    return all((folder / kind / name).exists() for kind in KINDS)


class _Worker:
    """Per-thread segmenter (not shareable across threads) plus the shared renderer."""

    def __init__(self, renderer: FaceRenderer, segmentation_model: Path | None, watch: Stopwatch) -> None:
        self.renderer = renderer
        self.segmentation_model = segmentation_model
        self.watch = watch
        self.local = threading.local()
        self.segmenters: list[Any] = []
        self.lock = threading.Lock()

    def segmenter(self) -> Any:
        seg = getattr(self.local, "segmenter", None)
        if seg is None:
            from tracking.segmentation import PersonSegmenter

            seg = PersonSegmenter(self.segmentation_model)
            self.local.segmenter = seg
            with self.lock:
                self.segmenters.append(seg)
        return seg

    def close(self) -> None:
        for seg in self.segmenters:
            seg.close()

    def __call__(self, folder: Path, name: str, crop: Crop, rgb: U8, landmarks: F32) -> tuple[U8, U8]:
        start = time.perf_counter()
        image = crop.image(rgb)
        start = self.watch.add("crop", start)
        mask = (self.segmenter()(image) * 255).round().astype(np.uint8)
        start = self.watch.add("segment", start)
        cond = self.renderer(crop.points(landmarks))
        start = self.watch.add("render", start)
        _write_png(folder / "uv" / name, cond.uv_u16()[..., ::-1])
        _write_png(folder / "render" / name, cond.shaded_u8()[..., ::-1])
        _write_png(folder / "frames" / name, image[..., ::-1])
        _write_png(folder / "mask" / name, mask)  # last: its presence marks the frame complete
        self.watch.add("write", start)
        return image, mask


def _decoded(split: Split, max_frames: int | None) -> Iterator[tuple[int, U8]]:
    wanted = set(split.frames)
    last = max(split.frames)
    for index, _, rgb in read_frames(split.video.info.path, max_frames):
        if index in wanted:
            yield index, rgb
        if index >= last:
            return


def write_split(split: Split, root: Path, worker: _Worker, config: PrepareConfig) -> U8:
    """Pass 2 for one split; returns the background estimate."""
    folder = root / split.name
    for kind in KINDS:
        (folder / kind).mkdir(parents=True, exist_ok=True)
    # A sparse, even sample of frames feeds the background estimate.
    sample = set(split.frames[:: max(1, len(split.frames) // 48)])
    samples: list[tuple[U8, U8]] = []
    pending: list[Future[tuple[U8, U8]]] = []
    pending_sample: list[Future[tuple[U8, U8]]] = []
    bar = tqdm(total=len(split.frames), desc=f"render {split.name}", unit="frame", dynamic_ncols=True)
    with ThreadPoolExecutor(config.workers, thread_name_prefix="prepare") as pool:
        start = time.perf_counter()
        for index, rgb in _decoded(split, config.max_frames):
            start = worker.watch.add("decode", start)
            name = f"{index:06d}.png"
            track = split.video.tracks[index]
            assert track is not None
            if _frame_done(folder, name):
                if index in sample:
                    samples.append(
                        (split.crop.image(rgb), np.asarray(cv2.imread(str(folder / "mask" / name), 0), np.uint8))
                    )
                bar.update()
                start = time.perf_counter()
                continue
            future = pool.submit(worker, folder, name, split.crop, rgb, track.landmarks)
            future.add_done_callback(lambda _: bar.update())
            (pending_sample if index in sample else pending).append(future)
            pending = _drain(pending, IN_FLIGHT)
            start = time.perf_counter()
        for f in pending + pending_sample:
            f.result()
        samples += [f.result() for f in pending_sample]
    bar.close()
    _save_split_tracking(folder / "tracking.npz", split)
    background = estimate_background(samples)
    _write_png(folder / "background.png", background[..., ::-1])
    return background


def write_photo_texture(folder: Path, names: list[str], size: int, stride: int = 2) -> None:
    """Back-project every `stride`-th written frame of a split into `folder`/texture.png."""
    picked = names[::stride]

    def read(kind: str, name: str, flags: int) -> npt.NDArray[Any]:
        image = cv2.imread(str(folder / kind / name), flags)
        if image is None:
            raise PrepareError(f"{folder / kind / name} is unreadable; delete it and re-run prepare to rewrite it")
        return np.asarray(image)

    frames = np.stack([read("frames", n, cv2.IMREAD_COLOR)[..., ::-1] for n in picked])
    uv = np.stack([read("uv", n, cv2.IMREAD_UNCHANGED)[..., ::-1] for n in picked])
    masks = np.stack([read("mask", n, cv2.IMREAD_GRAYSCALE) for n in picked])
    texture = back_project(
        torch.from_numpy(frames).permute(0, 3, 1, 2),
        torch.from_numpy(uv.astype(np.float32) / 65535).permute(0, 3, 1, 2),
        torch.from_numpy(masks)[:, None],
        size,
    )
    rgb = (texture.rgb * 255).round().byte().permute(1, 2, 0).numpy()
    _write_png(folder / "texture.png", np.ascontiguousarray(rgb[..., ::-1]))


def _drain(pending: list[Future[tuple[U8, U8]]], limit: int) -> list[Future[tuple[U8, U8]]]:
    """Wait for the oldest futures until at most `limit` are in flight; surface their errors."""
    while len(pending) > limit:
        pending.pop(0).result()
    return pending


def _save_split_tracking(path: Path, split: Split) -> None:
    tracks = [split.video.tracks[i] for i in split.frames]
    good = [t for t in tracks if t is not None]
    arrays = {
        "frame": np.array(split.frames, dtype=np.int64),
        "time": np.array([split.video.times[i] for i in split.frames]),
        "landmarks": np.stack([split.crop.points(t.landmarks) for t in good]),
        "landmarks_source": np.stack([t.landmarks for t in good]),
        "blendshapes": np.stack([t.blendshapes for t in good]),
        "pose": np.stack([t.pose.as_vector() for t in good]),
        "matrix": np.stack([t.matrix for t in good]),
        "crop": np.array([split.crop.x0, split.crop.y0, split.crop.side, split.crop.size]),
    }
    partial = path.with_name(path.name + ".partial.npz")
    np.savez(partial, **arrays)  # type: ignore[arg-type]
    partial.replace(path)


def estimate_background(samples: list[tuple[U8, U8]]) -> U8:
    """The person-free plate: per-pixel median of the pixels the person does not cover.

    The masks are dilated first, so the segmentation's soft rim (hair strands, a shoulder's edge)
    stays out of the median, and a pixel needs to be free in at least a tenth of the samples:
    one seen in only a frame or two, where the mask missed part of the person, would otherwise
    paint that part into the plate. The rest is inpainted from its surroundings."""
    if not samples:
        raise PrepareError("no frames to estimate the background from")
    images = np.stack([s[0] for s in samples]).astype(np.float32)
    side = images.shape[1]
    kernel = np.ones((side // 32 | 1,) * 2, np.uint8)
    free = np.stack([cv2.dilate(s[1], kernel) for s in samples]) < 128
    stacked = np.where(free[..., None], images, np.nan)
    seen = free.sum(axis=0) >= max(1, min(3, len(samples)), len(samples) // 10)
    median = np.zeros(images.shape[1:], dtype=np.float32)
    if seen.any():
        median[seen] = np.nanmedian(stacked[:, seen], axis=0)
    background = np.clip(median, 0, 255).astype(np.uint8)
    hole = np.where(seen, 0, 255).astype(np.uint8)
    if hole.any():
        background = np.asarray(cv2.inpaint(background, hole, 5, cv2.INPAINT_TELEA), dtype=np.uint8)
    return background


# ---------------------------------------------------------------------------------- checks


def _crop_for(video: TrackedVideo, size: int) -> tuple[Crop, list[str]]:
    tracked = [t for t in video.tracks if t is not None]
    centres = np.array([t.landmarks[:, :2].mean(axis=0) for t in tracked], dtype=np.float32)
    sizes = np.array([face_size(t.landmarks) for t in tracked], dtype=np.float32)
    return portrait_crop(centres, sizes, video.info.width, video.info.height, size)


def check_tracking(video: TrackedVideo) -> list[str]:
    """Raise on videos that cannot train; return warnings for ones that will train badly."""
    name = video.info.path.name
    total, tracked = len(video.tracks), len(video.tracked)
    if total == 0:
        raise PrepareError(f"{name}: no frames could be decoded; check the file plays, or re-encode it")
    if tracked == 0:
        raise PrepareError(
            f"{name}: no face found in {total} frames; record your face frontally, well lit, filling "
            "at least a fifth of the frame"
        )
    if tracked < MIN_TRACKED:
        raise PrepareError(
            f"{name}: a face was tracked in only {tracked} of {total} frames (need {MIN_TRACKED}); "
            "keep your face in view and well lit"
        )
    warnings: list[str] = []
    lost = 1 - tracked / total
    if recording.face_lost_too_often(lost):
        warnings.append(f"{name}: the face was lost in {lost:.0%} of frames; keep it in view, unobstructed and lit")
    tracks = [t for t in video.tracks if t is not None]
    several = float(np.mean([t.faces > 1 for t in tracks]))
    if recording.several_faces_too_often(several):
        warnings.append(
            f"{name}: another face is visible in {several:.0%} of frames; the largest is used. Record alone"
        )
    yaw_range, pitch_range = recording.rotation_ranges(np.array([t.pose.as_vector()[:2] for t in tracks]))
    if not recording.enough_rotation(yaw_range, pitch_range):
        warnings.append(
            f"{name}: little head rotation (yaw range {yaw_range:.0f}°, pitch {pitch_range:.0f}°); turn your "
            "head left, right, up and down while recording so the avatar can follow"
        )
    jaw, expressive = recording.expression_ranges(np.array([t.blendshapes for t in tracks]))
    if not recording.enough_expression(jaw, expressive):
        warnings.append(
            f"{name}: little expression range (jawOpen 95th percentile {jaw:.2f}); talk, smile, open your "
            "mouth and raise your brows while recording"
        )
    face = float(np.median([face_size(t.landmarks) for t in tracks]))
    if recording.face_too_small(face):
        warnings.append(f"{name}: the face is only {face:.0f} px tall; move closer or record at a higher resolution")
    if video.face_luma and recording.too_dark(luma := float(np.median(video.face_luma))):
        warnings.append(
            f"{name}: the face is dark (luma {luma:.0f} of 255); move into the light or light your face from the front"
        )
    return warnings


# ---------------------------------------------------------------------------------- run


def _atomic_json(path: Path, payload: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    partial.replace(path)


def run(config: PrepareConfig) -> dict[str, Any]:
    """Prepare the dataset and return the manifest."""
    config.validate()
    torch.set_num_threads(1)  # parallelism comes from the frame pool, not from inside ops
    root = config.out
    manifest_path = root / "manifest.json"
    if manifest_path.exists():
        manifest_path.unlink()  # re-running: the old manifest must not vouch for a changing dataset
    info = probe(config.video)
    test_info = probe(config.test_video) if config.test_video else None
    root.mkdir(parents=True, exist_ok=True)
    work = root / ".work"
    work.mkdir(exist_ok=True)
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    _atomic_json(root / "options.json", options)

    watch = Stopwatch()
    began = time.perf_counter()
    warnings: list[str] = []
    train_video = track_video(info, config, work, watch)
    if not info.seconds and train_video.times:
        # A browser's recording (MediaRecorder WebM) states no duration: its frames tell it.
        info = replace(info, seconds=train_video.times[-1] + 1 / info.fps, frames=len(train_video.times))
        train_video = replace(train_video, info=info)
    if info.seconds < 60:
        warnings.append(
            f"{info.path.name}: {info.seconds:.0f} s long; 1-3 minutes of varied expressions and head turns "
            "makes a better avatar"
        )
    warnings += check_tracking(train_video)
    crop, crop_warnings = _crop_for(train_video, config.size)
    warnings += crop_warnings

    tracked = train_video.tracked
    splits: list[Split]
    if test_info is not None:
        test_video = track_video(test_info, config, work, watch)
        warnings += check_tracking(test_video)
        test_crop, test_warnings = _crop_for(test_video, config.size)
        warnings += test_warnings
        splits = [
            Split("train", train_video, crop, tracked),
            Split("test", test_video, test_crop, test_video.tracked),
        ]
        videos = [train_video, test_video]
    else:
        cut = round(len(train_video.tracks) * (1 - config.test_fraction))
        train = [i for i in tracked if i < cut]
        test = [i for i in tracked if i >= cut]
        if len(train) < MIN_TRACKED:
            raise PrepareError(
                f"only {len(train)} tracked training frames; lower --test-fraction or use a longer video"
            )
        if not test:
            warnings.append("the test split is empty; evaluation needs --test-fraction > 0 or --test-video")
        splits = [Split("train", train_video, crop, train)] + ([Split("test", train_video, crop, test)] if test else [])
        videos = [train_video]
    if crop.side < config.size:
        warnings.append(f"the portrait crop is {crop.side:.0f} px, upscaled to {config.size}: expect a softer avatar")

    train_tracks = [t for t in (train_video.tracks[i] for i in splits[0].frames) if t is not None]
    model = ExpressionModel.fit(
        np.stack([t.shape for t in train_tracks]),
        np.stack([t.blendshapes for t in train_tracks]),
        np.stack([t.pose.as_vector() for t in train_tracks]),
    )
    np.savez(root / "expression.npz", **model.to_arrays())  # type: ignore[arg-type]

    renderer = FaceRenderer(load_canonical_mesh(config.face_model), config.size)
    worker = _Worker(renderer, config.segmentation_model, watch)
    try:
        for split in splits:
            write_split(split, root, worker, config)
    finally:
        worker.close()
    start = time.perf_counter()
    write_photo_texture(root / splits[0].name, [f"{i:06d}.png" for i in splits[0].frames], config.size)
    watch.add("texture", start)

    from tracking.report import contact_sheet, tracking_plot

    contact_sheet(root, splits[0].name, root / "contact_sheet.png")
    tracking_plot(videos, root / "tracking_plot.png")

    wall = time.perf_counter() - began
    frames_total = sum(len(v.tracks) for v in videos)
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "frames_total": frames_total,
        "frames_tracked": sum(len(v.tracked) for v in videos),
        "train_frames": len(splits[0].frames),
        "test_frames": len(splits[1].frames) if len(splits) > 1 else 0,
        "size": config.size,
        "fps": info.fps,
        "seconds": info.seconds,
        "warnings": warnings,
        "sources": [
            {
                "split": s.name,
                "video": str(s.video.info.path),
                "width": s.video.info.width,
                "height": s.video.info.height,
                "fps": s.video.info.fps,
                "crop": s.crop.to_dict(),
            }
            for s in splits
        ],
        "timings": {
            "wall_seconds": wall,
            "frames_per_second": frames_total / wall if wall > 0 else 0.0,
            "stage_seconds": dict(watch.seconds),
        },
    }
    _atomic_json(manifest_path, manifest)
    return manifest
