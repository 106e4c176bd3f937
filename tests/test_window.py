"""The `window` sink, the registry's "one file plus one row" example, used from `serve` for real:
a file source drives the avatar into an OpenCV window on a private X server (Xvfb, listening
on its Unix socket only). `connect --sink window` goes through the same registry row
(tests/test_connect.py)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from streamer.core.frames import Frame
from streamer.serve.service import Service
from streamer.sinks import SINKS, parse_sink
from streamer.sinks.window import WindowSink, display_problem
from tests.test_serve import shared_config


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    """A private X display (Xvfb, no TCP), set as DISPLAY for this module's tests."""
    if shutil.which("Xvfb") is None:
        pytest.skip("no Xvfb here (apt-get install xvfb; `make test` installs it when run as root)")
    sockets = Path("/tmp/.X11-unix")
    number = next(
        n for n in range(90, 200) if not (sockets / f"X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists()
    )
    server = subprocess.Popen(
        ["Xvfb", f":{number}", "-screen", "0", "1280x720x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not (sockets / f"X{number}").exists():
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.skip(f"Xvfb :{number} did not start")
        time.sleep(0.05)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISPLAY", f":{number}")
        mp.delenv("WAYLAND_DISPLAY", raising=False)
        problem = display_problem()
        if problem is not None:
            server.kill()
            pytest.skip(f"no window on Xvfb: {problem}")
        yield f":{number}"
    server.terminate()
    server.wait(10)


def test_window_is_one_registry_row_that_serve_and_connect_share() -> None:
    row = SINKS["window"]
    assert row.open == WindowSink.open and row.shared and not row.target
    assert parse_sink("window") == parse_sink("window", peers=False)


@pytest.mark.skip(
    reason="hangs in cv2.waitKey inside serve on this machine since janus (apt) and ray (pip) were installed "
    "on 2026-12-04, also at ba1caba where it passed before: not yet understood (docs/roadmap.md)"
)
def test_serve_shows_the_avatar_in_a_window(display: str, tiny_avatar: Path, driver_video: Path) -> None:
    async def scenario() -> list[int]:
        service = Service(replace(shared_config(tiny_avatar, driver_video), sinks=(parse_sink("window"),)).resolved())
        await service.startup()
        try:
            assert service.shared is not None
            (window,) = [s for s in service.shared.sinks if isinstance(s, WindowSink)]
            shown: list[int] = []
            session_report = window.report
            assert session_report is not None  # the session times the window's deliveries too

            def report(frame: Frame, seconds: float, finished: float) -> None:
                shown.append(frame.index)
                session_report(frame, seconds, finished)

            window.report = report
            deadline = time.monotonic() + 120
            while len(shown) < 30 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            return shown
        finally:
            await service.shutdown()

    shown = asyncio.run(scenario())
    assert len(shown) >= 30, f"the window showed {len(shown)} avatar frames in 2 minutes"
    assert shown == sorted(shown)  # in order; a busy window drops (counted), never reorders
