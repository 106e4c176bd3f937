"""`janus:URL#room=N&pin=PIN`: the avatar, published into a Janus VideoRoom room as `AVATAR`.

One `AvatarTrack` (`streamer.sinks.webrtc`) is published once, so the avatar is encoded once
however many viewers subscribe: Janus relays the packets. The sink connects on the first frame
it is sent, or earlier with `await connect()` (which raises SinkError, saying what to do, when
Janus is down, the room is unknown or the pin is wrong); frames sent before the publisher is up
wait in the track's one-frame slot.
"""

from __future__ import annotations

import asyncio
import logging

from streamer.core.clock import Clock
from streamer.core.frames import Frame
from streamer.janus.client import AVATAR, JanusError, JanusSession, Publisher, Room
from streamer.sinks.base import Report, SinkContext, SinkError
from streamer.sinks.webrtc import AvatarTrack

log = logging.getLogger(__name__)


class JanusSink:
    """The avatar published into a Janus room (see the module docstring)."""

    def __init__(self, room: Room, clock: Clock, *, codec: str = "vp8") -> None:
        self.name = f"janus:{room}"
        self.room = room
        self.codec = codec
        self.track = AvatarTrack(clock)
        self.janus: JanusSession | None = None
        self.publisher: Publisher | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def open(cls, target: str, context: SinkContext) -> JanusSink:
        try:
            room = Room.parse(target)
        except JanusError as exc:
            raise SinkError(str(exc)) from None
        return cls(room, context.clock)

    @property
    def report(self) -> Report | None:
        return self.track.report

    @report.setter
    def report(self, value: Report | None) -> None:
        self.track.report = value

    async def connect(self) -> None:
        """Publish the avatar track; SinkError saying what to do when that fails."""
        async with self._lock:
            if self.publisher is not None:
                return
            try:
                self.janus = await JanusSession.open(self.room.url, api_secret=self.room.api_secret)
                self.publisher = await self.janus.publish(self.room, self.track, display=AVATAR, codec=self.codec)
            except JanusError as exc:
                if self.janus is not None:
                    await self.janus.close()
                    self.janus = None
                raise SinkError(f"sink {self.name}: {exc}") from exc

    async def _connect_logged(self) -> None:
        try:
            await self.connect()
        except SinkError as exc:
            log.error("%s", exc)

    def send(self, frame: Frame) -> bool:
        if self._connecting is None and self.publisher is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect_logged(), name="janus-sink")
        return self.track.send(frame)

    def status(self, title: str, detail: str = "") -> None:
        """Viewers' pages show their own state."""

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        await self.track.close()
        if self.janus is not None:
            await self.janus.close()  # closes the publisher too
