"""Where the glass-to-glass time goes, per frame: capture -> server receive (uplink), server
receive -> send (the pipeline), send -> displayed (downlink).

The client (the page, `connect`) knows when it captured a stamped camera frame and when the
avatar frame with that id came back; the server knows when it received the camera frame and
when it handed the avatar frame to its encoder. The server sends its times per frame id over the
data channel (`FrameTimes`, in its stats messages), and the client maps them onto its own clock
with an offset estimated from clock pings over the same channel (`ClockSync`). The offset's
error is at most half the ping's round trip (the fastest of the recent pings is used), and it
cancels in the sum: the three segments of a frame add up to its glass-to-glass exactly.

`web/app.js` does the same in the page (its `SplitJoin` and `ClockSync`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

SEGMENTS = ("uplink", "server", "downlink")
"""The three segments of glass-to-glass, in order."""
SERVER_PARTS = ("queue", "track", "render", "infer", "compose", "handoff")
"""The server segment's parts: waits in the slots, the stages, generated -> handed to the encoder."""
KEEP_ROWS = 18_000  # joined frames kept: the last ten minutes at 30 fps
MAX_PENDING_S = 5.0  # a half of a join older than this is dropped (a lost frame, a wrapped id)


@dataclass(frozen=True)
class FrameTimes:
    """The server's times of one stamped frame (its session clock, seconds).

    Attributes:
        tag: the frame id (`streamer.core.stamp`).
        received: the camera frame came out of the WebRTC receiver, decoded.
        produced: the generating stage handed the avatar frame to the sinks.
        sent: the outgoing track handed the avatar frame to the encoder.
        stages: seconds of track, render, infer and compose.
    """

    tag: int
    received: float
    produced: float
    sent: float
    stages: tuple[float, float, float, float]

    def wire(self) -> list[float]:
        """The compact form in a stats message: [tag, received, produced, sent, track, render, infer, compose]."""
        return [self.tag, round(self.received, 6), round(self.produced, 6), round(self.sent, 6),
                *(round(s, 6) for s in self.stages)]  # fmt: skip

    @classmethod
    def from_wire(cls, item: Any) -> FrameTimes | None:
        """Parse `wire()`'s list; None when it is not one."""
        if not isinstance(item, list) or len(item) != 8:
            return None
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in item):
            return None
        tag, received, produced, sent, track, render, infer, compose = item
        return cls(int(tag), float(received), float(produced), float(sent), (track, render, infer, compose))

    def server_parts(self) -> dict[str, float]:
        """Seconds of each of SERVER_PARTS; they add up to sent - received."""
        track, render, infer, compose = self.stages
        queue = self.produced - self.received - track - render - infer - compose
        return {"queue": queue, "track": track, "render": render, "infer": infer, "compose": compose,
                "handoff": self.sent - self.produced}  # fmt: skip


class ClockSync:
    """The offset from the client's clock to the server's, from pings answered over the data channel.

    The client sends its time `t0`, the server answers with its own time `server`, and the
    answer arrives at `t1`: then server ~ (t0 + t1) / 2 + offset, within (t1 - t0) / 2.
    """

    def __init__(self, keep: int = 20) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=keep)  # (round trip, offset)

    def observe(self, t0: float, server: float, t1: float) -> None:
        if t1 >= t0:
            self._samples.append((t1 - t0, server - (t0 + t1) / 2))

    @property
    def offset(self) -> float | None:
        """server clock - client clock, seconds, from the fastest recent ping; None before one."""
        return min(self._samples)[1] if self._samples else None

    @property
    def error(self) -> float | None:
        """The offset's error bound: half that ping's round trip, seconds."""
        return min(self._samples)[0] / 2 if self._samples else None


class SplitJoin:
    """Joins the client's (captured, shown) of each frame id with the server's `FrameTimes`."""

    def __init__(self, sync: ClockSync) -> None:
        self.sync = sync
        self._client: dict[int, tuple[float, float]] = {}
        self._server: dict[int, FrameTimes] = {}
        self.rows: deque[dict[str, float]] = deque(maxlen=KEEP_ROWS)  # the joined frames, milliseconds

    def recent(self, count: int) -> list[dict[str, float]]:
        """The last `count` joined frames."""
        return list(self.rows)[-count:]

    def shown(self, tag: int, captured: float, shown: float) -> None:
        """The client captured frame `tag` at `captured` and showed its avatar at `shown` (its clock)."""
        self._client[tag] = (captured, shown)
        self._join(tag, shown)

    def server(self, times: FrameTimes, now: float) -> None:
        self._server[times.tag] = times
        self._join(times.tag, now)

    def _join(self, tag: int, now: float) -> None:
        offset = self.sync.offset
        if offset is None or tag not in self._client or tag not in self._server:
            self._prune(now)
            return
        (captured, shown), s = self._client.pop(tag), self._server.pop(tag)
        received, sent = s.received - offset, s.sent - offset
        row = {"glass": shown - captured, "uplink": received - captured, "server": sent - received,
               "downlink": shown - sent, **s.server_parts()}  # fmt: skip
        self.rows.append({k: round(v * 1000, 2) for k, v in row.items()})

    def _prune(self, now: float) -> None:
        if len(self._client) + len(self._server) < 64:
            return
        for tag in [t for t, (_, shown) in self._client.items() if now - shown > MAX_PENDING_S]:
            del self._client[tag]
        offset = self.sync.offset or 0.0
        for tag in [t for t, s in self._server.items() if now - (s.sent - offset) > MAX_PENDING_S]:
            del self._server[tag]
