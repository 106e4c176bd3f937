"""`python benchmarks/gpu_check pack|run ...` (what `make gpu-pack` and `make gpu-check` run); see run.py."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

if not __package__:
    # Run as a folder, sys.path[0] is this folder, where `run`, `pack` and `schema` would shadow modules of
    # those names; the folder above takes its place, so the package imports as `gpu_check`.
    HERE = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
    sys.path.insert(0, str(HERE.parent))

if __name__ == "__main__":
    importlib.import_module(f"{__package__ or 'gpu_check'}.run").main()
