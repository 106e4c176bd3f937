"""`window`: a preview window (OpenCV's), for `serve` and `connect`; q or Esc closes it.

OpenCV's GUI needs a display and a build with a GUI backend; both are checked when the sink is
made, so a machine without them gets a clear error instead of Qt aborting the process.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable

from streamer.core.clock import Clock
from streamer.core.frames import Frame
from streamer.sinks.base import QueuedSink, SinkContext, SinkError

QUIT_KEYS = (ord("q"), 27)  # q, Esc


def display_problem() -> str | None:
    """Why a window cannot open here, or None when it can."""
    import cv2

    gui = [line for line in cv2.getBuildInformation().splitlines() if line.strip().startswith("GUI:")]
    if gui and gui[0].split(":", 1)[1].strip().upper() in ("NONE", "NO"):
        return "this OpenCV build has no GUI (opencv-python-headless)"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "there is no display (DISPLAY and WAYLAND_DISPLAY are unset)"
    return None


class WindowSink(QueuedSink):
    """Shows each frame in a window; q or Esc in the window calls `on_quit` (on the event loop).

    Args:
        title: the window's title.
        clock: the session clock (delivery timing).
        on_quit: called when the user asks the window to close.
    """

    name = "window"

    def __init__(self, title: str, clock: Clock, on_quit: Callable[[], None] | None = None) -> None:
        problem = display_problem()
        if problem is not None:
            raise SinkError(f"--sink window cannot open a window: {problem}; use --sink virtualcam or file:OUT.mp4")
        super().__init__(clock)
        self.title = title
        self.on_quit = on_quit
        self._loop = asyncio.get_running_loop()
        self._shown = False

    @classmethod
    def open(cls, target: str, context: SinkContext) -> WindowSink:
        return cls(context.title, context.clock, context.on_quit)

    def deliver(self, frame: Frame) -> None:
        import cv2

        cv2.imshow(self.title, frame.image[..., ::-1])  # OpenCV shows BGR
        self._shown = True
        key = cv2.waitKey(1) & 0xFF
        if key in QUIT_KEYS and self.on_quit is not None:
            self._loop.call_soon_threadsafe(self.on_quit)

    def finish(self) -> None:
        import cv2

        if self._shown:
            cv2.destroyWindow(self.title)
