"""Content credentials: a signed C2PA manifest in every mp4 the project writes.

The manifest (made and read with `c2pa-python`, the Content Authenticity Initiative's library)
says the video was created by a trained model (IPTC digital source type
`trainedAlgorithmicMedia`), names the avatar's subject and their consent statement, and records
the invisible watermark's payload. It is bound to the file by a hash of its boxes, so changing a
byte of the video makes the manifest fail to verify.

Signing keys: a certificate chain + private key the user passes (`--c2pa-cert`, `--c2pa-key`),
or by default a local one generated on first use into the cache (`$AVATARCAM_HOME/c2pa`, else
`~/.cache/avatarcam/c2pa`): a self-made CA and a signing certificate it issued (C2PA refuses a
self-signed end certificate). What that proves and does not prove is in docs/disclosure.md.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamer.core.files import write_atomic
from streamer.provenance.watermark import MARKER, identity_digest

TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
ASSERTION = "org.avatarcam.disclosure"
FIX = "pip install 'c2pa-python==0.38.1' (or `make setup`), or pass --no-credentials"


class CredentialsError(RuntimeError):
    """Content credentials cannot be made or read; the message says what to do."""


@dataclass(frozen=True)
class SigningKey:
    """A certificate chain (end certificate first, PEM) and its private key (PEM).

    Attributes:
        chain: the PEM certificates.
        key: the PEM private key (EC P-256 for ES256).
        anchor: the local CA's certificate when this is the generated local key (None for a user's).
    """

    chain: bytes
    key: bytes
    anchor: bytes | None = None


def credentials_dir() -> Path:
    """Where the local signing key lives: $AVATARCAM_HOME/c2pa, else ~/.cache/avatarcam/c2pa."""
    from tracking.assets import cache_dir

    return cache_dir().parent / "c2pa"


def _require_c2pa() -> Any:
    try:
        import c2pa
    except ImportError as exc:
        raise CredentialsError(f"content credentials need c2pa-python ({exc}); {FIX}") from None
    return c2pa


def local_key(folder: Path | None = None) -> SigningKey:
    """The local signing key, generated on first use: a CA and a signing certificate it issued."""
    folder = folder or credentials_dir()
    ca_path, chain_path, key_path = folder / "ca.pem", folder / "signer.pem", folder / "signer.key"
    if not (ca_path.is_file() and chain_path.is_file() and key_path.is_file()):
        _generate(folder, ca_path, chain_path, key_path)
    return SigningKey(chain_path.read_bytes(), key_path.read_bytes(), ca_path.read_bytes())


def _generate(folder: Path, ca_path: Path, chain_path: Path, key_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, common),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "avatarcam (local, unverified)"),
            ]
        )

    def usage(*, sign: bool, ca: bool) -> x509.KeyUsage:
        return x509.KeyUsage(sign, False, False, False, False, ca, ca, False, False)

    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=3650)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("avatarcam local CA"))
        .issuer_name(name("avatarcam local CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage(sign=False, ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    signer_key = ec.generate_private_key(ec.SECP256R1())
    signer = (
        x509.CertificateBuilder()
        .subject_name(name("avatarcam signer"))
        .issuer_name(ca.subject)
        .public_key(signer_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(sign=True, ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(signer_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    folder.mkdir(parents=True, exist_ok=True)
    private = signer_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    # `local_key` uses the three only together, and the CA is written last: an interrupted
    # run leaves no CA, and the next one makes a new set.
    ca_path.unlink(missing_ok=True)
    write_atomic(key_path, private, 0o600)
    write_atomic(chain_path, signer.public_bytes(pem) + ca.public_bytes(pem))
    write_atomic(ca_path, ca.public_bytes(pem))


def user_key(cert: Path, key: Path) -> SigningKey:
    """A signing key the user passes: a PEM chain (end certificate first) and its PEM key."""
    for path in (cert, key):
        if not path.is_file():
            raise CredentialsError(f"{path}: no such file (C2PA signing certificate chain and key, PEM)")
    return SigningKey(cert.read_bytes(), key.read_bytes())


def manifest(identity: Any, title: str) -> dict[str, Any]:
    """The manifest definition for an avatar video."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("avatarcam")
    except PackageNotFoundError:
        ours = "unknown"
    fields = identity if isinstance(identity, dict) else identity.__dict__
    return {
        "claim_generator_info": [{"name": "avatarcam", "version": ours}],
        "title": title,
        "format": "video/mp4",
        "assertions": [
            {
                "label": "c2pa.actions.v2",
                "data": {
                    "actions": [
                        {
                            "action": "c2pa.created",
                            "digitalSourceType": TRAINED,
                            "softwareAgent": {"name": "avatarcam", "version": ours},
                            "description": "a personal head avatar generated from a driving video or camera",
                        }
                    ]
                },
            },
            {
                "label": ASSERTION,
                "data": {
                    "subject": fields["subject"],
                    "consent": fields["consent"],
                    "source_sha256": fields["source_sha256"],
                    "watermark": {"marker": f"{MARKER:04x}", "digest": f"{identity_digest(identity):08x}"},
                },
            },
        ],
    }


def sign_mp4(source: Path, out: Path, identity: Any, key: SigningKey | None = None) -> None:
    """Write `out`: the mp4 `source` with a signed manifest for `identity` (local key by default)."""
    c2pa = _require_c2pa()
    key = key or local_key()
    try:
        signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, key.chain, key.key, None))
        builder = c2pa.Builder(json.dumps(manifest(identity, out.name)))
        with signer, builder, source.open("rb") as src, out.open("w+b") as dst:
            builder.sign(signer, "video/mp4", src, dst)
    except c2pa.C2paError as exc:
        out.unlink(missing_ok=True)
        raise CredentialsError(
            f"cannot sign {out}: {exc} (a C2PA key must be ES256 with an issued certificate)"
        ) from exc


@dataclass(frozen=True)
class CredentialsReading:
    """What a file's manifest says.

    Attributes:
        present: the file carries a C2PA manifest.
        state: c2pa's validation state: "Trusted" (signature valid, chain to a trusted anchor),
            "Valid" (signature and hashes valid, signer not trusted), "Invalid" (something fails).
        intact: the signature and the hash binding to the file's content verify.
        trusted: the signer chains to a trust anchor given (or this machine's local CA).
        generated: the manifest declares `trainedAlgorithmicMedia`.
        subject, consent: the avatar's subject and consent statement as declared.
        watermark_digest: the watermark digest the manifest declares (hex), if any.
        signer: the signing certificate's common name and issuer.
        failures: c2pa's failure codes.
    """

    present: bool
    state: str | None = None
    intact: bool = False
    trusted: bool = False
    generated: bool = False
    subject: str | None = None
    consent: str | None = None
    watermark_digest: str | None = None
    signer: str | None = None
    failures: tuple[str, ...] = ()


def read_mp4(path: Path, anchors: bytes | None = None) -> CredentialsReading:
    """Read and verify the manifest of an mp4. `anchors` (PEM) are trusted besides this machine's
    local CA (when it exists)."""
    c2pa = _require_c2pa()
    trusted = b""
    local = credentials_dir() / "ca.pem"
    if local.is_file():
        trusted += local.read_bytes()
    if anchors:
        trusted += anchors
    settings = {"verify": {"verify_trust": True}}
    if trusted:
        settings["trust"] = {"user_anchors": trusted.decode()}  # type: ignore[dict-item]
    try:
        with c2pa.Context(c2pa.Settings.from_dict(settings)) as context, path.open("rb") as stream:
            reader = c2pa.Reader("video/mp4", stream, context=context)
            with reader:
                state = reader.get_validation_state()
                results = reader.get_validation_results() or {}
                active = reader.get_active_manifest() or {}
    except c2pa.C2paError as exc:
        if "ManifestNotFound" in type(exc).__name__ or "no JUMBF" in str(exc) or "not found" in str(exc).lower():
            return CredentialsReading(present=False)
        raise CredentialsError(f"{path}: cannot read its content credentials ({exc})") from exc
    failures = tuple(f["code"] for f in results.get("activeManifest", {}).get("failure", []))
    assertions = {a["label"]: a.get("data", {}) for a in active.get("assertions", [])}
    actions = assertions.get("c2pa.actions.v2", {}).get("actions", [])
    ours = assertions.get(ASSERTION, {})
    info = active.get("signature_info", {})
    return CredentialsReading(
        present=True,
        state=state,
        intact=state in ("Valid", "Trusted"),
        trusted=state == "Trusted",
        generated=any(a.get("digitalSourceType") == TRAINED for a in actions),
        subject=ours.get("subject"),
        consent=ours.get("consent"),
        watermark_digest=(ours.get("watermark") or {}).get("digest"),
        signer=f"{info.get('common_name')} (issued by {info.get('issuer')})" if info else None,
        failures=failures,
    )
