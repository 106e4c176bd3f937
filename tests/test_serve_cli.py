"""`avatarcam serve` and `avatarcam demo` as a user runs them: start, announce, stop on SIGINT;
bad options end with one line and exit code 2."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamer.provenance.identity import DEMO_AVATAR

pytestmark = pytest.mark.slow


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "avatarcam_cli", *args]


def _start_and_interrupt(command: list[str]) -> tuple[str, str, int]:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until the server announces itself or dies
    if "serving on" in line:
        time.sleep(1.0)  # let it run a moment with its source
        process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    return line + out, err, process.returncode


@pytest.mark.skipif(not DEMO_AVATAR.is_file(), reason="the demo avatar is not in this checkout")
def test_demo_starts_serves_and_stops_cleanly() -> None:
    out, err, code = _start_and_interrupt(_cli("demo", "--port", "0"))
    assert code == 0, err[-2000:]
    assert "serving on http://127.0.0.1:" in out
    assert "no virtual camera" in err and "v4l2loopback" in err  # says how to get one, and goes on


def test_serve_file_source_to_a_file(tiny_avatar: Path, driver_video: Path, tmp_path: Path) -> None:
    out_file = tmp_path / "out.mp4"
    command = _cli("serve", str(tiny_avatar), "--source", f"file:{driver_video}", "--sink", f"file:{out_file}")
    _, err, code = _start_and_interrupt([*command, "--port", "0", "--log-format", "json"])
    assert code == 0, err[-2000:]
    assert out_file.stat().st_size > 0
    assert any(line.startswith('{"time"') for line in err.splitlines())  # structured logs


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "missing.avatar"], "does not exist"),
        (["serve", "{avatar}", "--source", "webcam"], "use camera:N"),
        (["serve", "{avatar}", "--source", "file:nothing.mp4"], "no such file"),
        (["serve", "{avatar}", "--sink", "zoom"], "virtualcam, webrtc"),
        (["serve", "{avatar}", "--source", "webrtc", "--sink", "virtualcam"], "needs a shared source"),
        (["serve", "{avatar}", "--backend", "nonsense"], "unknown engine backend"),
    ],
)
def test_bad_options_end_with_one_line(tiny_avatar: Path, args: list[str], message: str) -> None:
    command = _cli(*(a.replace("{avatar}", str(tiny_avatar)) for a in args), "--port", "0")
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("avatarcam: error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.stderr
