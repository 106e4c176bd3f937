"""Glass-to-glass latency of the web page against the live service, in headless Chromium.

One headless Chromium whose camera is a 640x480 clip of `drv_lp_d10_512.mp4` (made here as
y4m) opens the page of `avatarcam demo --browser-cameras` (the shipped demo avatar, driven by
the browser's camera). The page paints an id into each camera frame, the service echoes it
onto the avatar frame, and the page times camera capture -> avatar frame displayed. After a
warm-up this collects every sample for --seconds and prints JSON with the page's and the
service's figures. Needs Debian's chromium and chromium-driver (`make browser-setup`).

With --connect, `avatarcam connect` then sends the same clip to the same service for the same
time, after the page has closed, and its own glass-to-glass report is printed beside the page's.

    .venv/bin/python benchmarks/bench_glass.py --seconds 60 [--connect] [--screenshots web/]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if not (ROOT / "tests").is_dir():
    ROOT = Path.cwd()
sys.path.insert(0, str(ROOT))

from streamer.core.figures import percentiles  # noqa: E402
from tests.browser import Browser, LiveService, fake_camera, wait_until  # noqa: E402

DRIVER = ROOT.parent / "shared" / "data" / "512" / "drv_lp_d10_512.mp4"


def _connect(url: str, camera: Path, seconds: float, codec: str, report: Path) -> dict[str, object]:
    """`avatarcam connect` with the page's camera clip as its camera, for `seconds` of avatar."""
    avatarcam = Path(sys.executable).with_name("avatarcam")
    command = [str(avatarcam), "connect", url, "--video", str(camera), "--loop", "--sink", "null",
               "--seconds", str(seconds), "--codec", codec, "--json", str(report)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 600)
    if done.returncode != 0:
        raise RuntimeError(f"avatarcam connect failed ({done.returncode}): {done.stderr[-2000:]}")
    full = json.loads(report.read_text())
    keys = ("seconds", "frames_received", "fps", "glass_ms", "rtt_ms", "dropped", "audio_delay_ms", "server")
    return {"command": " ".join(["avatarcam", *command[1:]]), **{k: full[k] for k in keys}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to collect samples after warm-up")
    parser.add_argument("--codec", default="vp8", choices=["vp8", "h264"])
    parser.add_argument("--device", default="cpu", help="the service's engine device")
    parser.add_argument("--screenshots", type=Path, help="save screenshot.png and screenshot-dashboard.png here")
    parser.add_argument("--connect", action="store_true", help="then measure `avatarcam connect` on the same service")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-glass-") as tmp:
        camera = fake_camera(DRIVER, Path(tmp) / "camera.y4m", seconds=3, width=640, height=480)
        live = LiveService(["demo", "--browser-cameras", "--no-virtualcam", "--port", "0", "--device", args.device])
        browsers: list[Browser] = []
        try:
            page = Browser(camera)
            browsers.append(page)
            page.open(live.url)
            page.wait_state({"running", "no-face", "connecting"}, timeout=60)
            if args.codec != "vp8":
                page.js(
                    f"const c = document.getElementById('codec'); c.value = '{args.codec}';"
                    "c.dispatchEvent(new Event('change'))"
                )
            page.wait_state({"running", "no-face"}, timeout=120)
            wait_until(lambda: page.js("return window.avatarcam.glass.count") >= 30, 120, "warm-up samples")
            page.js("window.avatarcam.glass.log = []")
            fps: list[float] = []
            rtt: list[float] = []
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                time.sleep(0.5)
                if (v := page.value("stat-fps")) is not None:
                    fps.append(v)
                if (v := page.value("stat-rtt")) is not None:
                    rtt.append(v)
            glass = page.js("return window.avatarcam.glass.log")
            session_id = page.text("session")
            server = next(s for s in live.sessions() if s["id"] == session_id)
            if args.screenshots:
                args.screenshots.mkdir(parents=True, exist_ok=True)
                page.driver.save_screenshot(str(args.screenshots / "screenshot.png"))
                dash = Browser(None, size=(1280, 1250))
                browsers.append(dash)
                dash.open(live.base + "/dashboard")
                wait_until(lambda: dash.js("return document.querySelectorAll('[data-session]').length"), 30, "a card")
                time.sleep(15)  # let the charts draw some history: a picture, not a measurement
                dash.driver.save_screenshot(str(args.screenshots / "screenshot-dashboard.png"))
            result = {
                "command": " ".join(["benchmarks/bench_glass.py", *sys.argv[1:]]),
                "service": live.api("/api/info"),
                "video": page.text("video-info"),
                "glass_ms": {
                    **(percentiles(glass, (50, 90, 99), scale=1, digits=1, samples=True) or {}),
                    "from": page.js("return window.avatarcam.camera.clockFrom"),
                },
                "page_received_fps_median": round(float(np.median(fps)), 1) if fps else None,
                "page_rtt_ms_median": round(float(np.median(rtt)), 1) if rtt else None,
                "server": {k: server[k] for k in ("fps", "frames", "dropped", "stages_ms", "e2e_ms", "glass_ms")},
            }
            for browser in browsers:
                browser.quit()
            browsers.clear()
            if args.connect:
                result["connect"] = _connect(live.url, camera, args.seconds, args.codec, Path(tmp) / "connect.json")
            print(json.dumps(result, indent=2))
        finally:
            for browser in browsers:
                browser.quit()
            code = live.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
