"""The avatar session as a Ray actor.

`SessionActor` holds the same `AvatarSession` that `avatarcam serve` runs, with its source and
sinks opened through the registries (`janus:ROOM` both ways in a cluster: it subscribes to the
room's driver and publishes the avatar back). It runs its own asyncio loop in a thread, so
that the constructor starts the session: when Ray restarts the actor on another node after its
node died, the constructor runs again there, the session re-joins its room and publishes the
avatar anew, and the room's viewers follow the new publisher (Janus's VideoRoom switch).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import tempfile
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.util import metrics

from streamer.cluster.avatars import AvatarRef
from streamer.cluster.names import RESOURCE
from streamer.core.clock import MonotonicClock
from streamer.core.frames import Frame
from streamer.core.metrics import Metrics
from streamer.pipeline.session import AvatarEntry, AvatarSession, SessionConfig
from streamer.sinks import open_sink, parse_sink
from streamer.sinks.base import Sink, SinkContext
from streamer.sources import open_source, parse_source
from streamer.sources.base import Source, SourceContext, SourceEnded, SourceError, SourceSpec

log = logging.getLogger(__name__)


class SessionFailed(RuntimeError):
    """The session could not start on its node (the message says why and what to do)."""


@dataclass(frozen=True)
class SessionSpec:
    """What one session actor runs.

    Attributes:
        name: the session's id (the Ray actor's name, the dashboard's row).
        source: a `--source` value (`janus:TARGET` in a cluster; `file:PATH` works too).
        sinks: `--sink` values (`janus:TARGET` in a cluster; `null` for headless runs).
        loop: play a file source again from its start when it ends.
        backend: the engine backend.
        device: "cpu" or "cuda[:i]".
        fps: the idle tick rate and the rate declared to sinks.
        source_fps: pace a file source at this rate instead of its own (None: its own).
        stamp: echo the driver's frame ids onto avatar frames (glass-to-glass).
        room: the room this session serves (shown in status; None outside a gateway).
    """

    name: str
    source: str
    sinks: tuple[str, ...] = ("null",)
    loop: bool = True
    backend: str = "torch"
    device: str = "cpu"
    fps: float = 30.0
    source_fps: float | None = None
    stamp: bool = True
    room: int | None = None


@dataclass(frozen=True)
class ActorOptions:
    """How Ray places and restarts a session actor.

    Attributes:
        streams: `avatar_streams` the session reserves (one node's share of its capacity).
        num_cpus: CPUs reserved for scheduling (0: the stream resource alone decides).
        num_gpus: GPUs (fractional shares work) for GPU nodes.
        max_restarts: restarts after a node or process dies (-1: without bound).
        max_task_retries: retries of a method call that failed because the actor died.
    """

    streams: float = 1.0
    num_cpus: float = 0.0
    num_gpus: float = 0.0
    max_restarts: int = -1
    max_task_retries: int = 3


class PatientSource:
    """A room's driver as a source that waits for them: before the driver first publishes,
    and after a connection to Janus failed, it opens the source again every `retry` seconds
    instead of ending the session. Meanwhile the session ticks its idle pose, so viewers see
    the avatar from the start."""

    def __init__(self, spec: SourceSpec, context: SourceContext, retry: float = 1.0) -> None:
        self.spec, self.context, self.retry = spec, context, retry
        self.name = f"{spec.kind}:{spec.target.partition('#')[0]}"  # no pin in names, logs and status
        self._source: Source | None = None

    async def recv(self) -> Frame:
        while True:
            if self._source is None:
                self._source = open_source(self.spec, self.context)
            try:
                return await self._source.recv()
            except (SourceError, SourceEnded) as exc:
                log.info("source %s: %s; trying again in %.0f s", self.spec.kind, exc or "ended", self.retry)
                await self._source.close()
                self._source = None
                await asyncio.sleep(self.retry)

    async def close(self) -> None:
        if self._source is not None:
            await self._source.close()


EXPORT_PERIOD = 5.0  # seconds between the session's figures and Ray's metrics
GAUGES = {
    "avatarcam_session_fps": "avatar frames per second the session publishes",
    "avatarcam_session_e2e_p50_ms": "capture to sink, median, ms",
    "avatarcam_session_e2e_p99_ms": "capture to sink, 99th percentile, ms",
    "avatarcam_session_dropped": "frames the session dropped so far",
    "avatarcam_session_face_found": "1 while tracking finds the driver's face",
}


def gauge_values(snapshot: dict[str, Any]) -> dict[str, float]:
    """The figures of a session snapshot that Ray's metrics carry, by gauge name (GAUGES); a
    figure the snapshot does not have yet is left out rather than reported as 0."""
    e2e = snapshot.get("e2e_ms") or {}
    values = {
        "avatarcam_session_fps": snapshot.get("fps"),
        "avatarcam_session_e2e_p50_ms": e2e.get("p50"),
        "avatarcam_session_e2e_p99_ms": e2e.get("p99"),
        "avatarcam_session_dropped": snapshot.get("dropped"),
        "avatarcam_session_face_found": None if snapshot.get("face_found") is None else float(snapshot["face_found"]),
    }
    return {name: float(v) for name, v in values.items() if v is not None}


class SessionActor:
    """One avatar session on whichever node Ray placed it (use through `remote_class`)."""

    def __init__(self, spec: SessionSpec, avatar: AvatarRef) -> None:
        context = ray.get_runtime_context()
        self.spec = spec
        self.avatar = avatar
        self.node = context.get_node_id()
        self.restarted = bool(context.was_current_actor_reconstructed)
        self.session: AvatarSession | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="avatarcam-session-"))  # 0700
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"{spec.name}-loop", daemon=True)
        self._thread.start()
        self._started: Future[None] = asyncio.run_coroutine_threadsafe(self._open(), self._loop)
        # Ray's metrics (its dashboard, its Prometheus endpoint on each node) get the session's
        # own figures, tagged by session, beside Ray's figures for the actor's process.
        self._gauges = {name: metrics.Gauge(name, text, tag_keys=("session",)) for name, text in GAUGES.items()}
        self._exporting = asyncio.run_coroutine_threadsafe(self._export(), self._loop)
        log.info("session %s on node %s (restarted: %s)", spec.name, self.node, self.restarted)

    async def _open(self) -> None:
        spec = self.spec
        path = await asyncio.to_thread(self.avatar.materialize, self._dir, self.node)
        entry = await asyncio.to_thread(AvatarEntry.load, path, device=spec.device)
        entry = dataclasses.replace(entry, name=self.avatar.name)
        clock = MonotonicClock()
        source_spec = parse_source(spec.source)
        context = SourceContext(clock, loop=spec.loop, fps=spec.source_fps, stamps=spec.stamp)
        source: Source = (
            PatientSource(source_spec, context) if source_spec.kind == "janus" else open_source(source_spec, context)
        )
        sinks: list[Sink] = []
        try:
            for text in spec.sinks:
                sinks.append(open_sink(parse_sink(text, peers=False), SinkContext(clock, spec.fps)))
                connect = getattr(sinks[-1], "connect", None)
                if connect is not None:  # a Janus sink: publish now, so a bad room fails the start
                    await connect()
        except BaseException:
            await source.close()
            for sink in sinks:
                await sink.close()
            raise
        config = SessionConfig(spec.backend, spec.device, stamp=spec.stamp, idle_fps=spec.fps)
        session = AvatarSession(spec.name, entry, source, config, clock, Metrics())
        for sink in sinks:
            session.add_sink(sink)
        self.session = session
        await session.start()

    def ready(self, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until the session runs; SessionFailed saying why it cannot."""
        try:
            self._started.result(timeout)
        except TimeoutError:
            raise SessionFailed(f"session {self.spec.name} did not start within {timeout:.0f} s") from None
        except Exception as exc:
            raise SessionFailed(f"session {self.spec.name} failed to start on node {self.node}: {exc}") from None
        return self.status()

    def status(self) -> dict[str, Any]:
        """The session's figures (the same snapshot serve's dashboard shows) and where it runs."""
        snapshot: dict[str, Any] = {"id": self.spec.name, "state": "starting"}
        if self._started.done() and self._started.exception() is not None:
            snapshot["state"] = "failed"
            snapshot["error"] = str(self._started.exception())
        elif self.session is not None:
            snapshot = asyncio.run_coroutine_threadsafe(self._snapshot(), self._loop).result(10.0)
        return {
            **snapshot,
            "room": self.spec.room,
            "avatar": self.avatar.name,
            "avatar_mode": self.avatar.mode,
            "node": self.node,
            "pid": os.getpid(),
            "restarted": self.restarted,
        }

    async def _export(self) -> None:
        tags = {"session": self.spec.name}
        while True:
            await asyncio.sleep(EXPORT_PERIOD)
            if self.session is not None:
                for name, value in gauge_values(self.session.snapshot()).items():
                    self._gauges[name].set(value, tags=tags)

    async def _snapshot(self) -> dict[str, Any]:
        assert self.session is not None
        return self.session.snapshot()

    def stop(self) -> None:
        """Stop the session (leave the room, release engine and tracker) before the actor is killed."""

        async def _stop() -> None:
            self._exporting.cancel()
            if self.session is not None:
                await self.session.stop()

        try:
            asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(30.0)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            shutil.rmtree(self._dir, ignore_errors=True)


def remote_class(options: ActorOptions) -> Any:
    """`SessionActor` as a Ray actor class with `options`' resources and restart policy."""
    resources = {RESOURCE: options.streams}
    return ray.remote(
        num_cpus=options.num_cpus,
        num_gpus=options.num_gpus,
        resources=resources,
        max_restarts=options.max_restarts,
        max_task_retries=options.max_task_retries,
    )(SessionActor)
