"""A small certificate authority for tests: a root, intermediates, and server certificates (EC P-256) naming DNS
names and addresses, written as PEM files the way an operator would hand them to ``--tls-cert/--tls-key/--tls-ca``.

    ca = CertificateAuthority("Site Root CA")
    server = ca.issue(["node1.site.test"])          # a leaf signed by the root
    server.write(directory, "node1")                # node1-chain.pem (leaf, then any intermediates), node1-key.pem
    ca.write_root(directory / "ca.pem")             # what clients trust
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from server.kms.material import certificate_pem, private_key_pem

VALIDITY = datetime.timedelta(days=30)
BACKDATE = datetime.timedelta(minutes=5)  # clock differences between the issuing test and the verifying process


def _is_address(name: str) -> bool:
    try:
        ip_address(name)
    except ValueError:
        return False
    return True


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    names: list[str] | None = None,
) -> x509.Certificate:
    """A certificate for ``key`` signed by ``issuer_key``: a CA's (``ca=True``) or a TLS server's naming ``names``
    (DNS names and IP addresses) in its subjectAltName."""
    now = datetime.datetime.now(datetime.UTC) - BACKDATE
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if ca:
        key_usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)  # certificates, CRLs
        builder = builder.add_extension(key_usage, critical=True)
    else:
        alt_names: list[x509.GeneralName] = [
            x509.IPAddress(ip_address(n)) if _is_address(n) else x509.DNSName(n) for n in names or []
        ]
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class ServerCertificate:
    """A server's key and its chain (leaf first, then the intermediates up to, not including, the root)."""

    key: ec.EllipticCurvePrivateKey
    chain: list[x509.Certificate]

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """``STEM-chain.pem`` and ``STEM-key.pem`` (0600) in ``directory``; their paths."""
        chain_path, key_path = directory / f"{stem}-chain.pem", directory / f"{stem}-key.pem"
        chain_path.write_bytes(b"".join(certificate_pem(c) for c in self.chain))
        key_path.touch(mode=0o600)
        key_path.write_bytes(private_key_pem(self.key))
        return chain_path, key_path


@dataclass
class CertificateAuthority:
    """A root CA, or an intermediate under ``parent``; ``issue`` makes server certificates."""

    common_name: str
    parent: CertificateAuthority | None = None
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    certificate: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        issuer = self.parent or self
        self.certificate = make_certificate(self.common_name, self.key, issuer.common_name, issuer.key, ca=True)

    def intermediate(self, common_name: str) -> CertificateAuthority:
        return CertificateAuthority(common_name, parent=self)

    def chain(self) -> list[x509.Certificate]:
        """This CA's certificate and its parents' below the root (what a server sends after its leaf)."""
        if self.parent is None:
            return []
        return [self.certificate, *self.parent.chain()]

    def root(self) -> CertificateAuthority:
        return self if self.parent is None else self.parent.root()

    def issue(self, names: list[str]) -> ServerCertificate:
        """A TLS server certificate naming ``names`` (the first is also its common name)."""
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = make_certificate(names[0], key, self.common_name, self.key, ca=False, names=names)
        return ServerCertificate(key, [leaf, *self.chain()])

    def write_root(self, path: Path) -> Path:
        """The root's certificate (the CA bundle clients trust) to ``path``."""
        path.write_bytes(certificate_pem(self.root().certificate))
        return path
