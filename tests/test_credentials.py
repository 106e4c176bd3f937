"""Content credentials: the C2PA manifest in mp4s the project writes, verified and broken for real."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import av
import pytest

from avatarcam_cli import main
from streamer.core.frames import Frame
from streamer.provenance import credentials as cr
from streamer.sinks.file import FileSink
from tests.media import first_frames, shared_video, write_video

pytest.importorskip("c2pa", reason="content credentials need c2pa-python (make setup installs it)")

IDENTITY = {
    "subject": "Test Person",
    "consent": "I agree to tests",
    "source_sha256": "ab" * 32,
    "preset": "t",
    "steps": 3,
}
DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo" / "cap12.avatar"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh avatarcam cache: the local signing key is generated into it on first use."""
    monkeypatch.setenv("AVATARCAM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frames = first_frames(shared_video("cap13_512.mp4"), 10)
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames)


def _flip_a_byte_in_the_video(path: Path) -> Path:
    data = bytearray(path.read_bytes())
    at = data.find(b"mdat") + 200  # inside the coded frames
    data[at] ^= 0xFF
    out = path.with_name("altered.mp4")
    out.write_bytes(bytes(data))
    return out


def test_manifest_verifies_names_the_subject_and_breaks_when_the_file_is_altered(
    clip: Path, home: Path, tmp_path: Path
) -> None:
    signed = tmp_path / "signed.mp4"
    cr.sign_mp4(clip, signed, IDENTITY)
    assert (home / "c2pa" / "signer.key").stat().st_mode & 0o077 == 0  # the private key is the user's only
    reading = cr.read_mp4(signed)
    assert reading.present and reading.intact and reading.trusted and reading.state == "Trusted"
    assert reading.generated and reading.subject == "Test Person" and reading.consent == "I agree to tests"
    with av.open(str(signed)) as container:  # still a normal, playable mp4
        assert sum(1 for _ in container.decode(video=0)) == 10

    altered = cr.read_mp4(_flip_a_byte_in_the_video(signed))
    assert altered.present and not altered.intact and altered.state == "Invalid"
    assert "assertion.bmffHash.mismatch" in altered.failures
    assert not cr.read_mp4(clip).present  # an unsigned file has none


def test_another_machine_sees_an_intact_but_untrusted_signer(
    clip: Path, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    signed = tmp_path / "signed.mp4"
    cr.sign_mp4(clip, signed, IDENTITY)
    ca = (home / "c2pa" / "ca.pem").read_bytes()
    monkeypatch.setenv("AVATARCAM_HOME", str(tmp_path / "elsewhere"))  # no local CA there
    reading = cr.read_mp4(signed)
    assert reading.intact and not reading.trusted and "signingCredential.untrusted" in reading.failures
    assert cr.read_mp4(signed, anchors=ca).trusted  # unless the verifier chooses to trust that CA


def test_a_users_own_key_signs(clip: Path, tmp_path: Path, home: Path) -> None:
    theirs = cr.local_key(tmp_path / "their-pki")  # any ES256 chain + key in PEM files
    key = cr.user_key(tmp_path / "their-pki" / "signer.pem", tmp_path / "their-pki" / "signer.key")
    signed = tmp_path / "signed.mp4"
    cr.sign_mp4(clip, signed, IDENTITY, key)
    assert not (home / "c2pa").exists()  # the local key was not needed
    assert cr.read_mp4(signed, anchors=theirs.anchor).trusted
    with pytest.raises(cr.CredentialsError, match="no such file"):
        cr.user_key(tmp_path / "none.pem", tmp_path / "none.key")


def test_file_sink_signs_its_recording_on_close(clip: Path, home: Path, tmp_path: Path) -> None:
    from streamer.core.clock import MonotonicClock

    out = tmp_path / "live.mp4"
    sink = FileSink(out, MonotonicClock(), 25.0, identity=lambda: IDENTITY)
    for i, rgb in enumerate(first_frames(clip, 8)):
        sink.deliver(Frame(rgb, i / 25, i))  # the sink's worker-thread calls, in order
    sink.finish()
    assert not (tmp_path / "live.recording.mp4").exists()
    reading = cr.read_mp4(out)
    assert reading.intact and reading.generated and reading.subject == "Test Person"


@pytest.mark.slow
def test_reenact_output_is_detected_after_vp8_at_1mbps(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's end-to-end check: a file `reenact` wrote, re-encoded with
    `ffmpeg -c:v libvpx -b:v 1M` (PyAV's libvpx when ffmpeg is absent), is still recognised."""
    out = tmp_path / "aoc.mp4"
    driver = shared_video("drv_aoc_512.mp4")
    assert main(["reenact", str(DEMO), str(driver), "-o", str(out), "--max-frames", "30", "--backend", "onnx"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["credentials"] and summary["watermark"]

    webm = tmp_path / "aoc.webm"
    if shutil.which("ffmpeg"):
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-i", str(out), "-c:v", "libvpx", "-b:v", "1M", "-an", str(webm)],
            check=True,
        )
    else:
        with av.open(str(out)) as source, av.open(str(webm), "w") as target:
            stream = target.add_stream("libvpx", rate=25)
            stream.width, stream.height, stream.pix_fmt, stream.bit_rate = 256, 256, "yuv420p", 1_000_000
            for frame in source.decode(video=0):
                frame.pts = None
                target.mux(stream.encode(frame))
            target.mux(stream.encode())

    assert main(["detect", str(out), str(webm), "--avatar", str(DEMO), "--json"]) == 0
    original, reencoded = json.loads(capsys.readouterr().out)
    assert original["fraction"] == 1.0 and original["avatar"]["match"]
    assert original["credentials"]["intact"] and original["credentials"]["generated"]
    assert original["credentials"]["matches_watermark"]
    assert reencoded["fraction"] >= 0.99 and reencoded["avatar"]["match"]
    assert reencoded["credentials"] is None  # webm: the manifest did not survive the re-encode, the mark did


def test_the_local_signing_key_is_private_even_over_a_leftover_partial_file(tmp_path: Path) -> None:
    """A partial file that a crashed run left behind (mode 0644) is never written through: the
    key is created anew, mode 0600, under a name of its own."""
    folder = tmp_path / "pki"
    folder.mkdir()
    for name in ("signer.key.partial", "ca.pem.partial"):
        (folder / name).write_bytes(b"half written")
        (folder / name).chmod(0o644)
    key = cr.local_key(folder)
    assert oct((folder / "signer.key").stat().st_mode & 0o777) == "0o600"
    assert (folder / "signer.key").read_bytes() == key.key
    assert sorted(p.name for p in folder.iterdir()) == [
        "ca.pem",
        "ca.pem.partial",
        "signer.key",
        "signer.key.partial",
        "signer.pem",
    ]
