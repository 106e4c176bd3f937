"""NAT traversal through a real TURN server: Debian's coturn on loopback with a generated
credential; an aiortc client restricted to relay candidates (iceTransportPolicy "relay")
receives the avatar through it."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from tests.test_serve import Client, base_url, running, shared_config

pytestmark = pytest.mark.slow
TURNSERVER = shutil.which("turnserver")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_stun(port: int) -> bool:
    """Whether a STUN binding request (RFC 5389) to 127.0.0.1:port gets a success response."""
    transaction = secrets.token_bytes(12)
    request = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + transaction
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        s.sendto(request, ("127.0.0.1", port))
        try:
            reply = s.recv(2048)
        except OSError:  # timeout, or ICMP port unreachable while it starts
            return False
    return len(reply) >= 20 and reply[:2] == b"\x01\x01" and reply[8:20] == transaction


@pytest.fixture
def turn(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """coturn on 127.0.0.1, long-term credentials: (url, user, password)."""
    if TURNSERVER is None:
        pytest.skip("Debian's coturn is not installed: `apt-get install coturn`")
    port, user, password = _free_udp_port(), "avatarcam", secrets.token_urlsafe(16)
    log = tmp_path / "turn.log"
    command = [
        TURNSERVER,
        "-n",  # no configuration file
        "--listening-ip=127.0.0.1",
        "--relay-ip=127.0.0.1",
        f"--listening-port={port}",
        "--min-port=40000",
        "--max-port=40999",
        "--lt-cred-mech",
        f"--user={user}:{password}",
        "--realm=avatarcam.test",
        "--fingerprint",
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--allow-loopback-peers",
        f"--log-file={log}",
        "--simple-log",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not _answers_stun(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            text = log.read_text(errors="replace") if log.exists() else ""
            raise AssertionError(f"turnserver did not answer a STUN binding request:\n{text[-2000:]}")
    try:
        yield f"turn:127.0.0.1:{port}?transport=udp", user, password
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        if process.poll() is None:
            process.kill()


class RelayClient(Client):
    def __init__(self, url: str, user: str, password: str) -> None:
        super().__init__()
        self.pc = RTCPeerConnection(
            RTCConfiguration(
                iceServers=[RTCIceServer(url, username=user, credential=password)],
                iceTransportPolicy=RTCIceTransportPolicy.RELAY,
            )
        )
        self.pc.addTransceiver("video", direction="recvonly")
        channel = self.pc.createDataChannel("control")
        channel.on("message", self.messages.append)
        self.pc.on("track", self._on_track)


def test_a_relay_only_client_gets_the_avatar_through_turn(
    tiny_avatar: Path, driver_video: Path, turn: tuple[str, str, str]
) -> None:
    url, user, password = turn
    config = shared_config(tiny_avatar, driver_video, ice_servers=(url,), ice_username=user, ice_credential=password)

    async def scenario() -> tuple[list[str], int]:
        async with running(config) as server:
            client = RelayClient(url, user, password)
            await client.connect(base_url(server))
            offer = client.pc.localDescription.sdp
            await client.wait_frames(5)
            await client.close()
        kinds = [line.split(" typ ")[1].split()[0] for line in offer.splitlines() if " typ " in line]
        return kinds, len(client.frames)

    kinds, frames = asyncio.run(scenario())
    assert kinds and set(kinds) == {"relay"}, kinds  # the client offered nothing but TURN relays
    assert frames >= 5
