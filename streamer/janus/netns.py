"""Running Janus (and Ray) where they reach nothing but this machine: a private network namespace.

Ray binds every interface and announces the machine's own address; inside a network namespace
of its own that holds only `lo`, it uses 127.0.0.1 and nothing it sends can leave. Janus never
gathers ICE candidates on a loopback interface, so WebRTC through it also needs `media_link()`:
a veth pair whose two ends both live in that namespace. `make test-cluster`, `make
cluster-demo` and `benchmarks/bench_cluster.py` make the namespace (`unshare -n` as root,
`unshare -rn` otherwise); this module checks for it and adds the link.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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


MEDIA_LINK = "avcam-media"  # the veth end Janus gathers its ICE candidates on
MEDIA_ADDRESS = "10.213.0.1"  # its address (the other end takes .2); private to the namespace


@contextmanager
def media_link() -> Iterator[str]:
    """A veth pair inside this private namespace, for WebRTC through Janus; yields the name of
    the end to give Janus as `ice_enforce_list`, and removes the pair afterwards.

    Janus never gathers ICE candidates on a loopback interface (its ice.c skips IFF_LOOPBACK),
    so with `lo` alone it cannot set up any peer connection. Both ends live in this namespace:
    traffic between their addresses stays on this machine, inside the namespace. Refuses to run
    outside a private network namespace (it would add interfaces to the machine's own)."""
    if not private_network():
        raise RuntimeError("media_link() adds interfaces: run it only inside a private network namespace with just lo")
    peer = MEDIA_LINK[:-1] + "2"
    base = MEDIA_ADDRESS.rsplit(".", 1)[0]
    commands = [
        ["ip", "link", "add", MEDIA_LINK, "type", "veth", "peer", "name", peer],
        ["ip", "addr", "add", f"{MEDIA_ADDRESS}/24", "dev", MEDIA_LINK],
        ["ip", "addr", "add", f"{base}.2/24", "dev", peer],
        ["ip", "link", "set", MEDIA_LINK, "up"],
        ["ip", "link", "set", peer, "up"],
    ]
    try:
        for command in commands:
            subprocess.run(command, check=True, capture_output=True)
        yield MEDIA_LINK
    finally:
        subprocess.run(["ip", "link", "del", MEDIA_LINK], capture_output=True)  # takes the peer along
