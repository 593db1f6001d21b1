"""The KMS's TLS and XML-signing keys: ECDSA P-256 keys with self-signed X.509 certificates, as PEM files.

Clients pin both certificates from the enrolment file, so no CA is involved; the TLS certificate still names
its public names (subjectAltName) and clients verify the name they connect to against it. ``tls_material`` is the
one place the KMS and the group server choose their TLS certificate: the operator's own (from a CA) or a generated
self-signed one naming the public names.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from server.kms.secrets import write_private_file

__all__ = [
    "WILDCARD_ADDRESSES",
    "MaterialError",
    "TlsMaterial",
    "certificate_fingerprint",
    "certificate_names",
    "certificate_pem",
    "is_ip",
    "load_certificate",
    "load_certificate_chain",
    "load_private_key",
    "make_self_signed",
    "names_host",
    "private_key_pem",
    "tls_material",
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


WILDCARD_ADDRESSES = ("", "0.0.0.0", "::")
LOOPBACK_NAMES = ("127.0.0.1", "::1", "localhost")


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def certificate_names(certificate: x509.Certificate) -> tuple[list[str], list[str]]:
    """The DNS names and IP addresses of a certificate's subjectAltName (empty lists if it has none)."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return san.get_values_for_type(x509.DNSName), [str(a) for a in san.get_values_for_type(x509.IPAddress)]


def names_host(certificate: x509.Certificate, host: str) -> bool:
    """Whether a client verifying ``host`` (a DNS name or an IP address) accepts this certificate's
    subjectAltName: an IP address matches an IP entry; a DNS name an equal entry (case-insensitive) or a
    ``*.`` wildcard covering exactly its first label (RFC 6125)."""
    dns, ips = certificate_names(certificate)
    if is_ip(host):
        return ipaddress.ip_address(host) in {ipaddress.ip_address(a) for a in ips}
    name = host.lower().rstrip(".")
    for pattern in (d.lower().rstrip(".") for d in dns):
        if pattern == name:
            return True
        if pattern.startswith("*.") and "." in name and name.split(".", 1)[1] == pattern[2:]:
            return True
    return False


@dataclass(frozen=True)
class TlsMaterial:
    """A server's TLS key and certificate chain (leaf first), and what clients must trust: ``ca_pem`` None for a
    generated self-signed certificate (clients pin it), else the operator's CA bundle or ``"system"``."""

    key: ec.EllipticCurvePrivateKey
    chain: list[x509.Certificate]
    ca: str | None

    def write(self, key_path: Path, cert_path: Path) -> None:
        """The key 0600 and the chain 0644, both written atomically."""
        write_private_file(key_path, private_key_pem(self.key))
        write_private_file(cert_path, b"".join(certificate_pem(c) for c in self.chain))
        os.chmod(cert_path, 0o644)


def tls_material(
    public_names: list[str],
    listen: str,
    *,
    cert_path: str | None = None,
    key_path: str | None = None,
    ca_path: str | None = None,
    days: int = DEFAULT_VALIDITY_DAYS,
) -> TlsMaterial:
    """The TLS material of a server whose clients connect to ``public_names`` (the first is the one in the files
    clients get) and which listens on ``listen``.

    With ``cert_path``/``key_path``: the operator's own certificate (a chain: leaf first, then intermediates),
    which must name every public name; clients trust ``ca_path`` (a PEM bundle) or else the system's CAs. Without:
    a fresh self-signed certificate naming the public names, plus localhost and 127.0.0.1 when the server
    listens there (loopback or a wildcard), which clients pin. ``MaterialError`` if anything does not fit."""
    if (cert_path is None) != (key_path is None):
        raise MaterialError("--tls-cert and --tls-key go together")
    if cert_path is None:
        if ca_path is not None:
            raise MaterialError("--tls-ca needs --tls-cert (a generated certificate is pinned, not a CA's)")
        names = list(dict.fromkeys(public_names))
        if listen in WILDCARD_ADDRESSES or listen in LOOPBACK_NAMES:
            names += [n for n in ("localhost", "127.0.0.1") if n not in names]
        dns = [n for n in names if not is_ip(n)]
        ips = [n for n in names if is_ip(n)]
        key, cert = make_self_signed(public_names[0], san_dns=dns, san_ips=ips, days=days)
        return TlsMaterial(key, [cert], None)
    assert key_path is not None
    key = load_private_key(Path(key_path), check_mode=False)  # written again to a 0600 file
    chain = load_certificate_chain(Path(cert_path))
    if chain[0].public_key() != key.public_key():
        raise MaterialError(f"the certificate {cert_path} is not for the key {key_path}")
    missing = [n for n in public_names if not names_host(chain[0], n)]
    if missing:
        raise MaterialError(f"the certificate {cert_path} does not name {', '.join(missing)} (its subjectAltName)")
    if ca_path is None:
        return TlsMaterial(key, chain, "system")
    bundle = load_certificate_chain(Path(ca_path))
    return TlsMaterial(key, chain, b"".join(certificate_pem(c) for c in bundle).decode("ascii"))


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


def load_or_create_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The P-256 key at ``path``, made (0600) if there is none yet. Several processes starting at once make one
    key between them: the file is linked into place only if absent, and the loser loads the winner's."""
    path = Path(path)
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
        write_private_file(tmp, private_key_pem(ec.generate_private_key(ec.SECP256R1())))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return load_private_key(path)


def load_certificate_chain(path: Path) -> list[x509.Certificate]:
    """Every certificate of a PEM file (at least one), in file order."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise MaterialError(f"cannot read the certificate {path}: {e.strerror}") from None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise MaterialError(f"{path} is not a PEM certificate ({e})") from None


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
