"""How an avatar reaches the node that runs its session.

Two modes, chosen by the gateway per room:

- **object store** (default): the gateway reads the .avatar file once and `ray.put`s its bytes;
  the actor fetches them through Ray, writes them to a private temporary file (0600) and checks
  their SHA-256 before loading. No node needs a shared filesystem, and a session restarted on
  another node gets the very same bytes.
- **path**: for fleets with shared storage: every worker reads the file at the same path. A
  worker that lacks it refuses the session with an error that says so.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

SUFFIX = ".avatar"


class AvatarUnavailable(RuntimeError):
    """The avatar cannot be had on this node (path missing, bytes that do not match)."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class AvatarRef:
    """An avatar as sessions receive it.

    Attributes:
        name: the avatar's short name (the file's stem).
        sha256: the digest of the file's bytes (object-store mode; "" in path mode).
        blob: the bytes in Ray's object store (None in path mode).
        path: the file every node reads (path mode; None in object-store mode).
    """

    name: str
    sha256: str = ""
    blob: Any = None  # ray.ObjectRef[bytes]: passed nested, so the actor fetches it itself
    path: str | None = None

    @classmethod
    def put(cls, path: Path) -> AvatarRef:
        """Read `path` here (the gateway) once and put its bytes in the object store."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise AvatarUnavailable(f"avatar {path}: {exc.strerror or exc}") from None
        return cls(path.stem, sha256(data), ray.put(data))

    @classmethod
    def shared(cls, path: str) -> AvatarRef:
        """Path mode: the nodes read `path` themselves."""
        return cls(Path(path).stem, path=path)

    @property
    def mode(self) -> str:
        return "path" if self.path is not None else "object-store"

    def materialize(self, directory: Path, node: str) -> Path:
        """The file this node loads: the shared path, or the fetched bytes written to a private
        file in `directory` after their digest is checked. Runs on the worker."""
        if self.path is not None:
            path = Path(self.path)
            if not path.is_file():
                raise AvatarUnavailable(
                    f"avatar file {self.path} is not on node {node}: in path mode every worker node must hold it "
                    "at the same path; copy it there, or create the room without a path so the gateway sends "
                    "the avatar through Ray's object store"
                )
            return path
        data = ray.get(self.blob)
        if not isinstance(data, bytes) or sha256(data) != self.sha256:
            raise AvatarUnavailable(f"avatar {self.name}: the bytes from the object store do not match its SHA-256")
        fd, name = tempfile.mkstemp(prefix=f"{self.name}-", suffix=SUFFIX, dir=directory)  # mode 0600
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return Path(name)
