"""Glass-to-glass latency of the web page against the live service, in headless Chromium.

One headless Chromium whose camera is a 640x480 clip of `drv_lp_d10_512.mp4` (made here as
y4m) opens the page of `avatarcam demo --browser-cameras` (the shipped demo avatar, driven by
the browser's camera). The page paints an id into each camera frame, the service echoes it
onto the avatar frame, and the page times camera capture -> avatar frame displayed. After a
warm-up this collects every sample for --seconds and prints JSON with the page's and the
service's figures. Needs Debian's chromium and chromium-driver (`make browser-setup`).

With --connect, `avatarcam connect` then sends the same clip to the same service for the same
time, after the page has closed, and its own glass-to-glass report is printed beside the page's.

Each frame's glass-to-glass is split into uplink (capture -> service received), server (received
-> handed to the encoder, with its stages) and downlink (-> displayed), joined by frame id with
the times the service sends over the data channel (`split_ms`, and connect's), beside the
browser's own per-frame means from getStats() (`page_ms`: encode, jitter buffer, decode, ...).
--variant NAME=QUERY|SERVE ARGS|CONNECT ARGS (repeated) compares settings in one run, in
alternating order over --rounds, each on its own service when its arguments differ; `medians`
then holds the median of each side's p50s.

    .venv/bin/python benchmarks/bench_glass.py --seconds 60 [--connect] [--screenshots web/]
        [--rounds 3 --variant "before=|--frame-release next --rtp-time capture" --variant "after="]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if not (ROOT / "tests").is_dir():
    ROOT = Path.cwd()
sys.path.insert(0, str(ROOT))

from streamer.core.figures import percentiles  # noqa: E402
from tests.browser import Browser, LiveService, fake_camera, wait_until  # noqa: E402

DRIVER = ROOT.parent / "shared" / "data" / "512" / "drv_lp_d10_512.mp4"


def _connect(
    url: str, camera: Path, seconds: float, codec: str, extra: tuple[str, ...], tmp: Path
) -> dict[str, object]:
    """`avatarcam connect` with the page's camera clip as its camera, for `seconds` of avatar."""
    avatarcam = Path(sys.executable).with_name("avatarcam")
    report = tmp / "connect.json"
    command = [str(avatarcam), "connect", url, "--video", str(camera), "--loop", "--sink", "null",
               "--seconds", str(seconds), "--codec", codec, "--json", str(report), *extra]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 600)
    if done.returncode != 0:
        raise RuntimeError(f"avatarcam connect failed ({done.returncode}): {done.stderr[-2000:]}")
    full = json.loads(report.read_text())
    keys = ("seconds", "frames_received", "fps", "glass_ms", "split_ms", "rtt_ms", "dropped", "audio_delay_ms")
    keys += ("server",)
    load = round(os.getloadavg()[0], 2)
    return {"command": " ".join(["avatarcam", *command[1:]]), "load_1min": load, **{k: full[k] for k in keys}}


SPLIT_KEYS = ("glass", "uplink", "server", "downlink", "queue", "track", "render", "infer", "compose", "handoff")
PAGE_KEYS = ("encode", "packet_send", "jitter_buffer", "jitter_target", "decode", "processing", "inter_frame")


def split_figures(rows: list[dict[str, float]]) -> dict[str, object]:
    """Percentiles of each segment over the page's joined frames, and how well the per-frame sum
    of the three segments matches that frame's glass-to-glass (it should, to rounding)."""
    out: dict[str, object] = {"frames": len(rows)}
    for key in SPLIT_KEYS:
        out[key] = percentiles([r[key] for r in rows], (50, 90, 99), scale=1, digits=1)
    if rows:
        gap = [abs(r["uplink"] + r["server"] + r["downlink"] - r["glass"]) for r in rows]
        out["sum_gap_ms_max"] = round(max(gap), 3)
        out["negative_segments"] = sum(1 for r in rows if min(r["uplink"], r["server"], r["downlink"]) < 0)
    return out


def page_figures(log: list[dict[str, object]]) -> dict[str, object]:
    """Medians over the run of the browser's per-period means (getStats differences), ms."""
    out: dict[str, object] = {}
    for key in PAGE_KEYS:
        values = [float(v) for e in log if isinstance(v := e.get(key), int | float)]
        out[key] = round(float(np.median(values)), 2) if values else None
    last = log[-1] if log else {}
    out.update({k: last.get(k) for k in ("encoder", "decoder", "sent")})
    return out


def measure(page: Browser, live: LiveService, url: str, seconds: float, codec: str) -> dict[str, object]:
    """Open the page at `url`, warm up, and collect `seconds` of glass-to-glass and its split."""
    page.open(url)
    page.wait_state({"running", "no-face", "connecting"}, timeout=60)
    if codec != "vp8":
        page.js(f"const c = document.getElementById('codec'); c.value = '{codec}';")
        page.js("document.getElementById('codec').dispatchEvent(new Event('change'))")
    page.wait_state({"running", "no-face"}, timeout=120)
    wait_until(lambda: page.js("return window.avatarcam.glass.count") >= 30, 120, "warm-up samples")
    page.js("const a = window.avatarcam; a.glass.log = []; a.split.rows.log = []; a.stats.log = []")
    load = [os.getloadavg()[0]]
    fps: list[float] = []
    rtt: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.5)
        if (v := page.value("stat-fps")) is not None:
            fps.append(v)
        if (v := page.value("stat-rtt")) is not None:
            rtt.append(v)
    load.append(os.getloadavg()[0])
    glass = page.js("return window.avatarcam.glass.log")
    rows = page.js("return window.avatarcam.split.rows.log")
    session_id = page.text("session")
    server = next(s for s in live.sessions() if s["id"] == session_id)
    return {
        "url_query": url.split("?", 1)[1] if "?" in url else "",
        "transport": page.js("return window.avatarcam.transport"),
        "load_1min": [round(x, 2) for x in load],
        "video": page.text("video-info"),
        "glass_ms": {
            **(percentiles(glass, (50, 90, 99), scale=1, digits=1, samples=True) or {}),
            "from": page.js("return window.avatarcam.camera.clockFrom"),
        },
        "split_ms": split_figures(rows),
        "clock_error_ms": page.js("return window.avatarcam.clock.error"),
        "page_ms": page_figures(page.js("return window.avatarcam.stats.log")),
        "page_received_fps_median": round(float(np.median(fps)), 1) if fps else None,
        "page_rtt_ms_median": round(float(np.median(rtt)), 1) if rtt else None,
        "server": {k: server[k] for k in ("fps", "frames", "dropped", "stages_ms", "e2e_ms", "handoff_ms", "glass_ms")},
    }


def with_query(url: str, query: str) -> str:
    return url if not query else url + ("&" if "?" in url else "?") + query


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to collect samples after warm-up")
    parser.add_argument("--codec", default="vp8", choices=["vp8", "h264"])
    parser.add_argument("--device", default="cpu", help="the service's engine device")
    parser.add_argument("--screenshots", type=Path, help="save screenshot.png and screenshot-dashboard.png here")
    parser.add_argument("--connect", action="store_true", help="then measure `avatarcam connect` on the same service")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=QUERY[|SERVE ARGS[|CONNECT ARGS]]",
                        help="settings to compare: the page's (web/app.js readTransport), e.g. 'jb0=jitter=0', and "
                             "the service's and connect's arguments, e.g. 'next=|--frame-release next|--frame-release "
                             "next'; repeat; each round runs them all, in alternating order")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the variants (A B, B A, A B, ...)")
    args = parser.parse_args()
    variants = [parse_variant(v) for v in args.variant] or [Variant("page", "", (), ())]

    with tempfile.TemporaryDirectory(prefix="bench-glass-") as tmp:
        camera = fake_camera(DRIVER, Path(tmp) / "camera.y4m", seconds=3, width=640, height=480)
        demo = ["demo", "--browser-cameras", "--no-virtualcam", "--port", "0", "--device", args.device]
        live: LiveService | None = None
        live_args: tuple[str, ...] | None = None
        browsers: list[Browser] = []
        code = 0
        try:
            page = Browser(camera)
            browsers.append(page)
            runs: list[dict[str, Any]] = []
            for n in range(args.rounds):
                for v in variants if n % 2 == 0 else variants[::-1]:
                    if live is None or live_args != v.serve:
                        if live is not None:
                            page.open("about:blank")
                            code = live.stop() or code
                        live, live_args = LiveService([*demo, *v.serve]), v.serve
                    run = measure(page, live, with_query(live.url, v.query), args.seconds, args.codec)
                    run = {"variant": v.name, "round": n, "serve_args": list(v.serve), **run}
                    if args.connect:
                        page.open("about:blank")  # the page's session ends before connect's starts
                        run["connect"] = _connect(live.url, camera, args.seconds, args.codec, v.connect, Path(tmp))
                    runs.append(run)
                    print(f"round {n} {v.name}: glass {run['glass_ms']} split {run['split_ms']}", file=sys.stderr)
            assert live is not None
            result: dict[str, object] = {
                "command": " ".join(["benchmarks/bench_glass.py", *sys.argv[1:]]),
                "service": live.api("/api/info"),
            }
            if len(runs) == 1:
                result.update({k: v for k, v in runs[0].items() if k not in ("variant", "round", "serve_args")})
            else:
                result["runs"] = runs
                result["medians"] = {v.name: summary([r for r in runs if r["variant"] == v.name]) for v in variants}
            if args.screenshots:  # after the figures: the dashboard needs the page's session running again
                if args.connect:
                    page.open(live.url)
                    page.wait_state({"running", "no-face"}, timeout=120)
                args.screenshots.mkdir(parents=True, exist_ok=True)
                dash = Browser(None, size=(1280, 1250))
                browsers.append(dash)
                dash.open(live.operator_url)  # the dashboard with the operator credential
                wait_until(lambda: dash.js("return document.querySelectorAll('[data-session]').length"), 30, "a card")
                time.sleep(15)  # let the charts draw some history: a picture, not a measurement
                page.driver.save_screenshot(str(args.screenshots / "screenshot.png"))
                dash.driver.save_screenshot(str(args.screenshots / "screenshot-dashboard.png"))
            print(json.dumps(result, indent=2))
        finally:
            for browser in browsers:
                browser.quit()
            if live is not None:
                code = live.stop() or code
    return code


@dataclass(frozen=True)
class Variant:
    """One side of an A/B: a name, the page's query, the service's and connect's extra arguments."""

    name: str
    query: str
    serve: tuple[str, ...]
    connect: tuple[str, ...]


def parse_variant(text: str) -> Variant:
    name, _, rest = text.partition("=")
    query, _, rest = rest.partition("|")
    serve, _, connect = rest.partition("|")
    return Variant(name, query, tuple(serve.split()), tuple(connect.split()))


def summary(runs: list[dict[str, Any]]) -> dict[str, object]:
    """The median over a variant's runs of each run's p50s (and glass p99)."""

    def med(get: Callable[[dict[str, Any]], Any]) -> float | None:
        values = [float(v) for r in runs if isinstance(v := get(r), int | float)]
        return round(float(np.median(values)), 1) if values else None

    out: dict[str, object] = {"runs": len(runs), "glass_p50": med(lambda r: r["glass_ms"].get("p50")),
                              "glass_p99": med(lambda r: r["glass_ms"].get("p99"))}  # fmt: skip
    for key in SPLIT_KEYS[1:]:
        out[key] = med(lambda r, k=key: (r["split_ms"].get(k) or {}).get("p50"))
    for key in PAGE_KEYS:
        out[f"page_{key}"] = med(lambda r, k=key: r["page_ms"].get(k))
    out["fps"] = med(lambda r: r["page_received_fps_median"])
    if any("connect" in r for r in runs):
        out["connect_glass_p50"] = med(lambda r: r.get("connect", {}).get("glass_ms", {}).get("p50"))
        out["connect_glass_p99"] = med(lambda r: r.get("connect", {}).get("glass_ms", {}).get("p99"))
        for key in ("uplink", "server", "downlink"):
            out[f"connect_{key}"] = med(
                lambda r, k=key: ((r.get("connect", {}).get("split_ms") or {}).get(k) or {}).get("p50")
            )
    out["load"] = [x for r in runs for x in r["load_1min"]]
    return out


if __name__ == "__main__":
    sys.exit(main())
