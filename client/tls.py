"""The one place clients build their TLS contexts: TLS 1.3, or TLS 1.2 with ECDHE and an AEAD cipher only
(``TLS12_CIPHERS``: AES-GCM, ChaCha20-Poly1305; no CBC, no SHA-1 MAC, no static RSA key exchange), trusting only
what the caller pins. ``server.tls`` builds the servers' contexts with the same suites.

- ``pinned_client_options``: Twisted client options that trust exactly the certificates given (the KMS's TLS
  certificate from the enrolment or the group server's from ``ptt-server client-info``, self-signed: pinned; or the
  operator's CA bundle from the same files), or the system's trusted CAs (``None``), and always check that the
  certificate names the host the client connects to (its public name). Used by the control channel client.
- ``PinnedCertificatePolicy``: the same for ``twisted.web.client.Agent`` (the KMS provisioning client).
- ``trust_from_info``: which certificates a client-info or enrolment file tells a client to trust.
- ``stdlib_client_context``: a standard-library context for the synchronous ``ptt-dispatch`` CLI, trusting a given
  CA/certificate file (else the system's CAs).
"""

from __future__ import annotations

import ssl
from typing import Any, cast

from cryptography import x509
from OpenSSL import crypto
from twisted.internet import ssl as twisted_ssl
from twisted.internet.interfaces import IAcceptableCiphers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

__all__ = [
    "SYSTEM_TRUST",
    "TLS12_CIPHERS",
    "PinnedCertificatePolicy",
    "pinned_client_options",
    "stdlib_client_context",
    "trust_from_info",
]

SYSTEM_TRUST = "system"
"""The ``tls_ca`` value of a client-info or enrolment file meaning "the system's trusted CAs" (as
``ptt.kmsformat.enrolment.SYSTEM_TRUST``)."""

TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
"""The TLS 1.2 suites clients and servers offer (OpenSSL names, in order of preference): forward secrecy (ECDHE)
and an AEAD cipher. TLS 1.3 suites are all AEAD with (EC)DHE: OpenSSL's defaults (AES-GCM, ChaCha20-Poly1305)."""


def acceptable_ciphers() -> IAcceptableCiphers:
    """``TLS12_CIPHERS`` for Twisted's ``CertificateOptions``."""
    return cast(IAcceptableCiphers, twisted_ssl.AcceptableCiphers.fromOpenSSLCipherString(TLS12_CIPHERS))


def trust_from_info(cert_pem: bytes, tls_ca: object) -> bytes | None:
    """The trust anchors a client-info or enrolment file gives: its ``tls_ca`` (a PEM CA bundle: the operator's
    own certificate from a CA), ``None`` for the system's CAs (``tls_ca`` = ``"system"``), else the pinned
    certificate ``cert_pem`` (self-signed; files without ``tls_ca``). ``ValueError`` for anything else."""
    if tls_ca is None:
        return cert_pem
    if tls_ca == SYSTEM_TRUST:
        return None
    if isinstance(tls_ca, str) and "-----BEGIN CERTIFICATE-----" in tls_ca:
        return tls_ca.encode("ascii")
    raise ValueError(f"tls_ca must be a PEM CA bundle or {SYSTEM_TRUST!r}")


def _trust_root(trust_pem: bytes | None) -> Any:
    if trust_pem is None:
        return twisted_ssl.platformTrust()
    certificates = [
        twisted_ssl.Certificate(crypto.X509.from_cryptography(c)) for c in x509.load_pem_x509_certificates(trust_pem)
    ]
    return twisted_ssl.trustRootFromCertificates(certificates)


def pinned_client_options(hostname: str, trust_pem: bytes | None) -> Any:
    """Twisted client connection options (TLS 1.3, or 1.2 with ``TLS12_CIPHERS``) trusting only the certificates
    in ``trust_pem`` (a pinned self-signed certificate or a CA bundle; the system's CAs if None), the server's
    certificate naming ``hostname`` (a DNS name or an IP address). ``ValueError`` if ``trust_pem`` holds no
    certificate."""
    return twisted_ssl.optionsForClientTLS(
        hostname,
        trustRoot=_trust_root(trust_pem),
        extraCertificateOptions={
            "raiseMinimumTo": twisted_ssl.TLSVersion.TLSv1_2,
            "acceptableCiphers": acceptable_ciphers(),
        },
    )


@implementer(IPolicyForHTTPS)
class PinnedCertificatePolicy:
    """An ``Agent`` policy with the trust and host-name check of ``pinned_client_options``."""

    def __init__(self, trust_pem: bytes | None) -> None:
        _trust_root(trust_pem)  # a malformed certificate fails here, not at first use
        self._pem = trust_pem

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return pinned_client_options(hostname.decode("ascii"), self._pem)


def stdlib_client_context(cafile: str | None) -> ssl.SSLContext:
    """A standard-library client context (TLS 1.3, or 1.2 with ``TLS12_CIPHERS``; host name checked) trusting the
    certificates in ``cafile``, or the system's trusted CAs if None. ``OSError`` or ``ssl.SSLError`` if the file
    is unusable."""
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)  # TLS 1.2 only: the TLS 1.3 suites are OpenSSL's (all AEAD)
    return context
