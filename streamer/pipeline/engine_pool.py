"""One engine per (avatar, backend, device), shared by every session that shows that avatar.

Engines are not thread-safe (`models.engines.base.Engine`), and each session calls its engine
from its own infer thread, so a shared engine serializes calls with a lock. On a CPU the
sessions compete for the same cores anyway; what sharing saves is a second copy of the weights
and the seconds it takes to build one. It is also the place where calls from several sessions
could be batched on a GPU.
"""

from __future__ import annotations

import threading
from pathlib import Path

from models.avatar import Avatar
from models.engines import Engine, EngineOutput, create_engine
from models.engines.base import U8, U16

Key = tuple[Path, str, str]


class SharedEngine:
    """An engine handle: calls go through the pool's lock, `close()` gives the handle back."""

    def __init__(self, pool: EnginePool, key: Key, engine: Engine, lock: threading.Lock) -> None:
        self._pool, self._key, self._engine, self._lock = pool, key, engine, lock
        self.name, self.device, self.resolution = engine.name, engine.device, engine.resolution
        self._closed = False

    def __call__(self, uv: U16, shaded: U8) -> EngineOutput:
        with self._lock:
            return self._engine(uv, shaded)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.release(self._key)


class EnginePool:
    """Builds an engine on first use, hands out handles, closes it when the last handle closes."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._engines: dict[Key, tuple[Engine, threading.Lock, int]] = {}

    def acquire(self, path: Path, avatar: Avatar, backend: str, device: str) -> SharedEngine:
        key = (path.resolve(), backend, device)
        with self._guard:
            if key in self._engines:
                engine, lock, users = self._engines[key]
                self._engines[key] = (engine, lock, users + 1)
                return SharedEngine(self, key, engine, lock)
        # Building takes seconds: not under the guard (two first users may both build; one wins).
        built = create_engine(backend, avatar, device)
        with self._guard:
            if key in self._engines:
                engine, lock, users = self._engines[key]
                self._engines[key] = (engine, lock, users + 1)
            else:
                engine, lock, users = built, threading.Lock(), 0
                self._engines[key] = (engine, lock, 1)
        if engine is not built:
            built.close()
        return SharedEngine(self, key, engine, lock)

    def release(self, key: Key) -> None:
        with self._guard:
            engine, lock, users = self._engines[key]
            if users > 1:
                self._engines[key] = (engine, lock, users - 1)
                return
            del self._engines[key]
        with lock:  # a call still running finishes first
            engine.close()

    def users(self) -> dict[str, int]:
        """How many sessions share each engine (for /api/info and tests)."""
        with self._guard:
            return {f"{k[0].stem}:{k[1]}:{k[2]}": users for k, (_, _, users) in self._engines.items()}
