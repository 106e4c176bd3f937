"""A real browser for the page's tests: headless Chromium (Debian's `chromium` and
`chromium-driver`) driven by selenium, a fake camera made from a real video, and the live
service as a subprocess on a free port."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"


def browser_paths() -> tuple[Path, Path]:
    """(chromium, chromedriver): $CHROMIUM / $CHROMEDRIVER when set, else what PATH finds,
    else Debian's /usr/bin ones (which may be absent: see `require_chromium`)."""
    found = []
    for variable, name in (("CHROMIUM", "chromium"), ("CHROMEDRIVER", "chromedriver")):
        given = os.environ.get(variable)
        found.append(Path(given) if given else Path(shutil.which(name) or f"/usr/bin/{name}"))
    return found[0], found[1]


SERVING = re.compile(r"avatarcam: serving on (https?://\S+)")
OPERATOR = re.compile(r"avatarcam: operator dashboard on (https?://\S+)")
T = TypeVar("T")


def require_chromium() -> None:
    """Skip, saying why and what to do, unless a Chromium and its chromedriver are found."""
    chromium, driver = browser_paths()
    missing = [str(p) for p in (chromium, driver) if not (p.is_file() and os.access(p, os.X_OK))]
    if missing:
        pytest.skip(
            f"no browser for the page's tests: {' and '.join(missing)} not found. Point CHROMIUM= and "
            "CHROMEDRIVER= at a Chromium and its chromedriver, or install Debian's (as root: "
            "`make browser-setup`, or `apt-get install chromium chromium-driver`)"
        )
    pytest.importorskip("selenium", reason="selenium is in the dev extra: `make setup`")


def fake_camera(video: Path, out: Path, *, seconds: float = 3.0, width: int = 448, height: int = 336) -> Path:
    """A y4m clip for Chromium's `--use-file-for-fake-video-capture` (which loops it): the
    video's first `seconds`, centre-cropped to width:height and scaled."""
    import av

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        fps = stream.average_rate or 30
        count = int(seconds * fps)
        frames = []
        for frame in container.decode(stream):
            if len(frames) >= count:
                break
            rgb = frame.to_ndarray(format="rgb24")
            h, w = rgb.shape[:2]
            crop_h = min(h, w * height // width)
            crop_w = crop_h * width // height
            top, left = (h - crop_h) // 2, (w - crop_w) // 2
            frames.append(rgb[top : top + crop_h, left : left + crop_w])
    return write_y4m(out, frames, width, height, (fps.numerator, fps.denominator))


def faceless_camera(out: Path, *, seconds: float = 2.0, width: int = 320, height: int = 240) -> Path:
    """A y4m clip with no face in it: drifting colour gradients."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for i in range(int(seconds * 25)):
        phase = i / 25
        r = 127 + 100 * np.sin(x / 40 + phase)
        g = 127 + 100 * np.sin(y / 30 - phase)
        b = 127 + 100 * np.sin((x + y) / 60 + 2 * phase)
        frames.append(np.stack([r, g, b], axis=-1).astype(np.uint8))
    return write_y4m(out, frames, width, height, (25, 1))


def write_y4m(out: Path, frames: list[np.ndarray], width: int, height: int, fps: tuple[int, int]) -> Path:
    """RGB frames ([H, W, 3] uint8, any size) scaled to width x height, as a YUV4MPEG2 (I420) file."""
    import av

    with out.open("wb") as y4m:
        y4m.write(f"YUV4MPEG2 W{width} H{height} F{fps[0]}:{fps[1]} Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            planes = frame.reformat(width, height, format="yuv420p").to_ndarray()  # [H * 3/2, W]
            y4m.write(b"FRAME\n")
            y4m.write(planes.tobytes())
    return out


def wait_until(condition: Callable[[], T], timeout: float, what: str, *, every: float = 0.1) -> T:
    """Poll `condition` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(every)


# ---- the live service ----------------------------------------------------------------------------


class LiveService:
    """`avatarcam ARGS --port 0` in a subprocess; `url` comes from its "serving on" line.
    With `probe`, it runs under tests/calibrate_probe.py, which logs each calibration."""

    def __init__(
        self, args: list[str], *, ready_timeout: float = 180.0, probe: bool = False, env: dict[str, str] | None = None
    ) -> None:
        launcher = (
            [sys.executable, "-m", "tests.calibrate_probe"]
            if probe
            else [str(Path(sys.executable).with_name("avatarcam"))]
        )
        command = [*launcher, *args]
        self.output: list[str] = []
        self._ready = threading.Event()
        self.url = ""
        self.operator_url = ""  # the dashboard with the operator credential
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + ready_timeout
        while not (self._ready.wait(0.2) and self.operator_url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"`avatarcam {' '.join(args)}` did not start serving:\n{self.log()}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.output.append(line)
                match = SERVING.search(line)
                if match and not self._ready.is_set():
                    self.url = match.group(1)
                    self._ready.set()
                operator = OPERATOR.search(line)
                if operator:
                    self.operator_url = operator.group(1)

    @property
    def base(self) -> str:
        """The URL without its path and query: http(s)://HOST:PORT"""
        return re.sub(r"^(https?://[^/]+).*$", r"\1", self.url)

    def log(self) -> str:
        return "".join(self.output[-60:])

    def calibrations(self, session_id: str) -> list[str]:
        """What each calibration of that session returned (True: a face was there), with `probe`."""
        prefix = f"probe: session {session_id} calibrated: "
        return [line.strip().removeprefix(prefix) for line in list(self.output) if line.startswith(prefix)]

    def api(self, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def sessions(self) -> list[dict[str, Any]]:
        sessions: list[dict[str, Any]] = self.api("/api/sessions")["sessions"]
        return sessions

    def stop(self, timeout: float = 60.0) -> int:
        """SIGINT, as a person at the terminal would, and the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"the service ignored SIGINT for {timeout:.0f} s:\n{self.log()}") from None
        self._reader.join(5)
        return self.proc.returncode

    def kill(self, *, tree: bool = False) -> None:
        """SIGKILL the service; with `tree`, every process it started too (a crash of the whole
        service, as at a power cut, with no chance to clean up)."""
        if self.proc.poll() is None:
            if tree:
                import psutil

                with contextlib.suppress(psutil.NoSuchProcess):
                    for child in psutil.Process(self.proc.pid).children(recursive=True):
                        with contextlib.suppress(psutil.NoSuchProcess):
                            child.kill()
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)


# ---- the browser -------------------------------------------------------------------------------


class Browser:
    """One headless Chromium. `camera`: a y4m file as its camera (None: no camera device);
    `deny_camera`: the user refuses the permission prompt; `flags`: more command-line switches."""

    def __init__(
        self,
        camera: Path | None,
        *,
        deny_camera: bool = False,
        size: tuple[int, int] = (1280, 900),
        flags: tuple[str, ...] = (),
    ) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.TemporaryDirectory(prefix="avatarcam-chromium-")
        options = webdriver.ChromeOptions()
        chromium, chromedriver = browser_paths()
        options.binary_location = str(chromium)
        for flag in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={self.profile.name}",
            f"--window-size={size[0]},{size[1]}",
            "--allow-loopback-in-peer-connection",
            # Raw host candidates, not mDNS `*.local` names: resolving those would send multicast
            # queries onto the machine's network, and the tests talk to this machine only.
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            "--autoplay-policy=no-user-gesture-required",
            # Two browsers share two cores in CI: keep timers and video running at full rate.
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
        ):
            options.add_argument(flag)
        if camera is not None:
            options.add_argument("--use-fake-device-for-media-stream")
            options.add_argument(f"--use-file-for-fake-video-capture={camera}")
        options.add_argument("--deny-permission-prompts" if deny_camera else "--use-fake-ui-for-media-stream")
        for flag in flags:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(options=options, service=Service(executable_path=str(chromedriver)))
        self.driver.set_script_timeout(20)

    def open(self, url: str) -> None:
        self.driver.get(url)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def text(self, element_id: str) -> str:
        return str(self.js("return document.getElementById(arguments[0])?.textContent ?? ''", element_id))

    def value(self, element_id: str) -> float | None:
        """The number an element carries in its data-value attribute (None when empty)."""
        raw = self.js("return document.getElementById(arguments[0])?.dataset.value ?? ''", element_id)
        return _number(raw)

    def state(self) -> str:
        return str(self.js("return document.body.dataset.state"))

    def wait_state(self, states: set[str], timeout: float = 60.0) -> str:
        try:
            return wait_until(lambda: (s := self.state()) in states and s, timeout, f"page state in {sorted(states)}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; banner: {self.text('banner')!r}\n{self.console()}") from None

    def wait_value(self, element_id: str, timeout: float = 60.0, *, above: float = 0.0) -> float:
        def ready() -> float | None:
            v = self.value(element_id)
            return v if v is not None and v > above else None

        try:
            return wait_until(ready, timeout, f"#{element_id} > {above}")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; state {self.state()!r}, text {self.text(element_id)!r}\n{self.console()}"
            ) from None

    def console(self) -> str:
        with contextlib.suppress(Exception):
            return "\n".join(f"console {e['level']}: {e['message']}" for e in self.driver.get_log("browser"))
        return ""

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        self.driver.save_screenshot(str(path))
        return path

    def quit(self) -> None:
        with contextlib.suppress(Exception):
            self.driver.quit()
        self.profile.cleanup()


def _number(raw: Any) -> float | None:
    if raw in (None, "", "null"):
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(value) else value


@contextlib.contextmanager
def browsers() -> Iterator[Callable[..., Browser]]:
    """A factory of browsers that are all closed on exit."""
    opened: list[Browser] = []

    def make(*args: Any, **kwargs: Any) -> Browser:
        browser = Browser(*args, **kwargs)
        opened.append(browser)
        return browser

    try:
        yield make
    finally:
        for browser in opened:
            browser.quit()


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False
