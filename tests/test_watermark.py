"""The invisible watermark: payload, embedding, real codecs, `avatarcam detect`, and who may turn it off."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import numpy.typing as npt
import pytest

from avatarcam_cli import main
from models.avatar import read_header
from streamer.provenance import watermark as wm
from streamer.provenance.detect import avatar_digest
from streamer.provenance.identity import WatermarkRequired, maybe_watermark, refuse_undisclosed
from streamer.stages.compose import ComposeConfig, Compositor
from tests.media import first_frames, shared_video

U8 = npt.NDArray[np.uint8]
DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo" / "cap12.avatar"


@pytest.fixture(scope="module")
def frames() -> list[U8]:
    """60 real frames (a real person, 256 px): the mark must survive their content and codecs."""
    return [
        cv2.resize(f, (256, 256), interpolation=cv2.INTER_AREA) for f in first_frames(shared_video("cap13_512.mp4"), 60)
    ]


def vp8_roundtrip(frames: list[U8], bitrate: int) -> list[U8]:
    """libvpx through PyAV at aiortc's real-time settings (CBR), then decoded."""
    h, w = frames[0].shape[:2]
    enc: Any = av.CodecContext.create("libvpx", "w")
    enc.width, enc.height, enc.pix_fmt, enc.bit_rate = w, h, "yuv420p", bitrate
    enc.framerate, enc.time_base = Fraction(30), Fraction(1, 30)
    enc.options = {
        "deadline": "realtime",
        "cpu-used": "-6",
        "lag-in-frames": "0",
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
        "bufsize": str(bitrate),
        "threads": "1",
    }
    dec: Any = av.CodecContext.create("libvpx", "r")
    out: list[U8] = []
    for i, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        for packet in enc.encode(frame):
            out += [d.to_ndarray(format="rgb24") for d in dec.decode(packet)]
    for packet in enc.encode(None):
        out += [d.to_ndarray(format="rgb24") for d in dec.decode(packet)]
    return out


def test_payload_round_trips_and_the_crc_catches_damage() -> None:
    bits = wm.encode_payload(0x1234ABCD)
    assert len(bits) == wm.BITS == 64 and wm.check_payload(bits) == 0x1234ABCD
    for i in (0, 20, 63):  # marker, digest, CRC
        damaged = bits.copy()
        damaged[i] ^= 1
        assert wm.check_payload(damaged) is None


def test_identity_digest_ignores_metrics_but_not_consent() -> None:
    record = {"subject": "A", "consent": "yes", "source_sha256": "ab", "preset": "tiny", "steps": 3, "metrics": {}}
    assert wm.identity_digest(record) == wm.identity_digest({**record, "metrics": {"psnr": 30.0}})
    assert wm.identity_digest(record) != wm.identity_digest({**record, "consent": "no"})


def test_mark_is_invisible_by_psnr_and_reads_back_from_every_frame(frames: list[U8]) -> None:
    mark = wm.Watermarker(0xCAFE0123)
    marked = [mark(f) for f in frames]
    mse = np.mean([np.mean((m.astype(np.float64) - f) ** 2) for m, f in zip(marked, frames, strict=True)])
    assert 10 * np.log10(255**2 / mse) >= 40
    readings = [wm.read_frame(m) for m in marked]
    assert all(r.found and r.digest == 0xCAFE0123 for r in readings)
    assert not any(wm.read_frame(f).found for f in frames)  # the same frames unmarked


def test_payload_survives_real_vp8_at_1mbps(frames: list[U8]) -> None:
    mark = wm.Watermarker(0x00C0FFEE)
    decoded = vp8_roundtrip([mark(f) for f in frames], 1_000_000)
    assert len(decoded) == len(frames)
    readings = [wm.read_frame(f) for f in decoded]
    found = [r.found and r.digest == 0x00C0FFEE for r in readings]
    assert np.mean(found) >= 0.95, [round(r.snr, 2) for r in readings]
    unmarked = vp8_roundtrip(frames, 1_000_000)  # the same clip through the same codec, unmarked
    assert not any(wm.read_frame(f).found for f in unmarked)


def test_a_cropped_or_side_by_side_frame_is_still_read(frames: list[U8]) -> None:
    mark = wm.Watermarker(0x0BADF00D)
    marked = mark(frames[0])
    cropped = np.ascontiguousarray(marked[13:243, 7:240])  # the tile grid moves
    reading = wm.read_frame(cropped)
    assert reading.found and reading.digest == 0x0BADF00D and reading.shift != (0, 0)
    side = np.ascontiguousarray(np.concatenate([frames[1], marked], axis=1))  # like reenact --side-by-side
    assert wm.read_frame(side).digest == 0x0BADF00D


def test_embedding_is_cheap(frames: list[U8]) -> None:
    import time

    mark = wm.Watermarker(1)
    mark(frames[0])
    # CPU time of this thread: the bar is one core's work, and a busy machine only stretches wall time
    start = time.thread_time()
    for f in frames:
        mark(f)
    per_frame = (time.thread_time() - start) / len(frames)
    assert per_frame < 1e-3, f"{per_frame * 1e3:.2f} ms of CPU per 256 px frame"


def test_compositor_marks_last_and_demo_avatars_cannot_go_unmarked(frames: list[U8]) -> None:
    image, mask = frames[0], np.full((256, 256), 255, np.uint8)
    mark = wm.Watermarker(7)
    out = Compositor(ComposeConfig(), 256, watermark=mark)(image, mask)
    assert wm.read_frame(out).digest == 7
    assert not wm.read_frame(Compositor(ComposeConfig(), 256)(image, mask)).found
    own = {"subject": "me", "consent": "mine", "source_sha256": "x", "preset": "tiny", "steps": 1}
    assert maybe_watermark(own, enabled=False) is None
    assert maybe_watermark(own, enabled=False, required=True) is not None  # forced, like the badge
    demo = json.loads(read_header(DEMO)["identity"])
    assert maybe_watermark(demo, enabled=False) is not None
    with pytest.raises(WatermarkRequired):
        refuse_undisclosed(DEMO, watermark=False)


def test_no_watermark_is_refused_for_the_demo_avatar(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["demo", "--no-watermark", "--port", "0"]) == 2
    assert "always watermarked" in capsys.readouterr().err
    assert main(["serve", str(DEMO), "--no-watermark", "--port", "0"]) == 2
    assert "always watermarked" in capsys.readouterr().err
    driver = shared_video("drv_aoc_512.mp4")
    assert main(["reenact", str(DEMO), str(driver), "-o", str(tmp_path / "o.mp4"), "--no-watermark"]) == 2
    assert "always watermarked" in capsys.readouterr().err


def _demo_with_one_identity_character_changed(folder: Path) -> Path:
    """A byte-for-byte copy of the demo avatar whose identity JSON differs in one character
    (same length, so the safetensors layout and every tensor are untouched)."""
    data = bytearray(DEMO.read_bytes())
    at = data.index(b"cap12: the man") + len(b"cap1")
    data[at] = ord("9")
    edited = folder / "mine.avatar"
    edited.write_bytes(bytes(data))
    assert json.loads(read_header(edited)["identity"])["subject"].startswith("cap19: the man")
    return edited


@pytest.mark.skipif(not DEMO.is_file(), reason="the demo avatar is not in this checkout")
def test_demo_disclosures_are_refused_off_by_its_tensors_not_its_header(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Issue 24, point 11: --no-badge on the demo, --no-watermark on the demo with an edited
    identity, and reenact --no-credentials of the demo are each one line and exit code 2."""
    from streamer.pipeline.session import AvatarEntry

    edited = _demo_with_one_identity_character_changed(tmp_path)
    driver = shared_video("drv_aoc_512.mp4")
    refused = {
        "always badged": ["serve", str(DEMO), "--no-badge"],
        "always watermarked": ["serve", str(edited), "--no-watermark"],
        "always signed": ["reenact", str(DEMO), str(driver), "-o", str(tmp_path / "o.mp4"), "--no-credentials"],
    }
    for message, args in refused.items():
        assert main([*args, "--dry-run"]) == 2, args  # refused at the edge, before any work
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("avatarcam: error:")]
        assert len(errors) == 1 and message in errors[0], (args, errors)
    assert main(["serve", str(edited), "--no-badge", "--dry-run"]) == 2
    assert "always badged" in capsys.readouterr().err
    assert AvatarEntry.load(edited).badge_required  # served as a library too: badged and marked


def _write(path: Path, frames: list[U8], codec: str = "libvpx", bitrate: int = 1_000_000) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = bitrate
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_detect_finds_nothing_on_an_unmarked_clip(
    frames: list[U8], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = _write(tmp_path / "real.webm", frames[:30])
    assert main(["detect", str(clip), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["found"] is False and report["frames"] == 30 and report["frames_marked"] == 0
    assert report["payload"] is None and report["confidence"] == 0.0


def test_detect_reads_a_marked_clip_and_its_avatar(
    frames: list[U8], tiny_avatar: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digest = avatar_digest(tiny_avatar)
    mark = wm.Watermarker(digest)
    clip = _write(tmp_path / "marked.webm", [mark(f) for f in frames[:30]])
    still = tmp_path / "still.png"
    cv2.imwrite(str(still), cv2.cvtColor(mark(frames[40]), cv2.COLOR_RGB2BGR))
    assert main(["detect", str(clip), str(still), "--avatar", str(tiny_avatar), "--json"]) == 0
    video, image = json.loads(capsys.readouterr().out)
    assert video["found"] and video["fraction"] >= 0.9 and video["payload"]["digest"] == f"{digest:08x}"
    assert video["avatar"]["match"] and video["confidence"] > 0.999999 and video["false_alarm_log10"] < -6
    assert image["found"] and image["frames"] == 1 and image["avatar"]["match"]
    assert main(["detect", str(clip), "--avatar", str(DEMO)]) == 0  # marked, but by another avatar
    out = capsys.readouterr().out
    assert "watermark found" in out and ": no" in out
