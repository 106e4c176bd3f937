"""The coach's WebRTC side: the page's preview track in, coach messages out.

While the page records, it also sends its camera over WebRTC and opens a data channel named
"coach". The server samples that track a few times a second, runs `Coach.feed` on a thread of its
own (tracking never runs on the event loop) and sends each result on the channel as JSON text.
The track is drained as it arrives into a latest-frame slot (`TrackSource`), so frames the coach
has no time for are dropped, never queued.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole

from streamer.core.clock import Clock, MonotonicClock
from streamer.core.rtc import close_connection, ice_configuration
from streamer.create.coach import Coach
from streamer.sources.base import SourceEnded
from streamer.sources.track import TrackSource

log = logging.getLogger(__name__)

SAMPLE_FPS = 4.0  # preview frames coached per second; the rest are dropped
MAX_SIDE = 640  # preview frames are scaled down to this (longer side): the coach's measures are scale-free
CONNECT_TIMEOUT = 30.0  # seconds a page has to connect before its peer is closed
CHANNEL = "coach"


class CoachOfferError(ValueError):
    """The page's offer cannot be answered; the message says what to change."""


class _CoachPeer:
    """One page's preview connection: its peer, its coach, the thread the coach runs on."""

    def __init__(
        self,
        pc: RTCPeerConnection,
        coach: Coach,
        executor: ThreadPoolExecutor,
        clock: Clock,
        on_closed: Callable[[], None] | None = None,
    ) -> None:
        self.on_closed = on_closed
        self.pc = pc
        self.coach = coach
        self.executor = executor
        self.clock = clock
        self.channel: Any = None
        self.sent = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._coaching = False
        self._connected = asyncio.Event()
        self.blackhole = MediaBlackhole()

    def watch(self, fps: float, max_side: int, connect_timeout: float) -> None:
        pc, loop = self.pc, asyncio.get_running_loop()

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            if channel.label == CHANNEL:
                self.channel = channel

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "video" and not self._coaching and not self._closed:
                self._coaching = True
                source = TrackSource(track, self.clock, name="coach", max_side=max_side)
                self._tasks.append(loop.create_task(self._coach(source, fps), name="coach"))
            else:  # audio, a second camera: aiortc queues what nobody reads without bound, so drain it
                self.blackhole.addTrack(track)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState == "connected":
                self._connected.set()
            elif pc.connectionState in ("failed", "closed"):
                self._tasks.append(loop.create_task(self.close(), name="coach-close"))

        self._tasks.append(loop.create_task(self._connect_or_close(connect_timeout), name="coach-connect"))

    async def start(self) -> None:
        await self.blackhole.start()

    async def _connect_or_close(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            log.info("a coach preview did not connect within %.0f s; closed", timeout)
            await self.close()

    async def _coach(self, source: TrackSource, fps: float) -> None:
        """Coach frames that arrived at least 1/fps apart; the ones between are dropped."""
        loop, period = asyncio.get_running_loop(), 1.0 / fps
        start: float | None = None
        last: float | None = None
        try:
            while True:
                frame = await source.recv()  # the newest; older ones were dropped
                if last is not None and frame.captured < last + period:
                    await self.clock.sleep_until(last + period)
                    continue
                last = frame.captured
                start = frame.captured if start is None else start
                result = await loop.run_in_executor(self.executor, self.coach.feed, frame.image, frame.captured - start)
                if self.channel is not None and self.channel.readyState == "open":
                    self.channel.send(json.dumps(result))
                    self.sent += 1
        except SourceEnded:
            log.info("the coach preview track ended")
        except Exception:  # the recording goes on; the page shows it is no longer coached
            log.warning("the recording coach failed; the preview goes on uncoached", exc_info=True)
        finally:
            await source.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        current = asyncio.current_task()
        others = [t for t in self._tasks if t is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await self.blackhole.stop()
        await close_connection(self.pc)
        # The coach's tracker is closed on the thread it ran on, after any feed still running there.
        await asyncio.get_running_loop().run_in_executor(self.executor, self.coach.close)
        self.executor.shutdown(wait=False)
        if self.on_closed is not None:
            self.on_closed()


def _description(offer: dict[str, str]) -> RTCSessionDescription:
    if not isinstance(offer, dict) or offer.get("type") != "offer" or not isinstance(offer.get("sdp"), str):
        raise CoachOfferError('expected JSON {"sdp": "...", "type": "offer"} from the page\'s RTCPeerConnection')
    if "m=video" not in offer["sdp"]:
        raise CoachOfferError("the offer sends no video: add the camera track before creating the offer")
    if "m=application" not in offer["sdp"]:
        raise CoachOfferError(f'the offer has no data channel: create one named "{CHANNEL}" before the offer')
    return RTCSessionDescription(sdp=offer["sdp"], type="offer")


async def coach_answer(
    offer: dict[str, str],
    make_coach: Callable[[], Coach],
    *,
    ice: Any = None,
    clock: Clock | None = None,
    fps: float = SAMPLE_FPS,
    max_side: int = MAX_SIDE,
    connect_timeout: float = CONNECT_TIMEOUT,
    on_closed: Callable[[], None] | None = None,
) -> tuple[dict[str, str], Callable[[], Awaitable[None]]]:
    """Answer a page's preview offer; coach messages go out on its "coach" data channel.

    Args:
        offer: {"sdp", "type": "offer"} from the page: a video track it sends, and a data
            channel named "coach". Screen its ICE candidates first (`streamer.serve.ice`).
        make_coach: builds this recording's coach; called on the coach's own thread.
        ice: the RTCConfiguration (serve's: `ice_configuration(config.ice_servers, ...)`);
            None: no ICE servers at all.
        clock: stamps frame arrival (the coach's `t`); the monotonic clock when None.
        fps: preview frames coached per second.
        max_side: preview frames are scaled down to this longer side first.
        connect_timeout: seconds the page has to connect before the peer closes itself.
        on_closed: called once the peer and its coach are closed, however that came about (so
            whoever holds the close function can let go of it).

    Returns:
        The answer ({"sdp", "type"}) and a function that closes the peer and frees the coach
        (safe to call more than once; it also runs by itself when the connection fails or closes).

    Raises:
        CoachOfferError: the offer is malformed or lacks the video or the data channel.
    """
    description = _description(offer)
    executor = ThreadPoolExecutor(1, thread_name_prefix="coach")
    try:
        coach = await asyncio.get_running_loop().run_in_executor(executor, make_coach)
    except BaseException:
        executor.shutdown(wait=False)
        raise
    pc = RTCPeerConnection(ice if ice is not None else ice_configuration(()))
    peer = _CoachPeer(pc, coach, executor, clock or MonotonicClock(), on_closed)
    try:
        peer.watch(fps, max_side, connect_timeout)
        await pc.setRemoteDescription(description)
        await pc.setLocalDescription(await pc.createAnswer())
        await peer.start()
    except Exception as exc:
        await peer.close()
        raise CoachOfferError(f"cannot use this offer: {exc}") from None
    return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}, peer.close
