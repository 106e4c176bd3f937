"""Files written whole or not at all, with their mode from the start.

The data goes to a temporary file beside the target, under a name of its own (`mkstemp`:
created with O_EXCL and mode 0600, so neither a file nor a link left there by a crash or
another user is ever written through), gets its final mode, and is renamed over the target.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data`, readable as `mode` (0o600 for a private key)."""
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(partial, mode)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
