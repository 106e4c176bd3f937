"""`janus:URL#room=N&pin=PIN`: the driver's camera, received from a Janus VideoRoom room.

The source subscribes to the room's `DRIVER` publisher (`streamer.janus.client`) and follows
it across re-publishes; frames are converted by `TrackSource`, as for a browser's camera. It
connects on the first `recv()`, or earlier with `await connect()` (which raises SourceError,
saying what to do, when Janus is down, the room is unknown or the pin is wrong).
"""

from __future__ import annotations

import logging

from streamer.core.clock import Clock
from streamer.core.frames import Frame
from streamer.janus.client import DRIVER, JanusError, JanusSession, Room, Subscriber
from streamer.sources.base import SourceContext, SourceError
from streamer.sources.track import TrackSource

log = logging.getLogger(__name__)


class JanusSource:
    """The `DRIVER` of a Janus room as a source (see the module docstring).

    Args:
        room: the room (URL, number, pin).
        clock: stamps arrival time as the capture time.
        read_stamps: read the frame identifier painted into each frame.
        timeout: seconds to wait for the room's driver to publish.
    """

    def __init__(self, room: Room, clock: Clock, *, read_stamps: bool = False, timeout: float = 10.0) -> None:
        self.name = f"janus:{room}"
        self.room = room
        self.clock = clock
        self.read_stamps = read_stamps
        self.timeout = timeout
        self.janus: JanusSession | None = None
        self.subscriber: Subscriber | None = None
        self._frames: TrackSource | None = None

    @classmethod
    def open(cls, target: str, context: SourceContext) -> JanusSource:
        try:
            room = Room.parse(target)
        except JanusError as exc:
            raise SourceError(str(exc)) from None
        return cls(room, context.clock, read_stamps=context.stamps)

    async def connect(self) -> None:
        """Subscribe to the room's driver; SourceError saying what to do when that fails."""
        if self._frames is not None:
            return
        try:
            self.janus = await JanusSession.open(self.room.url, api_secret=self.room.api_secret)
            self.subscriber = await self.janus.subscribe(self.room, display=DRIVER, timeout=self.timeout)
        except JanusError as exc:
            await self.close()
            raise SourceError(f"source {self.name}: {exc}") from exc
        assert self.subscriber.track is not None
        self._frames = TrackSource(self.subscriber.track, self.clock, read_stamps=self.read_stamps, name=self.name)

    async def recv(self) -> Frame:
        if self._frames is None:
            await self.connect()
        assert self._frames is not None
        return await self._frames.recv()

    async def close(self) -> None:
        if self._frames is not None:
            await self._frames.close()
        if self.janus is not None:
            await self.janus.close()
