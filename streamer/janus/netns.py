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
MEDIA_ADDRESS = "10.213.0.1"  # its address, private to the namespace
HOST_ADDRESS = "10.213.0.2"  # the other end's


@contextmanager
def media_link(host_pid: int | None = None) -> Iterator[str]:
    """A veth pair for WebRTC through Janus; yields the name of the end to give Janus as
    `ice_enforce_list` (address MEDIA_ADDRESS), and removes the pair afterwards.

    Janus never gathers ICE candidates on a loopback interface (its ice.c skips IFF_LOOPBACK),
    so with `lo` alone it cannot set up any peer connection. By default both ends live in this
    private namespace: traffic between their addresses stays inside it. With `host_pid` (root
    only) the other end goes to that process's network namespace and takes HOST_ADDRESS there,
    so that a browser on this machine reaches the namespace's gateway and Janus (at
    MEDIA_ADDRESS) over a link that exists on this machine alone. Refuses to run outside a
    private network namespace (it would add interfaces to the machine's own)."""
    if not private_network():
        raise RuntimeError("media_link() adds interfaces: run it only inside a private network namespace with just lo")
    peer = MEDIA_LINK[:-1] + "2"
    prefix = "/24"
    inside = [
        ["ip", "link", "add", MEDIA_LINK, "type", "veth", "peer", "name", peer],
        ["ip", "addr", "add", MEDIA_ADDRESS + prefix, "dev", MEDIA_LINK],
        ["ip", "link", "set", MEDIA_LINK, "up"],
    ]
    if host_pid is None:
        peer_side = [["ip", "addr", "add", HOST_ADDRESS + prefix, "dev", peer], ["ip", "link", "set", peer, "up"]]
    else:
        there = ["nsenter", f"--net=/proc/{host_pid}/ns/net"]
        inside.append(["ip", "link", "set", peer, "netns", str(host_pid)])
        peer_side = [
            [*there, "ip", "addr", "add", HOST_ADDRESS + prefix, "dev", peer],
            [*there, "ip", "link", "set", peer, "up"],
        ]
    try:
        for command in inside + peer_side:
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(
                    f"media link: `{' '.join(command)}` failed: {done.stderr.strip()} (a link of that name left by "
                    f"an earlier run? `ip link del {peer}` removes it)"
                )
        yield MEDIA_LINK
    finally:
        subprocess.run(["ip", "link", "del", MEDIA_LINK], capture_output=True)  # takes the peer along
