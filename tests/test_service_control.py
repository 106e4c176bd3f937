"""The service's controls and its edges, for real (a real server on loopback, the real session):
`calibrate` and `avatar` over `/api/control` and `/ws`, SIGTERM shutdown within its timeout, and
no STUN server unless one is configured."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from streamer.serve.http import Server
from streamer.sources.base import SourceSpec
from tests.test_serve import DEADLINE, Client, base_url, running, shared_config, until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _reference(server: Server) -> np.ndarray:
    """The shared session's driver neutral (blendshapes) that calibration replaces."""
    (session,) = server.service.sessions()
    assert session._driving is not None
    return session._driving.driver.retarget.reference.blendshapes.copy()


def test_calibrate_and_avatar_over_the_api_and_the_websocket(
    tiny_avatar: Path, driver_video: Path, tmp_path: Path
) -> None:
    second = shutil.copy(tiny_avatar, tmp_path / "second.avatar")
    config = shared_config(tiny_avatar, driver_video, avatars=(tiny_avatar, Path(second)))

    async def scenario() -> None:
        async with running(config) as server:
            operator = {"Authorization": f"Bearer {server.config.operator_token}"}  # controls are the operator's
            async with aiohttp.ClientSession(headers=operator) as http:
                await controls(server, http)

    async def controls(server: Server, http: aiohttp.ClientSession) -> None:
        url = base_url(server)
        await until(lambda: any(s.snapshot().get("frames", 0) > 12 for s in server.service.sessions()), "frames")
        (session,) = server.service.sessions()
        assert session.snapshot()["avatar"] == tiny_avatar.stem

        # calibrate over HTTP: the driver's neutral becomes their current face
        before = _reference(server)
        async with http.post(url + "api/control", json={"action": "calibrate"}) as r:
            assert r.status == 200 and await r.json() == {"ok": True, "calibrated": 1}
        calibrated = _reference(server)
        assert np.abs(calibrated - before).max() > 1e-3

        # avatar over HTTP, then back over the websocket; an unknown name is refused on both
        async with http.post(url + "api/control", json={"action": "avatar", "value": "second"}) as r:
            assert r.status == 200 and (await r.json())["ok"] is True
        assert session.snapshot()["avatar"] == "second"
        async with http.post(url + "api/control", json={"action": "avatar", "value": "nobody"}) as r:
            assert r.status == 400 and "unknown avatar" in (await r.json())["error"]
        frames = session.snapshot()["frames"]
        await until(lambda: session.snapshot()["frames"] > frames + 5, "frames of the second avatar")

        async with http.ws_connect(url + "ws") as ws:
            assert "sessions" in json.loads((await ws.receive(timeout=DEADLINE)).data)

            async def control(**message: Any) -> dict[str, Any]:
                await ws.send_str(json.dumps({"type": "control", **message}))
                while True:  # snapshots arrive twice a second between the replies
                    reply: dict[str, Any] = json.loads((await ws.receive(timeout=DEADLINE)).data)
                    if reply.get("type") in ("control", "error"):
                        return reply

            assert await control(action="avatar", value=tiny_avatar.stem) == {"type": "control", "ok": True}
            assert session.snapshot()["avatar"] == tiny_avatar.stem
            assert (await control(action="avatar", value="nobody"))["type"] == "error"
            await asyncio.sleep(1.0)  # the face moves on: a second calibration takes a new neutral
            assert await control(action="calibrate") == {"type": "control", "ok": True, "calibrated": 1}
            assert np.abs(_reference(server) - calibrated).max() > 1e-4

    asyncio.run(scenario())


def test_sigterm_stops_the_service_within_its_shutdown_timeout(tiny_avatar: Path, driver_video: Path) -> None:
    command = [sys.executable, "-m", "avatarcam_cli", "serve", str(tiny_avatar), "--source", f"file:{driver_video}"]
    command += ["--loop", "--sink", "null", "--sink", "webrtc", "--port", "0"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    try:
        line = process.stdout.readline()
        assert "serving on" in line, process.stderr.read() if process.stderr else line
        url = line.split("serving on", 1)[1].strip()

        async def terminate_with_a_peer() -> tuple[str, float]:
            """A WebRTC peer receives the avatar while SIGTERM arrives: shutdown closes it too."""
            client = Client()
            try:
                await client.connect(url)
                await client.wait_frames(10)
                sent = time.monotonic()
                process.send_signal(signal.SIGTERM)
                _, err = await asyncio.to_thread(process.communicate, timeout=30)
                return err, time.monotonic() - sent
            finally:
                await client.close()

        err, took = asyncio.run(terminate_with_a_peer())
    finally:
        process.kill()
    assert process.returncode == 0, err[-2000:]
    assert took < 5.0 + 2.0, f"SIGTERM took {took:.1f} s; the shutdown timeout is 5 s"
    assert "cancelling the rest" not in err  # closed in time, nothing had to be cancelled


def test_no_stun_server_unless_one_is_configured(
    tiny_avatar: Path, driver_video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the service's peer connections are given to contact (aiortc's own default is a
    public Google STUN host): nothing by default, exactly the configured URL otherwise."""
    import aiortc

    from streamer.serve import service as service_module

    seen: list[list[str]] = []
    real = aiortc.RTCPeerConnection

    def recording(configuration: aiortc.RTCConfiguration | None = None) -> aiortc.RTCPeerConnection:
        servers = None if configuration is None else configuration.iceServers  # None: aiortc picks
        seen.append(["(aiortc default)"] if servers is None else [s.urls for s in servers])
        return real(configuration)

    monkeypatch.setattr(service_module, "RTCPeerConnection", recording)

    async def one_peer(**changes: Any) -> None:
        async with running(shared_config(tiny_avatar, driver_video, **changes)) as server:
            client = Client()
            try:
                await client.connect(base_url(server))
            finally:
                await client.close()

    asyncio.run(one_peer())
    asyncio.run(one_peer(ice_servers=("stun:stun.example.org:3478",)))
    assert seen == [[], ["stun:stun.example.org:3478"]]

    # The same for `avatarcam connect`'s own peer connection (its link to a remote serve).
    from streamer.connect import link as connect_module
    from streamer.connect.client import Client as ConnectClient
    from tests.test_connect import _config, _until

    seen.clear()
    monkeypatch.setattr(connect_module, "RTCPeerConnection", recording)

    async def one_link(**changes: Any) -> None:
        serve = replace(shared_config(tiny_avatar, driver_video), source=SourceSpec("webrtc", ""), sinks=())
        async with running(serve) as server:
            client = ConnectClient(_config(base_url(server), driver_video, **changes))
            await client.startup()
            main = asyncio.create_task(client.main_loop())
            try:
                await _until(lambda: client.stats.frames_received >= 1, 60, "an avatar frame")
            finally:
                client.should_exit.set()
                await main
                await client.shutdown()

    asyncio.run(one_link())
    asyncio.run(one_link(ice_servers=("stun:stun.example.org:3478",)))
    # seen also holds the server's peers (its patch is still on, and it has no ICE servers): [].
    assert [urls for urls in seen if urls] == [["stun:stun.example.org:3478"]] and seen.count([]) >= 3, seen
