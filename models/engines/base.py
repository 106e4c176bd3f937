"""The engine interface and its registry."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from models.avatar import Avatar

U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]


def live_threads(cores: int | None = None) -> int:
    """Intra-op threads for a CPU engine beside the live pipeline: every core but one.

    The pipeline tracks and renders frame n+1 on one thread while the engine generates frame n
    on another, and the sinks encode beside them; an engine that takes every core (and whose
    pool spins between calls) slows all three. On 2 cores one thread gave 79.5 fps unpaced and
    a capture-to-sink p50 of 21.5 ms at 30 fps, against 55.8 fps and 22.8 ms with two (docs/
    benchmarks.md, "A compiled renderer and one engine thread").
    """
    available = cores if cores is not None else len(os.sched_getaffinity(0))
    return max(1, available - 1)


class EngineUnavailable(RuntimeError):
    """The backend cannot run here (library missing, no GPU); the message says what to install."""


@dataclass(frozen=True)
class EngineOutput:
    """One batch of generated frames.

    Attributes:
        image: [N, H, W, 3] uint8 RGB avatar frames I_A.
        mask: [N, H, W] uint8 predicted person mask I_FM (255 = person).
    """

    image: U8
    mask: U8


class Engine(Protocol):
    """A backend that runs an avatar's generator.

    Inputs are what `tracking.render.Conditioning` stores: `uv` as from `uv_u16()` ([N, H, W, 3]
    uint16: u, v, region code) and `shaded` as from `shaded_u8()` ([N, H, W, 3] uint8 RGB), with
    H = W = `resolution`. Calls are not thread-safe: one engine per worker thread.
    """

    name: str
    device: str
    resolution: int

    def __call__(self, uv: U16, shaded: U8) -> EngineOutput: ...

    def close(self) -> None: ...


EngineFactory = Callable[[Avatar, str], Engine]
ENGINES: dict[str, EngineFactory] = {}


def register(name: str) -> Callable[[EngineFactory], EngineFactory]:
    """Class or function decorator: make `name` build engines with `factory(avatar, device)`."""

    def add(factory: EngineFactory) -> EngineFactory:
        if name in ENGINES:
            raise ValueError(f"engine backend {name!r} is registered twice")
        ENGINES[name] = factory
        return factory

    return add


def create_engine(name: str, avatar: Avatar, device: str = "cpu") -> Engine:
    """Build backend `name` for `avatar` on `device` ('cpu' or 'cuda[:i]')."""
    try:
        factory = ENGINES[name]
    except KeyError:
        raise EngineUnavailable(f"unknown engine backend {name!r}; choose one of {sorted(ENGINES)}") from None
    return factory(avatar, device)


def check_inputs(uv: U16, shaded: U8, resolution: int) -> int:
    """Validate an engine call's arrays; returns the batch size N."""
    n = uv.shape[0] if uv.ndim == 4 else -1
    if uv.shape != (n, resolution, resolution, 3) or uv.dtype != np.uint16:
        raise ValueError(f"uv must be [N, {resolution}, {resolution}, 3] uint16, got {uv.shape} {uv.dtype}")
    if shaded.shape != uv.shape or shaded.dtype != np.uint8:
        raise ValueError(f"shaded must be {list(uv.shape)} uint8, got {shaded.shape} {shaded.dtype}")
    return n
