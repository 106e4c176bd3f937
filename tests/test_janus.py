"""The Janus media plane: a real Janus (our generated config), real aiortc peers, a real
AvatarSession with the `janus` source and sink, inside a private network namespace.

    unshare -n sh -c 'ip link set lo up && exec .venv/bin/pytest -q -m cluster tests/test_janus.py'
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack

from streamer.core import stamp
from streamer.janus.client import AVATAR, DRIVER, JanusDown, JanusError, JanusSession, Room
from streamer.janus.server import JanusServer, JanusServerConfig, JanusServerError
from tests.media import first_frames, shared_video
from tests.netns import media_link, needs_private_network

pytestmark = [pytest.mark.cluster, needs_private_network]

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo" / "cap12.avatar"
API_SECRET = secrets.token_hex(8)


@pytest.fixture(scope="module")
def janus() -> Iterator[JanusServer]:
    with media_link() as link, JanusServer(JanusServerConfig(ice_enforce_list=link, api_secret=API_SECRET)) as server:
        yield server


class StampedClip(MediaStreamTrack):
    """A camera stand-in: frames of a shared clip with a frame identifier painted in, 25 fps."""

    kind = "video"

    def __init__(self, images: list[np.ndarray[Any, Any]], first: int = 0) -> None:
        super().__init__()
        self.images = images
        self.n = first
        self.sent: list[int] = []

    async def recv(self) -> av.VideoFrame:
        await asyncio.sleep(1 / 25)
        image = self.images[self.n % len(self.images)].copy()
        stamp.write(image, self.n)
        self.sent.append(self.n % stamp.MODULUS)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = self.n * 3600, Fraction(1, 90000)
        self.n += 1
        return frame


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray[Any, Any]]:
    return first_frames(shared_video("drv_lp_d9_512.mp4"), 50)


async def with_room(janus: JanusServer, body: Callable[[JanusSession, Room], Awaitable[Any]]) -> Any:
    """Run `body` with a session and a fresh room (secret + pin), destroyed afterwards."""
    secret, pin = secrets.token_hex(8), secrets.token_hex(6)
    async with await JanusSession.open(janus.url, api_secret=API_SECRET) as session:
        number = await session.create_room(secret=secret, pin=pin, description="test")
        try:
            return await body(session, Room(janus.url, number, pin, API_SECRET))
        finally:
            await session.destroy_room(number, secret=secret)


async def tags_of(track: MediaStreamTrack, count: int) -> list[int | None]:
    """The frame identifiers read off the next `count` frames of a received track."""
    frames = [await asyncio.wait_for(track.recv(), 20.0) for _ in range(count)]
    return [stamp.read(f.to_ndarray(format="rgb24")) for f in frames]


def test_room_target_round_trips_and_bad_targets_say_the_form() -> None:
    room = Room("http://127.0.0.1:8088/janus", 1234, "p&n=1#x", "s")
    assert Room.parse(room.target()) == room and "p&n" not in repr(room)
    for bad in ("127.0.0.1:8088#room=1&pin=x", "http://h/janus#room=x&pin=y", "http://h/janus#room=1"):
        with pytest.raises(JanusError, match="room=N&pin=PIN"):
            Room.parse(bad)


def test_a_published_clip_reaches_a_subscriber(janus: JanusServer, clip: list[np.ndarray[Any, Any]]) -> None:
    async def body(session: JanusSession, room: Room) -> tuple[list[int | None], list[int], list[tuple[int, str]]]:
        camera = StampedClip(clip)
        publisher = await session.publish(room, camera, display=DRIVER)
        subscriber = await session.subscribe(room, display=DRIVER)
        assert subscriber.track is not None and subscriber.feed == publisher.feed
        tags = await tags_of(subscriber.track, 10)
        return tags, camera.sent, await session.publishers(room)

    tags, sent, publishers = asyncio.run(with_room(janus, body))
    received = [t for t in tags if t is not None]
    assert len(received) >= 8 and set(received) <= set(sent)
    assert [d for _, d in publishers] == [DRIVER]  # the subscriber's watcher handle is no publisher


def test_a_session_drives_the_avatar_through_janus_and_encodes_it_once_for_five_viewers(
    janus: JanusServer, clip: list[np.ndarray[Any, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Driver (aiortc) -> Janus -> AvatarSession (janus source, janus sink, the shipped demo
    avatar) -> Janus -> 5 aiortc viewers. The session echoes the driver's frame identifiers onto
    the avatar frames it makes, so a viewer reading them back has received the avatar."""
    from aiortc.codecs import vpx

    from streamer.core.clock import MonotonicClock
    from streamer.core.metrics import Metrics
    from streamer.pipeline.session import AvatarEntry, AvatarSession, SessionConfig
    from streamer.sinks import open_sink, parse_sink
    from streamer.sinks.base import SinkContext
    from streamer.sources import open_source, parse_source
    from streamer.sources.base import SourceContext

    encoders = []
    made = vpx.Vp8Encoder.__init__

    def counted(self: Any) -> None:
        encoders.append(self)
        made(self)

    monkeypatch.setattr(vpx.Vp8Encoder, "__init__", counted)
    entry = AvatarEntry.load(DEMO)

    async def body(session: JanusSession, room: Room) -> dict[str, Any]:
        camera = StampedClip(clip)
        await session.publish(room, camera, display=DRIVER)
        clock = MonotonicClock()
        source = open_source(parse_source(f"janus:{room.target()}"), SourceContext(clock, stamps=True))
        sink = open_sink(parse_sink(f"janus:{room.target()}"), SinkContext(clock))
        avatar = AvatarSession("janus", entry, source, SessionConfig(stamp=True), clock, Metrics())
        avatar.add_sink(sink)
        await avatar.start()
        try:
            first = await session.subscribe(room, display=AVATAR, timeout=120.0)
            assert first.track is not None
            await tags_of(first.track, 3)
            at_one = len(encoders)
            viewers = [first] + [await session.subscribe(room, display=AVATAR) for _ in range(4)]
            frames = await asyncio.gather(*(asyncio.wait_for(v.track.recv(), 20.0) for v in viewers if v.track))
            tags = await asyncio.gather(*(tags_of(v.track, 8) for v in viewers if v.track))
            at_five = len(encoders)
            snapshot = avatar.snapshot()
        finally:
            await avatar.stop()
        return {
            "at_one": at_one,
            "at_five": at_five,
            "tags": tags,
            "sent": camera.sent,
            "sizes": {(f.width, f.height) for f in frames},
            "snapshot": snapshot,
        }

    result = asyncio.run(with_room(janus, body))
    # One encoder for the driver's camera (this test's publisher), one for the avatar: none per viewer.
    assert result["at_one"] == result["at_five"] == 2
    assert result["sizes"] == {(entry.resolution, entry.resolution)}
    for tags in result["tags"]:
        echoed = [t for t in tags if t is not None]
        assert echoed and set(echoed) <= set(result["sent"])
    snapshot = result["snapshot"]
    assert snapshot["source"].startswith("janus:") and snapshot["sinks"][0].startswith("janus:")
    assert snapshot["face_found"] is True


def test_a_subscriber_follows_a_republished_avatar_with_switch(
    janus: JanusServer, clip: list[np.ndarray[Any, Any]]
) -> None:
    async def body(session: JanusSession, room: Room) -> dict[str, Any]:
        first = await session.publish(room, StampedClip(clip), display=AVATAR)
        subscriber = await session.subscribe(room, display=AVATAR)
        assert subscriber.track is not None
        pc, track = subscriber.pc, subscriber.track
        before = await tags_of(track, 5)
        await first.close()  # the avatar session died
        second_camera = StampedClip(clip, first=500)  # the restarted one: identifiers from 500 on
        second = await session.publish(room, second_camera, display=AVATAR)
        after: list[int | None] = []
        for _ in range(200):  # frames of the old publisher may still be in flight: read until the new ones come
            (tag,) = await tags_of(track, 1)
            if tag is not None and tag >= 500:
                after.append(tag)
            if len(after) == 5:
                break
        return {
            "before": before,
            "after": after,
            "switches": subscriber.switches,
            "same_pc": subscriber.pc is pc and pc.connectionState == "connected",
            "same_track": subscriber.track is track,
            "feed": (subscriber.feed, second.feed),
            "sent": second_camera.sent,
        }

    result = asyncio.run(with_room(janus, body))
    assert all(t is not None and t < 500 for t in result["before"])
    assert len(result["after"]) == 5 and set(result["after"]) <= set(result["sent"])
    assert result["switches"] == 1 and result["same_pc"] and result["same_track"]
    assert result["feed"][0] == result["feed"][1]


def test_unknown_room_wrong_pin_and_janus_down_each_say_what_to_do(janus: JanusServer) -> None:
    async def body(session: JanusSession, room: Room) -> list[str]:
        messages = []
        for bad in (Room(room.url, room.room + 1, room.pin), Room(room.url, room.room, "wrong")):
            with pytest.raises(JanusError) as caught:
                await session.subscribe(bad, display=AVATAR, timeout=1.0)
            messages.append(str(caught.value))
        with pytest.raises(JanusError) as caught:
            await session.subscribe(room, display=AVATAR, timeout=0.5)
        messages.append(str(caught.value))
        return messages

    unknown, wrong_pin, nobody = asyncio.run(with_room(janus, body))
    assert unknown.startswith("no room ") and "create it first" in unknown
    assert wrong_pin.startswith("wrong room pin for room ")
    assert nobody.startswith("no publisher 'avatar' in room ")

    down = "http://127.0.0.1:9/janus"  # the discard port: nothing listens there
    with pytest.raises(JanusDown, match=r"cannot reach Janus at http://127\.0\.0\.1:9/janus .*start Janus"):
        asyncio.run(JanusSession.open(down, timeout=2.0))

    async def no_secret() -> None:
        await JanusSession.open(janus.url)

    with pytest.raises(JanusError, match="refused the API secret"):
        asyncio.run(no_secret())


def test_a_missing_janus_binary_says_how_to_install_it() -> None:
    with pytest.raises(JanusServerError, match="apt-get install janus"):
        JanusServer(JanusServerConfig(binary="janus-that-is-not-installed")).start()
