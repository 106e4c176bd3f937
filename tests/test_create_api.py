"""The /create API for real: roles, uploads and their refusals over HTTP, and one avatar made from
a real clip through the API (tiny preset) by `avatarcam serve`, killed during training and
restarted, then switched to live."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer

from streamer.create import upload as upload_module
from streamer.serve.config import ServeConfig
from streamer.serve.http import Server
from streamer.serve.service import OPERATOR_ONLY
from streamer.sinks.base import SinkSpec
from streamer.sources.base import SourceSpec
from tests.media import first_frames, write_video

pytestmark = pytest.mark.slow
OPERATOR = "operator-credential-of-the-create-tests"
AS_OPERATOR = {"Authorization": f"Bearer {OPERATOR}"}
DEADLINE = 300.0  # seconds a real job may take on a loaded 2-core machine


@contextlib.asynccontextmanager
async def running(avatar: Path, create_dir: Path) -> AsyncIterator[str]:
    config = ServeConfig(
        avatars=(avatar,),
        source=SourceSpec("webrtc", ""),
        sinks=(SinkSpec("webrtc"),),
        port=0,
        operator_token=OPERATOR,
        create_dir=create_dir,
    )
    server = Server(config)
    await server.startup()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.shutdown()


def test_a_viewer_gets_403_on_the_page_and_every_create_route(tiny_avatar: Path, tmp_path: Path) -> None:
    routes = [
        ("GET", "/create"),
        ("GET", "/api/create/info"),
        ("POST", "/api/create/uploads"),
        ("PUT", "/api/create/uploads/0123456789abcdef?offset=0"),
        ("POST", "/api/create/jobs"),
        ("GET", "/api/create/jobs"),
        ("POST", "/api/create/jobs/0123456789ab/cancel"),
        ("POST", "/api/create/coach"),
    ]

    async def scenario() -> tuple[list[tuple[int, str]], dict[str, Any]]:
        async with running(tiny_avatar, tmp_path / "create") as url, aiohttp.ClientSession() as http:
            refused = []
            for method, path in routes:
                async with http.request(method, url + path, json={}) as response:
                    refused.append((response.status, (await response.json())["error"]))
            async with http.get(url + "/api/create/info", headers=AS_OPERATOR) as response:
                assert response.status == 200
                return refused, await response.json()

    refused, info = asyncio.run(scenario())
    assert refused == [(403, OPERATOR_ONLY)] * len(routes)
    assert info["avatars"] == [tiny_avatar.stem] and info["max_seconds"] == 180
    assert "tiny" in info["presets"] and info["preset"] in info["presets"] and info["suggested_minutes"] > 0
    assert info["max_upload_bytes"] == upload_module.MAX_UPLOAD


def test_upload_refusals_over_http(tiny_avatar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> dict[str, tuple[int, dict[str, Any]]]:
        seen: dict[str, tuple[int, dict[str, Any]]] = {}
        async with running(tiny_avatar, tmp_path / "create") as url, aiohttp.ClientSession(headers=AS_OPERATOR) as http:

            async def call(name: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
                async with http.request(method, url + path, **kwargs) as response:
                    seen[name] = (response.status, await response.json())
                    return seen[name][1]

            await call("too big", "POST", "/api/create/uploads", json={"bytes": 10**12, "type": "video/webm"})
            upload = (await call("new", "POST", "/api/create/uploads", json={"bytes": 3000, "type": "video/webm"}))[
                "upload"
            ]
            chunk = f"/api/create/uploads/{upload}"
            await call("first", "PUT", chunk + "?offset=0", data=os.urandom(1000))
            await call("skipped", "PUT", chunk + "?offset=2000", data=os.urandom(1000))
            await call("no offset", "PUT", chunk, data=b"x")
            huge = io.BytesIO(b"x" * (upload_module.MAX_CHUNK + 1))
            await call("huge chunk", "PUT", chunk + "?offset=1000", data=huge)
            await call("status", "GET", chunk)
            await call("incomplete", "POST", "/api/create/jobs", json={"upload": upload, "minutes": 1})
            await call("rest", "PUT", chunk + "?offset=1000", data=os.urandom(2000))
            await call("not a video", "POST", "/api/create/jobs", json={"upload": upload, "minutes": 1})
            await call("gone", "GET", chunk)
            monkeypatch.setattr(upload_module, "free_bytes", lambda path: 10**6)
            await call("disk full", "POST", "/api/create/uploads", json={"bytes": 5000, "type": "video/webm"})
            await call("jobs", "GET", "/api/create/jobs")
        return seen

    seen = asyncio.run(scenario())
    assert seen["too big"][0] == 413 and "limit" in seen["too big"][1]["error"]
    assert seen["first"] == (200, {"received": 1000})
    assert seen["skipped"] == (409, {"error": seen["skipped"][1]["error"], "received": 1000})
    assert seen["no offset"][0] == 400
    assert seen["huge chunk"][0] == 413
    assert seen["status"] == (200, {"received": 1000, "bytes": 3000})
    assert seen["incomplete"][0] == 409 and seen["incomplete"][1]["received"] == 1000
    assert seen["rest"] == (200, {"received": 3000})
    assert seen["not a video"][0] == 415 and seen["not a video"][1]["error"].startswith("that file is not a video")
    assert seen["gone"][0] == 404  # nothing of a refused file is kept
    assert seen["disk full"][0] == 507 and "disk is too full" in seen["disk full"][1]["error"]
    assert seen["jobs"] == (200, {"jobs": []})


def test_the_coach_answers_over_http(tiny_avatar: Path, cap12: Path, tmp_path: Path) -> None:
    """A peer sends a real clip and opens the "coach" channel, as the page does, through
    POST /api/create/coach; coach messages come back. An offer without video is refused."""
    clip = write_video(tmp_path / "preview.mp4", first_frames(cap12, 30))

    async def scenario() -> tuple[dict[str, Any], tuple[int, str]]:
        async with running(tiny_avatar, tmp_path / "create") as url, aiohttp.ClientSession(headers=AS_OPERATOR) as http:
            client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            player = MediaPlayer(str(clip), loop=True)
            client.addTrack(player.video)
            channel = client.createDataChannel("coach")
            first: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            channel.on("message", lambda text: first.done() or first.set_result(json.loads(text)))
            await client.setLocalDescription(await client.createOffer())
            offer = {"sdp": client.localDescription.sdp, "type": "offer", "height": 512}
            try:
                async with http.post(url + "/api/create/coach", json=offer) as response:
                    answer = await response.json()
                    assert response.status == 200, answer
                await client.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
                message = await asyncio.wait_for(first, 60)
            finally:
                await client.close()
                player.video.stop()
            silent = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            silent.createDataChannel("coach")
            await silent.setLocalDescription(await silent.createOffer())
            body = {"sdp": silent.localDescription.sdp, "type": "offer"}
            async with http.post(url + "/api/create/coach", json=body) as response:
                refused = response.status, (await response.json())["error"]
            await silent.close()
            return message, refused

    message, refused = asyncio.run(scenario())
    assert message["face"] is True and {"framing", "coverage", "expressions", "enough"} <= set(message)
    assert refused[0] == 400 and "no video" in refused[1]


def test_a_recording_without_a_face_fails_with_prepares_message(tiny_avatar: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    wall = [np.full((256, 256, 3), 90 + i, np.uint8) + rng.integers(0, 20, (256, 256, 3), np.uint8) for i in range(30)]
    video = write_video(tmp_path / "wall.mp4", wall).read_bytes()  # a real video of a wall: no face in it

    async def scenario() -> dict[str, Any]:
        async with running(tiny_avatar, tmp_path / "create") as url, aiohttp.ClientSession(headers=AS_OPERATOR) as http:
            async with http.post(f"{url}/api/create/uploads", json={"bytes": len(video), "type": "video/mp4"}) as r:
                upload = (await r.json())["upload"]
            async with http.put(f"{url}/api/create/uploads/{upload}?offset=0", data=video) as r:
                assert r.status == 200
            body = {"upload": upload, "minutes": 1, "preset": "tiny"}
            async with http.post(f"{url}/api/create/jobs", json=body) as r:
                job = await r.json()
                assert r.status == 200, job
            end = time.monotonic() + DEADLINE
            while job["state"] not in ("failed", "done") and time.monotonic() < end:
                await asyncio.sleep(0.25)
                async with http.get(f"{url}/api/create/jobs/{job['id']}") as r:
                    job = await r.json()
            return job

    job = asyncio.run(scenario())
    assert job["state"] == "failed" and job["position"] is None, job
    assert job["error"].startswith("video.mp4: no face found in 30 frames; record your face")
    assert [p.name for p in (tmp_path / "create" / job["id"]).iterdir()] == ["job.json"]


# ---- the whole flow, with a server killed during training --------------------------------------------


def serve(avatar: Path, clip: Path, create_dir: Path, log: Path) -> tuple[subprocess.Popen[str], str]:
    """`avatarcam serve` driven by a clip into a null sink, with /create's folder in the test's."""
    command = [sys.executable, "-m", "avatarcam_cli", "serve", str(avatar), "--source", f"file:{clip}", "--loop"]
    command += ["--source-fps", "5", "--sink", "null", "--port", "0", "--create-dir", str(create_dir)]
    command += ["--operator-token", OPERATOR, "--admission", "limit"]
    with log.open("a") as err:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if "serving on" not in line:
        process.wait(timeout=30)
        raise AssertionError(f"serve did not start: {line!r}\n{log.read_text()[-3000:]}")
    return process, line.split("serving on ", 1)[1].strip().rstrip("/")


@contextlib.contextmanager
def ended(process: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


async def wait_job(http: aiohttp.ClientSession, url: str, job_id: str, done: Any, what: str) -> dict[str, Any]:
    end = time.monotonic() + DEADLINE
    while True:
        async with http.get(f"{url}/api/create/jobs/{job_id}") as response:
            job: dict[str, Any] = await response.json()
        if done(job):
            return job
        if job["state"] in ("failed", "cancelled") or time.monotonic() > end:
            raise AssertionError(f"waiting for {what}: {job}")
        await asyncio.sleep(0.25)


def gone(pid: int) -> bool:
    """The process ended (a zombie nobody reaped counts: it runs nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_make_an_avatar_through_the_api_across_a_server_kill(tiny_avatar: Path, cap12: Path, tmp_path: Path) -> None:
    clip = write_video(tmp_path / "selfie.mp4", first_frames(cap12, 60))  # 2.4 s of a real selfie video
    create_dir, log = tmp_path / "create", tmp_path / "serve.log"
    video = clip.read_bytes()

    async def before_the_kill(url: str) -> tuple[dict[str, Any], int]:
        async with aiohttp.ClientSession(headers=AS_OPERATOR) as http:
            async with http.post(f"{url}/api/create/uploads", json={"bytes": len(video), "type": "video/mp4"}) as r:
                upload = (await r.json())["upload"]
            half = len(video) // 2
            for offset, piece in ((0, video[:half]), (half, video[half:])):
                async with http.put(f"{url}/api/create/uploads/{upload}?offset={offset}", data=piece) as r:
                    assert r.status == 200, await r.text()
            body = {"upload": upload, "minutes": 0.75, "preset": "tiny"}
            async with http.post(f"{url}/api/create/jobs", json=body) as r:
                job = await r.json()
                assert r.status == 200, job
            consent = {"subject": "cap12 (test)", "consent": "MIT test data, recorded for tests", "agree": True}
            async with http.post(f"{url}/api/create/jobs/{job['id']}/consent", json=consent) as r:
                assert (await r.json())["consent_given"] is True
            job = await wait_job(http, url, job["id"], lambda j: j["checkpoints"] and j["sample"], "a checkpoint")
            async with http.get(f"{url}/api/create/jobs/{job['id']}/sample.jpg") as r:
                assert r.status == 200 and r.content_type == "image/jpeg"
                strip = cv2.imdecode(np.frombuffer(await r.read(), np.uint8), cv2.IMREAD_COLOR)
                assert strip.shape == (2 * 64, 4 * 64, 3)  # 4 real frames above the avatar's, 64 px (tiny)
        saved = json.loads((create_dir / job["id"] / "job.json").read_text())
        return job, saved["pid"]

    first, url = serve(tiny_avatar, clip, create_dir, log)
    with ended(first):
        job, stage_pid = asyncio.run(before_the_kill(url))
        assert job["state"] == "training" and job["position"] == 0 and job["progress"] < 1, job
        assert isinstance(stage_pid, int)
        first.send_signal(signal.SIGKILL)  # no shutdown at all: the train process is orphaned
        first.wait(timeout=30)

    async def after_the_restart(url: str) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
        async with aiohttp.ClientSession(headers=AS_OPERATOR) as http:
            done = await wait_job(http, url, job["id"], lambda j: j["state"] == "done", "the resumed job")
            async with http.get(f"{url}/api/info") as r:
                info = await r.json()
            control = {"action": "avatar", "value": done["avatar"]}
            async with http.post(f"{url}/api/control", json=control) as r:
                assert r.status == 200, await r.text()
            async with http.get(f"{url}/api/sessions") as r:
                sessions = (await r.json())["sessions"]
        return done, info, sessions

    second, url = serve(tiny_avatar, clip, create_dir, log)
    with ended(second):
        done, info, sessions = asyncio.run(after_the_restart(url))
        assert gone(stage_pid)  # the orphaned stage was ended, not left to race the resumed one
        second.send_signal(signal.SIGINT)
        assert second.wait(timeout=60) == 0

    before = [c["step"] for c in job["checkpoints"]]
    after = [c["step"] for c in done["checkpoints"]]
    assert after[: len(before)] == before and len(after) > len(before)  # resumed from the checkpoint
    assert after == sorted(set(after))
    assert all(c["lpips"] > 0 and c["baseline_lpips"] > 0 for c in done["checkpoints"])
    assert done["avatar"] in info["avatars"] and sessions[0]["avatar"] == done["avatar"]
    avatar_file = create_dir / "avatars" / f"{done['avatar']}.avatar"
    assert stat.S_IMODE(avatar_file.stat().st_mode) == 0o600
    assert [p.name for p in (create_dir / job["id"]).iterdir()] == ["job.json"]  # the recording is gone

    from models.avatar import load_avatar

    made = load_avatar(avatar_file)
    assert made.identity.subject == "cap12 (test)" and made.identity.consent == "MIT test data, recorded for tests"
    assert made.student is not None  # a CPU service gets the real-time student
