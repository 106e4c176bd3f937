"""The connect client: startup (probe the server, open source and sinks), main loop (connect,
watch the link, reconnect with backoff), shutdown (close everything, the final report)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import ssl
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import numpy as np

from streamer.connect.config import ConnectConfig, ConnectError
from streamer.connect.link import Link, _Retry, probe
from streamer.connect.room import RoomLink, join, room_link
from streamer.connect.stats import WINDOW, ConnectStats, figures
from streamer.core.clock import Clock, MonotonicClock, Pacer
from streamer.core.frames import U8, Frame
from streamer.core.rtc import set_bitrate, set_frame_release
from streamer.provenance.identity import identity_record
from streamer.provenance.watermark import Watermarker, identity_digest
from streamer.sinks import open_sink
from streamer.sinks.base import Sink, SinkContext
from streamer.sinks.virtualcam import VirtualCamSink
from streamer.sources import open_source
from streamer.sources.base import Source, SourceContext, SourceEnded

log = logging.getLogger(__name__)


class _ScaledSource:
    """A source whose frames are scaled down to `max_width` (in a worker thread)."""

    def __init__(self, source: Source, max_width: int) -> None:
        self.source = source
        self.name = source.name
        self.max_width = max_width
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="connect-scale")

    def _scale(self, image: U8) -> U8:
        import cv2

        height, width = image.shape[:2]
        if width <= self.max_width:
            return image
        size = (self.max_width, round(height * self.max_width / width) // 2 * 2)
        return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)

    async def recv(self) -> Frame:
        frame = await self.source.recv()
        if frame.image.shape[1] <= self.max_width:
            return frame
        image = await asyncio.get_running_loop().run_in_executor(self._executor, self._scale, frame.image)
        return frame.derive(image)

    async def close(self) -> None:
        await self.source.close()
        self._executor.shutdown(wait=True, cancel_futures=True)


def disclosure(info: dict[str, Any]) -> tuple[Watermarker | None, dict[str, Any] | None]:
    """What connect re-embeds and signs, from the server's /api/info: the mark with the payload the
    server's frames carry (None when it publishes them unmarked), and the identity record a
    recording's content credentials name (None when the server gives none, or one that does not
    match the payload). The mark does not survive the rescale to camera size or a second codec,
    so the sinks embed it again at the size they write."""
    digest = info.get("watermark_digest")
    mark = Watermarker(int(digest, 16)) if isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{8}", digest) else None
    if mark is None and info.get("watermark"):
        log.warning("connect: the server marks its frames but does not say with what; they go on unmarked")
    identity = identity_record(info.get("identity"))
    if identity is not None and mark is not None and identity_digest(identity) != mark.digest:
        log.warning("connect: the server's identity record does not match its mark; recordings go unsigned")
        identity = None
    return mark, identity


class Client:
    """The connect client: `startup()`, `main_loop()` until `should_exit` (or --seconds),
    `shutdown()` returns the final report."""

    def __init__(self, config: ConnectConfig, clock: Clock | None = None) -> None:
        self.config = config.resolved()
        self.clock = clock or MonotonicClock()
        self.stats = ConnectStats(self.clock)
        self.should_exit = asyncio.Event()
        self.state = "connecting"
        self.room = room_link(self.config.url)  # a gateway's room link, or None for serve's URL
        self.joined: dict[str, Any] = {}
        self.link: Link | RoomLink | None = None
        self.info: dict[str, Any] = {}
        self.watermark: Watermarker | None = None
        self.sinks: list[Sink] = []
        self.source: Source | None = None
        self._http: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # ---- lifecycle -----------------------------------------------------------------------------

    async def startup(self) -> None:
        """Check the server, then open the source and the sinks and start capturing."""
        config = self.config
        trust = ssl.create_default_context(cafile=str(config.cafile)) if config.cafile is not None else True
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=15, connect=5), connector=aiohttp.TCPConnector(ssl=trust)
        )
        if self.room is None:
            self.info = await probe(self._http, config)
        else:  # a room: the gateway's join answer says where Janus is; the room has no /api/info
            try:
                self.joined = await join(self._http, self.room)
            except _Retry as exc:
                raise ConnectError(f"cannot join room {self.room.room}: {exc}") from None
        set_bitrate(config.bitrate)
        set_frame_release(config.frame_release)
        self.watermark, identity = disclosure(self.info)
        context = SinkContext(
            self.clock,
            config.fps,
            virtualcam_backend=config.virtualcam_backend,
            virtualcam_pacing=config.virtualcam_pacing,
            identity=(lambda: identity) if identity is not None else None,
            watermark=self.watermark,
            title=f"avatarcam: {config.base}",
            on_quit=self.should_exit.set,
        )
        self.sinks = [open_sink(spec, context) for spec in config.sinks]
        for sink in self.sinks:
            sink.report = self._delivered
        self._status("connecting", f"to {config.base}")
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._report(), name="connect-report")]
        if self.room is None or self.room.publishes:  # a room's viewer sends no camera
            source = open_source(config.source, SourceContext(self.clock, loop=config.loop))
            self.source = _ScaledSource(source, config.max_width)
            self._tasks.append(loop.create_task(self._capture(), name="connect-capture"))

    async def main_loop(self) -> None:
        """Connect, watch the link, and reconnect with backoff until asked to exit."""
        attempt = 0
        previous: str | None = None  # the reconnect secret of the last peer that got an answer
        while not self.should_exit.is_set():
            link: Link | RoomLink
            if self.room is None:
                link = Link(self.config, self._require_http(), self.clock, self._on_frame, self._on_message, previous)
            else:
                # a retry joins again: the gateway may have ended or moved the room meanwhile
                joined = self.joined if attempt == 0 else None
                link = RoomLink(self.config, self.room, self._require_http(), self.clock, self._on_frame, joined)
            try:
                await link.open()
            except _Retry as exc:
                await link.close()
                attempt += 1
                wait = exc.wait if exc.wait is not None else self._backoff(attempt)
                self._down(f"reconnecting (attempt {attempt})", f"{exc}; next try in {wait:.1f} s")
                await self._sleep(wait)
                continue
            except BaseException:
                await link.close()
                raise
            previous = link.reconnect or previous
            self.link = link
            self.state = "live"
            self._status("avatarcam", "waiting for the avatar...")
            reason = await self._watch(link)
            self.link = None
            await link.close()
            if reason is None:
                break
            self.stats.reconnects += 1
            attempt = 0 if link.last_frame_at is not None else attempt
            attempt += 1
            wait = self._backoff(attempt)
            self._down(f"reconnecting (attempt {attempt})", f"{reason}; next try in {wait:.1f} s")
            await self._sleep(wait)

    async def shutdown(self) -> dict[str, Any]:
        """Close the link, source, sinks and HTTP session (each whatever the others do); the
        final report."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        closers: list[tuple[str, Callable[[], Any]]] = []
        if self.link is not None:
            closers.append(("the link", self.link.close))
        if self.source is not None:
            closers.append((self.source.name, self.source.close))
        closers += [(f"sink {sink.name}", sink.close) for sink in self.sinks]
        if self._http is not None:
            closers.append(("the HTTP session", self._http.close))
        for name, close in closers:
            try:
                await close()
            except Exception:
                log.exception("connect: closing %s failed", name)
        return self.report()

    def report(self) -> dict[str, Any]:
        sink_dropped = sum(int(getattr(s, "dropped", 0)) for s in self.sinks)
        cameras = [s for s in self.sinks if isinstance(s, VirtualCamSink)]
        self.stats.held = sum(c.repeated for c in cameras)
        self.stats.cards = sum(c.cards for c in cameras)
        return {
            "url": self.config.base,
            "room": {"room": self.room.room, "role": self.room.role} if self.room is not None else None,
            "codec": self.config.codec,
            "source": self.source.name if self.source is not None else None,
            "sinks": [str(s) for s in self.config.sinks],
            "resolution": self.info.get("resolution"),
            "watermark": f"{self.watermark.digest:08x}" if self.watermark is not None else None,
            **self.stats.report(sink_dropped),
        }

    # ---- the loop's parts ----------------------------------------------------------------------

    def _require_http(self) -> aiohttp.ClientSession:
        assert self._http is not None, "startup() first"
        return self._http

    def _backoff(self, attempt: int) -> float:
        return float(min(self.config.max_backoff, 0.25 * 2 ** (attempt - 1)))

    def _down(self, title: str, detail: str) -> None:
        self.state = title
        self._status("reconnecting", detail)
        print(f"avatarcam: {title}: {detail}", file=sys.stderr, flush=True)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.should_exit.wait(), seconds)

    async def _watch(self, link: Link | RoomLink) -> str | None:
        """Wait until the link is lost (its reason) or the client should exit (None)."""
        config = self.config
        while True:
            await asyncio.sleep(0.1)  # a watchdog's poll, not pacing
            if self.should_exit.is_set():
                return None
            if link.lost.is_set():
                return link.reason
            now = self.clock.now()
            if link.last_frame_at is None and now - link.opened_at > config.first_frame_seconds:
                return f"no avatar frame within {config.first_frame_seconds:.0f} s"
            if link.last_frame_at is not None and now - link.last_frame_at > config.stall_seconds:
                return f"no avatar frame for {config.stall_seconds:.0f} s"
            first = self.stats.first_frame_at
            if config.seconds is not None and first is not None and now - first >= config.seconds:
                self.should_exit.set()

    async def _capture(self) -> None:
        assert self.source is not None
        try:
            while True:
                frame = await self.source.recv()
                link = self.link
                if link is None:
                    continue  # the camera keeps running while the link is down
                if self.config.stamp:
                    with contextlib.suppress(ValueError):  # too small to carry an id
                        self.stats.stamped(frame)
                self.stats.frames_sent += 1
                if not link.track.send(frame):
                    self.stats.capture_dropped += 1
        except SourceEnded:
            print(f"avatarcam: {self.source.name} ended", file=sys.stderr, flush=True)
            self.should_exit.set()

    def _status(self, title: str, detail: str) -> None:
        """What the sinks show while no avatar frame comes (the virtual camera's card)."""
        for sink in self.sinks:
            sink.status(title, detail)

    def _on_frame(self, frame: Frame) -> None:
        self.stats.received(frame)
        for sink in self.sinks:
            sink.send(frame)

    def _delivered(self, frame: Frame, seconds: float, finished: float) -> None:
        self.stats.sink.append(finished - frame.captured)

    def _on_message(self, data: dict[str, Any]) -> None:
        self.stats.server_message(data)

    async def _report(self) -> None:
        """Once a second: sample the RTT, tell the server our glass-to-glass (its dashboard shows
        it), print the status line."""
        if self.config.report_every <= 0:
            return
        pacer = Pacer(1 / self.config.report_every, self.clock)
        while True:
            await pacer.wait()
            link = self.link
            if link is not None:
                rtt = await link.rtt()
                if rtt is not None:
                    self.stats.rtt.append(rtt)
                link.send({"type": "clock", "t": self.clock.now()})
                glass = figures(self.stats.glass[-WINDOW:])
                if glass is not None:
                    split = self.stats.split_figures(self.stats.split.recent(WINDOW))
                    medians = {k: v["p50"] for k, v in split.items() if isinstance(v, dict)} if split else None
                    link.send({"type": "glass", "ms": glass["p50"], "split": medians})
            sink_dropped = sum(int(getattr(s, "dropped", 0)) for s in self.sinks)
            print(self.stats.line(self.state, sink_dropped), file=sys.stderr, flush=True)


async def connect(config: ConnectConfig, clock: Clock | None = None) -> dict[str, Any]:
    """Run the client until SIGINT/SIGTERM, the window's q, the end of a non-looping video or
    --seconds; the final report (also written to `config.json_path`)."""
    client = Client(config, clock)
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # Windows, not main thread
            loop.add_signal_handler(sig, client.should_exit.set)
            installed.append(sig)
    try:
        await client.startup()
        await client.main_loop()
    finally:
        report = await client.shutdown()
        for sig in installed:
            loop.remove_signal_handler(sig)
    if client.config.json_path is not None:
        client.config.json_path.write_text(json.dumps(report, indent=2))
    return report


def run(config: ConnectConfig) -> dict[str, Any]:
    """The CLI's entry point."""
    return asyncio.run(connect(config))
