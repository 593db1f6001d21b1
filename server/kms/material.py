"""The KMS's TLS and XML-signing keys: ECDSA P-256 keys with self-signed X.509 certificates, as PEM files.

Clients pin both certificates from the enrolment file, so no CA is involved; the TLS certificate still names
its hosts (subjectAltName) so ordinary hostname verification works against it.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from server.kms.secrets import write_private_file

__all__ = [
    "MaterialError",
    "certificate_fingerprint",
    "certificate_pem",
    "load_certificate",
    "load_private_key",
    "make_self_signed",
    "private_key_pem",
    "write_key_and_certificate",
]

DEFAULT_VALIDITY_DAYS = 3650
_BACKDATE = datetime.timedelta(minutes=5)  # tolerate clients whose clock is a little behind


class MaterialError(Exception):
    """A key or certificate file is missing, malformed, of the wrong kind, or too widely readable."""


def make_self_signed(
    common_name: str,
    *,
    san_dns: list[str],
    san_ips: list[str],
    days: int = DEFAULT_VALIDITY_DAYS,
    tls_server: bool = True,
    now: datetime.datetime | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh P-256 key and a self-signed certificate for it.

    ``tls_server`` adds the serverAuth extended key usage (leave it off for the XML-signing certificate).
    """
    if days <= 0:
        raise ValueError("validity must be at least one day")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = (now or datetime.datetime.now(datetime.UTC)) - _BACKDATE
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
    )
    if tls_server:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in san_dns]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in san_ips]
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return key, builder.sign(key, hashes.SHA256())


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def certificate_fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the DER certificate as colon-separated upper-case hex (the form ``openssl x509`` prints)."""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest())


def write_key_and_certificate(
    key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate, key_path: Path, cert_path: Path
) -> None:
    """The key 0600 and the certificate 0644, both written atomically."""
    write_private_file(key_path, private_key_pem(key))
    write_private_file(cert_path, certificate_pem(certificate))
    os.chmod(cert_path, 0o644)


def load_private_key(path: Path, *, check_mode: bool = True) -> ec.EllipticCurvePrivateKey:
    """An unencrypted PEM EC private key; refuses a file others may read unless ``check_mode`` is off."""
    path = Path(path)
    try:
        info = path.stat()
        data = path.read_bytes()
    except OSError as e:
        raise MaterialError(f"cannot read the private key {path}: {e.strerror}") from None
    if check_mode and stat.S_IMODE(info.st_mode) & 0o077:
        raise MaterialError(f"{path} has mode {stat.S_IMODE(info.st_mode):04o}; run 'chmod 600 {path}'")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise MaterialError(f"{path} is not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise MaterialError(f"{path} is not an elliptic-curve (ECDSA) key")
    return key


def load_certificate(path: Path) -> x509.Certificate:
    """A PEM X.509 certificate (the first one if the file holds a chain)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise MaterialError(f"cannot read the certificate {path}: {e.strerror}") from None
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as e:
        raise MaterialError(f"{path} is not a PEM certificate ({e})") from None
