"""Hand-off between pipeline stages: bounded, dropping the oldest, counting every drop."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Closed(Exception):
    """The queue was closed and is empty: the producer is gone."""


class DropQueue(Generic[T]):
    """A bounded asyncio queue whose `put` never waits: when full, the oldest item is dropped.

    With `maxsize=1` it is a latest-frame slot: a slow consumer always gets the newest frame,
    so latency cannot build up behind it. Single event loop only.
    """

    def __init__(self, maxsize: int = 1) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self._items: deque[T] = deque(maxlen=maxsize)
        self._ready = asyncio.Event()
        self._taken = asyncio.Event()
        self._closed = False
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Add `item`; returns False if an older item was dropped to make room."""
        full = len(self._items) == self._items.maxlen
        if full:
            self.dropped += 1
        self._items.append(item)
        self._ready.set()
        return not full

    async def get(self) -> T:
        """The oldest item, waiting for one; raises Closed once closed and drained."""
        while not self._items:
            if self._closed:
                raise Closed
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        self._taken.set()
        return item

    async def drained(self) -> None:
        """Wait until the queue is empty (or closed): a producer's back-pressure."""
        while self._items and not self._closed:
            self._taken.clear()
            await self._taken.wait()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Wake waiters; `get` raises Closed after the remaining items."""
        self._closed = True
        self._ready.set()
        self._taken.set()
