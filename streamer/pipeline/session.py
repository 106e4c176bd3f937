"""One live avatar session: source -> track + render -> engine + compose -> sinks.

Two worker threads form a two-stage pipeline, so tracking and rendering frame n+1 overlap
generating frame n. Between stages sits a latest-frame slot: when a stage is slower than its
input, the oldest frame is dropped (and counted) instead of queueing, so latency stays bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from models.avatar import Avatar, load_avatar
from models.engines import Engine, create_engine
from models.engines.base import U16
from streamer.core import stamp
from streamer.core.clock import Clock, Pacer
from streamer.core.frames import U8, Background, Frame
from streamer.core.metrics import Metrics, SessionStats
from streamer.core.queues import Closed, DropQueue
from streamer.core.split import FrameTimes
from streamer.pipeline.engine_pool import EnginePool, SharedEngine
from streamer.pipeline.idle import IdleConfig, IdleDriver
from streamer.provenance.identity import is_demo_avatar, maybe_watermark
from streamer.sinks.base import Sink
from streamer.sources.base import Source, SourceEnded
from streamer.stages.compose import ComposeConfig, Compositor
from tracking.live import LiveConfig
from tracking.render import Conditioning, FaceRenderer
from tracking.tracker import FaceTracker

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_FAILURES = 10  # consecutive frames failing in a stage before the session ends


class SessionStopped(Exception):
    """`stop()` came while the session was still starting."""


@dataclass(frozen=True)
class AvatarEntry:
    """An avatar the service can show.

    Attributes:
        name: short name (the file's stem), used by the control API.
        path: the .avatar file.
        avatar: the loaded avatar.
        badge_required: frames of this avatar always carry the synthetic badge and the mark (the
            shipped demo: `load` sets it for the demo's tensors whatever the caller says).
    """

    name: str
    path: Path
    avatar: Avatar
    badge_required: bool = False

    @classmethod
    def load(cls, path: Path, *, badge_required: bool = False, device: str = "cpu") -> AvatarEntry:
        return cls(path.stem, path, load_avatar(path, device), badge_required or is_demo_avatar(path))

    @property
    def resolution(self) -> int:
        return self.avatar.network.image_size


@dataclass(frozen=True)
class SessionConfig:
    """How a session runs.

    Attributes:
        backend: engine backend name (models.engines.ENGINES).
        device: "cpu" or "cuda[:i]".
        compose: background and badge.
        stamp: echo input frame identifiers onto output frames (glass-to-glass measurement).
        calibrate_after: take the driver's neutral from the Nth frame with a face (0: never).
        live: smoothing and face-loss behaviour.
        idle: the idle pose (blinks, breath) shown while the face is lost or the driver paused.
        idle_fps: the rate of the session's own idle ticks while no driver frame comes.
        engines: share one engine per avatar with the other sessions of this pool (None: own engine).
        backpressure: read the source's next frame only once the drive stage has taken the last
            one, instead of dropping the older frame: for an unpaced source (a file read as fast as
            the pipeline goes, `avatarcam bench --source-fps 0`), never for a camera.
    """

    backend: str = "torch"
    device: str = "cpu"
    compose: ComposeConfig = field(default_factory=ComposeConfig)
    stamp: bool = False
    calibrate_after: int = 10
    live: LiveConfig = field(default_factory=LiveConfig)
    idle: IdleConfig = field(default_factory=IdleConfig)
    idle_fps: float = 30.0
    engines: EnginePool | None = field(default=None, compare=False)
    backpressure: bool = False


class State(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    ENDED = "ended"


class _TimedRenderer(FaceRenderer):
    """A FaceRenderer that adds up the time it spends, so tracking and rendering are timed apart."""

    seconds = 0.0

    def __call__(self, landmarks: Any) -> Conditioning:
        start = time.perf_counter()
        out = super().__call__(landmarks)
        self.seconds += time.perf_counter() - start
        return out


class _Driving:
    """The tracking side of a session (lives on the drive thread)."""

    def __init__(self, entry: AvatarEntry, live: LiveConfig, idle: IdleConfig) -> None:
        tracker = FaceTracker(mode="video", max_faces=1)
        self.renderer = _TimedRenderer(tracker.mesh, entry.resolution)
        self.driver = IdleDriver(entry.avatar.expression, entry.avatar.crop, self.renderer, tracker, live, idle)
        self.faces = 0

    def __call__(self, frame: Frame, calibrate_after: int) -> tuple[U16, U8, float, float]:
        """-> (uv [1, H, W, 3] uint16, shaded [1, H, W, 3] uint8, track seconds, render seconds)."""
        start = time.perf_counter()
        self.renderer.seconds = 0.0
        result = self.driver.idle(frame.captured) if frame.idle else self.driver(frame.image, frame.captured)
        frame.face_found = result.face_found
        if result.face_found:
            self.faces += 1
            if self.faces == calibrate_after:
                self.driver.calibrate()
        t = time.perf_counter()
        uv, shaded = result.conditioning.uv_u16()[None], result.conditioning.shaded_u8()[None]
        render = self.renderer.seconds + time.perf_counter() - t
        return uv, shaded, time.perf_counter() - start - render, render

    def close(self) -> None:
        self.driver.tracker.close()


class _Generating:
    """The generating side of a session (lives on the infer thread)."""

    def __init__(self, entry: AvatarEntry, config: SessionConfig) -> None:
        self.engine: Engine | SharedEngine
        if config.engines is not None:
            self.engine = config.engines.acquire(entry.path, entry.avatar, config.backend, config.device)
        else:
            self.engine = create_engine(config.backend, entry.avatar, config.device)
        mark = maybe_watermark(entry.avatar.identity, enabled=config.compose.watermark, required=entry.badge_required)
        self.compositor = Compositor(
            config.compose, entry.resolution, badge_required=entry.badge_required, watermark=mark
        )

    def __call__(self, frame: Frame, uv: U16, shaded: U8, stamp_output: bool) -> tuple[Frame, float, float]:
        start = time.perf_counter()
        out = self.engine(uv, shaded)
        middle = time.perf_counter()
        image: U8 = self.compositor(out.image[0], out.mask[0])
        if stamp_output and frame.tag is not None:
            stamp.write(image, frame.tag)  # the engine's output is this frame's own array
        layers = self.compositor.layers(out.image[0], out.mask[0])
        return frame.derive(image, layers), middle - start, time.perf_counter() - middle

    def close(self) -> None:
        self.engine.close()


class AvatarSession:
    """Drives one avatar from one source into any number of sinks.

    Args:
        session_id: unique name shown in metrics and the control API.
        entry: the avatar.
        source: where driver frames come from.
        config: backend, compose, stamping, calibration.
        clock: the clock frames are stamped with.
        metrics: the server's metrics.
        on_end: called once when the source ends or fails.
    """

    def __init__(
        self,
        session_id: str,
        entry: AvatarEntry,
        source: Source,
        config: SessionConfig,
        clock: Clock,
        metrics: Metrics,
        on_end: Callable[[AvatarSession], None] | None = None,
    ) -> None:
        self.id = session_id
        self.entry = entry
        self.source = source
        self.config = config
        self.clock = clock
        self.stats = SessionStats(metrics)
        self.state = State.STARTING
        self.sinks: list[Sink] = []
        self.on_end = on_end
        self._drive_exec = ThreadPoolExecutor(1, thread_name_prefix=f"{session_id}-drive")
        self._infer_exec = ThreadPoolExecutor(1, thread_name_prefix=f"{session_id}-infer")
        self._to_drive: DropQueue[Frame] = DropQueue(1)
        self._to_infer: DropQueue[tuple[Frame, U16, U8]] = DropQueue(1)
        self._driving: _Driving | None = None
        self._generating: _Generating | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # start() and set_avatar() build in the stage threads for seconds; stop() waits for them
        # on this lock (never blocking the loop) and they give back what they built once stopped.
        self._building = asyncio.Lock()
        self._stopped = False
        self._failures = {"track": 0, "infer": 0}
        self._last_input = clock.now()
        self._idle_image: U8 = np.zeros((2, 2, 3), np.uint8)
        self.idle_ticks = 0

    async def _run(self, executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    async def start(self) -> None:
        """Load the tracker and engine (in their threads), then start the stage tasks. Raises
        SessionStopped when `stop()` came meanwhile (what was built is closed by `stop()`)."""
        async with self._building:
            if not self._stopped:
                self._driving = await self._run(
                    self._drive_exec, _Driving, self.entry, self.config.live, self.config.idle
                )
            if not self._stopped:
                self._generating = await self._run(self._infer_exec, _Generating, self.entry, self.config)
            if self._stopped:
                raise SessionStopped(f"session {self.id} was stopped while starting")
        self.state = State.RUNNING
        loop = asyncio.get_running_loop()
        self._last_input = self.clock.now()
        stages = {"capture": self._capture(), "idle": self._idle(), "drive": self._drive(), "infer": self._infer()}
        for name, coro in stages.items():
            self._tasks.append(loop.create_task(coro, name=f"{self.id}-{name}"))

    def add_sink(self, sink: Sink) -> None:
        sink.report = self._delivered
        self.sinks.append(sink)

    def remove_sink(self, sink: Sink) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)

    def _delivered(self, frame: Frame, seconds: float, finished: float) -> None:
        self.stats.stage("sink", seconds)
        self.stats.delivered(finished - frame.captured)
        if frame.produced is not None:
            self.stats.handed_off(finished - frame.produced)
            if frame.tag is not None and not frame.idle:
                get = frame.stages.get
                stages = (get("track", 0.0), get("render", 0.0), get("infer", 0.0), get("compose", 0.0))
                self.stats.timed(FrameTimes(frame.tag, frame.captured, frame.produced, finished, stages))

    def _failed(self, stage: str) -> bool:
        """Log a frame that failed in `stage`; True when the session should give up."""
        self._failures[stage] += 1
        count = self._failures[stage]
        self.stats.drop(stage)
        log.exception("session %s: a frame failed in %s (%d in a row)", self.id, stage, count)
        if count >= MAX_FAILURES:
            log.error("session %s: %d frames failed in a row in %s; ending the session", self.id, count, stage)
            self._to_drive.close()
            return True
        return False

    async def _capture(self) -> None:
        try:
            while True:
                if self.config.backpressure:
                    await self._to_drive.drained()
                    self._last_input = self.clock.now()  # waiting on the pipeline is not a silent source
                frame = await self.source.recv()
                self._last_input = self.clock.now()
                if self.state is State.PAUSED:
                    continue
                if not self._to_drive.put(frame):
                    self.stats.drop("track")
        except SourceEnded:
            log.info("session %s: source %s ended", self.id, self.source.name)
        except Exception:
            log.exception("session %s: source %s failed", self.id, self.source.name)
        self._to_drive.close()

    async def _idle(self) -> None:
        """While paused, or while the source sends nothing (start-up, a stalled camera), tick
        the pipeline at `idle_fps` with idle frames, so the avatar keeps moving."""
        pacer = Pacer(self.config.idle_fps, self.clock)
        count = 0
        while not self._to_drive.closed:
            now = await pacer.wait()
            silent = now - self._last_input > self.config.idle.after_seconds
            if self.state is State.PAUSED or (silent and self.state is State.RUNNING):
                self._to_drive.put(Frame(self._idle_image, now, count, idle=True))
                self.idle_ticks += 1
                count += 1

    async def _drive(self) -> None:
        assert self._driving is not None
        while True:
            try:
                frame = await self._to_drive.get()
            except Closed:
                break
            try:
                uv, shaded, track_s, render_s = await self._run(
                    self._drive_exec, self._driving, frame, self.config.calibrate_after
                )
            except Exception:
                if self._failed("track"):
                    break
                continue
            self.stats.stage("track", track_s)
            self.stats.stage("render", render_s)
            frame.stages.update(track=track_s, render=render_s)
            self._failures["track"] = 0
            self.stats.face_found = frame.face_found
            if not self._to_infer.put((frame, uv, shaded)):
                self.stats.drop("infer")
        self._to_infer.close()

    async def _infer(self) -> None:
        assert self._generating is not None
        while True:
            try:
                frame, uv, shaded = await self._to_infer.get()
            except Closed:
                break
            try:
                out, infer_s, compose_s = await self._run(
                    self._infer_exec, self._generating, frame, uv, shaded, self.config.stamp
                )
            except Exception:
                if self._failed("infer"):
                    break
                continue
            out.produced = self.clock.now()
            out.stages.update(infer=infer_s, compose=compose_s)
            self.stats.stage("infer", infer_s)
            self.stats.stage("compose", compose_s)
            self.stats.produced()
            self._failures["infer"] = 0
            for sink in list(self.sinks):
                if not sink.send(out):
                    self.stats.drop("sink")
        self.state = State.ENDED
        if self.on_end is not None:
            self.on_end(self)

    # ---- control ---------------------------------------------------------------------------------

    async def calibrate(self) -> bool:
        """Take the driver's current face as their neutral; False if no face was seen yet."""
        if self._driving is None:
            return False
        return await self._run(self._drive_exec, self._driving.driver.calibrate)

    def pause(self) -> None:
        if self.state is State.RUNNING:
            self.state = State.PAUSED

    def resume(self) -> None:
        if self.state is State.PAUSED:
            self.state = State.RUNNING

    async def set_background(self, mode: Background) -> None:
        if self._generating is not None:
            await self._run(self._infer_exec, self._generating.compositor.set_background, mode)

    async def set_avatar(self, entry: AvatarEntry) -> None:
        """Switch to another avatar of the same resolution between two frames."""
        if entry.resolution != self.entry.resolution:
            raise ValueError(
                f"avatar {entry.name} is {entry.resolution} px but this session runs at {self.entry.resolution} px"
            )
        async with self._building:
            if self._stopped:
                return
            driving = await self._run(self._drive_exec, _Driving, entry, self.config.live, self.config.idle)
            generating = await self._run(self._infer_exec, _Generating, entry, self.config)
            if self._stopped:  # stop() came while building: give back the new parts, not only the old
                await self._run(self._drive_exec, driving.close)
                await self._run(self._infer_exec, generating.close)
                return
            old_driving, old_generating = self._driving, self._generating
            self._driving, self._generating, self.entry = driving, generating, entry
            if old_driving is not None:
                await self._run(self._drive_exec, old_driving.close)
            if old_generating is not None:
                await self._run(self._infer_exec, old_generating.close)

    def snapshot(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source.name,
            "sinks": [s.name for s in self.sinks],
            "avatar": self.entry.name,
            "state": str(self.state),
            "watermark": self._generating is not None and self._generating.compositor.watermark is not None,
            **self.stats.snapshot(),
        }

    async def stop(self) -> None:
        """Stop the stages and release the source, threads, tracker and engine. Called while
        `start()` or `set_avatar()` still builds, it waits for that build without blocking the
        loop, and closes what it built."""
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.state = State.ENDED
        await self.source.close()
        for sink in self.sinks:
            await sink.close()
        async with self._building:
            if self._driving is not None:
                await self._run(self._drive_exec, self._driving.close)
                self._driving = None
            if self._generating is not None:
                await self._run(self._infer_exec, self._generating.close)
                self._generating = None
            # Every job these threads ran has been awaited: joining them does not wait.
            self._drive_exec.shutdown(wait=True)
            self._infer_exec.shutdown(wait=True)
