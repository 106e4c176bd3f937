"""The gateway's rooms: one Janus VideoRoom and one session actor per avatar stream, and the
per-room credentials that admit its driver and its viewers.

A room's Janus `secret` (destroys it) stays in the gateway; its `pin` (joins it) goes only to
holders of the room's driver or viewer token, which the gateway issues when the room is
created and checks (constant time) on every join.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum


class Participant(StrEnum):
    DRIVER = "driver"
    VIEWER = "viewer"


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(errors="surrogatepass"), b.encode(errors="surrogatepass"))


GLASS_REPORTS = 60  # the driver's latest glass-to-glass medians a room keeps (about 2 minutes)


@dataclass(frozen=True)
class RoomRecord:
    """One stream the gateway created.

    Attributes:
        room: the Janus room number.
        avatar: the avatar's name.
        session: the session actor's name in the cluster.
        secret: the Janus secret that destroys the room (never leaves the gateway).
        pin: the Janus pin that joins the room (given to token holders).
        tokens: the room's credential per participant role.
        created: wall-clock seconds.
        glass: the driver's page's glass-to-glass medians, seconds, newest last (its reports).
    """

    room: int
    avatar: str
    session: str
    secret: str
    pin: str
    tokens: dict[Participant, str] = field(hash=False)
    created: float = field(default_factory=time.time)
    glass: deque[float] = field(default_factory=lambda: deque(maxlen=GLASS_REPORTS), hash=False, compare=False)

    @classmethod
    def new_secrets(cls) -> tuple[str, str, dict[Participant, str]]:
        """(secret, pin, tokens) for a new room, each from the OS's CSPRNG."""
        tokens = {role: secrets.token_urlsafe(24) for role in Participant}
        return secrets.token_urlsafe(24), secrets.token_urlsafe(18), tokens

    def admits(self, role: Participant, token: str) -> bool:
        """Whether `token` is this room's credential for `role` (the driver's admits a viewer too)."""
        if _same(token, self.tokens[role]):
            return True
        return role is Participant.VIEWER and _same(token, self.tokens[Participant.DRIVER])
