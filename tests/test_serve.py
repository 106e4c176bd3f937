"""`avatarcam serve` for real: the HTTP server, aiortc peers over loopback, limits, faults, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from streamer.core import stamp
from streamer.core.clock import MonotonicClock
from streamer.core.frames import Frame
from streamer.core.metrics import Metrics
from streamer.pipeline.session import AvatarEntry, AvatarSession, SessionConfig
from streamer.serve.config import ServeConfig
from streamer.serve.http import Server
from streamer.sinks.base import QueuedSink, SinkSpec
from streamer.sinks.null import NullSink
from streamer.sources.base import SourceSpec
from streamer.sources.file import FileSource
from tests.media import first_frames

pytestmark = pytest.mark.slow
DEADLINE = 60.0  # seconds any awaited condition may take on a loaded 2-core machine


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


@contextlib.asynccontextmanager
async def running(config: ServeConfig) -> AsyncIterator[Server]:
    server = Server(config)
    await server.startup()
    try:
        yield server
    finally:
        await server.shutdown()


def shared_config(avatar: Path, clip: Path, **changes: Any) -> ServeConfig:
    base = ServeConfig(avatars=(avatar,), source=SourceSpec("file", str(clip)), sinks=(SinkSpec("null"),), port=0)
    return replace(base, loop=True, **changes)


class Client:
    """An aiortc peer that asks for the avatar and collects what arrives."""

    def __init__(self, send: MediaStreamTrack | None = None) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.frames: list[av.VideoFrame] = []
        self.messages: list[str] = []
        self.arrived = asyncio.Event()
        if send is None:
            self.pc.addTransceiver("video", direction="recvonly")
        else:
            self.pc.addTrack(send)
        channel = self.pc.createDataChannel("control")
        channel.on("message", self.messages.append)
        self.pc.on("track", self._on_track)
        self._pull: asyncio.Task[None] | None = None

    def _on_track(self, track: MediaStreamTrack) -> None:
        async def pull() -> None:
            with contextlib.suppress(Exception):
                while True:
                    self.frames.append(await track.recv())
                    self.arrived.set()

        self._pull = asyncio.ensure_future(pull())

    async def connect(self, url: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer", "options": options or {}}
        async with aiohttp.ClientSession() as http, http.post(url + "offer", json=body) as response:
            answer: dict[str, Any] = await response.json()
            assert response.status == 200, answer
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        return answer

    async def wait_frames(self, n: int) -> None:
        async def enough() -> None:
            while len(self.frames) < n:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(enough(), DEADLINE)

    async def close(self) -> None:
        await self.pc.close()
        if self._pull is not None:
            self._pull.cancel()


async def until(condition: Any, what: str) -> None:
    """Poll `condition()` until true, failing after DEADLINE."""
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def base_url(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}/"


def test_file_source_to_webrtc_peer_and_metrics(tiny_avatar: Path, driver_video: Path) -> None:
    """The avatar (not the input) arrives at a loopback peer with increasing timestamps."""

    async def scenario() -> None:
        async with running(shared_config(tiny_avatar, driver_video)) as server:
            client = Client()
            answer = await client.connect(base_url(server))
            await client.wait_frames(20)
            await until(lambda: any('"stats"' in m for m in client.messages), "a stats message")
            async with aiohttp.ClientSession() as http:
                async with http.get(base_url(server) + "metrics") as r:
                    metrics = await r.text()
                async with http.get(base_url(server) + "api/sessions") as r:
                    sessions = (await r.json())["sessions"]
            await client.close()
        frames = [f.to_ndarray(format="rgb24") for f in client.frames]
        assert frames[0].shape == (64, 64, 3)  # the avatar's resolution, not the 512 px input
        driver = av.VideoFrame.from_ndarray(first_frames(driver_video, 1)[0]).reformat(64, 64)
        assert np.abs(frames[-1].astype(int) - driver.to_ndarray(format="rgb24")).mean() > 10
        pts = [f.pts for f in client.frames]
        assert all(b > a for a, b in itertools.pairwise(pts))
        assert answer["session"] == "main" and answer["peer"].startswith("peer-")
        for series in (
            "avatarcam_frames_total",
            "avatarcam_frames_dropped_total",
            'avatarcam_stage_seconds_bucket{le="0.05",stage="infer"}',
            "avatarcam_end_to_end_seconds_count",
            "avatarcam_sessions 1.0",
        ):
            assert series in metrics
        (main,) = sessions
        assert main["frames"] >= 20 and main["e2e_ms"]["p50"] > 0 and "webrtc" in main["sinks"]

    asyncio.run(scenario())


class StampedClip(MediaStreamTrack):
    """A camera stand-in: real driver frames with the page's frame identifier painted in."""

    kind = "video"

    def __init__(self, frames: list[np.ndarray]) -> None:
        super().__init__()
        self.images = frames
        self.n = 0
        self.sent: list[int] = []

    async def recv(self) -> av.VideoFrame:
        await asyncio.sleep(1 / 25)
        image = self.images[self.n % len(self.images)].copy()
        stamp.write(image, self.n)
        self.sent.append(self.n)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = self.n * 3600, Fraction(1, 90000)
        self.n += 1
        return frame


def test_browser_camera_drives_its_own_session_and_stamps_come_back(tiny_avatar: Path, driver_video: Path) -> None:
    config = ServeConfig(avatars=(tiny_avatar,), source=SourceSpec("webrtc", ""), port=0)
    images = [np.ascontiguousarray(f[64:448, 64:448]) for f in first_frames(driver_video, 25)]

    async def scenario() -> tuple[list[int | None], list[int], dict[str, Any]]:
        async with running(config) as server:
            camera = StampedClip(images)
            client = Client(send=camera)
            await client.connect(base_url(server), {"stamp": True, "codec": "h264"})
            await client.wait_frames(15)
            (session,) = server.service.sessions()
            await until(lambda: session.stats.face_found is not None, "tracking")
            snapshot = session.snapshot()
            await client.close()
            await until(lambda: not server.service.peers, "the peer to be cleaned up")
        return [stamp.read(f.to_ndarray(format="rgb24")) for f in client.frames], camera.sent, snapshot

    tags, sent, snapshot = asyncio.run(scenario())
    echoed = [t for t in tags if t is not None]
    assert len(echoed) >= len(tags) // 2 and set(echoed) <= set(sent)
    assert echoed == sorted(echoed)  # frames come back in order (some may be dropped)
    assert snapshot["source"].startswith("webrtc:") and snapshot["face_found"] is True


def test_bad_requests_get_4xx_and_never_crash(tiny_avatar: Path, driver_video: Path) -> None:
    config = shared_config(tiny_avatar, driver_video, max_sessions=1, offers_per_minute=4)

    async def scenario() -> list[int]:
        statuses = []
        async with running(config) as server, aiohttp.ClientSession() as http:
            url = base_url(server)
            for kwargs in (
                {"data": b"not json"},
                {"json": [1, 2]},
                {"json": {"sdp": "v=0 nonsense", "type": "offer"}},
                {"json": {"sdp": "x", "type": "offer", "options": {"codec": "av1"}}},
                {"data": b"{" + b" " * 300_000 + b"}", "headers": {"Content-Type": "application/json"}},
                {"json": {"sdp": "x", "type": "offer"}, "headers": {"Origin": "http://evil.example"}},
            ):
                async with http.post(url + "offer", **kwargs) as r:
                    statuses.append(r.status)
                    assert "error" in await r.json()
            operator = {"Authorization": f"Bearer {server.config.operator_token}"}
            async with http.post(url + "api/control", json={"action": "explode"}, headers=operator) as r:
                statuses.append(r.status)
            client = Client()
            await client.connect(url)  # the one allowed session
            busy = Client()
            await busy.pc.setLocalDescription(await busy.pc.createOffer())
            body = {"sdp": busy.pc.localDescription.sdp, "type": "offer"}
            async with http.post(url + "offer", json=body) as r:
                statuses.append(r.status)  # over the session limit
            for _ in range(3):
                async with http.post(url + "offer", json=body) as r:
                    statuses.append(r.status)
            async with http.get(url + "healthz") as r:
                statuses.append(r.status)
            await client.close()
            await busy.close()
        return statuses

    statuses = asyncio.run(scenario())
    assert statuses[:7] == [400, 400, 400, 400, 413, 403, 400]
    assert statuses[7] == 503 and 429 in statuses[8:11] and statuses[-1] == 200


def test_token_is_required_beyond_localhost(tiny_avatar: Path, driver_video: Path) -> None:
    """Bound beyond loopback every route needs the token: the page, the API, /offer, /ws and
    /metrics refuse without it. The page opened with `?token=` sets an HttpOnly cookie (an opaque
    value, not the token), and that cookie alone lets the page's own requests through: the API, a
    WebRTC offer, the websocket."""
    config = shared_config(tiny_avatar, driver_video, host="0.0.0.0")

    async def scenario() -> tuple[str, dict[str, Any]]:
        out: dict[str, Any] = {}
        async with running(config) as server:
            token = server.config.token
            assert token and f"token={token}" in server.url
            url = base_url(server)
            client = Client()
            await client.pc.setLocalDescription(await client.pc.createOffer())
            offer = {"sdp": client.pc.localDescription.sdp, "type": "offer"}
            async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as bare:
                for path, headers in (
                    ("", {}),
                    ("?token=wrong", {}),
                    ("api/info", {}),
                    ("api/info?token=wrong", {}),
                    (f"api/info?token={token}", {}),
                    ("api/info", {"Authorization": f"Bearer {token}"}),
                    ("metrics", {}),
                ):
                    async with bare.get(url + path, headers=headers) as r:
                        out[f"GET /{path} {headers}"] = r.status
                async with bare.post(url + "offer", json=offer) as r:
                    out["offer"] = r.status
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await bare.ws_connect(url + "ws")
                out["ws"] = refused.value.status
            # A browser: opens the printed URL, then carries only the cookie (IP hosts need unsafe=True).
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
                async with browser.get(url + f"?token={token}") as r:
                    out["page"] = r.status
                    out["cookie"] = r.cookies.get("avatarcam_token")
                async with browser.get(url + "api/info") as r:
                    out["cookie api/info"] = r.status
                async with browser.post(url + "offer", json=offer) as r:
                    out["cookie offer"] = r.status
                    answer = await r.json()
                await client.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
                await client.wait_frames(1)
                async with browser.ws_connect(url + "ws") as ws:
                    out["cookie ws"] = json.loads((await ws.receive(timeout=DEADLINE)).data)["type"]
            await client.close()
        return token, out

    token, out = asyncio.run(scenario())
    refused = {k: v for k, v in out.items() if k.startswith("GET") and "token=" + token not in k and "Bearer" not in k}
    assert set(refused.values()) == {401}, out
    assert out[f"GET /api/info?token={token} {{}}"] == 200, out
    assert out[f"GET /api/info {{'Authorization': 'Bearer {token}'}}"] == 200, out
    assert (out["offer"], out["ws"]) == (401, 401), out
    assert out["page"] == 200 and out["cookie"] is not None, out
    assert token not in out["cookie"].value  # an opaque value: tests/test_security_sessions.py
    assert out["cookie"]["httponly"] and out["cookie"]["samesite"] == "Strict"
    assert (out["cookie api/info"], out["cookie offer"], out["cookie ws"]) == (200, 200, "snapshot"), out


def test_four_peers_at_once_and_one_vanishing(tiny_avatar: Path, driver_video: Path) -> None:
    async def scenario() -> None:
        # Four peers from one address: this test is about fan-out, not the per-client cap.
        config = shared_config(tiny_avatar, driver_video, max_per_client=4, admission="limit")
        async with running(config) as server:
            clients = [Client() for _ in range(4)]
            for client in clients:
                await client.connect(base_url(server))
            await asyncio.gather(*(c.wait_frames(5) for c in clients))
            gone = clients.pop()
            await gone.close()  # leaves mid-stream
            await until(lambda: len(server.service.peers) == 3, "the server to drop the vanished peer")
            counts = [len(c.frames) for c in clients]
            await asyncio.gather(*(c.wait_frames(n + 5) for c, n in zip(clients, counts, strict=True)))
            for client in clients:
                await client.close()

    asyncio.run(scenario())


class SlowSink(QueuedSink):
    name = "slow"

    def __init__(self, delay: float) -> None:
        super().__init__(MonotonicClock())
        self.delay = delay
        self.latencies: list[float] = []

    def deliver(self, frame: Frame) -> None:
        import time

        time.sleep(self.delay)
        self.latencies.append(time.monotonic() - frame.captured)


def test_a_slow_sink_drops_frames_instead_of_building_latency(tiny_avatar: Path, driver_video: Path) -> None:
    async def scenario() -> SlowSink:
        clock = MonotonicClock()
        session = AvatarSession(
            "s", AvatarEntry.load(tiny_avatar), FileSource(driver_video, clock), SessionConfig(), clock, Metrics()
        )
        slow = SlowSink(0.25)
        session.add_sink(slow)
        session.add_sink(NullSink(clock))
        await session.start()
        await until(lambda: len(slow.latencies) >= 12, "a dozen slow deliveries")
        await session.stop()
        return slow

    slow = asyncio.run(scenario())
    early, late = np.median(slow.latencies[1:5]), np.median(slow.latencies[-4:])
    # An unbounded queue would add ~0.2 s per delivery here; a latest-frame slot adds nothing.
    assert slow.dropped > 0 and late < early + 0.25


def test_shutdown_leaves_no_threads_or_peers(tiny_avatar: Path, driver_video: Path) -> None:
    before = {t.name for t in threading.enumerate()}

    async def scenario() -> None:
        async with running(shared_config(tiny_avatar, driver_video)) as server:
            client = Client()
            await client.connect(base_url(server))
            await client.wait_frames(3)
        assert not server.service.peers and server.service.shared is None
        await client.close()

    asyncio.run(scenario())
    ours = ("drive", "infer", "source", "sink", "camera")
    left = [t.name for t in threading.enumerate() if t.name not in before and any(k in t.name for k in ours)]
    assert left == []


def test_a_stage_that_keeps_failing_ends_its_session_with_a_log(
    tiny_avatar: Path, driver_video: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from streamer.pipeline import session as session_module

    def broken(*_: object) -> None:
        raise RuntimeError("engine exploded")

    monkeypatch.setattr(session_module._Generating, "__call__", broken)
    ended = []

    async def scenario() -> None:
        clock = MonotonicClock()
        source = FileSource(driver_video, clock, loop=True)
        s = AvatarSession("s", AvatarEntry.load(tiny_avatar), source, SessionConfig(), clock, Metrics(), ended.append)
        await s.start()
        await until(lambda: bool(ended), "the session to end")
        await s.stop()

    asyncio.run(scenario())
    assert "engine exploded" in caplog.text and "frames failed in a row" in caplog.text
