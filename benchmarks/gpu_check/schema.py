"""The report of the GPU check: its full layout (every cell and field), the check of a report's
shape, and `Report`, which writes it after every change."""

from __future__ import annotations

import datetime
import json
import threading
import time
import traceback
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
REPORT_NAME = "gpu_check.json"

Cell = dict[str, Any]


# ====================================================================================== report


FIELDS: dict[str, tuple[str, ...]] = {
    "tests": ("command", "passed", "failed", "skipped", "errors", "seconds", "summary", "output_tail"),
    "raster": ("frames", "devices", "region_agreement_min", "uv_max_abs_diff", "shaded_max_abs_diff", "seconds"),
    "parity": ("engine", "reference", "frames", "max_levels", "mean_levels", "max_allowed", "mean_allowed"),
    "latency": ("engine", "preset", "network", "resolution", "frames", "p50_ms", "p99_ms", "mean_ms", "setup_s"),
    "capacity": ("engine", "preset", "network", "fps", "p99_limit_ms", "seconds_per_level", "levels", "max_streams"),
    "throughput": (
        "preset",
        "batch",
        "precision",
        "channels_last",
        "compiled",
        "losses",
        "steps_timed",
        "s_per_step_p50",
        "s_per_step_mean",
        "images_per_s",
        "peak_gpu_mb",
        "setup_s",
    ),
    "training": (
        "preset",
        "frames",
        "budget_s",
        "budget_option",
        "steps",
        "seconds",
        "s_per_step",
        "last_losses",
        "avatar_mb",
        "avatar_files",
        "avatar_sha256",
    ),
    "evaluation": ("engine", "split", "frames", "full", "masked", "baselines", "seconds"),
}

THROUGHPUT_VARIANTS: tuple[tuple[str, str, bool, bool], ...] = (
    # (key, precision, channels_last, compiled)
    ("fp32", "fp32", False, False),
    ("bf16", "bf16", False, False),  # what `avatarcam train` runs: the GPU presets set train.bf16
    ("fp32_channels_last", "fp32", True, False),
    ("bf16_channels_last", "bf16", True, False),
    ("fp32_channels_last_compiled", "fp32", True, True),
    ("bf16_channels_last_compiled", "bf16", True, True),
)
LATENCY_NETWORKS = ("teacher_256", "teacher_512", "student_256")


def cell(kind: str, reason: str, status: str = "skipped") -> Cell:
    """A report cell with every field of its kind null, and why."""
    return {"status": status, "reason": reason, **dict.fromkeys(FIELDS[kind])}


def filled(kind: str, **values: Any) -> Cell:
    unknown = set(values) - set(FIELDS[kind])
    assert not unknown, (kind, unknown)
    return {"status": "ok", "reason": None, **dict.fromkeys(FIELDS[kind]), **values}


def skeleton(mode: str) -> dict[str, Any]:
    """The report's full layout before anything is measured: every cell skipped, not reached."""
    later = "not reached: the run stopped or its time budget ran out before this measurement"
    return {
        "schema_version": SCHEMA_VERSION,
        "mode": mode,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "finished": None,
        "budget_s": None,
        "elapsed_s": None,
        "machine": {},
        "pack": {},
        "setup": {},
        "correctness": {
            "pytest_gpu": cell("tests", later),
            "raster": cell("raster", later),
            "engines": {
                f"{net}/{engine}": cell("parity", later)
                for net in ("teacher_256", "student_256")
                for engine in ("torch_cuda_fp32", "torch_cuda_fp16", "onnx_cpu", "onnx_cuda", "tensorrt")
            },
        },
        "latency": {f"{net}/compile_{c}": cell("latency", later) for net in LATENCY_NETWORKS for c in ("off", "on")},
        "capacity": {net: cell("capacity", later) for net in ("teacher_256", "student_256")},
        "train_throughput": {
            f"{role}/{key}": cell("throughput", later) for role in ("256", "512") for key, *_ in THROUGHPUT_VARIANTS
        },
        "training": cell("training", later),
        "evaluation": cell("evaluation", later),
        "errors": [],
    }


def check_report(report: dict[str, Any]) -> list[str]:
    """Problems with a report's shape: missing cells or fields, a null without a reason."""
    problems: list[str] = []
    expected = skeleton(report.get("mode", "gpu"))

    def walk(want: Any, got: Any, where: str) -> None:
        if isinstance(want, dict) and "status" in want:
            if not isinstance(got, dict):
                problems.append(f"{where}: missing")
                return
            missing = set(want) - set(got)
            if missing:
                problems.append(f"{where}: fields {sorted(missing)} missing")
            if got.get("status") not in ("ok", "failed", "skipped"):
                problems.append(f"{where}: bad status {got.get('status')!r}")
            nulls = [k for k in fields_of(want) if got.get(k) is None]
            if (got.get("status") != "ok" or nulls) and not got.get("reason"):
                problems.append(f"{where}: null fields {nulls} or status {got.get('status')} without a reason")
            return
        if isinstance(want, dict):
            if not isinstance(got, dict):
                problems.append(f"{where}: missing")
                return
            for key, sub in want.items():
                if key not in got:
                    problems.append(f"{where}.{key}: missing")
                else:
                    walk(sub, got[key], f"{where}.{key}")

    walk(expected, report, "report")
    return problems


def fields_of(template: Cell) -> list[str]:
    return [k for k in template if k not in ("status", "reason")]


class Report:
    """The report in memory and on disk; written atomically after every change."""

    def __init__(self, out: Path, mode: str, budget_s: float) -> None:
        self.out = out
        self.data = skeleton(mode)
        self.data["budget_s"] = budget_s
        self.began = time.monotonic()
        self.budget_s = budget_s
        self.lock = threading.Lock()
        out.mkdir(parents=True, exist_ok=True)
        self.write()

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.began)

    def set(self, path: str, value: Any) -> None:
        """Set `path` ('section/key' or 'section.sub.key', dots between levels)."""
        with self.lock:
            *parents, last = path.split(".")
            node = self.data
            for p in parents:
                node = node[p]
            node[last] = value
        self.write()

    def error(self, where: str, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        with self.lock:
            self.data["errors"].append({"where": where, "error": text, "traceback": traceback.format_exc()[-3000:]})
        self.write()
        return text

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - self.began, 1)
        partial = self.out / (REPORT_NAME + ".partial")
        partial.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        partial.replace(self.out / REPORT_NAME)
