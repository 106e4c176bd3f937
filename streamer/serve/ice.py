"""Which of an offer's ICE candidates the service sends connectivity checks to.

Each `a=candidate` line of an offer makes aiortc send STUN binding requests to that address.
A hostile offer could name thousands, or addresses no client of this service has: link-local
ones and cloud metadata services (169.254.169.254 and the like), or ports no socket can send to
(aioice takes them, then the send fails inside asyncio with an ERROR log: found by the fuzzer).
`screen_candidates` caps the count per offer and drops those candidates before aiortc sees the
offer. Loopback and private
addresses stay: a client on this machine or the LAN (or a TURN relay on loopback) uses them.
"""

from __future__ import annotations

import ipaddress

MAX_CANDIDATES = 64  # per offer; a browser offers a few per network interface
METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "168.63.129.16")
)
PREFIX = "a=candidate:"


def screen_candidates(sdp: str) -> tuple[str, list[str]]:
    """`sdp` without the candidates the service will not check, and their addresses.

    Raises:
        ValueError: the offer carries more than MAX_CANDIDATES candidates.
    """
    kept, dropped, count = [], [], 0
    for line in sdp.split("\n"):  # each line keeps its "\r"
        if line.startswith(PREFIX):
            count += 1
            fields = line[len(PREFIX) :].split()
            address = fields[4] if len(fields) > 4 else ""
            port = fields[5] if len(fields) > 5 else ""
            if not checkable(address) or not (port.isdigit() and 0 < int(port) < 65536):
                dropped.append(f"{address} port {port}" if checkable(address) else address)
                continue
        kept.append(line)
    if count > MAX_CANDIDATES:
        raise ValueError(f"the offer carries {count} ICE candidates; at most {MAX_CANDIDATES} are accepted")
    return "\n".join(kept), dropped


def checkable(address: str) -> bool:
    """False for an address the service never sends checks to: link-local, multicast,
    unspecified, broadcast or reserved, and cloud metadata services. Host names (mDNS
    `*.local`) pass: aioice resolves those itself."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    reserved = isinstance(ip, ipaddress.IPv4Address) and ip.is_reserved  # 240.0.0.0/4, broadcast
    return not (ip.is_link_local or ip.is_multicast or ip.is_unspecified or reserved or ip in METADATA)
