"""`avatarcam connect` for real: a real `avatarcam serve --source webrtc` process on loopback, a
real video paced as a camera, the avatar back into the file and virtual-camera sinks; a server
killed mid-stream and restarted on the same port; each bad input's one line and exit code 2."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import av
import numpy as np
import pytest
import pyvirtualcam

import avatarcam_cli
from streamer.connect.client import Client, connect, disclosure
from streamer.connect.config import ConnectConfig
from streamer.connect.stats import ConnectStats
from streamer.core import stamp
from streamer.core.frames import Frame
from streamer.provenance.detect import avatar_digest, detect
from streamer.provenance.identity import DEMO_AVATAR
from streamer.provenance.watermark import identity_digest, read_frame
from streamer.sinks import parse_sink
from streamer.sinks.base import SinkSpec
from streamer.sinks.window import display_problem
from tests.browser import LiveService
from tests.test_streamer import FakeClock

TOKEN = "connect-test-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_args(avatar: Path, port: int = 0) -> list[str]:
    # --admission limit: the capacity model measures this loaded machine and could refuse the one
    # test client; admission is not what these tests are about.
    return ["serve", str(avatar), "--source", "webrtc", "--backend", "torch", "--admission", "limit",
            "--port", str(port), "--token", TOKEN]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _one_omp_thread() -> Iterator[None]:
    """The servers these tests start run one OpenMP thread: on a shared 2-core machine, OpenMP
    barriers between busy cores cost the tiny avatar more than its work (tests/media.py)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def server(tiny_avatar: Path) -> Iterator[LiveService]:
    """One real `avatarcam serve --source webrtc` with an access token, for the module."""
    live = LiveService(_serve_args(tiny_avatar))
    yield live
    live.stop(timeout=180)  # a starved 2-core machine takes its time; the stop is still checked


class RecordingCamera:
    """A pyvirtualcam backend that records when each frame came (registered like the real ones)."""

    frames: ClassVar[list[tuple[float, int]]] = []  # (monotonic time, frame size in bytes)
    formats: ClassVar[list[tuple[int, int]]] = []

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device: str | None) -> None:
        RecordingCamera.formats.append((width, height))

    def device(self) -> str:
        return "recording-camera"

    def native_fourcc(self) -> int | None:
        return None

    def send(self, frame: np.ndarray) -> None:
        RecordingCamera.frames.append((time.monotonic(), frame.size))

    def close(self) -> None:
        pass


@pytest.fixture
def recording_camera() -> Iterator[str]:
    pyvirtualcam.register_backend("connect-recording", RecordingCamera)
    RecordingCamera.frames.clear()
    RecordingCamera.formats.clear()
    yield "connect-recording"
    del pyvirtualcam.camera.BACKENDS["connect-recording"]


class MarkReadingCamera(RecordingCamera):
    """Also reads the watermark off every picture it is handed, as `avatarcam detect` reads one
    frame (the digest, None where no mark is found)."""

    digests: ClassVar[list[int | None]] = []

    def send(self, frame: np.ndarray) -> None:
        super().send(frame)
        width, height = RecordingCamera.formats[-1]
        reading = read_frame(np.ascontiguousarray(frame).reshape(height, width, 3))  # pyvirtualcam hands it flat
        MarkReadingCamera.digests.append(reading.digest if reading.found else None)


@pytest.fixture
def mark_reading_camera() -> Iterator[str]:
    pyvirtualcam.register_backend("connect-marks", MarkReadingCamera)
    RecordingCamera.frames.clear()
    MarkReadingCamera.digests.clear()
    yield "connect-marks"
    del pyvirtualcam.camera.BACKENDS["connect-marks"]


def _config(url: str, video: Path, **changes: Any) -> ConnectConfig:
    base = ConnectConfig(url=url, camera=None, video=video, loop=True, sinks=(SinkSpec("null"),), report_every=0)
    return replace(base, **changes)


async def _until(condition: Any, timeout: float, what: str) -> float:
    """Poll `condition()` until true; the monotonic time it became true."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic()


# ---- without a server: the figures and what the sinks show --------------------------------------


def test_glass_to_glass_takes_each_frame_id_once() -> None:
    clock = FakeClock(10.0)
    stats = ConnectStats(clock)
    sent = Frame(np.zeros((64, 64, 3), np.uint8), 10.0, 0)
    stats.stamped(sent)
    assert stamp.read(sent.image) == sent.tag == 0  # the page's frame-id scheme, painted in place
    back = Frame(np.zeros((64, 64, 3), np.uint8), 10.08, 0, tag=0)
    assert stats.received(back) == pytest.approx(0.08)
    assert stats.received(Frame(back.image, 10.12, 1, tag=0)) is None  # a repeat is no new sample
    assert stats.received(Frame(back.image, 10.13, 2, tag=5)) is None  # an id never sent
    assert stats.glass == [pytest.approx(0.08)] and stats.frames_received == 3


def test_parse_sink_takes_the_service_sinks_and_window() -> None:
    assert [str(parse_sink(s, peers=False)) for s in ("virtualcam", "window", "file:o.mp4", "null")] == [
        "virtualcam",
        "window",
        "file:o.mp4",
        "null",
    ]


def test_disclosure_takes_the_servers_payload_and_only_a_matching_well_formed_identity() -> None:
    identity = {"subject": "me", "consent": "mine", "source_sha256": "ab" * 32, "preset": "tiny", "steps": 3}
    digest = f"{identity_digest(identity):08x}"
    mark, signed = disclosure({"watermark": True, "watermark_digest": digest, "identity": {**identity, "metrics": {}}})
    assert mark is not None and f"{mark.digest:08x}" == digest and signed == identity
    assert disclosure({"watermark": False, "watermark_digest": None, "identity": identity}) == (None, identity)
    other = {**identity, "consent": "not theirs"}
    assert disclosure({"watermark_digest": digest, "identity": other})[1] is None  # does not match the mark
    hostile: list[dict[str, Any]] = [
        {"watermark_digest": 7, "identity": "me"},
        {"watermark_digest": "zz" * 4, "identity": {**identity, "steps": "3"}},
        {"watermark_digest": digest * 2, "identity": {**identity, "subject": None}},
        {"watermark_digest": ["ab"], "identity": [identity]},
    ]
    for info in hostile:
        assert disclosure(info) == (None, None), info


# ---- a real server ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_connect_video_into_a_file_through_a_real_server(
    server: LiveService, driver_video: Path, tmp_path: Path
) -> None:
    """`connect --video clip --sink file:out.mp4 --seconds 10`: >= 150 avatar frames, finite figures."""
    out, report_path = tmp_path / "out.mp4", tmp_path / "connect.json"
    command = [str(Path(sys.executable).with_name("avatarcam")), "connect", server.url, "--video", str(driver_video),
               "--loop", "--sink", f"file:{out}", "--seconds", "10", "--json", str(report_path)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report == json.loads(report_path.read_text())
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    avatar_frames = len(frames) - report["held_frames"] - report["card_frames"]
    assert report["frames_received"] >= 150 and avatar_frames >= 150, (len(frames), report)
    assert frames[-1].shape == (64, 64, 3)  # the avatar's resolution, not the 512 px clip
    glass = report["glass_ms"]
    assert glass["samples"] >= 50 and 0 < glass["p50"] <= glass["p99"] < 10_000
    assert np.isfinite([glass["p50"], glass["p99"], report["audio_delay_ms"], report["fps"]]).all()
    assert report["audio_delay_ms"] >= glass["p50"]  # the video's delay up to the sink
    split = report["split_ms"]  # where it went: joined by frame id with the server's times
    assert split["frames"] >= 0.8 * glass["samples"], (split["frames"], glass["samples"])
    for key in ("uplink", "server", "downlink"):
        assert split[key]["p50"] > 0, split
    total = split["uplink"]["p50"] + split["server"]["p50"] + split["downlink"]["p50"]
    assert total == pytest.approx(split["glass"]["p50"], rel=0.25), split  # medians: not an exact sum
    assert split["clock_error_ms"] is not None and split["clock_error_ms"] < 20
    assert report["rtt_ms"] is not None and report["rtt_ms"]["p50"] >= 0
    assert report["server"]["type"] == "stats" and report["reconnects"] == 0
    lines = [line for line in result.stderr.splitlines() if "glass-to-glass p50" in line]
    assert len(lines) >= 5  # printed once a second


@pytest.mark.slow
def test_virtual_camera_through_a_registered_backend(
    server: LiveService, driver_video: Path, recording_camera: str
) -> None:
    config = _config(server.url, driver_video, sinks=(SinkSpec("virtualcam"),), virtualcam_backend=recording_camera,
                     seconds=3)  # fmt: skip
    report = asyncio.run(connect(config))
    ((width, height),) = RecordingCamera.formats
    assert report["frames_received"] >= 10 and len(RecordingCamera.frames) >= 10
    assert all(size == width * height * 3 for _, size in RecordingCamera.frames)  # pyvirtualcam checked RGB
    assert report["glass_ms"] is not None


@pytest.mark.slow
@pytest.mark.skipif(not DEMO_AVATAR.is_file(), reason="the demo avatar is not in this checkout")
def test_connect_marks_its_camera_and_signs_its_recording(
    driver_video: Path,
    mark_reading_camera: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 24, point 10: the avatar comes back through VP8 at 1 Mbps; connect embeds the mark again
    at the size each sink writes, so detection finds it in >= 99% of the virtual camera's pictures
    (cards included) and of the mp4's frames, and the mp4 carries a valid manifest."""
    pytest.importorskip("c2pa", reason="content credentials need c2pa-python (make setup installs it)")
    monkeypatch.setenv("AVATARCAM_HOME", str(tmp_path / "home"))  # a fresh local signing key
    out = tmp_path / "out.mp4"
    sinks = (SinkSpec("virtualcam"), SinkSpec("file", str(out)))
    # The demo's 256 px: a 64 px frame is one tile of the mark, too little to read it from alone.
    server = LiveService([*_serve_args(DEMO_AVATAR), "--backend", "onnx"])
    try:
        config = _config(server.url, driver_video, sinks=sinks, virtualcam_backend=mark_reading_camera, seconds=4)
        assert config.codec == "vp8" and config.bitrate == 1_000_000
        report = asyncio.run(connect(config))
    finally:
        server.stop(timeout=180)
    expected = avatar_digest(DEMO_AVATAR)

    pictures = MarkReadingCamera.digests
    marked = sum(d == expected for d in pictures)
    assert len(pictures) >= 60 and marked >= 0.99 * len(pictures), (marked, len(pictures), report["card_frames"])
    recording = detect(out, DEMO_AVATAR)
    assert recording["frames"] >= 30 and recording["frames_marked"] >= 0.99 * recording["frames"], recording
    assert recording["avatar"]["match"]
    credentials = recording["credentials"]
    assert credentials["present"] and credentials["intact"] and credentials["generated"], credentials
    assert credentials["matches_watermark"] and credentials["subject"].startswith("cap12")
    assert report["watermark"] == f"{expected:08x}"


@pytest.mark.slow
def test_reconnects_after_the_server_is_killed_and_restarted(
    tiny_avatar: Path, driver_video: Path, recording_camera: str
) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/?token={TOKEN}"
    first = LiveService(_serve_args(tiny_avatar, port))
    restarted: list[LiveService] = []
    config = _config(url, driver_video, sinks=(SinkSpec("virtualcam"),), virtualcam_backend=recording_camera)

    async def scenario() -> dict[str, float]:
        client = Client(config)
        await client.startup()
        main = asyncio.create_task(client.main_loop())
        try:
            await _until(lambda: client.stats.frames_received >= 20, 60, "avatar frames")
            await asyncio.to_thread(first.kill)  # SIGKILL mid-stream: no goodbye to the client
            killed = time.monotonic()
            await _until(lambda: client.state.startswith("reconnecting"), 10, "the client to notice")
            restarted.append(await asyncio.to_thread(LiveService, _serve_args(tiny_avatar, port)))
            up = time.monotonic()
            back = await _until(lambda: (client.stats.last_frame_at or 0) > up, 10, "frames after the restart")
            await _until(lambda: client.stats.frames_received >= 40, 30, "more frames")
            assert not main.done()  # the same client, never restarted
        finally:
            client.should_exit.set()
            await main
            await client.shutdown()
        camera = [t for t, _ in RecordingCamera.frames if killed < t < back]
        gaps = np.diff([killed, *camera, back])
        return {"resumed": back - up, "max_gap": float(gaps.max()), "cards": client.stats.cards,
                "reconnects": client.stats.reconnects}  # fmt: skip

    try:
        result = asyncio.run(scenario())
    finally:
        first.kill()
        for live in restarted:
            live.stop(timeout=180)
    assert result["resumed"] <= 10 and result["reconnects"] >= 1
    # the device never froze: frames kept coming through the outage, and it said so
    assert result["max_gap"] < 0.5 and result["cards"] > 0, result


@pytest.mark.slow
def test_a_reconnect_names_the_old_peer_so_the_server_frees_its_slot(
    tiny_avatar: Path, driver_video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link stalls while the server still holds its peer (its avatar frames stop coming): the
    client reconnects with `options.replaces` set to the old peer's reconnect secret, and the server, whose
    per-client cap is 1, closes that peer and admits the new one at once instead of refusing it."""
    from streamer.connect.link import Link
    from streamer.serve.config import ServeConfig
    from streamer.sources.base import SourceSpec
    from tests.test_serve import running

    offers: list[dict[str, Any]] = []
    post = Link._post_offer

    async def recording(self: Link, body: dict[str, Any]) -> dict[str, Any]:
        answer = await post(self, body)
        offers.append({"options": body["options"], "peer": answer.get("peer"), "reconnect": answer.get("reconnect")})
        return answer

    monkeypatch.setattr(Link, "_post_offer", recording)
    serve = ServeConfig(avatars=(tiny_avatar,), source=SourceSpec("webrtc", ""), sinks=(), port=0,
                        backend="torch", admission="limit", max_per_client=1, connect_timeout=60.0)  # fmt: skip

    async def scenario() -> tuple[list[str], int]:
        async with running(serve) as server:
            client = Client(_config(f"http://127.0.0.1:{server.port}/", driver_video))
            await client.startup()
            main = asyncio.create_task(client.main_loop())
            try:
                await _until(lambda: client.stats.frames_received >= 10, 60, "avatar frames")
                (peer,) = server.service.peers.values()
                assert peer.session is not None
                peer.session.remove_sink(peer.track)  # the server keeps the peer; frames stop
                await _until(lambda: len(offers) >= 2 and client.state == "live", 30, "a reconnect")
                received = client.stats.frames_received
                await _until(lambda: client.stats.frames_received > received + 5, 30, "frames after it")
                return list(server.service.peers), client.stats.reconnects
            finally:
                client.should_exit.set()
                await main
                await client.shutdown()

    peers, reconnects = asyncio.run(scenario())
    assert reconnects >= 1 and "replaces" not in offers[0]["options"]
    assert offers[1]["options"]["replaces"] == offers[0]["reconnect"]
    assert peers == [offers[-1]["peer"]]  # the old peer was closed, not left until ICE gives up


# ---- bad inputs: one line, exit code 2 -----------------------------------------------------------


@pytest.fixture
def not_avatarcam() -> Iterator[str]:
    """Some other web server on loopback."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<h1>Not Found</h1>")

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The CLI configures the root logger: put it back for the other tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("avatarcam: error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-2000:]
    return errors[0]


@pytest.mark.slow
def test_wrong_token_exits_2_with_one_line(server: LiveService, driver_video: Path) -> None:
    command = [str(Path(sys.executable).with_name("avatarcam")), "connect", server.base + "/", "--token", "wrong",
               "--video", str(driver_video), "--sink", "null"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "refused the access token" in _one_error_line(result.stderr)


@pytest.mark.slow
@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize(
    ("target", "sink", "message"),
    [
        ("not-avatarcam", "null", "is not an avatarcam server"),
        ("unreachable", "null", "cannot reach http://127.0.0.1:"),
        ("server", "webrtc", "connect receives the avatar over WebRTC"),
        ("server", "window", "cannot open a window"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(
    target: str,
    sink: str,
    message: str,
    request: pytest.FixtureRequest,
    driver_video: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if sink == "window" and display_problem() is None:
        pytest.skip("this machine has a display: the window would open")
    if target == "server":
        url = request.getfixturevalue("server").url
    elif target == "not-avatarcam":
        url = request.getfixturevalue("not_avatarcam")
    else:
        url = f"http://127.0.0.1:{_free_port()}/"  # nothing listens there
    code = avatarcam_cli.main(["connect", url, "--video", str(driver_video), "--sink", sink, "--seconds", "1"])
    assert code == 2
    assert message in _one_error_line(capsys.readouterr().err)


@pytest.mark.slow
@pytest.mark.usefixtures("restore_logging")
def test_https_server_with_a_self_signed_certificate_needs_cafile(
    tiny_avatar: Path,
    driver_video: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`serve --tls-self-signed`: connect refuses the untrusted certificate with one line that
    names --cafile, and with `--cafile` the server's own certificate the avatar comes back."""
    monkeypatch.setenv("AVATARCAM_HOME", str(tmp_path))  # where serve makes its certificate
    live = LiveService([*_serve_args(tiny_avatar), "--tls-self-signed"])
    try:
        assert live.url.startswith("https://127.0.0.1:")
        cert = tmp_path / "tls" / "self-signed.crt"
        assert cert.is_file()
        code = avatarcam_cli.main(
            ["connect", live.url, "--video", str(driver_video), "--sink", "null", "--seconds", "1"]
        )
        assert code == 2
        line = _one_error_line(capsys.readouterr().err)
        assert "certificate is not trusted" in line and "--cafile" in line
        report = asyncio.run(connect(_config(live.url, driver_video, cafile=cert, seconds=3)))
        assert report["frames_received"] > 0 and report["reconnects"] == 0
    finally:
        live.stop(timeout=180)


@pytest.mark.skipif(display_problem() is not None, reason=f"no preview window here: {display_problem()}")
@pytest.mark.slow
def test_window_sink_shows_the_avatar(server: LiveService, driver_video: Path) -> None:
    report = asyncio.run(connect(_config(server.url, driver_video, sinks=(SinkSpec("window"),), seconds=2)))
    assert report["frames_received"] > 0


def test_config_is_checked_at_the_edge(driver_video: Path) -> None:
    with pytest.raises(ValueError, match="no such file"):
        _config("http://127.0.0.1:1/", Path("nothing.mp4")).resolved()
    with pytest.raises(ValueError, match="give the address"):
        _config("127.0.0.1:8080", driver_video).resolved()
    with pytest.raises(ValueError, match="--cafile is for an https"):
        _config("http://127.0.0.1:1/", driver_video, cafile=driver_video).resolved()
    with pytest.raises(ValueError, match=r"--cafile .*no such file"):
        _config("https://127.0.0.1:1/", driver_video, cafile=Path("absent.pem")).resolved()
    assert _config(f"http://h:1/?token={TOKEN}", driver_video).resolved().token == TOKEN  # as serve prints it
