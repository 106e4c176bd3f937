"""TLS in a real browser: a page opened from another machine's point of view (this machine's
LAN address, not loopback) gets the camera only over https; with `--tls-self-signed` headless
Chromium, told to trust that one certificate, drives the avatar with its camera."""

from __future__ import annotations

import base64
import hashlib
import socket
from pathlib import Path

import psutil
import pytest

from tests.browser import LiveService, browsers, fake_camera, require_chromium

pytestmark = pytest.mark.browser
TOKEN = "tls-browser-token"


def _lan_address() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return str(address.address)
    return None


def _spki_sha256(cert: Path) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def test_a_lan_page_over_https_gets_the_camera_and_the_avatar(
    tiny_avatar: Path, driver_video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_chromium()
    lan = _lan_address()
    if lan is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    monkeypatch.setenv("AVATARCAM_HOME", str(tmp_path / "home"))
    camera = fake_camera(driver_video, tmp_path / "camera.y4m", seconds=2.0)
    args = ["serve", str(tiny_avatar), "--source", "webrtc", "--port", "0", "--host", "0.0.0.0"]
    live = LiveService([*args, "--token", TOKEN, "--tls-self-signed"])
    try:
        assert live.url.startswith("https://")
        port = live.base.rsplit(":", 1)[1]
        cert = tmp_path / "home" / "tls" / "self-signed.crt"
        trust = f"--ignore-certificate-errors-spki-list={_spki_sha256(cert)}"
        with browsers() as open_browser:
            browser = open_browser(camera, flags=(trust,))
            browser.open(f"https://{lan}:{port}/?token={TOKEN}")
            assert browser.js("return window.isSecureContext") is True
            browser.wait_state({"running", "no-face"}, timeout=90)
            browser.wait_value("stat-fps")
            assert browser.js("return location.protocol") == "https:"
    finally:
        code = live.stop()
    assert code == 0, f"the service exited with {code}:\n{live.log()}"
