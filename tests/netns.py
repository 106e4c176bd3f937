"""Where the cluster tests may run: inside a private network namespace that holds only `lo`.

Ray binds every interface and announces the machine's own address, and so does Janus unless
told otherwise; inside a namespace of their own, with only loopback, both use 127.0.0.1 and
nothing they send can leave the machine. `make test-cluster` makes that namespace (`unshare -n`
as root, `unshare -rn` otherwise) and runs the tests marked `cluster` in it.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest


def interfaces() -> list[str]:
    """The network interfaces of this process's namespace (/proc/net/dev follows the namespace;
    /sys/class/net does not, unless sysfs is remounted)."""
    lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    return [line.split(":", 1)[0].strip() for line in lines if ":" in line]


def private_network() -> bool:
    """True when loopback is the only interface and it is up (a route to 127.0.0.1 exists)."""
    if interfaces() != ["lo"]:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("127.0.0.1", 9))  # routing only: no packet is sent
        except OSError:
            return False
    return True


needs_private_network = pytest.mark.skipif(
    not private_network(),
    reason="cluster tests run only inside a private network namespace with just `lo`: "
    "run them with `make test-cluster` (unshare -n), which `make test` does",
)
