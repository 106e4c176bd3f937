"""Where glass-to-glass goes: the per-frame split (streamer/core/split.py), the server's frame
times and the page's report (streamer/core/metrics.py, streamer/serve/service.py), and the
receivers' frame release (streamer/core/rtc.py)."""

from __future__ import annotations

import asyncio

import aiortc.rtcrtpreceiver
import numpy as np
import pytest
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from streamer.core.frames import Frame
from streamer.core.metrics import Metrics, SessionStats
from streamer.core.rtc import MarkerJitterBuffer, set_frame_release
from streamer.core.split import ClockSync, FrameTimes, SplitJoin
from streamer.serve.service import split_report
from streamer.sinks.webrtc import AvatarTrack
from tests.test_streamer import FakeClock


def _times(tag: int, received: float, sent: float) -> FrameTimes:
    return FrameTimes(tag, received, sent - 0.002, sent, (0.010, 0.004, 0.012, 0.001))


def test_clock_sync_takes_the_fastest_ping() -> None:
    sync = ClockSync()
    assert sync.offset is None
    # The server's clock is the client's + 100 s. A slow ping whose answer was late on the way
    # back gives a biased offset; the fast one is within its half round trip.
    sync.observe(1.000, 101.001, 1.040)  # 40 ms round trip: offset estimate 100.0 - 0.019
    sync.observe(2.000, 102.0005, 2.001)  # 1 ms round trip
    assert sync.offset == pytest.approx(100.0, abs=0.0005)
    assert sync.error == pytest.approx(0.0005)
    sync.observe(3.0, 50.0, 2.9)  # an answer before its question: ignored
    assert sync.offset == pytest.approx(100.0, abs=0.0005)


@pytest.mark.parametrize("server_first", [False, True])
def test_split_segments_add_up_to_glass_in_either_order(server_first: bool) -> None:
    sync = ClockSync()
    sync.observe(0.0, 500.0, 0.0)  # server = client + 500 s, exactly
    join = SplitJoin(sync)
    # Captured at 10.000 (client); received at 10.030 and sent at 10.080 (client's clock, +500 on
    # the server's); shown at 10.125.
    times = _times(7, 510.030, 510.080)
    if server_first:
        join.server(times, 10.09)
        assert not join.rows
        join.shown(7, 10.000, 10.125)
    else:
        join.shown(7, 10.000, 10.125)
        assert not join.rows
        join.server(times, 10.13)
    (row,) = join.rows
    assert row["uplink"] == pytest.approx(30.0, abs=0.01)
    assert row["server"] == pytest.approx(50.0, abs=0.01)
    assert row["downlink"] == pytest.approx(45.0, abs=0.01)
    assert row["uplink"] + row["server"] + row["downlink"] == pytest.approx(row["glass"], abs=0.02)
    parts = ("queue", "track", "render", "infer", "compose", "handoff")
    assert sum(row[k] for k in parts) == pytest.approx(row["server"], abs=0.05)
    assert row["handoff"] == pytest.approx(2.0, abs=0.01) and row["queue"] == pytest.approx(21.0, abs=0.01)


def test_split_waits_for_a_clock_and_matches_ids_not_order() -> None:
    sync = ClockSync()
    join = SplitJoin(sync)
    join.shown(1, 0.0, 0.1)
    join.server(_times(1, 0.03, 0.06), 0.1)
    assert not join.rows  # no offset yet: nothing joined, both halves kept
    sync.observe(0.2, 0.2, 0.2)
    join.shown(2, 0.2, 0.3)
    join.server(_times(2, 0.21, 0.25), 0.3)
    join.server(_times(3, 0.31, 0.35), 0.3)  # shown later, or never
    assert [round(r["glass"]) for r in join.rows] == [100]


def test_frame_times_on_the_wire() -> None:
    times = FrameTimes(1023, 12.5, 12.54, 12.5401, (0.01, 0.004, 0.02, 0.0003))
    assert FrameTimes.from_wire(times.wire()) == times
    for bad in ([1, 2, 3], "x", [1, 2, 3, 4, 5, 6, 7, "8"], [True] * 8, None):
        assert FrameTimes.from_wire(bad) is None


def test_session_keeps_each_stamped_frame_once_for_each_peer() -> None:
    stats = SessionStats(Metrics())
    stats.timed(_times(1, 1.0, 1.05))
    stats.timed(_times(1, 1.0, 1.06))  # the same frame through a second sink
    stats.timed(_times(2, 1.03, 1.09))
    first, seen = stats.timed_since(0)
    assert [t.tag for t in first] == [1, 2]
    stats.timed(_times(3, 1.06, 1.12))
    later, _ = stats.timed_since(seen)
    assert [t.tag for t in later] == [3]


def test_split_report_takes_flat_numbers_only() -> None:
    good = {"glass": 120.5, "uplink": 40, "server": 50.25, "downlink": 30.251, "jitter_buffer": None}
    assert split_report(good) == {**good, "downlink": 30.25}
    for bad in (None, [], {}, {"Glass": 1}, {"glass": "1"}, {"glass": True}, {"glass": float("nan")},
                {"glass": 1e9}, {f"k{i}": 1 for i in range(40)}, {"a": {"b": 1}}):  # fmt: skip
        assert split_report(bad) is None, bad


def _packet(seq: int, timestamp: int, marker: bool) -> RtpPacket:
    packet = RtpPacket(payload_type=96, marker=int(marker), sequence_number=seq, timestamp=timestamp)
    packet._data = bytes([seq % 256])  # type: ignore[attr-defined]
    return packet


def test_marker_release_hands_on_a_frame_at_its_last_packet() -> None:
    """aiortc's buffer releases frame 1 only when frame 2 begins; on the marker, it is out at once."""
    frames = [[(10, 900, False), (11, 900, False), (12, 900, True)], [(13, 1800, True)], [(14, 2700, True)]]
    for buffer, late in ((JitterBuffer(128, is_video=True), True), (MarkerJitterBuffer(128, is_video=True), False)):
        out: list[tuple[int, int, bytes]] = []  # (frame index the packet belonged to, timestamp, data)
        for index, frame in enumerate(frames):
            for seq, ts, marker in frame:
                _, done = buffer.add(_packet(seq, ts, marker))
                if done is not None:
                    out.append((index, done.timestamp, done.data))
        if late:
            assert [(i, ts) for i, ts, _ in out] == [(1, 900), (2, 1800)]
        else:
            assert [(i, ts) for i, ts, _ in out] == [(0, 900), (1, 1800), (2, 2700)]
        assert out[0][2] == bytes([10, 11, 12])


def test_marker_release_waits_for_a_missing_packet() -> None:
    buffer = MarkerJitterBuffer(128, is_video=True)
    assert buffer.add(_packet(20, 900, False))[1] is None
    assert buffer.add(_packet(22, 900, True))[1] is None  # 21 is missing: not a whole frame
    _, frame = buffer.add(_packet(21, 900, False))  # the retransmission fills the gap
    assert frame is None  # not the marker packet: aiortc's rule holds it until the next frame
    _, frame = buffer.add(_packet(23, 1800, True))
    assert frame is not None and frame.timestamp == 900 and frame.data == bytes([20, 21, 22])


def test_frame_release_switches_the_receivers_buffer() -> None:
    before = aiortc.rtcrtpreceiver.JitterBuffer
    try:
        set_frame_release("next")
        assert aiortc.rtcrtpreceiver.JitterBuffer is JitterBuffer
        set_frame_release("marker")
        assert aiortc.rtcrtpreceiver.JitterBuffer is MarkerJitterBuffer
        with pytest.raises(ValueError, match="marker, next"):
            set_frame_release("soon")
    finally:
        aiortc.rtcrtpreceiver.JitterBuffer = before  # type: ignore[misc]


@pytest.mark.parametrize(("rtp_time", "expected"), [("capture", [0, 3600, 7200]), ("send", [0, 4500, 18000])])
def test_avatar_track_timestamps_follow_capture_or_send(rtp_time: str, expected: list[int]) -> None:
    """Frames captured 40 ms apart but sent 50 and 150 ms apart (the pipeline's varying delay)."""
    clock = FakeClock(1.0)
    track = AvatarTrack(clock, rtp_time)

    async def run() -> list[int]:
        pts = []
        for captured, sent in ((0.0, 1.0), (0.04, 1.05), (0.08, 1.2)):
            clock.t = sent
            track.send(Frame(np.zeros((16, 16, 3), np.uint8), captured, 0))
            pts.append((await track.recv()).pts)
        await track.close()
        return pts

    assert asyncio.run(run()) == expected
    with pytest.raises(ValueError, match="capture, send"):
        AvatarTrack(clock, "arrival")
