"""`file:PATH`: a video file paced like a camera."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from streamer.core.clock import Clock, Pacer
from streamer.core.frames import U8, Frame
from streamer.sources.base import SourceContext, SourceEnded, SourceError
from tracking.video import VideoError, probe, read_frames

log = logging.getLogger(__name__)


class FileSource:
    """A video file played in real time at its own frame rate (`loop`: start over at the end).

    Frames are decoded one ahead in a worker thread, then released on absolute deadlines; with
    `paced=False`, as soon as they are decoded (a benchmark's unpaced source).
    """

    def __init__(
        self, path: Path, clock: Clock, *, loop: bool = False, fps: float | None = None, paced: bool = True
    ) -> None:
        try:
            info = probe(path)
        except VideoError as exc:
            raise SourceError(str(exc)) from None
        self.name = f"file:{path}"
        self.path = path
        self.loop = loop
        self.clock = clock
        self.fps = fps or info.fps
        self._pacer = Pacer(self.fps, clock) if paced else None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="file-source")
        self._frames: Iterator[tuple[int, float, U8]] | None = None
        self._count = 0

    @classmethod
    def open(cls, target: str, context: SourceContext) -> FileSource:
        return cls(Path(target), context.clock, loop=context.loop, fps=context.fps)

    def _next_image(self) -> U8 | None:
        for _ in range(2):  # at the end of a looping file, reopen once
            if self._frames is None:
                self._frames = read_frames(self.path)
            try:
                return next(self._frames)[2]
            except StopIteration:
                self._frames = None
                if not self.loop:
                    return None
        return None

    async def recv(self) -> Frame:
        loop = asyncio.get_running_loop()
        try:
            image = await loop.run_in_executor(self._executor, self._next_image)
        except VideoError as exc:
            log.warning("file source %s stopped: %s", self.path, exc)
            raise SourceEnded from exc
        if image is None:
            raise SourceEnded
        if self._pacer is not None:
            await self._pacer.wait()
        self._count += 1
        return Frame(image, self.clock.now(), self._count - 1)

    async def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
