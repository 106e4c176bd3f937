"""What every sink shares: the `Sink` interface, its parsed spec, what a sink may be opened
with (`SinkContext`), and `QueuedSink`, the latest-frame slot drained in a worker thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from streamer.core.clock import Clock
from streamer.core.frames import Frame, Mark
from streamer.core.queues import Closed, DropQueue
from streamer.stages.framing import FramingConfig

Report = Callable[[Frame, float, float], None]
"""Called after a delivery with (frame, seconds the delivery took, clock time it finished)."""


class SinkError(RuntimeError):
    """A sink cannot start; the message says what to do."""


@dataclass(frozen=True)
class SinkSpec:
    """A parsed `--sink` value (`streamer.sinks.parse_sink`): a kind of `streamer.sinks.SINKS` and
    its target (the file sink's path; "" for the others)."""

    kind: str
    target: str = ""

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}" if self.target else self.kind


class Sink(Protocol):
    """Takes the session's avatar frames; `report` is set by the session to time deliveries."""

    name: str
    report: Report | None

    def send(self, frame: Frame) -> bool: ...

    def status(self, title: str, detail: str = "") -> None:
        """What to show while no avatar frame comes (a sink that shows nothing then ignores it)."""

    async def close(self) -> None: ...


@dataclass(frozen=True)
class SinkContext:
    """What a sink may be opened with; each kind takes what it needs.

    Attributes:
        clock: the session clock (delivery timing, the virtual camera's deadlines).
        fps: the frame rate declared to devices and files.
        framing: the virtual camera's format and how the avatar fills it.
        virtualcam_backend: a pyvirtualcam backend name (None: the platform's).
        virtualcam_pacing: when the virtual camera hands pictures to the device: "tick" (its own
            grid), "lock" (the grid phase-locked to the frames) or "prompt" (each new frame at
            once; `streamer.sinks.virtualcam.VirtualCamSink`).
        identity: returns the identity record a recording's content credentials name (None:
            recordings are not signed).
        watermark: the avatar's mark for what the sink makes from frames that carry none (no
            `Layers`: connect's, received over WebRTC), embedded at the size the sink writes
            (the mark does not survive a rescale), and for its status cards. None: frames are
            published as they come (the service's own frames carry their mark in their layers).
        title: a window's title.
        on_quit: called (on the event loop) when the user closes a window.
    """

    clock: Clock
    fps: float = 30.0
    framing: FramingConfig = field(default_factory=FramingConfig)
    virtualcam_backend: str | None = None
    virtualcam_pacing: str = "tick"
    identity: Callable[[], Any] | None = None
    watermark: Mark | None = None
    title: str = "avatarcam"
    on_quit: Callable[[], None] | None = None


class QueuedSink:
    """Base of the sinks: a latest-frame slot drained by one task into `deliver` (in a thread)."""

    name = "sink"

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.report: Report | None = None
        self._slot: DropQueue[Frame] = DropQueue(1)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-sink")
        self._task: asyncio.Task[None] | None = None

    @property
    def dropped(self) -> int:
        return self._slot.dropped

    def send(self, frame: Frame) -> bool:
        """Queue `frame`; False when an undelivered older frame was dropped for it."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain(), name=f"{self.name}-sink")
        return self._slot.put(frame)

    def status(self, title: str, detail: str = "") -> None:
        """Shows nothing between frames."""

    def deliver(self, frame: Frame) -> None:
        """Publish one frame (runs in the sink's worker thread)."""
        raise NotImplementedError

    def finish(self) -> None:
        """Release what `deliver` opened (runs in the sink's worker thread)."""

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = await self._slot.get()
            except Closed:
                return
            start = self.clock.now()
            await loop.run_in_executor(self._executor, self.deliver, frame)
            end = self.clock.now()
            if self.report is not None:
                self.report(frame, end - start, end)

    async def close(self) -> None:
        self._slot.close()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5.0)
            except TimeoutError:
                self._task.cancel()
        await asyncio.get_running_loop().run_in_executor(self._executor, self.finish)
        self._executor.shutdown(wait=True)
