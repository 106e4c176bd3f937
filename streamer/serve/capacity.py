"""Admission by capacity: admit a session only while the machine can keep every session's frame rate.

The model is a budget of core-seconds per second. Each avatar pipeline costs, per frame, the
sum of its measured stage times (track, render, compose, sink, and infer when the engine runs
on the CPU); each WebRTC peer adds its video encoder, timed once at startup on a frame of the
avatar's size. At `fps` frames per second, N pipelines and P peers need
`fps * (N * pipeline + P * encode)` cores. A session is admitted while that stays within
`cores * headroom`; the first one always is (serving nothing helps no one). With the engine on
a GPU, its infer time is also summed against one GPU-second per second.

Stage times are wall-clock times measured under whatever load the machine has, so under load
the estimate shrinks: the model errs towards refusing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np

log = logging.getLogger(__name__)

CPU_STAGES = ("track", "render", "compose", "sink")
SMOOTHING = 0.3  # weight of a new observation in the running estimate


@dataclass(frozen=True)
class Verdict:
    """Whether one more session fits, and why (for the log and the 503 message)."""

    admit: bool
    reason: str
    retry_after: int = 5


class Capacity:
    """What the service can serve, from measured costs.

    Args:
        cores: CPU budget in cores (the cores this process may run on).
        fps: the frame rate each session must keep.
        gpu: the engine runs on a GPU (infer is charged to it, not to the CPU).
        headroom: the share of the budget sessions may use (the rest: event loop, network, OS).
    """

    def __init__(self, cores: float, fps: float, *, gpu: bool = False, headroom: float = 0.85) -> None:
        self.cores = cores
        self.fps = fps
        self.gpu = gpu
        self.headroom = headroom
        self.pipeline_s: float | None = None  # CPU seconds per frame of one pipeline
        self.infer_s: float | None = None  # GPU seconds per frame (gpu only)
        self.encode_s = 0.0  # CPU seconds per frame of one peer's encoder

    def observe(self, snapshots: Iterable[dict[str, Any]]) -> None:
        """Fold in the stage medians of running sessions (their `snapshot()`s)."""
        cpu, gpu = [], []
        for snap in snapshots:
            stages = snap.get("stages_ms") or {}
            if any(stages.get(s) is None for s in ("track", "infer")):
                continue  # not measured yet
            per_frame = sum(stages[s]["p50"] for s in CPU_STAGES if stages.get(s)) / 1000
            infer = stages["infer"]["p50"] / 1000
            if self.gpu:
                gpu.append(infer)
            else:
                per_frame += infer
            cpu.append(per_frame)
        if cpu:
            self.pipeline_s = _blend(self.pipeline_s, float(np.mean(cpu)))
        if gpu:
            self.infer_s = _blend(self.infer_s, float(np.mean(gpu)))

    def demand(self, pipelines: int, peers: int) -> tuple[float, float]:
        """(CPU cores, GPU share) that `pipelines` pipelines and `peers` peers need."""
        cpu = self.fps * (pipelines * (self.pipeline_s or 0.0) + peers * self.encode_s)
        gpu = self.fps * pipelines * (self.infer_s or 0.0)
        return cpu, gpu

    def admit(self, pipelines: int, peers: int, *, new_pipeline: bool) -> Verdict:
        """May one more peer (with its own pipeline when `new_pipeline`) join `pipelines`
        running pipelines and `peers` peers?"""
        if peers == 0 and (pipelines == 0 or not new_pipeline):
            return Verdict(True, "the first session")
        if new_pipeline and self.pipeline_s is None:
            return Verdict(False, "the running session's cost is still being measured", retry_after=2)
        cpu, gpu = self.demand(pipelines + int(new_pipeline), peers + 1)
        budget = self.cores * self.headroom
        if cpu > budget:
            return Verdict(False, f"it would need {cpu:.2f} of {budget:.2f} CPU cores at {self.fps:g} fps")
        if gpu > self.headroom:
            return Verdict(False, f"it would need {gpu:.0%} of the GPU at {self.fps:g} fps")
        return Verdict(True, f"{cpu:.2f} of {budget:.2f} CPU cores at {self.fps:g} fps")

    def info(self, pipelines: int, peers: int) -> dict[str, Any]:
        cpu, gpu = self.demand(pipelines, peers)
        return {
            "cores": self.cores,
            "fps": self.fps,
            "pipeline_ms": None if self.pipeline_s is None else round(self.pipeline_s * 1000, 2),
            "encode_ms": round(self.encode_s * 1000, 2),
            "infer_gpu_ms": None if self.infer_s is None else round(self.infer_s * 1000, 2),
            "cpu_cores_used": round(cpu, 3),
            "gpu_share_used": round(gpu, 3) if self.gpu else None,
        }


def _blend(old: float | None, new: float) -> float:
    return new if old is None else (1 - SMOOTHING) * old + SMOOTHING * new


def time_encoder(codec: str, size: int, frames: int = 12) -> float:
    """Seconds per frame aiortc's `codec` ("vp8" or "h264") encoder takes on `size` x `size`
    frames (moving noise, which is harder than an avatar: an upper estimate)."""
    from aiortc.codecs import get_encoder
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    from streamer.core.rtc import CODECS

    encoder = get_encoder(RTCRtpCodecParameters(mimeType=CODECS[codec], clockRate=90_000, payloadType=96))
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    timings = []
    for i in range(frames + 2):
        frame = av.VideoFrame.from_ndarray(np.roll(base, 3 * i, axis=1), format="rgb24")
        frame.pts, frame.time_base = i * 3000, Fraction(1, 90_000)
        start = time.perf_counter()
        encoder.encode(frame, force_keyframe=False)
        if i >= 2:  # the first frames set up the encoder
            timings.append(time.perf_counter() - start)
    return float(np.median(timings))
