"""Security in a real browser. TLS: a page opened from another machine's point of view (this
machine's LAN address, not loopback) gets the camera only over https; with `--tls-self-signed`
headless Chromium, told to trust that one certificate, drives the avatar with its camera.
Credentials: the page and the dashboard take the token out of the address bar, link each other
without it, work on from their cookie after a reload, and run under the service's CSP."""

from __future__ import annotations

import base64
import hashlib
import socket
from pathlib import Path

import psutil
import pytest

from tests.browser import LiveService, browsers, fake_camera, require_chromium, wait_until

pytestmark = pytest.mark.browser
TOKEN = "tls-browser-token"
OPERATOR_TOKEN = "browser-operator-token"


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


def test_the_token_leaves_the_address_bar_and_the_links_carry_none(tiny_avatar: Path, driver_video: Path) -> None:
    """Opened from the printed URLs, the dashboard and the page remove `?token=` from the address
    bar (so from history and shared links), their links to each other carry no token (the
    dashboard's "Page" link once copied the operator's into it), a reload works on from the cookie,
    and nothing is refused by the Content-Security-Policy."""
    require_chromium()
    args = ["serve", str(tiny_avatar), "--source", f"file:{driver_video}", "--loop", "--port", "0"]
    live = LiveService([*args, "--token", TOKEN, "--operator-token", OPERATOR_TOKEN, "--admission", "limit"])
    feed = "return document.getElementById('feed').dataset.state"
    try:
        assert f"token={OPERATOR_TOKEN}" in live.operator_url and f"token={TOKEN}" in live.url
        with browsers() as open_browser:
            operator = open_browser(None)
            operator.open(live.operator_url)
            wait_until(lambda: operator.js(feed) == "live", 60, "the dashboard's feed")
            assert operator.js("return location.href") == live.base + "/dashboard"
            page_link = operator.js("return document.getElementById('page-link').href")
            assert page_link == live.base + "/"
            operator.driver.refresh()  # the cookie alone
            wait_until(lambda: operator.js(feed) == "live", 60, "the dashboard's feed after a reload")
            operator.open(page_link)
            operator.wait_state({"running", "no-face"}, timeout=90)
            assert operator.js("return document.getElementById('dashboard-link').href") == live.base + "/dashboard"
            assert operator.js("return window.avatarcam.info.role") == "operator"

            viewer = open_browser(None)
            viewer.open(live.url)
            viewer.wait_state({"running", "no-face"}, timeout=90)
            assert viewer.js("return location.href") == live.base + "/"
            assert viewer.js("return window.avatarcam.info.role") == "viewer"
            viewer.driver.refresh()
            viewer.wait_state({"running", "no-face"}, timeout=90)
            for browser in (operator, viewer):
                log = browser.console()
                assert "Content Security Policy" not in log and "Content-Security-Policy" not in log, log
    finally:
        code = live.stop()
    assert code == 0, f"the service exited with {code}:\n{live.log()}"
