"""The live pipeline's parts: hand-off queues, pacing, frame stamps, compose, sources and sinks."""

from __future__ import annotations

import asyncio
import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from streamer.core import stamp
from streamer.core.clock import Pacer, PhaseLock
from streamer.core.frames import Background, Frame
from streamer.core.queues import Closed, DropQueue
from streamer.sinks import parse_sink
from streamer.sinks.base import SinkError, SinkSpec
from streamer.sinks.file import FileSink
from streamer.sources import parse_source
from streamer.sources.base import SourceEnded, SourceError, SourceSpec
from streamer.sources.file import FileSource
from streamer.stages.compose import ComposeConfig, Compositor
from tests.media import first_frames


class FakeClock:
    """A clock tests move by hand: `sleep_until` jumps straight to the deadline."""

    def __init__(self, start: float = 100.0) -> None:
        self.t = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep_until(self, deadline: float) -> None:
        self.sleeps.append(deadline)
        self.t = max(self.t, deadline)


def test_drop_queue_keeps_the_newest_and_counts_drops() -> None:
    async def scenario() -> tuple[list[int], int]:
        q: DropQueue[int] = DropQueue(2)
        for i in range(5):
            q.put(i)
        got = [await q.get(), await q.get()]
        q.close()
        with pytest.raises(Closed):
            await q.get()
        return got, q.dropped

    got, dropped = asyncio.run(scenario())
    assert got == [3, 4] and dropped == 3


def test_drop_queue_drained_waits_for_the_consumer() -> None:
    """Back-pressure: `drained` returns at once on an empty queue, else once the item is taken
    (or the queue closed), and nothing is dropped on the way."""

    async def scenario() -> list[str]:
        q: DropQueue[int] = DropQueue(1)
        events: list[str] = []
        await asyncio.wait_for(q.drained(), 1)  # empty: no wait
        q.put(1)

        async def producer() -> None:
            await q.drained()
            events.append("drained")
            q.put(2)

        task = asyncio.create_task(producer())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        events.append("before get")  # the producer is still waiting: the item was not taken
        events.append(f"got {await q.get()}")
        await task
        events.append(f"got {await q.get()}")
        q.put(3)
        closer = asyncio.create_task(q.drained())
        await asyncio.sleep(0)
        assert not closer.done()
        q.close()
        await asyncio.wait_for(closer, 1)
        assert q.dropped == 0
        return events

    assert asyncio.run(scenario()) == ["before get", "got 1", "drained", "got 2"]


def test_pacer_ticks_on_absolute_deadlines_and_skips_missed_ones() -> None:
    clock = FakeClock()
    pacer = Pacer(25, clock)

    async def scenario() -> list[float]:
        ticks = [await pacer.wait() for _ in range(3)]
        clock.t += 0.5  # the consumer stalls for 12.5 periods
        ticks.append(await pacer.wait())
        ticks.append(await pacer.wait())
        return ticks

    ticks = asyncio.run(scenario())
    start = 100.0
    assert ticks[:3] == pytest.approx([start, start + 0.04, start + 0.08])
    # no burst after the stall: the next tick is the first deadline after "now", then one period on
    assert ticks[3] >= clock.sleeps[-2] and ticks[3] > start + 0.5
    assert ticks[4] - ticks[3] == pytest.approx(0.04)
    assert pacer.missed >= 11


def _phase_locked_ticks(frame_fps: float, lock: PhaseLock | None, ticks: int = 400) -> list[float]:
    """A 30 fps sink's ticks on a fake clock (no sleeping) against frames arriving on their own
    grid at `frame_fps`, first 5% of a tick period after the ticks, with +-1 ms of jitter; the
    phase (0..1 of a period after the last tick) of each arrival."""
    clock = FakeClock(start=100.0)
    pacer = Pacer(30, clock)
    rng = np.random.default_rng(0)
    arrivals = iter(100.0 + 0.05 / 30 + np.arange(ticks * 2) / frame_fps + rng.uniform(-1e-3, 1e-3, ticks * 2))
    upcoming = next(arrivals)
    phases = []

    async def run() -> None:
        nonlocal upcoming
        for _ in range(ticks):
            if lock is not None:
                step = lock.correction()
                assert abs(step) <= lock.max_step + 1e-12
                pacer.shift(step)
            deadline = await pacer.wait()
            while upcoming < deadline + pacer.period:  # the frames that come before the next tick
                phases.append(pacer.phase(upcoming))
                if lock is not None:
                    lock.arrived(phases[-1])
                upcoming = next(arrivals)

    asyncio.run(run())
    return phases


def test_phase_lock_moves_the_ticks_midway_between_the_frames() -> None:
    """Frames that arrive just after the sink's ticks (jitter puts some before: a repeat, then a
    drop) end up half a period from them, the ticks moving at most 1 ms each; without the lock
    they stay where they came."""
    lock = PhaseLock(1 / 30)
    locked = _phase_locked_ticks(30, lock)
    free = _phase_locked_ticks(30, None)
    assert np.median(free[-100:]) < 0.1 or np.median(free[-100:]) > 0.9
    assert abs(np.median(locked[-100:]) - 0.5) < 0.05, "the arrivals did not settle mid-period"
    assert min(locked[-100:]) > 0.3 and max(locked[-100:]) < 0.7
    assert 0.4 / 30 < abs(lock.shifted) < 0.6 / 30 and lock.agreement > 0.9


def test_phase_lock_leaves_ticks_alone_for_frames_at_another_rate() -> None:
    """A 25 fps source against 30 fps ticks has no phase to keep: the lock barely moves them."""
    lock = PhaseLock(1 / 30)
    _phase_locked_ticks(25, lock)
    assert lock.agreement < 0.5 and abs(lock.shifted) < 0.01 / 30
    with pytest.raises(ValueError, match="period must be > 0"):
        PhaseLock(0.0)


@pytest.mark.parametrize("width", [64, 256, 640])
def test_stamp_round_trip_survives_video_compression(width: int) -> None:
    """Ids painted into frames are read back after a real VP8 encode and decode."""
    frames = first_frames(Path("../shared/data/512/drv_lp_d10_512.mp4"), 6)
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, width, "yuv420p"
    encoder.bit_rate, encoder.time_base = 300_000, Fraction(1, 30)
    decoder = av.CodecContext.create("libvpx", "r")
    ids = [5, 6, 511, 512, 1023, 1024]
    decoded = []
    for i, (tag, image) in enumerate(zip(ids, frames, strict=True)):
        picture = np.ascontiguousarray(
            av.VideoFrame.from_ndarray(image, format="rgb24").reformat(width, width).to_ndarray(format="rgb24")
        )
        stamp.write(picture, tag)
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        for packet in encoder.encode(frame):
            decoded += [f.to_ndarray(format="rgb24") for f in decoder.decode(packet)]
    for packet in encoder.encode(None):
        decoded += [f.to_ndarray(format="rgb24") for f in decoder.decode(packet)]
    assert [stamp.read(d) for d in decoded] == [t % stamp.MODULUS for t in ids]
    assert stamp.read(frames[0]) is None  # a real, unstamped frame reads as no stamp


def test_compose_backgrounds_and_badge(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    picture = tmp_path / "bg.png"
    import cv2

    cv2.imwrite(str(picture), np.full((30, 50, 3), (0, 0, 255), np.uint8))  # BGR red
    plain = Compositor(ComposeConfig(badge=False, image=picture), 64)
    assert np.array_equal(plain(image, mask), image)  # learned background, no badge: untouched
    plain.set_background(Background.IMAGE)
    replaced = plain(image, mask)
    assert np.array_equal(replaced[20:40, 20:40], image[20:40, 20:40])  # person kept
    assert (replaced[:8, :8] == [255, 0, 0]).all()  # background replaced by the picture (RGB red)
    plain.set_background(Background.BLUR)
    blurred = plain(image, mask)
    assert blurred[:10, :10].std() < image[:10, :10].std() / 3
    badged = Compositor(ComposeConfig(badge=False), 64, badge_required=True)(image, mask)
    changed = np.argwhere((badged != image).any(axis=2))
    assert len(changed) > 20 and changed[:, 0].min() > 40 and changed[:, 1].min() > 8  # bottom right only
    with pytest.raises(ValueError, match="background-image"):
        Compositor(ComposeConfig(), 64).set_background(Background.IMAGE)


def test_specs_parse_or_say_what_to_write() -> None:
    assert parse_source("camera:0") == SourceSpec("camera", "0")
    assert parse_source("file:/a b.mp4").target == "/a b.mp4"
    assert str(parse_source("webrtc")) == "webrtc"
    assert parse_sink("file:out.mp4") == SinkSpec("file", "out.mp4")
    assert parse_sink("window") == SinkSpec("window")
    assert parse_source("janus:http://h:1/janus#room=7&pin=p").target == "http://h:1/janus#room=7&pin=p"
    for bad in ("webcam", "camera:x", "file:", "webrtc:1", "janus:http://h/janus#room=x&pin=p"):
        with pytest.raises(SourceError, match=re.escape("camera:N, file:PATH, janus:URL#room=N&pin=PIN or webrtc")):
            parse_source(bad)
    for bad in ("zoom", "file", "null:x"):
        with pytest.raises(
            SinkError, match=re.escape("virtualcam, webrtc, file:OUT.mp4, null, janus:URL#room=N&pin=PIN or window")
        ):
            parse_sink(bad)
    with pytest.raises(
        SinkError,
        match=re.escape(
            "connect receives the avatar over WebRTC; use virtualcam, file:OUT.mp4, null, "
            "janus:URL#room=N&pin=PIN or window"
        ),
    ):
        parse_sink("webrtc", peers=False)


def test_file_source_paces_at_the_video_rate_and_ends(driver_video: Path, tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i, image in enumerate(first_frames(driver_video, 5)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(64, 64, format="yuv420p")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    clock = FakeClock()

    async def play(loop: bool, n: int) -> list[Frame]:
        source = FileSource(clip, clock, loop=loop)
        frames = []
        try:
            for _ in range(n):
                frames.append(await source.recv())
        except SourceEnded:
            pass
        await source.close()
        return frames

    frames = asyncio.run(play(False, 10))
    assert len(frames) == 5
    assert np.diff([f.captured for f in frames]) == pytest.approx([0.04] * 4)
    assert len(asyncio.run(play(True, 12))) == 12  # loops past the end
    clock.sleeps.clear()
    unpaced = FileSource(clip, clock, paced=False)
    got = [asyncio.run(unpaced.recv()) for _ in range(3)]
    assert [f.index for f in got] == [0, 1, 2] and clock.sleeps == [], "an unpaced source waited for a tick"
    asyncio.run(unpaced.close())
    with pytest.raises(SourceError, match="no such file"):
        FileSource(tmp_path / "missing.mp4", clock)


def test_file_sink_writes_a_playable_mp4(tmp_path: Path) -> None:
    """Every frame handed over in turn lands in an H.264 mp4, timed by its capture time."""

    async def write() -> None:
        sink = FileSink(tmp_path / "out.mp4", FakeClock(), fps=25)
        delivered = asyncio.Event()
        sink.report = lambda *_: delivered.set()
        for i in range(10):
            delivered.clear()
            sink.send(Frame(np.full((64, 64, 3), i * 20, np.uint8), 100 + i * 0.04, i))
            await asyncio.wait_for(delivered.wait(), 10)  # one at a time: nothing is dropped
        await sink.close()

    asyncio.run(write())
    with av.open(str(tmp_path / "out.mp4")) as video:
        stream = video.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = list(video.decode(stream))
        times = [float(f.pts * f.time_base) for f in frames]
        pictures = [f.to_ndarray(format="rgb24") for f in frames]
    assert len(frames) == 10 and (frames[0].width, frames[0].height) == (64, 64)
    assert np.diff(times) == pytest.approx([0.04] * 9, abs=1e-3)  # capture times, not arrival times
    levels = [float(p.mean()) for p in pictures]
    assert levels == pytest.approx([i * 20 for i in range(10)], abs=3)  # the frames, in order


# The virtual camera's tests are in tests/test_virtualcam.py.


def test_a_peer_closed_while_connecting_is_not_an_error_but_other_task_failures_are() -> None:
    """aiortc leaves `RTCPeerConnection.__connect` unretrieved when a peer is closed mid-connect
    (aiortc#1040); the service logs that at INFO and passes every other failure on."""
    import gc
    from collections.abc import Coroutine

    from aiortc.exceptions import InvalidStateError

    from streamer.core.rtc import tolerate_closed_connects

    class RTCPeerConnection:  # the qualname aiortc's task has
        async def __connect(self) -> None:
            raise InvalidStateError("RTCIceTransport is closed")

        def start(self) -> Coroutine[None, None, None]:
            return self.__connect()

    async def other() -> None:
        raise InvalidStateError("something else")

    seen: list[str] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: seen.append(repr(context.get("exception"))))
        tolerate_closed_connects(loop)
        for coro in (RTCPeerConnection().start(), other()):
            task = loop.create_task(coro)
            await asyncio.sleep(0)
            del task
            gc.collect()  # the unretrieved exception is reported when the task is collected

    asyncio.run(scenario())
    assert seen == ["InvalidStateError('something else')"]
