"""What `avatarcam reenact` promises about its output: the SYNTHETIC badge on every frame, and
the driver's audio re-encoded to AAC when MP4 cannot carry its codec."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from avatarcam_cli import main
from streamer.stages.compose import badge_patch
from tests.media import first_frames, one_torch_thread

pytestmark = pytest.mark.slow
_threads = pytest.fixture(autouse=True, scope="module")(one_torch_thread)
FPS, FRAMES, TONE = 25, 12, 440.0


@pytest.fixture(scope="module")
def driver_with_pcm(cap13: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Matroska driver: H.264 video and a 440 Hz tone as 16-bit PCM, which MP4 cannot hold."""
    path = tmp_path_factory.mktemp("driver") / "driver.mkv"
    rate = 16000
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width = video.height = 256
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("pcm_s16le", rate=rate)
        audio.layout = "mono"
        for rgb in first_frames(cap13, FRAMES):
            small = np.ascontiguousarray(rgb[::2, ::2])
            container.mux(video.encode(av.VideoFrame.from_ndarray(small, format="rgb24")))
        container.mux(video.encode())
        t = np.arange(rate * FRAMES // FPS) / rate
        samples = (0.5 * 32767 * np.sin(2 * np.pi * TONE * t)).astype(np.int16)
        for start in range(0, len(samples), 1024):
            chunk = samples[None, start : start + 1024]
            frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            container.mux(audio.encode(frame))
        container.mux(audio.encode())
    return path


def test_every_frame_carries_the_badge_and_pcm_audio_becomes_aac(
    tiny_avatar: Path, driver_with_pcm: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.mp4"
    assert main(["reenact", str(tiny_avatar), str(driver_with_pcm), "-o", str(out)]) == 0
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(str(out)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "aac"
        sound = np.concatenate([f.to_ndarray().mean(axis=0) for f in container.decode(stream)])
        rate = stream.codec_context.sample_rate

    assert len(frames) == FRAMES
    (rows, cols), alpha, _ = badge_patch(frames[0].shape[0])
    text = alpha[..., 0] == 1.0  # white letters; the rest of the badge is a dark plate
    for i, frame in enumerate(frames):
        badge = frame[rows, cols].astype(np.float32).mean(axis=2)
        contrast = badge[text].mean() - badge[~text].mean()
        assert contrast > 50, f"frame {i}: no SYNTHETIC badge (letters vs plate contrast {contrast:.0f})"

    # The driver's tone, re-encoded: its strongest frequency is still 440 Hz, and it lasts as long as the video.
    assert len(sound) / rate == pytest.approx(FRAMES / FPS, abs=0.1)
    spectrum = np.abs(np.fft.rfft(sound * np.hanning(len(sound))))
    peak = np.fft.rfftfreq(len(sound), 1 / rate)[spectrum.argmax()]
    assert peak == pytest.approx(TONE, abs=10)
