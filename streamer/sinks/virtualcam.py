"""`virtualcam`: a system webcam (Zoom, Meet, OBS) through pyvirtualcam, never frozen."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from streamer.core.clock import Clock, Pacer, PhaseLock
from streamer.core.frames import U8, Background, Frame, Layers, Mark
from streamer.sinks.base import Report, SinkContext, SinkError
from streamer.stages.card import card
from streamer.stages.framing import Framer, FramingConfig

log = logging.getLogger(__name__)
PACING = ("tick", "lock", "prompt")
"""When the sink hands pictures to the device (`VirtualCamSink`'s phase_lock and prompt)."""
HANDOFFS_KEPT = 3000  # the engine-to-device times kept (100 s at 30 fps)


def virtualcam_help() -> str:
    """How to make a virtual camera device on this platform."""
    if sys.platform.startswith("linux"):
        return (
            "create one with v4l2loopback: sudo apt install v4l2loopback-dkms && "
            "sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=avatarcam"
        )
    return "install OBS Studio and start its virtual camera once (Tools > Start Virtual Camera), then close OBS"


class VirtualCamSink:
    """A system webcam other programs (Zoom, Meet, OBS) can open, through pyvirtualcam.

    It publishes on its own absolute deadlines (start + n / fps), whatever the pipeline does:
    a "starting" card from the moment it opens (the meeting app sees a live device while the
    avatar loads), then each new avatar frame framed into the camera picture (`Framer`: 16:9
    by default, background extended, badge and watermark at camera size), the last picture
    again on a tick without a new frame, and a "waiting" card when no frame has come for
    `stale_seconds`. Framing and sending run in the sink's worker thread. With `watermark`, a
    frame without layers (connect's) is marked at camera size like the service's own, and so
    is every card.

    Args:
        framing: the camera format and how the avatar fills it.
        fps: the device's frame rate.
        clock: where deadlines come from.
        backend: a pyvirtualcam backend name; None picks the platform's.
        stale_seconds: show the waiting card after this long without an avatar frame.
        watermark: the mark for frames that carry none, and for the cards (None: cards unmarked).
        phase_lock: move the ticks, at most 1 ms each, to fall midway between the avatar
            frames' arrivals (`PhaseLock`), so arrival jitter neither repeats nor drops frames.
            Off by default: it has not been shown to help (docs/benchmarks.md, "The virtual
            camera's phase lock"); `benchmarks/bench_virtualcam.py --phase-lock both` measures it.
        prompt: hand each new avatar frame to the device as soon as it comes, instead of on the
            next tick (the wait for a tick is half a period on average, 17 ms at 30 fps); the last
            picture (or a card) is repeated one period after the last one when no frame came.
            The device then gets at least `fps` pictures a second but at uneven intervals, so
            it is off by default (docs/benchmarks.md, "The virtual camera's share").
    """

    name = "virtualcam"

    @classmethod
    def open(cls, target: str, context: SinkContext) -> VirtualCamSink:
        pacing = context.virtualcam_pacing
        if pacing not in PACING:
            raise SinkError(f"virtual camera pacing must be one of {', '.join(PACING)}, not {pacing!r}")
        sink = cls(context.framing, context.fps, context.clock, context.virtualcam_backend, watermark=context.watermark,
                   phase_lock=pacing == "lock", prompt=pacing == "prompt")  # fmt: skip
        sink.start()  # the starting card from the first tick, while the avatar loads
        return sink

    def __init__(
        self,
        framing: FramingConfig,
        fps: float,
        clock: Clock,
        backend: str | None = None,
        *,
        stale_seconds: float = 2.0,
        watermark: Mark | None = None,
        phase_lock: bool = False,
        prompt: bool = False,
    ) -> None:
        import pyvirtualcam

        self.framer = Framer(framing)
        self.size = framing.size
        self.fps = fps
        self.clock = clock
        self.stale_seconds = stale_seconds
        self.watermark = watermark
        self.report: Report | None = None
        self.sent = 0  # pictures handed to the device
        self.cards = 0  # of which status cards
        self.repeated = 0  # of which the last avatar picture again (no new frame by this tick)
        self._status: tuple[str, str] | None = None
        self.dropped = 0  # avatar frames replaced by a newer one before their tick
        self._latest: Frame | None = None
        self._latest_at = 0.0  # when `_latest` came from the engine (the clock's seconds)
        self._fresh = False
        # seconds from an avatar frame's arrival from the engine to its picture handed to the device
        self.handoffs: deque[float] = deque(maxlen=HANDOFFS_KEPT)
        # the same, in parts: (waiting for the turn, framing, handing to the device), seconds
        self.handoff_parts: deque[tuple[float, float, float]] = deque(maxlen=HANDOFFS_KEPT)
        self.prompt = prompt
        self._arrived = asyncio.Event()
        self._last_turn = clock.now()
        self._last_frame_at: float | None = None
        self._picture: U8 | None = None
        self._started_at = clock.now()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="virtualcam-sink")
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.pacer = Pacer(fps, clock)
        self.lock = PhaseLock(self.pacer.period) if phase_lock else None
        w, h = framing.size.width, framing.size.height
        try:
            self.camera = pyvirtualcam.Camera(w, h, fps, fmt=pyvirtualcam.PixelFormat.RGB, backend=backend)
        except RuntimeError as exc:
            raise SinkError(f"no virtual camera device: {exc}; {virtualcam_help()}") from None
        log.info("virtual camera %s (%dx%d at %g fps)", self.camera.device, w, h, fps)

    @property
    def device(self) -> str:
        return str(self.camera.device)

    def start(self) -> None:
        """Start publishing (the starting card until the first avatar frame); needs a running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._publish(), name="virtualcam-sink")

    def status(self, title: str, detail: str = "") -> None:
        """The card's text while no avatar frame comes (e.g. connect's "reconnecting")."""
        self._status = (title, detail)

    def send(self, frame: Frame) -> bool:
        """Take the newest avatar frame; False when an unpublished older one was dropped for it."""
        self.start()
        if self.lock is not None:
            self.lock.arrived(self.pacer.phase(self.clock.now()))
        dropped = self._fresh
        self.dropped += dropped
        self._latest, self._fresh, self._latest_at = frame, True, self.clock.now()
        self._arrived.set()
        return not dropped

    def _render(self, frame: Frame | None, now: float) -> tuple[U8, bool]:
        """(the picture for this tick, whether it is a status card); in the worker thread."""
        if frame is not None:
            layers = frame.layers or Layers(
                frame.image, _opaque(frame.image), Background.LEARNED, False, self.watermark
            )
            self._picture = self.framer(layers)
            self._last_frame_at = now
        if self._last_frame_at is None:
            title, line = self._status or ("avatarcam", "starting the avatar...")
            return self._card(title, line, now), True
        if now - self._last_frame_at > self.stale_seconds or self._picture is None:
            title, line = self._status or ("avatarcam", "waiting for the avatar...")
            return self._card(title, line, now), True
        self.repeated += frame is None
        return self._picture, False

    def _card(self, title: str, line: str, now: float) -> U8:
        picture = card(self.size, title, line, now - self._started_at)
        return picture if self.watermark is None else self.watermark(picture, inplace=True)  # a new card each time

    def _deliver(self, frame: Frame | None, now: float) -> tuple[float, float]:
        """Publish this tick's picture; (seconds framing it, seconds handing it to the device)."""
        start = time.perf_counter()
        picture, is_card = self._render(frame, now)
        framed = time.perf_counter()
        self.camera.send(picture)
        # Counted here, in the worker: a close that cancels the publisher while this picture is on
        # its way would otherwise leave one handed to the device and not counted.
        self.sent += 1
        self.cards += is_card
        return framed - start, time.perf_counter() - framed

    async def _next_turn(self) -> float:
        """Wait for the next tick (or, prompt, for a new frame or a period of none); its time."""
        if not self.prompt:
            if self.lock is not None:
                self.pacer.shift(self.lock.correction())
            return await self.pacer.wait()
        if not self._fresh:  # a repeat one period after the last picture, unless a frame comes first
            timeout = max(0.0, self._last_turn + self.pacer.period - self.clock.now())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout)
        self._arrived.clear()
        self._last_turn = self.clock.now()
        return self._last_turn

    async def _publish(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            deadline = await self._next_turn()
            if self._closed:
                break
            frame, self._fresh = (self._latest if self._fresh else None), False
            arrived = self._latest_at
            start = self.clock.now()
            try:
                framing, handing = await loop.run_in_executor(self._executor, self._deliver, frame, deadline)
            except Exception:
                log.exception("virtual camera: a frame failed")
                continue
            end = self.clock.now()
            if frame is not None:
                self.handoffs.append(end - arrived)
                self.handoff_parts.append((end - arrived - framing - handing, framing, handing))
                if self.report is not None:
                    self.report(frame, end - start, end)

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self._executor, self.camera.close)
        self._executor.shutdown(wait=True)


def _opaque(image: U8) -> U8:
    """A mask that keeps all of `image` (a frame composed without layers)."""
    return np.full(image.shape[:2], 255, np.uint8)
