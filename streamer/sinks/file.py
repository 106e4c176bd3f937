"""`file:OUT.mp4`: an H.264 recording, signed with content credentials when it depicts an avatar."""

from __future__ import annotations

import logging
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

from streamer.core.clock import Clock
from streamer.core.frames import Frame, Mark
from streamer.sinks.base import QueuedSink, SinkContext, SinkError

log = logging.getLogger(__name__)


class FileSink(QueuedSink):
    """Writes an H.264 mp4 with PyAV; timestamps follow capture times, so the file plays in real time.

    With `identity` (returns the avatar's identity record; asked for when the recording is
    signed) the recording goes to `NAME.recording.mp4` first and, when the sink closes, lands at
    `path` with a signed C2PA manifest naming the avatar's subject and consent
    (`streamer.provenance.credentials`; the local key unless `signing_key`). With `watermark`,
    frames that carry no layers (connect's) get the mark again at the size written.
    """

    name = "file"

    @classmethod
    def open(cls, target: str, context: SinkContext) -> FileSink:
        return cls(Path(target), context.clock, context.fps, identity=context.identity, watermark=context.watermark)

    def __init__(
        self,
        path: Path,
        clock: Clock,
        fps: float = 30.0,
        *,
        identity: Callable[[], Any] | None = None,
        signing_key: Any = None,
        watermark: Mark | None = None,
    ) -> None:
        super().__init__(clock)
        if not path.parent.is_dir():
            raise SinkError(f"cannot write {path}: folder {path.parent} does not exist")
        self.path = path
        self.fps = fps
        self.identity = identity
        self.signing_key = signing_key
        self.watermark = watermark
        if identity is not None:
            from streamer.provenance.credentials import CredentialsError, local_key

            try:
                import c2pa  # noqa: F401  - refuse at start, not when the recording ends
            except ImportError:
                raise SinkError("the file sink signs content credentials: install c2pa-python (`make setup`)") from None
            try:
                self.signing_key = signing_key or local_key()
            except CredentialsError as exc:
                raise SinkError(str(exc)) from None
        self._recording = path.with_name(path.stem + ".recording.mp4") if identity is not None else path
        self._container: Any = None
        self._stream: Any = None
        self._t0: float | None = None
        self._last_pts = -1

    def deliver(self, frame: Frame) -> None:
        import av

        if self._container is None:
            self._container = av.open(str(self._recording), "w")
            stream = self._container.add_stream("libx264", rate=round(self.fps))
            stream.width, stream.height = frame.image.shape[1], frame.image.shape[0]
            stream.pix_fmt = "yuv420p"
            stream.time_base = Fraction(1, 1000)
            # The encoder's own clock too: at 1/fps, two frames less than a period apart (a
            # jittery WebRTC arrival) would share a timestamp and the muxer refuses the second.
            stream.codec_context.time_base = Fraction(1, 1000)
            stream.options = {"preset": "veryfast", "tune": "zerolatency"}
            self._stream = stream
            self._t0 = frame.captured
        assert self._t0 is not None
        image = frame.image
        if self.watermark is not None and frame.layers is None:
            image = self.watermark(image)  # a received frame: its mark is worn by the codec it came through
        video_frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        pts = max(round((frame.captured - self._t0) * 1000), self._last_pts + 1)
        video_frame.pts, video_frame.time_base = pts, Fraction(1, 1000)
        self._last_pts = pts
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)

    def finish(self) -> None:
        if self._container is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None
            if self.identity is not None:
                self._sign()

    def _sign(self) -> None:
        from streamer.provenance.credentials import CredentialsError, sign_mp4

        assert self.identity is not None

        try:
            sign_mp4(self._recording, self.path, self.identity(), self.signing_key)
        except CredentialsError:
            log.exception("file sink: %s is kept without content credentials", self.path)
            self._recording.replace(self.path)
        else:
            self._recording.unlink()
