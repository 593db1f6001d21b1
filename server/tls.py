"""The one place the servers build their TLS contexts: the KMS, the dispatcher API and the control channel.

TLS 1.3, or TLS 1.2 with ECDHE and an AEAD cipher only (``client.tls.TLS12_CIPHERS``: AES-GCM,
ChaCha20-Poly1305; a client offering only CBC or SHA-1 suites is refused), from a PEM private key (refused if the
group or others may read it) and a PEM certificate file (the server's certificate first, then any intermediate
certificates of its chain). Clients pin that certificate (self-signed) or trust the operator's CA, and check it names
the server's public name (``client.tls``, which holds the suites both sides use).
"""

from __future__ import annotations

from pathlib import Path

from OpenSSL import crypto
from twisted.internet import ssl

from client.tls import TLS12_CIPHERS, acceptable_ciphers
from server.kms.material import MaterialError, load_certificate_chain, load_private_key

__all__ = ["MIN_TLS_VERSION", "TLS12_CIPHERS", "server_tls_options"]

MIN_TLS_VERSION = ssl.TLSVersion.TLSv1_2


def server_tls_options(key_pem_path: Path, cert_pem_path: Path) -> ssl.CertificateOptions:
    """Twisted TLS server options (TLS 1.3, or 1.2 with ``TLS12_CIPHERS``) for the key and certificate chain in
    these PEM files; ``MaterialError`` if a file is unreadable, malformed, or the key is readable by others or does
    not belong to the certificate."""
    key = load_private_key(Path(key_pem_path))
    leaf, *intermediates = load_certificate_chain(Path(cert_pem_path))
    if leaf.public_key() != key.public_key():
        raise MaterialError(f"the private key {key_pem_path} does not belong to the certificate {cert_pem_path}")
    return ssl.CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),
        certificate=crypto.X509.from_cryptography(leaf),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in intermediates],
        raiseMinimumTo=MIN_TLS_VERSION,
        acceptableCiphers=acceptable_ciphers(),
    )
