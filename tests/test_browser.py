"""The page and the dashboard in a real browser (headless Chromium) against the real service.

Each browser's camera is a y4m clip made at test time from a real driver video; the service is
`avatarcam serve` (or `avatarcam demo`) in a subprocess on a free port, stopped with SIGINT.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamer.core import stamp
from tests.browser import (
    ARTIFACTS,
    Browser,
    LiveService,
    browsers,
    faceless_camera,
    fake_camera,
    require_chromium,
    wait_until,
)

pytestmark = pytest.mark.browser

Open = Callable[..., Browser]
TOKEN = "browser-test-token"

# Downscaled grey pictures of what the page shows and what it sends, below the stamp row.
GRAB_FRAMES = """
const size = 48;
function grey(source, w, h) {
  const canvas = document.createElement("canvas");
  canvas.width = size;
  canvas.height = size;
  const ctx = canvas.getContext("2d");
  const top = Math.max(8, Math.floor(w / 32));
  ctx.drawImage(source, 0, top, w, h - top, 0, 0, size, size);
  const d = ctx.getImageData(0, 0, size, size).data;
  const out = [];
  for (let i = 0; i < d.length; i += 4) out.push((d[i] + d[i + 1] + d[i + 2]) / 3);
  return out;
}
const video = document.getElementById("avatar");
const camera = window.avatarcam.camera.canvas;
return {
  avatar: grey(video, video.videoWidth, video.videoHeight),
  camera: grey(camera, camera.width, camera.height),
};
"""

# Paints stamps with web/stamp.js and returns each canvas as PNG.
JS_WRITES = """
const [width, height, tags, done] = arguments;
import("/static/stamp.js").then((stamp) => {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  done(tags.map((tag) => {
    ctx.fillStyle = "#7f7f7f";
    ctx.fillRect(0, 0, width, height);
    stamp.write(ctx, width, tag);
    return canvas.toDataURL("image/png");
  }));
});
"""

# Reads stamps with web/stamp.js from PNG pictures.
JS_READS = """
const [pngs, done] = arguments;
import("/static/stamp.js").then(async (stamp) => {
  const reader = new stamp.StampReader();
  const ids = [];
  for (const png of pngs) {
    const image = new Image();
    image.src = png;
    await image.decode();
    ids.push(reader.readFrom(image, image.naturalWidth, image.naturalHeight));
  }
  done(ids);
});
"""


@pytest.fixture(scope="module")
def camera(driver_video: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_chromium()
    return fake_camera(driver_video, tmp_path_factory.mktemp("camera") / "camera.y4m")


@pytest.fixture(scope="module")
def chromium() -> None:
    """Skip (saying why) before anything costly is built when there is no browser."""
    require_chromium()


@pytest.fixture(scope="module")
def service(chromium: None, tiny_avatar: Path) -> Iterator[LiveService]:
    # Several browsers on two cores: admit by the session limit, not by measured capacity.
    args = ["serve", str(tiny_avatar), "--source", "webrtc", "--sink", "webrtc", "--port", "0"]
    live = LiveService([*args, "--admission", "limit", "--max-per-client", "4"], probe=True)
    try:
        yield live
    finally:
        code = live.stop()
    assert code == 0, f"the service exited with {code}:\n{live.log()}"


@pytest.fixture
def open_browser() -> Iterator[Open]:
    with browsers() as make:
        yield make


def _png(data_url: str) -> np.ndarray:
    from PIL import Image

    raw = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


def _data_url(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _session(live: LiveService, session_id: str) -> dict[str, Any] | None:
    return next((s for s in live.sessions() if s["id"] == session_id), None)


def _state(live: LiveService, session_id: str) -> str | None:
    session = _session(live, session_id)
    return None if session is None else session["state"]


def _connect(browser: Browser, url: str) -> str:
    """Open the page and wait until it shows avatar frames; its session id."""
    browser.open(url)
    browser.wait_state({"running", "no-face"}, timeout=90)
    browser.wait_value("stat-fps")
    return wait_until(lambda: (s := browser.text("session")) != "–" and s, 10, "the session id")


def test_page_stamps_match_the_services_stamp_codec(service: LiveService, open_browser: Open) -> None:
    """web/stamp.js and streamer/core/stamp.py agree both ways, on clean and on noisy pictures."""
    browser = open_browser(None)
    browser.open(service.base + "/api/info")
    tags = [0, 1, 2, 511, 512, 1000, 1023, 1024 + 77]
    for width, height in ((96, 64), (448, 336), (640, 480)):
        pngs = browser.driver.execute_async_script(JS_WRITES, width, height, tags)
        assert [stamp.read(_png(p)) for p in pngs] == [t % stamp.MODULUS for t in tags]

    rng = np.random.default_rng(7)
    pictures = []
    for width, height in ((96, 96), (256, 256), (448, 336)):
        for tag in (5, 700, 1023):
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            stamp.write(image, tag)
            noise = rng.integers(-25, 26, image.shape)  # what a video codec leaves of flat cells, roughly
            pictures.append(np.clip(image.astype(np.int64) + noise, 0, 255).astype(np.uint8))
    blank = np.full((96, 128, 3), 128, np.uint8)
    pictures.append(blank)
    read_by_page = browser.driver.execute_async_script(JS_READS, [_data_url(p) for p in pictures])
    read_by_service = [stamp.read(p) for p in pictures]
    assert read_by_page == read_by_service
    assert read_by_service[:-1] == [5, 700, 1023] * 3 and read_by_service[-1] is None


def test_page_shows_the_avatar_its_stats_and_glass_to_glass(
    service: LiveService, camera: Path, open_browser: Open
) -> None:
    browser = open_browser(camera)
    session_id = _connect(browser, service.url)
    fps = browser.wait_value("stat-fps")
    e2e = browser.wait_value("stat-e2e")
    wait_until(lambda: browser.value("stat-rtt") is not None, 30, "a round-trip time")
    rtt = browser.value("stat-rtt")
    # The fake camera shows the driver's face in every frame: the page must say so.
    wait_until(lambda: browser.text("face") == "found", 30, "the page to report the face as found")

    frames = browser.js(GRAB_FRAMES)
    avatar, sent = np.array(frames["avatar"]), np.array(frames["camera"])
    assert avatar.std() > 3, "the avatar picture is flat: no avatar frames are shown"
    assert sent.std() > 3, "the camera picture is flat: the fake camera is not being sent"
    difference = float(np.abs(avatar - sent).mean())
    assert difference > 20, f"the returned frames look like the camera's (mean difference {difference:.1f})"

    # Glass-to-glass: the page reads its frame ids back off the avatar and reports the median.
    count = wait_until(lambda: (n := browser.js("return window.avatarcam.glass.count")) >= 60 and n, 120, "60 samples")
    glass = browser.wait_value("stat-glass")
    on_server = wait_until(
        lambda: (s := _session(service, session_id)) and s["glass_ms"] and s, 10, "glass on the server"
    )
    assert on_server["glass_ms"]["p50"] > 0

    # Where it goes: each frame's uplink + server + downlink, joined by frame id with the server's
    # times, on a clock offset from pings; the browser's own figures from getStats().
    rows = wait_until(lambda: (r := browser.js("return window.avatarcam.split.rows.log")) and len(r) >= 30 and r,
                      60, "30 frames split")  # fmt: skip
    glass_count = browser.js("return window.avatarcam.glass.count")
    assert len(rows) >= 0.8 * glass_count - 30, (len(rows), glass_count)  # most frames joined
    for row in rows:
        assert row["uplink"] + row["server"] + row["downlink"] == pytest.approx(row["glass"], abs=0.1), row
    positive = [r for r in rows if r["uplink"] > 0 and r["downlink"] > 0 and r["server"] > 0]
    assert len(positive) >= 0.95 * len(rows), rows[:5]  # a wrong clock offset makes one side negative
    assert browser.js("return window.avatarcam.clock.error") < 20
    server_part = float(np.median([r["server"] for r in rows]))
    reported = wait_until(lambda: (s := _session(service, session_id)) and s["split_ms"] and s, 10, "the split")
    e2e_p50 = reported["e2e_ms"]["p50"]  # the server's own capture-to-sink, over its recent frames
    assert abs(server_part - e2e_p50) <= max(15.0, 0.4 * e2e_p50), (server_part, e2e_p50)
    split = reported["split_ms"]
    assert {"uplink", "server", "downlink", "jitter_buffer", "decode", "encode"} <= split.keys()
    assert split["jitter_buffer"] is not None and split["decode"] is not None and split["encode"] is not None

    browser.screenshot("page.png")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "page-latency.json").write_text(
        json.dumps(
            {
                "test": "tests/test_browser.py::test_page_shows_the_avatar_its_stats_and_glass_to_glass",
                "glass_ms_median": round(glass, 1),
                "glass_samples": count,
                "glass_ms_server": on_server["glass_ms"],
                "split_ms_reported": split,
                "server_e2e_ms": on_server["e2e_ms"],
                "server_stages_ms": on_server["stages_ms"],
                "received_fps": fps,
                "page_e2e_ms": e2e,
                "rtt_ms": rtt,
                "video": browser.text("video-info"),
                "camera": f"{camera.name}: 448x336 y4m from drv_lp_d10_512.mp4",
            },
            indent=2,
        )
    )


def test_dashboard_shows_the_live_sessions_numbers(service: LiveService, camera: Path, open_browser: Open) -> None:
    page = open_browser(camera)
    session_id = _connect(page, service.url)
    dash = open_browser(None)
    dash.open(service.operator_url)
    card = f'[data-session="{session_id}"]'

    def field(name: str) -> float | None:
        raw = dash.js(f"return document.querySelector('{card} [data-field={name}]')?.dataset.value ?? ''")
        return None if raw in ("", None) else float(raw)

    wait_until(lambda: dash.js("return document.getElementById('feed').dataset.state") == "live", 30, "the feed")
    before = _session(service, session_id)
    assert before is not None and before["frames"] > 0
    # More frames than the API reported: the card shows a snapshot newer than that read.
    wait_until(lambda: (field("frames") or 0) > before["frames"], 30, "the card to pass /api/sessions")
    wait_until(lambda: (field("e2e") or 0) > 0 and (field("glass") or 0) > 0, 60, "e2e and glass on the card")
    shown = {name: field(name) for name in ("frames", "dropped", "fps", "e2e", "glass")}
    after = _session(service, session_id)
    assert after is not None
    # The card shows a snapshot taken between the two API reads.
    assert before["frames"] < (shown["frames"] or 0) <= after["frames"]
    assert before["dropped"] <= (shown["dropped"] or 0) <= after["dropped"]
    assert (shown["fps"] or 0) > 0 and (shown["e2e"] or 0) > 0 and (shown["glass"] or 0) > 0
    # The page's split of glass-to-glass, as its report reached the service.
    wait_until(lambda: (field("split") or 0) > 0, 30, "the split on the card")
    text = dash.js(f"return document.querySelector('{card} [data-field=split]').textContent")
    assert re.fullmatch(r"\d+ = \d+ \+ \d+ \+ \d+ ms", text), text

    stages = dash.js(
        f"return Object.fromEntries([...document.querySelectorAll('{card} tr[data-stage]')]"
        ".map((r) => [r.dataset.stage, r.querySelector('.p50').dataset.value]))"
    )
    measured = [k for k, v in after["stages_ms"].items() if v is not None]
    assert measured, "the service measured no stage"
    assert all(float(stages[k]) > 0 for k in measured), stages

    assert (dash.value("total-sessions") or 0) >= 1
    assert (dash.value("total-frames") or 0) >= (shown["frames"] or 0)
    assert dash.value("cpu") is not None and dash.value("rss") is not None
    assert dash.text("gpu") == "none"  # the service runs on the CPU here
    assert dash.js(f"return document.querySelector('{card} [data-field=watermark]').textContent") == "on"
    inked = dash.js(
        "const c = document.getElementById('chart-e2e');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n;"
    )
    assert inked > 500, "the latency chart is empty"
    dash.screenshot("dashboard.png")

    # The operator pauses the session from its card; the service and the page both say so.
    dash.js(f"document.querySelector('{card} [data-action=pause]').click()")
    wait_until(lambda: _state(service, session_id) == "paused", 20, "the session to pause")
    page.wait_state({"paused"}, timeout=20)
    wait_until(
        lambda: dash.js(f"return document.querySelector('{card} [data-field=state]').textContent") == "paused",
        20,
        "the card to show paused",
    )
    dash.js(f"document.querySelector('{card} [data-action=pause]').click()")
    page.wait_state({"running", "no-face"}, timeout=20)

    # The card's calibrate button takes this session's driver's current face as their neutral.
    assert service.calibrations(session_id) == []
    dash.js(f"document.querySelector('{card} [data-action=calibrate]').click()")
    wait_until(lambda: service.calibrations(session_id), 20, "the card's calibration to reach its session")
    assert service.calibrations(session_id) == ["True"]


def test_page_controls_reach_its_session(service: LiveService, camera: Path, open_browser: Open) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser = open_browser(camera)
    session_id = _connect(browser, service.url)
    browser.driver.find_element(By.ID, "pause").click()
    browser.wait_state({"paused"}, timeout=20)
    assert browser.text("pause") == "Resume"
    assert _state(service, session_id) == "paused"
    browser.driver.find_element(By.ID, "pause").click()
    browser.wait_state({"running", "no-face"}, timeout=20)
    assert _state(service, session_id) == "running"

    # Calibrate neutral: the page's own session takes the current face as its neutral.
    assert service.calibrations(session_id) == []
    browser.driver.find_element(By.ID, "calibrate").click()
    wait_until(lambda: service.calibrations(session_id), 20, "the page's calibration to reach its session")
    assert service.calibrations(session_id) == ["True"]

    # This service has no background picture: it refuses "image", and the page says so and
    # puts the menu back.
    Select(browser.driver.find_element(By.ID, "background")).select_by_value("image")
    wait_until(lambda: "refused" in browser.text("notice"), 20, "the refusal to show")
    assert browser.js("return document.getElementById('background').value") == "learned"

    # A codec is fixed at negotiation: choosing another connects again with it. The new offer names
    # the peer it replaces, so the server closes the old one before it answers. To tell that from
    # the page's own close reaching the server, the old connection's close() is made a no-op, as
    # when the network drops it: the server alone can end it (the old peer stays connected).
    browser.js("const pc = window.avatarcam.pc; window.stalePeer = pc; pc.close = () => {};")
    Select(browser.driver.find_element(By.ID, "codec")).select_by_value("h264")
    wait_until(lambda: "H264" in browser.text("video-info").upper(), 90, "H.264 video")
    browser.wait_value("stat-fps")
    new_id = browser.text("session")
    assert new_id != session_id
    assert _session(service, session_id) is None, "the replaced connection's session is still live"
    stale = "return window.stalePeer.connectionState"
    wait_until(lambda: browser.js(stale) in ("disconnected", "failed"), 30, "the server to end the old connection")
    browser.js("RTCPeerConnection.prototype.close.call(window.stalePeer);")


def test_page_says_when_no_face_is_found(service: LiveService, open_browser: Open, tmp_path: Path) -> None:
    browser = open_browser(faceless_camera(tmp_path / "faceless.y4m"))
    browser.open(service.url)
    browser.wait_state({"no-face"}, timeout=90)
    assert browser.text("face") == "not found"
    assert "Face not found" in browser.js(
        "return getComputedStyle(document.querySelector('.stage'), '::after').content"
    )


def test_two_browsers_drive_two_sessions(service: LiveService, camera: Path, open_browser: Open) -> None:
    first, second = open_browser(camera), open_browser(camera)
    ids = [_connect(first, service.url), _connect(second, service.url)]
    assert ids[0] != ids[1]
    for browser in (first, second):
        browser.wait_value("stat-fps")
    listed = {s["id"]: s for s in service.sessions()}
    assert set(ids) <= set(listed)
    assert all(listed[i]["frames"] > 0 for i in ids)

    first.quit()  # closing a page ends its session, and only its own
    wait_until(lambda: _session(service, ids[0]) is None, 60, "the closed page's session to end")
    assert _session(service, ids[1]) is not None
    assert second.state() in {"running", "no-face"}


@pytest.mark.parametrize(("case", "state"), [("absent", "no-camera"), ("denied", "camera-denied")])
def test_page_says_when_it_has_no_camera(
    service: LiveService, camera: Path, open_browser: Open, case: str, state: str
) -> None:
    if case == "absent" and any(Path("/dev").glob("video*")):
        pytest.skip("this machine has a camera device: Chromium would use it")
    browser = open_browser(None if case == "absent" else camera, deny_camera=case == "denied")
    browser.open(service.url)
    browser.wait_state({state}, timeout=30)
    banner = browser.text("banner")
    assert ("denied" in banner) if case == "denied" else ("No camera" in banner)
    assert browser.js("return !document.getElementById('retry').hidden")
    assert browser.text("session") == "–"


def test_page_waits_while_busy_then_reconnects_and_says_when_the_server_is_down(
    tiny_avatar: Path, camera: Path, open_browser: Open
) -> None:
    """A one-session service with an access token: the second page waits (busy) and gets in
    when the first leaves; when the service stops, the page says so and keeps retrying."""
    require_chromium()
    args = ["serve", str(tiny_avatar), "--source", "webrtc", "--port", "0", "--max-sessions", "1", "--token", TOKEN]
    live = LiveService(args)
    try:
        assert f"token={TOKEN}" in live.url
        first, second = open_browser(camera), open_browser(camera)
        dash = open_browser(None)
        dash.open(live.operator_url)
        _connect(first, live.url)
        second.open(live.url)
        second.wait_state({"busy"}, timeout=60)
        assert "busy" in second.text("banner").lower()

        first.quit()
        second.wait_state({"running", "no-face"}, timeout=90)
        second.wait_value("stat-fps")
        wait_until(lambda: dash.js("return document.querySelectorAll('[data-session]').length") >= 1, 30, "a card")
        assert dash.js("return document.getElementById('feed').dataset.state") == "live"
    finally:
        code = live.stop()
    assert code == 0, f"the service exited with {code}:\n{live.log()}"
    second.wait_state({"reconnecting"}, timeout=30)
    wait_until(lambda: "unreachable" in second.text("banner"), 30, "the page to say the service is unreachable")
    second.screenshot("page-server-down.png")
    wait_until(
        lambda: dash.js("return document.getElementById('feed').dataset.state") == "reconnecting",
        30,
        "the dashboard to say its feed is lost",
    )


def test_page_shows_the_shared_demo_stream_without_a_camera(open_browser: Open) -> None:
    require_chromium()
    live = LiveService(["demo", "--port", "0", "--no-virtualcam"])
    try:
        browser = open_browser(None)  # no camera at all: the demo's source is the service's clip
        session_id = _connect(browser, live.url)
        assert _session(live, session_id) is not None, "the page names a session the service does not list"
        assert "shared source" in browser.text("mode")
        assert browser.text("stat-glass") == "n/a"
        assert "not available" in browser.text("glass-note")
        assert browser.text("watermark") == "invisible watermark: on"  # the demo avatar is always marked
        assert not browser.js("return document.getElementById('self').checkVisibility()")
        assert browser.js("return document.getElementById('controls-note').checkVisibility()")
        browser.screenshot("page-demo.png")
    finally:
        code = live.stop()
    assert code == 0, f"the service exited with {code}:\n{live.log()}"
