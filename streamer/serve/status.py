"""What the operator's dashboard sees: the service's snapshot (sessions, load, totals) and the
few minutes of history a dashboard opened later starts with."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import psutil

from streamer.pipeline.session import AvatarSession

HISTORY_SECONDS = 300.0  # how much of the dashboard's latency and load history the service keeps


def snapshot(sessions: Sequence[AvatarSession], started: float, process: psutil.Process, device: str) -> dict[str, Any]:
    """The dashboard's view of everything (sent over /ws); `started`: the service's monotonic start."""
    views = [s.snapshot() for s in sessions]
    return {
        "type": "snapshot",
        "time": time.time(),
        "uptime_s": round(time.monotonic() - started, 1),
        "system": {
            "cpu_percent": process.cpu_percent(),
            "rss_mb": round(process.memory_info().rss / 2**20, 1),
            "gpu": gpu_load(device),
        },
        "totals": {
            "frames": sum(s["frames"] for s in views),
            "dropped": sum(s["dropped"] for s in views),
            "sessions": len(views),
        },
        "sessions": views,
    }


class History:
    """The compact part of each snapshot (latency, rate, stage costs, load), kept `seconds`."""

    def __init__(self, seconds: float = HISTORY_SECONDS) -> None:
        self.seconds = seconds
        self._samples: deque[dict[str, Any]] = deque()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._samples)

    def __len__(self) -> int:
        return len(self._samples)

    def record(self, snapshot: dict[str, Any]) -> None:
        sample = {
            "time": snapshot["time"],
            "system": {"cpu_percent": snapshot["system"]["cpu_percent"], "gpu": snapshot["system"]["gpu"]},
            "sessions": [
                {
                    "id": s["id"],
                    "fps": s.get("fps"),
                    "e2e_ms": s.get("e2e_ms"),
                    "glass_ms": s.get("glass_ms"),
                    "stages_ms": s.get("stages_ms"),
                }
                for s in snapshot["sessions"]
            ],
        }
        self._samples.append(sample)
        while self._samples and self._samples[0]["time"] < sample["time"] - self.seconds:
            self._samples.popleft()


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def gpu_load(device: str) -> dict[str, Any] | None:
    """The GPU's name, utilisation and memory in use (None on the CPU)."""
    if not device.startswith("cuda"):
        return None
    import torch

    index = torch.device(device).index or 0
    try:
        util: float | None = float(torch.cuda.utilization(index))
    except Exception:  # needs pynvml; memory is still known
        util = None
    return {
        "name": torch.cuda.get_device_name(index),
        "util_percent": util,
        "mem_mb": round(torch.cuda.memory_allocated(index) / 2**20, 1),
    }
