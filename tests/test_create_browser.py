"""The create page (/create) in a real browser against the real service: record with coaching,
upload, train (tiny preset, about a minute), consent, go live; a job that survives a reload and a
crash of the service; bad input and a viewer refused, each with its message on the page.

The camera is a y4m clip made at test time from a shared video (Chromium loops it); the service is
`avatarcam serve` in a subprocess with its cache ($AVATARCAM_HOME) in a temporary folder. The
screenshots land in test-artifacts/create-*.jpg; docs/create.md shows copies of them.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.browser import (
    ARTIFACTS,
    Browser,
    LiveService,
    browsers,
    faceless_camera,
    require_chromium,
    wait_until,
    write_y4m,
)
from tests.media import write_video

pytestmark = pytest.mark.browser

OPERATOR = "create-test-operator"
MINUTES = 1.0  # the training budget of the whole-flow test


# ---- media ---------------------------------------------------------------------------------------


def _frames(video: Path, start: float, seconds: float) -> tuple[list[np.ndarray], tuple[int, int]]:
    """RGB frames of the video from `start` for `seconds`; its frame rate."""
    import av

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or 25
        frames = [
            frame.to_ndarray(format="rgb24")
            for frame in container.decode(stream)
            if frame.time is not None and start <= frame.time < start + seconds
        ]
    return frames, (rate.numerator, rate.denominator)


def _framed(rgb: np.ndarray) -> np.ndarray:
    """A 512 px face crop as a 640x480 webcam frame with room around the head: scaled to 400 px
    and extended with its edges, so the 1.5x portrait crop fits and the face stays over 128 px."""
    import cv2

    small = cv2.resize(rgb, (400, 400), interpolation=cv2.INTER_AREA)
    return cv2.copyMakeBorder(small, 40, 40, 120, 120, cv2.BORDER_REPLICATE)


def _close(rgb: np.ndarray, zoom: float = 2.2) -> np.ndarray:
    """A centred 4:3 crop `zoom` times closer: the face overflows the frame."""
    h, w = rgb.shape[:2]
    crop_h = int(min(h, w * 3 // 4) / zoom)
    crop_w = crop_h * 4 // 3
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    return rgb[top : top + crop_h, left : left + crop_w]


@pytest.fixture(scope="module")
def chromium() -> None:
    """Skip (saying why) before anything costly is built when there is no browser."""
    require_chromium()


@pytest.fixture(scope="module")
def media(chromium: None, cap12: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The cameras and files of these tests, made once from cap12 (a man in a room, MIT): its
    seconds 12-26, where he turns and nods his head most (yaw 18, pitch 24 degrees)."""
    root = tmp_path_factory.mktemp("create-media")
    frames, fps = _frames(cap12, 12.0, 14.0)
    framed = [_framed(f) for f in frames]
    faceless = root / "faceless.y4m"
    faceless_camera(faceless, seconds=3.0, width=480, height=360)
    (root / "notes.mp4").write_text("a shopping list, not a video\n")
    return {
        "camera": write_y4m(root / "camera.y4m", framed, 640, 480, fps),
        "close": write_y4m(root / "close.y4m", [_close(f) for f in frames[:50]], 480, 360, fps),
        "faceless": faceless,
        "clip": write_video(root / "clip.mp4", framed[: 10 * 25], fps=25),
        "notes": root / "notes.mp4",
    }


# ---- the service ---------------------------------------------------------------------------------


def _serve(avatar: Path, driver: Path, folder: Path, port: int = 0) -> LiveService:
    """The service as `avatarcam demo` runs it (a shared file source, the page's stream), small;
    the create page's uploads, jobs and avatars in `folder`."""
    args = ["serve", str(avatar), "--source", f"file:{driver}", "--loop", "--source-fps", "5", "--sink", "webrtc"]
    args += ["--port", str(port), "--operator-token", OPERATOR, "--admission", "limit", "--create-dir", str(folder)]
    return LiveService(args)


def _call(live: LiveService, method: str, path: str, body: Any = None, *, operator: bool = True) -> tuple[int, Any]:
    """(status, JSON answer) of one request, with the operator's credential unless told not to."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {OPERATOR}"} if operator else {})
    request = urllib.request.Request(live.base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def require_create(live: LiveService) -> None:
    """Skip, saying why, when this build of the service lacks the create routes."""
    status, _ = _call(live, "GET", "/api/create/info")
    if status == 404:
        pytest.skip("the service answers 404 on /api/create/info: streamer/serve/create_routes.py is absent")


def require_coach() -> None:
    """Skip, saying why, when the coach's WebRTC end is absent (the service then answers
    /api/create/coach with 501 and the page records without coaching)."""
    for module in ("streamer.create.coach", "streamer.create.preview"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is absent: the service answers /api/create/coach with 501 (no coaching)")


@pytest.fixture(scope="module")
def service(
    chromium: None, tiny_avatar: Path, driver_video: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveService]:
    live = _serve(tiny_avatar, driver_video, tmp_path_factory.mktemp("create-dir"))
    try:
        yield live
    finally:
        code = live.stop()
    assert code == 0, f"the service exited with {code}:\n{live.log()}"


@pytest.fixture
def open_browser() -> Iterator[Any]:
    with browsers() as make:
        yield make


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---- the page ------------------------------------------------------------------------------------


def _operator_page(browser: Browser, live: LiveService) -> None:
    """Open /create as the operator: the dashboard's link sets the operator's cookie."""
    browser.open(live.operator_url)
    wait_until(lambda: browser.js("return document.getElementById('create-link')?.href"), 20, "the dashboard's link")
    browser.open(live.base + "/create")
    wait_until(lambda: browser.js("return document.body.dataset.step") != "loading", 30, "the page to load")


def _create(browser: Browser, expression: str) -> Any:
    return browser.js(f"return window.avatarcamCreate.{expression}")


def _step(browser: Browser) -> str:
    return str(browser.js("return document.body.dataset.step"))


def _error(browser: Browser) -> str:
    return str(browser.js("const e = document.getElementById('error'); return e.hidden ? '' : e.textContent"))


def _job(browser: Browser) -> dict[str, Any]:
    job: dict[str, Any] | None = _create(browser, "job")
    return job or {}


def _wait_job(browser: Browser, states: set[str], timeout: float, what: str = "") -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        job = _job(browser)
        return job if job.get("state") in states else None

    try:
        return wait_until(reached, timeout, what or f"the job to reach {sorted(states)}", every=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; job {_job(browser)}; error {_error(browser)!r}\n{browser.console()}") from None


def _choose_file(browser: Browser, path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.driver.find_element(By.ID, "file").send_keys(str(path))


def _train(browser: Browser, minutes: float) -> None:
    browser.js(
        "document.getElementById('minutes').value = arguments[0];"
        "document.getElementById('preset').value = 'tiny';"
        "document.getElementById('train').click();",
        str(minutes),
    )


def _consent(browser: Browser, subject: str) -> None:
    browser.js(
        "document.getElementById('subject').value = arguments[0];"
        "document.getElementById('consent-text').value = arguments[1];"
        "document.getElementById('agree').checked = true;"
        "document.getElementById('give-consent').click();",
        subject,
        "I agree to this avatar of me being used in the avatarcam tests.",
    )


def _shoot(browser: Browser, element_id: str | None, name: str) -> Path:
    """A JPEG of one part of the page (None: the whole window) under test-artifacts/."""
    from PIL import Image
    from selenium.webdriver.common.by import By

    ARTIFACTS.mkdir(exist_ok=True)
    raw = ARTIFACTS / f"{name}.png"
    if element_id is None:
        browser.driver.save_screenshot(str(raw))
    else:
        browser.driver.find_element(By.ID, element_id).screenshot(str(raw))
    image = Image.open(raw).convert("RGB")
    if image.width > 1000:
        image = image.resize((1000, round(image.height * 1000 / image.width)), Image.Resampling.LANCZOS)
    out = ARTIFACTS / f"{name}.jpg"
    image.save(out, quality=82, optimize=True)
    raw.unlink()
    return out


# A fetch that loses answers: the 2nd PUT reaches the service but its answer is lost, the 3rd never
# leaves, the 4th reaches it, its answer is lost and so is the next GET of the upload, so the 5th is
# sent from a stale offset and the service answers 409 with what it holds.
FLAKY_FETCH = """
const real = window.fetch.bind(window);
const faults = (window.putFaults = { puts: 0, lost: 0, conflicts: 0, failGet: false });
window.fetch = async (url, init = {}) => {
  if (init.method === "PUT") {
    const n = ++faults.puts;
    if (n === 3) { faults.lost++; throw new TypeError("the connection dropped (test)"); }
    const response = await real(url, init);
    if (response.status === 409) faults.conflicts++;
    if (n === 2 || n === 4) {
      faults.lost++;
      faults.failGet = n === 4;
      throw new TypeError("the answer was lost (test)");
    }
    return response;
  }
  if (faults.failGet && String(url).includes("/api/create/uploads/")) {
    faults.failGet = false;
    throw new TypeError("still offline (test)");
  }
  return real(url, init);
};
"""


def _pose_and_bars(page: Browser) -> tuple[int, dict[str, float]]:
    filled = int(page.js("return Number(document.getElementById('pose-grid').dataset.filled || 0)"))
    bars = page.js(
        "return Object.fromEntries([...document.querySelectorAll('#bars [data-key]')]"
        ".map((b) => [b.dataset.key, Number(b.dataset.value)]))"
    )
    return filled, bars


def test_create_coach_fills_the_pose_map_while_recording(
    service: LiveService, media: dict[str, Path], open_browser: Any
) -> None:
    require_create(service)
    require_coach()
    page = open_browser(media["camera"])
    _operator_page(page, service)
    # The coach starts with the camera, before the recording (framing advice).
    wait_until(lambda: _create(page, "coachMessages") >= 2, 90, "the coach's first messages")
    assert _create(page, "last")["face"] is True
    page.js("document.getElementById('record').click()")
    wait_until(lambda: _step(page) == "recording", 20, "the recording to start")
    before = _create(page, "coachMessages")
    filled: list[int] = []
    bars: dict[str, float] = {}
    started = time.monotonic()
    while time.monotonic() - started < 14:
        count, bars = _pose_and_bars(page)
        filled.append(count)
        if len(filled) == 22:  # ~11 s in
            _shoot(page, "record-step", "create-record")
        time.sleep(0.5)
    # The head turns in cap12: the pose map fills as the recording goes on (it is placed around the
    # middle of the range covered so far, so a cell may move as that range grows).
    assert filled[0] <= 1 and max(filled) >= 3 and filled[-1] > filled[0], filled
    assert set(bars) == {"jawOpen", "smile", "blink", "brows", "lips"} and max(bars.values()) > 0, bars
    assert _create(page, "coachMessages") - before >= 14 * 2, "fewer than 2 coach messages a second"
    page.js("document.getElementById('stop').click()")
    wait_until(lambda: _step(page) == "uploaded", 120, "the upload to finish")
    assert _create(page, "coach") is None, "the coach still runs after the recording"


def test_create_coach_says_move_back_when_the_face_is_too_large(
    service: LiveService, media: dict[str, Path], open_browser: Any
) -> None:
    require_create(service)
    require_coach()
    page = open_browser(media["close"])
    _operator_page(page, service)

    def advice() -> list[str] | None:
        last = _create(page, "last")
        return last["framing"] if last and "move back" in last["framing"] else None

    wait_until(advice, 90, "the coach to say move back")
    wait_until(lambda: "move back" in page.text("framing"), 10, "the page to show it")


def test_create_refuses_bad_input_with_one_clear_message(
    service: LiveService, media: dict[str, Path], open_browser: Any
) -> None:
    require_create(service)
    # A viewer (no operator credential) is not offered the link, and is refused the page and the API.
    viewer = open_browser(None)
    viewer.open(service.base + "/")
    wait_until(lambda: viewer.js("return document.body.dataset.state") != "loading", 60, "the viewer's page")
    assert viewer.js("return document.getElementById('create-link').hidden") is True
    viewer.open(service.base + "/create")
    refusal = viewer.js("return document.body.textContent")
    assert "operator" in refusal and "record-step" not in viewer.driver.page_source, refusal
    status, answer = _call(service, "POST", "/api/create/jobs", {"upload": "0" * 16, "minutes": 1}, operator=False)
    assert status == 403 and "operator" in answer["error"], (status, answer)
    status, answer = _call(service, "GET", "/api/create/info", operator=False)
    assert status == 403, (status, answer)

    # Not a video, chosen in the page's file picker: uploaded, then refused with its message.
    page = open_browser(None)
    _operator_page(page, service)
    _choose_file(page, media["notes"])
    wait_until(lambda: _step(page) == "uploaded", 60, "the upload of the text file")
    _train(page, 1)
    wait_until(lambda: page.js("return document.getElementById('error').dataset.status") == "415", 30, "415")
    assert "not a video" in _error(page), _error(page)
    # Nothing else is lost: the page is ready for a recording or another file.
    assert _step(page) == "ready" and not page.js("return document.getElementById('file').disabled")
    _shoot(page, "error", "create-error")

    # Over the size limit: the service says so before a byte is sent, and the page shows it.
    info = _call(service, "GET", "/api/create/info")[1]
    too_big = info["max_upload_bytes"] + 1
    status, answer = _call(service, "POST", "/api/create/uploads", {"bytes": too_big, "type": "video/webm"})
    assert status == 413 and "limit" in answer["error"], (status, answer)
    page.js(
        "const input = document.getElementById('file');"
        "const big = new File([new Uint8Array(8)], 'big.webm', { type: 'video/webm' });"
        "Object.defineProperty(big, 'size', { value: arguments[0] });"  # a size the page declares
        "const files = new DataTransfer(); files.items.add(big); input.files = files.files;"
        "input.dispatchEvent(new Event('change'));",
        too_big,
    )
    wait_until(lambda: page.js("return document.getElementById('error').dataset.status") == "413", 30, "413")
    assert _error(page) == answer["error"]


def test_create_recording_without_a_face_fails_with_prepares_message(
    service: LiveService, media: dict[str, Path], open_browser: Any
) -> None:
    require_create(service)
    page = open_browser(media["faceless"])
    _operator_page(page, service)
    wait_until(lambda: not page.js("return document.getElementById('record').disabled"), 30, "the camera")
    page.js("document.getElementById('record').click()")
    time.sleep(4)
    page.js("document.getElementById('stop').click()")
    wait_until(lambda: _step(page) == "uploaded", 60, "the upload")
    _train(page, 1)
    failed = _wait_job(page, {"failed", "done", "cancelled"}, 300, "prepare to give up")
    assert failed["state"] == "failed" and failed["error"], failed
    assert "face" in failed["error"].lower(), failed["error"]
    wait_until(lambda: _error(page) == failed["error"], 10, "the page to show prepare's message")
    assert failed["avatar"] is None and failed["checkpoints"] == []


def test_create_whole_flow_records_trains_and_goes_live(
    service: LiveService, media: dict[str, Path], open_browser: Any
) -> None:
    require_create(service)
    page = open_browser(media["camera"])
    # The operator's pages link to /create (a viewer's do not: see the refusal test).
    page.open(service.operator_url)
    wait_until(lambda: page.js("return !document.getElementById('create-link').hidden"), 20, "the dashboard's link")
    page.open(service.base + "/")
    wait_until(lambda: page.js("return !document.getElementById('create-link').hidden"), 30, "the page's link")
    page.js("document.getElementById('create-link').click()")
    wait_until(lambda: not page.js("return document.getElementById('record')?.disabled ?? true"), 60, "the camera")
    page.js("window.avatarcamCreate.putBytes = 200000;" + FLAKY_FETCH)

    page.js("document.getElementById('record').click()")
    time.sleep(15)
    page.js("document.getElementById('stop').click()")
    wait_until(lambda: _step(page) == "uploaded", 120, "the upload to finish")
    recorded = page.js(
        "const r = window.avatarcamCreate.recorded; return { bytes: r.bytes, seconds: r.seconds, type: r.type }"
    )
    uploader = page.js(
        "const u = window.avatarcamCreate.uploader; return { id: u.id, total: u.total, retries: u.retries }"
    )
    faults = page.js("return window.putFaults")
    # Three lost exchanges and a stale offset, and every recorded byte is on the service.
    assert faults["lost"] == 3 and faults["conflicts"] >= 1, faults
    assert uploader["retries"] >= 2
    status, held = _call(service, "GET", f"/api/create/uploads/{uploader['id']}")
    assert status == 200 and held["received"] == recorded["bytes"] == uploader["total"], (held, recorded)
    assert recorded["seconds"] > 14 and recorded["type"].startswith("video/webm")

    _train(page, MINUTES)
    job = _wait_job(page, {"training"}, 300, "training to start (prepare done)")
    assert job["preset"] == "tiny" and job["minutes"] == MINUTES
    # The browser's WebM states no duration; prepare counts its frames instead.
    assert not any(" 0 s long" in w for w in job["warnings"]), job["warnings"]
    assert not any("fills the frame" in w for w in job["warnings"]), job["warnings"]
    wait_until(lambda: "left of a" in page.text("job-eta"), 60, "the time left against the budget")
    _consent(page, "cap12 (create test)")
    wait_until(lambda: _job(page).get("consent_given"), 20, "consent to be recorded")
    wait_until(lambda: len(_job(page).get("checkpoints", [])) >= 1, 300, "a checkpoint")
    wait_until(lambda: page.js("return document.getElementById('sample').naturalWidth > 0"), 30, "the sample strip")
    point = _job(page)["checkpoints"][-1]
    wait_until(
        lambda: page.js(f"return !!document.querySelector(`#checkpoints tr[data-step='{point['step']}']`)"),
        10,
        "the checkpoint's row",
    )
    row = page.js(
        "const row = document.querySelector(`#checkpoints tr[data-step='${arguments[0]}']`);"
        "return [...row.children].map((td) => td.textContent)",
        point["step"],
    )
    assert row[2] == f"{point['lpips']:.3f}" and row[3] == f"{point['baseline_lpips']:.3f}", (row, point)
    # The picture for the docs: a few checkpoints into the curve, or the last of the training.
    wait_until(
        lambda: len(_job(page)["checkpoints"]) >= 5 or _job(page)["state"] != "training", 240, "more checkpoints"
    )
    time.sleep(1.5)  # the sample strip of the newest checkpoint
    _shoot(page, "train-step", "create-train")

    done = _wait_job(page, {"done", "failed"}, 900, "the job to finish")
    assert done["state"] == "done", done
    name = done["avatar"]
    assert name
    wait_until(lambda: page.js(f"return !!document.querySelector('#avatars [data-avatar=\"{name}\"]')"), 30, "the list")
    status, info = _call(service, "GET", "/api/info")
    assert name in info["avatars"], info  # loaded into the running service, no restart

    page.js(f"document.querySelector('#avatars button[data-live=\"{name}\"]').click()")
    wait_until(lambda: any(s["avatar"] == name for s in service.sessions()), 60, "the service's stream to switch")
    live_link = wait_until(lambda: page.js("return document.querySelector('#live-state a')?.href"), 20, "the link")
    page.open(live_link)
    page.wait_state({"running", "no-face"}, timeout=90)
    page.wait_value("stat-fps")
    wait_until(lambda: name in page.text("avatar-name"), 30, "the live page to name the new avatar")
    time.sleep(2)  # a few frames of the new avatar on screen
    _shoot(page, None, "create-live")


def test_create_job_survives_reload_and_a_crash_of_the_service(
    chromium: None,
    tiny_avatar: Path,
    driver_video: Path,
    media: dict[str, Path],
    tmp_path: Path,
    open_browser: Any,
) -> None:
    port = _free_port()
    folder = tmp_path / "create"
    live = _serve(tiny_avatar, driver_video, folder, port)
    try:
        require_create(live)
        page = open_browser(None)  # no camera: the file picker is the other way in
        _operator_page(page, live)
        _choose_file(page, media["clip"])
        wait_until(lambda: _step(page) == "uploaded", 60, "the file's upload")
        _train(page, 3.0)
        job = _wait_job(page, {"training"}, 300, "training to start")
        wait_until(lambda: len(_job(page).get("checkpoints", [])) >= 1, 300, "a first checkpoint")

        # A reload finds the job from the address (and localStorage) and shows where it stands.
        page.driver.refresh()
        wait_until(lambda: _job(page).get("id") == job["id"], 30, "the reloaded page to find the job")
        assert _job(page)["state"] == "training" and len(_job(page)["checkpoints"]) >= 1
        before = _job(page)["checkpoints"]

        # The service dies with its workers, as in a crash; started again, it resumes the job.
        live.kill(tree=True)
        wait_until(
            lambda: page.js("return document.getElementById('error').dataset.status") == "network", 30, "the page"
        )
        live = _serve(tiny_avatar, driver_video, folder, port)
        wait_until(lambda: _error(page) == "", 60, "the page to reconnect")
        resumed = _wait_job(page, {"training"}, 300, "training to resume")
        assert resumed["id"] == job["id"]

        def newer() -> bool:
            points = _job(page).get("checkpoints", [])
            return bool(points) and points[-1]["step"] > before[-1]["step"]

        wait_until(newer, 300, "a checkpoint after the restart")
        after = _job(page)["checkpoints"]
        # Resumed from the last checkpoint, not started over: the old checkpoints are kept.
        assert [p["step"] for p in after[: len(before)]] == [p["step"] for p in before], (before, after)

        page.js("document.getElementById('cancel').click()")
        cancelled = _wait_job(page, {"cancelled"}, 60, "the job to cancel")
        assert cancelled["avatar"] is None
        assert _call(live, "GET", f"/api/create/jobs/{job['id']}")[1]["state"] == "cancelled"
        assert sorted(p.name for p in (folder / job["id"]).iterdir()) == ["job.json"]  # cleaned up
    finally:
        live.kill(tree=True)
