"""Who may use the live service, and for what: the Host allow-list, the viewer and operator
credentials, and TLS.

- Without a viewer token (the loopback default) anything that can reach the port is a viewer,
  so the Host header is checked: a DNS-rebinding page names its own host, which is refused.
- A viewer watches and connects; the operator (a separate credential, always required) also
  opens the dashboard and pauses, calibrates or switches avatars of any session.
- TLS from a given certificate and key, or from a self-signed one generated into the cache.
"""

from __future__ import annotations

import datetime
import hmac
import ipaddress
import os
import ssl
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from urllib.parse import urlsplit

from streamer.core.files import write_atomic

VIEWER_COOKIE = "avatarcam_token"
OPERATOR_COOKIE = "avatarcam_operator"


class Role(IntEnum):
    """What a request may do; higher includes lower."""

    NONE = 0
    VIEWER = 1
    OPERATOR = 2


def host_name(header: str | None) -> str | None:
    """The host name of a Host header ("Example:8080" -> "example", "[::1]:80" -> "::1"); None
    when missing or malformed."""
    if not header or any(c in header for c in "/?#@\\ \t"):
        return None
    try:
        parts = urlsplit("//" + header)
        _ = parts.port  # raises on a malformed port
    except ValueError:
        return None
    return parts.hostname or None


def loopback_names(bound: str) -> frozenset[str]:
    """Host names that reach a service bound to the loopback address `bound`."""
    names = {"localhost", bound.lower().strip("[]")}
    if bound == "localhost":
        names |= {"127.0.0.1", "::1"}
    return frozenset(names)


@dataclass(frozen=True)
class AccessPolicy:
    """The checks every request goes through.

    Attributes:
        token: the viewer credential (None: anyone who reaches the port is a viewer).
        operator_token: the operator credential (always set).
        allowed_hosts: host names accepted in the Host header when `token` is None.
    """

    token: str | None
    operator_token: str
    allowed_hosts: frozenset[str]

    def host_ok(self, header: str | None) -> bool:
        """With a viewer token the token guards; without one only the allowed names pass."""
        if self.token is not None:
            return True
        name = host_name(header)
        return name is not None and name.lower() in self.allowed_hosts

    def role(self, given: list[str]) -> Role:
        """The highest role any of the presented credentials grants."""
        role = Role.VIEWER if self.token is None else Role.NONE
        for value in given:
            if value and _same(value, self.operator_token):
                return Role.OPERATOR
            if value and self.token is not None and _same(value, self.token):
                role = Role.VIEWER
        return role


def _same(a: str, b: str) -> bool:
    # aiohttp hands a header or cookie byte that is not UTF-8 over as a lone surrogate
    # (surrogateescape); "surrogatepass" encodes it, so such a byte is a wrong credential, not a 500.
    return hmac.compare_digest(a.encode(errors="surrogatepass"), b.encode(errors="surrogatepass"))


def client_group(address: str) -> str:
    """What the per-client limits count as one client: an IPv4 address, or the /64 network of
    an IPv6 address (a host picks any of its network's 2**64 addresses at will)."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def local_addresses() -> list[str]:
    """This machine's IP addresses (for a certificate that a phone on the LAN can check)."""
    import socket

    import psutil

    found = []
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                found.append(address.address.split("%")[0])
    return found


# ---- TLS -------------------------------------------------------------------------------------------


def state_dir() -> Path:
    """avatarcam's cache root: $AVATARCAM_HOME, else ~/.cache/avatarcam (as tracking.assets)."""
    root = os.environ.get("AVATARCAM_HOME")
    return Path(root) if root else Path.home() / ".cache" / "avatarcam"


def self_signed(names: list[str], folder: Path | None = None) -> tuple[Path, Path]:
    """A certificate for `names` (host names or IP addresses) and its key, made once and kept in
    `folder` (default: `state_dir()/tls`); made again when the names change, it expires soon, it
    is a CA (as earlier versions made it) or others could read the key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = folder or state_dir() / "tls"
    cert_path, key_path = folder / "self-signed.crt", folder / "self-signed.key"
    wanted = sorted(set(names))
    now = datetime.datetime.now(datetime.UTC)
    if _reusable(cert_path, key_path, wanted, now + datetime.timedelta(days=7)):
        return cert_path, key_path

    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for name in wanted:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"avatarcam ({wanted[0]})")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        # A server certificate, not a CA: trusting it trusts this one server, not everything
        # its key (kept in the cache) could sign.
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomic(key_path, key_bytes, 0o600)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def _reusable(cert_path: Path, key_path: Path, names: list[str], valid_until: datetime.datetime) -> bool:
    """The kept certificate names `names`, is valid until `valid_until`, is not a CA (as this
    module made them before), and its key is readable by its owner only."""
    from cryptography import x509

    if not (cert_path.is_file() and key_path.is_file()) or key_path.stat().st_mode & 0o077:
        return False
    found = _cert_names(cert_path.read_bytes())
    if found is None or found[0] != names or found[1] <= valid_until:
        return False
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        return not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _cert_names(pem: bytes) -> tuple[list[str], datetime.datetime] | None:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(pem)
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    names = [str(n) for n in alt.get_values_for_type(x509.IPAddress)] + alt.get_values_for_type(x509.DNSName)
    return sorted(names), cert.not_valid_after_utc


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context; a clear error when the files do not load."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the TLS certificate {cert} with key {key}: {exc}") from None
    return context
