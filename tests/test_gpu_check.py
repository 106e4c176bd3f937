"""`benchmarks/gpu_check/` (`make gpu-check`) in its CPU smoke mode, so the GPU run cannot rot.

The pack is made from the tiny real dataset of `tiny_avatar_root` (cap12, 64 px), and the run
happens in a child process with mediapipe, PyAV and aiortc blocked, as they are absent on the
GPU machine. Its report must have every cell, each measured or null with a reason.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.gpu_check.run import BLOCKED
from benchmarks.gpu_check.schema import check_report, filled, skeleton

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check"  # a folder with __main__.py: `python benchmarks/gpu_check ...`


def test_report_check_flags_missing_fields_and_unexplained_nulls() -> None:
    report = skeleton("gpu")
    assert check_report(report) == []  # every cell starts skipped, with a reason
    ok = filled("latency", engine="x", preset="256", network="teacher", resolution=256, frames=10)
    report["latency"]["teacher_256/compile_off"] = ok  # p50_ms etc. null, no reason
    del report["capacity"]["student_256"]["max_streams"]
    problems = check_report(report)
    assert any("teacher_256/compile_off" in p and "without a reason" in p for p in problems), problems
    assert any("student_256" in p and "max_streams" in p for p in problems), problems
    del report["training"]
    assert any("training: missing" in p for p in check_report(report))


@pytest.fixture(scope="module")
def smoke(tiny_avatar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("gpu-check")
    pack = subprocess.run(
        [sys.executable, str(SCRIPT), "pack", "--data", str(tiny_avatar_root / "data"), "-o", str(tmp / "pack")],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert pack.returncode == 0, pack.stderr[-3000:]
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "run", "--pack", str(tmp / "pack"), "--out", str(tmp / "out"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    return {
        "pack_stdout": pack.stdout,
        "pack": json.loads((tmp / "pack" / "pack.json").read_text()),
        "report": json.loads((tmp / "out" / "gpu_check.json").read_text()),
        "out": sorted(p.name for p in (tmp / "out").iterdir()),
    }


@pytest.mark.slow
def test_pack_prints_its_size_under_the_limit_and_measures_its_fidelity(smoke: dict[str, Any]) -> None:
    line = re.search(r"= ([\d.]+) MiB \(limit 64.0 MiB\)", smoke["pack_stdout"])
    assert line, smoke["pack_stdout"]
    assert 0 < float(line.group(1)) < 64
    pack = smoke["pack"]
    assert pack["sizes_mib"]["total"] == float(line.group(1))
    # The tiny dataset was rendered by this checkout's renderer: the packed landmarks reproduce it.
    assert pack["renders_reproduced_on_cpu"]["uv_pixels_equal_min"] == 1.0
    assert pack["weights"]["facenet"]["embedding_cosine_min"] > 0.999
    assert pack["weights"]["lpips"]["lpips_abs_diff_max"] < 1e-3
    assert pack["train_frames"] == pack["train_frames_in_source"]  # a tiny set fits whole


@pytest.mark.slow
def test_smoke_run_fills_every_cell_without_the_gpu_machine_s_missing_modules(smoke: dict[str, Any]) -> None:
    report = smoke["report"]
    assert check_report(report) == []
    assert report["errors"] == [], report["errors"]
    assert report["mode"] == "smoke" and report["finished"]
    assert report["setup"]["blocked_imports"] == list(BLOCKED)
    assert report["setup"]["train_frames"] == report["pack"]["train_frames"]
    assert smoke["out"] == ["gpu_check.json", "trained.avatar"]  # what comes back from $OUT

    def ok(cell: dict[str, Any]) -> dict[str, Any]:
        assert cell["status"] == "ok", cell
        return cell

    step = ok(report["train_throughput"]["256/fp32"])
    assert step["preset"] == "tiny" and step["steps_timed"] >= 2 and step["s_per_step_p50"] > 0
    assert step["losses"]["mrf"] > 0 and step["losses"]["cos"] > 0 and step["losses"]["gan_g"] > 0
    training = ok(report["training"])
    assert training["steps"] >= 1 and training["avatar_files"] == ["trained.avatar"]
    for region in ("full", "masked"):
        values = ok(report["evaluation"])[region]
        assert 5 < values["psnr"] < 60 and 0 < values["ssim"] <= 1 and math.isfinite(values["lpips"])
    for net in ("teacher_256", "student_256"):
        parity = ok(report["correctness"]["engines"][f"{net}/onnx_cpu"])
        assert parity["max_levels"] <= parity["max_allowed"]
        latency = ok(report["latency"][f"{net}/compile_off"])
        assert 0 < latency["p50_ms"] <= latency["p99_ms"]
        levels = ok(report["capacity"][net])["levels"]
        assert levels and levels[0]["streams"] == 1
    # What needs CUDA says so instead of pretending.
    for cell in (
        report["correctness"]["raster"],
        report["correctness"]["engines"]["teacher_256/torch_cuda_fp16"],
        report["latency"]["teacher_256/compile_on"],
        report["train_throughput"]["512/bf16_channels_last_compiled"],
    ):
        assert cell["status"] == "skipped" and cell["reason"], cell


def test_what_the_run_imports_loads_without_mediapipe_pyav_aiortc_numba() -> None:
    """The GPU machine has none of them: a module-level import of one would end the run there."""
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); from gpu_check.run import BLOCKED, block_imports; "
        "block_imports(BLOCKED); "
        "import models.training.train, models.evaluation.evaluate, models.engines, models.engines.cuda_engine, "
        "models.evaluation.metrics, "
        "models.avatar, models.networks.student, tracking.render, models.pretrained.vgg19, models.pretrained.facenet\n"
        "try:\n    import av\nexcept ImportError:\n    print('blocked')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "blocked"
