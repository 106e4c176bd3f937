"""The recording coach on real frames of the shared clips, its thresholds shared with `prepare`,
and its WebRTC side over loopback (an aiortc peer sending a real clip, as the page does)."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import AudioStreamTrack

from streamer.create.coach import (
    MORE_LIGHT,
    MOVE_BACK,
    MOVE_CLOSER,
    NO_FACE,
    ONE_FACE,
    Coach,
    coverage,
    coverage_edges,
)
from streamer.create.preview import CoachOfferError, coach_answer
from tests.media import ORIGINALS, first_frames, shared_video, write_video
from tests.test_prepare_checks import _video
from tracking import recording
from tracking.crop import portrait_crop
from tracking.prepare import check_tracking
from tracking.video import read_frames

U8 = npt.NDArray[np.uint8]
DEADLINE = 60.0  # seconds any awaited condition may take on a loaded 2-core machine
TURNS = (19.5, 31.0)  # seconds of cap12 where the man turns his head left, right, up and down


@pytest.fixture(scope="module")
def cap12_samples() -> list[tuple[float, U8]]:
    """cap12's first 31 s at about 4 fps (every 6th frame), as the coach samples a preview."""
    path = shared_video("cap12_512.mp4")
    return [(t, rgb) for i, t, rgb in read_frames(path, round(TURNS[1] * 25)) if i % 6 == 0]


@pytest.fixture(scope="module")
def hd_frame() -> U8:
    """A well framed, well lit 1280x720 frame: the published White House address."""
    return first_frames(shared_video("f2fdemo_obama_weekly_address.mp4", ORIGINALS), 1)[0]


def _feed(frames: list[U8], **options: Any) -> list[dict[str, Any]]:
    with Coach(**options) as coach:
        return [coach.feed(rgb, i / 4) for i, rgb in enumerate(frames)]


def test_coverage_fills_as_the_head_turns_and_bars_never_fall(cap12_samples: list[tuple[float, U8]]) -> None:
    """From 16 s: 3.5 s of a steady head, then turns left, right, up and down."""
    with Coach() as coach:
        results = [coach.feed(rgb, t) for t, rgb in cap12_samples if t >= 16.0]
    still = [r for r in results if r["t"] < TURNS[0]]
    assert max(r["fraction"] for r in still) <= 0.1  # about the centre cell
    final = np.array(results[-1]["coverage"]["filled"])
    assert final.shape == (3, 5) and final.mean() == results[-1]["fraction"] >= 0.3, final
    assert final[0].any() or final[2].any()  # up or down, beside level
    for name in ("jawOpen", "smile", "blink", "brows", "lips"):
        bar = [r["expressions"][name] for r in results]
        assert all(0.0 <= a <= b <= 1.0 for a, b in itertools.pairwise(bar)), name
    assert results[-1]["expressions"]["jawOpen"] == 1.0  # he talks: jawOpen passes prepare's 0.2
    assert results[-1]["elapsed"] == pytest.approx(cap12_samples[-1][0] - results[0]["t"])
    assert not results[-1]["enough"]  # his turns stay within prepare's minimum yaw range
    json.dumps(results[-1])  # what goes on the data channel


def test_a_full_pose_map_means_prepare_does_not_warn_about_rotation() -> None:
    """Over many random recordings (head poses as mixtures of a neutral cluster and excursions),
    every full map passes prepare's rotation check, and full maps do occur."""
    rng = np.random.default_rng(7)
    full = 0
    for _ in range(400):
        n = int(rng.integers(40, 700))
        spread = rng.uniform(2, 25, size=2)
        poses = rng.normal(rng.uniform(-15, 15, size=2), spread, size=(n, 2))
        still = rng.random(n) < rng.uniform(0, 0.95)
        poses[still] = rng.normal(poses[0], 1.0, size=(int(still.sum()), 2))
        if coverage(poses).all():
            full += 1
            assert recording.enough_rotation(*recording.rotation_ranges(poses))
    assert full >= 20


def test_a_glimpse_of_a_turn_does_not_fill_the_outer_cells() -> None:
    """Three samples far left and far right among 200 frontal ones: prepare would warn, so the
    outer columns stay empty although samples went there."""
    rng = np.random.default_rng(1)
    poses = np.concatenate([rng.normal(0, 4.0, (200, 2)), [[0, -30]] * 3, [[0, 30]] * 3])
    filled = coverage(poses)
    assert not filled[:, [0, -1]].any() and filled[1, 1:4].all()
    assert not recording.enough_rotation(*recording.rotation_ranges(poses))


def test_a_well_framed_recording_gets_no_advice(hd_frame: U8) -> None:
    result = _feed([hd_frame] * 3)[-1]
    assert (result["face"], result["faces"], result["framing"]) == (True, 1, [])


def test_move_back_while_the_portrait_crop_does_not_fit(hd_frame: U8) -> None:
    """The same frame cropped tight around the face and upscaled: the 1.5x crop overflows it.
    And a real clip filmed too close (drv_lp_d10, the face 290 px in 512)."""
    tight = cv2.resize(hd_frame[100:500, 440:840], (720, 720), interpolation=cv2.INTER_LINEAR)
    assert MOVE_BACK in _feed([tight] * 3)[-1]["framing"]
    too_close = first_frames(shared_video("drv_lp_d10_512.mp4"), 3)
    assert _feed(too_close)[-1]["framing"] == [MOVE_BACK]


def test_only_one_face(cap12_samples: list[tuple[float, U8]]) -> None:
    other = first_frames(shared_video("obama_512.mp4"), 1)[0]
    pair = np.hstack([cap12_samples[0][1], other])
    result = _feed([pair] * 3)[-1]
    assert result["faces"] == 2 and ONE_FACE in result["framing"]
    alone = _feed([cap12_samples[0][1]] * 3)[-1]
    assert alone["faces"] == 1 and ONE_FACE not in alone["framing"]


def test_no_face_on_a_blank_frame() -> None:
    result = _feed([np.zeros((480, 640, 3), np.uint8)])[-1]
    assert (result["face"], result["faces"], result["framing"]) == (False, 0, [NO_FACE])
    assert result["fraction"] == 0.0 and set(result["expressions"].values()) == {0.0}


def test_move_into_the_light(hd_frame: U8) -> None:
    """At a third of its brightness (face luma about 40) the frame is too dark; as published it is not."""
    dim = (hd_frame.astype(np.float32) / 3).astype(np.uint8)
    assert _feed([dim] * 3)[-1]["framing"] == [MORE_LIGHT]
    assert MORE_LIGHT not in _feed([hd_frame])[-1]["framing"]


def test_enough_at_the_time_limit_whatever_is_covered() -> None:
    blank = np.zeros((240, 320, 3), np.uint8)
    with Coach() as coach:
        assert not coach.feed(blank, 10.0)["enough"]
        assert not coach.feed(blank, 10.0 + recording.MAX_SECONDS - 1)["enough"]
        assert coach.feed(blank, 10.0 + recording.MAX_SECONDS)["enough"]


def test_a_frame_that_is_not_rgb_is_refused() -> None:
    with Coach() as coach, pytest.raises(ValueError, match=r"\[H, W, 3\] uint8 RGB"):
        coach.feed(np.zeros((240, 320), np.uint8), 0.0)


def test_prepare_and_the_coach_move_together_when_only_recording_changes(
    monkeypatch: pytest.MonkeyPatch, hd_frame: U8
) -> None:
    """Neither keeps its own copy of a threshold: changing tracking/recording.py alone moves
    prepare's warnings and the coach's advice alike."""
    assert check_tracking(_video()) == [] and _feed([hd_frame])[-1]["framing"] == []
    edges = coverage_edges()
    talking = [rgb for i, rgb in enumerate(first_frames(shared_video("drv_aoc_512.mp4"), 60)) if i % 3 == 0]
    assert _feed(talking)[-1]["expressions"]["jawOpen"] == 1.0

    monkeypatch.setattr(recording, "MIN_YAW_RANGE", 5 * recording.MIN_YAW_RANGE)  # the test video spans 57°
    monkeypatch.setattr(recording, "MIN_FACE_PX", 1000.0)
    monkeypatch.setattr(recording, "MIN_JAW_OPEN", 0.99)
    monkeypatch.setattr(recording, "MIN_FACE_LUMA", 250.0)
    monkeypatch.setattr(recording, "crop_fits", lambda side, width, height: False)

    warnings = " ".join(check_tracking(_video()))
    for says in ("little head rotation", "little expression range", "px tall", "the face is dark"):
        assert says in warnings
    assert portrait_crop(np.full((1, 2), 300.0, np.float32), np.array([100.0], np.float32), 640, 480, 256)[1]
    assert coverage_edges()[0] == pytest.approx([5 * e for e in edges[0]])
    assert _feed(talking)[-1]["expressions"]["jawOpen"] < 1.0
    assert set(_feed([hd_frame], recording_height=720)[-1]["framing"]) == {MOVE_BACK, MORE_LIGHT}
    monkeypatch.setattr(recording, "crop_fits", lambda side, width, height: True)
    assert MOVE_CLOSER in _feed([hd_frame], recording_height=720)[-1]["framing"]


# ---- the WebRTC side -------------------------------------------------------------------------------


def _turning_clip(samples: list[tuple[float, U8]], folder: Path) -> Path:
    """cap12's head turns, its every 6th frame played at 8 fps (1.5x speed) at 256 px: 11.5 s of
    turning in 6 s."""
    frames = [cv2.resize(rgb, (256, 256), interpolation=cv2.INTER_AREA) for t, rgb in samples if t >= TURNS[0]]
    return write_video(folder / "turns.mp4", frames, fps=8)


class ThreadNotingCoach(Coach):
    """A coach that notes the threads it is fed on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[str] = set()
        self.closed = threading.Event()

    def close(self) -> None:
        super().close()
        self.closed.set()

    def feed(self, rgb: U8, t: float) -> dict[str, Any]:
        self.threads.add(threading.current_thread().name)
        return super().feed(rgb, t)


async def _until(event: asyncio.Event, what: str) -> None:
    try:
        await asyncio.wait_for(event.wait(), DEADLINE)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def test_coach_answer_sends_coach_messages_on_the_page_channel(
    cap12_samples: list[tuple[float, U8]], tmp_path: Path
) -> None:
    """An aiortc peer plays a real clip and opens the "coach" channel, as the page does; coach
    messages come back at about 4 a second with the pose map growing, though a microphone track
    comes along. The coach runs on its own
    thread, never the event loop's, and closing frees its tracker."""
    clip = _turning_clip(cap12_samples, tmp_path)
    coaches: list[ThreadNotingCoach] = []

    def make_coach() -> Coach:
        coaches.append(ThreadNotingCoach())
        return coaches[-1]

    async def scenario() -> list[dict[str, Any]]:
        client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        player = MediaPlayer(str(clip), loop=True)  # on a slow machine the coach may need a second pass
        client.addTrack(player.video)
        client.addTrack(AudioStreamTrack())  # a microphone too: drained, not coached
        channel = client.createDataChannel("coach")
        messages: list[dict[str, Any]] = []
        grown = asyncio.Event()

        def on_message(text: str) -> None:
            messages.append(json.loads(text))
            if messages[-1]["fraction"] >= 0.2:  # three cells, where one is all a still head fills
                grown.set()

        channel.on("message", on_message)
        await client.setLocalDescription(await client.createOffer())
        offer = {"sdp": client.localDescription.sdp, "type": "offer"}
        answer, close = await coach_answer(offer, make_coach)
        await client.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        try:
            await _until(grown, "coach messages with the pose map growing")
        finally:
            await close()
            await close()  # a second close is harmless
            await client.close()
        return messages

    messages = asyncio.run(scenario())
    times = [m["t"] for m in messages]
    assert times == sorted(times) and times[0] == 0.0
    assert min(np.diff(times)) >= 0.25 - 1e-9  # sampled at 4 fps at most, the frames between dropped
    assert sum(m["face"] for m in messages) >= len(messages) - 1  # through VP8 at 256 px
    assert len(coaches) == 1 and coaches[0].threads == {"coach_0"}  # not MainThread, the loop's
    assert coaches[0].tracker._landmarker is None  # closed


def test_coach_answer_refuses_an_offer_without_video_or_channel() -> None:
    async def scenario() -> None:
        client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        client.createDataChannel("coach")
        await client.setLocalDescription(await client.createOffer())
        with pytest.raises(CoachOfferError, match="sends no video"):
            await coach_answer({"sdp": client.localDescription.sdp, "type": "offer"}, Coach)
        with pytest.raises(CoachOfferError, match="expected JSON"):
            await coach_answer({"sdp": "v=0", "type": "answer"}, Coach)
        await client.close()

    asyncio.run(scenario())


def test_a_page_that_never_connects_frees_its_coach() -> None:
    coaches: list[ThreadNotingCoach] = []

    def make_coach() -> Coach:
        coaches.append(ThreadNotingCoach())
        return coaches[-1]

    async def scenario() -> None:
        client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        client.addTransceiver("video", direction="sendonly")
        client.createDataChannel("coach")
        await client.setLocalDescription(await client.createOffer())
        offer = {"sdp": client.localDescription.sdp, "type": "offer"}
        told = asyncio.Event()
        # the answer never reaches the client
        await coach_answer(offer, make_coach, connect_timeout=0.5, on_closed=told.set)
        assert await asyncio.to_thread(coaches[0].closed.wait, DEADLINE), "the coach was not closed"
        await asyncio.wait_for(told.wait(), DEADLINE)  # and its owner is told, so it can let go
        await client.close()

    asyncio.run(scenario())
