"""Inference engines: conditioning renders in, avatar image and person mask out.

Only the inference path of the generator runs here: the neural-texture lookup, the two
StyleUNets and the cached static feature maps. Backends are named in one explicit registry
(`ENGINES`) and built with `create_engine`; the torch CPU backend is the reference the others
are checked against.
"""

from models.engines.base import ENGINES, Engine, EngineOutput, EngineUnavailable, create_engine, register

__all__ = ["ENGINES", "Engine", "EngineOutput", "EngineUnavailable", "create_engine", "register"]

# Backends register themselves on import; importing them here keeps the registry explicit.
from models.engines import onnx_engine as _onnx_engine  # noqa: F401
from models.engines import tensorrt_engine as _tensorrt_engine  # noqa: F401
from models.engines import torch_engine as _torch_engine  # noqa: F401
