"""The one place clients build their TLS contexts: TLS 1.3, or TLS 1.2 with ECDHE and an AEAD cipher only
(``TLS12_CIPHERS``: AES-GCM, ChaCha20-Poly1305; no CBC, no SHA-1 MAC, no static RSA key exchange), trusting only
what the caller pins. ``server.tls`` builds the servers' contexts with the same suites.

- ``pinned_client_options``: Twisted client options that trust exactly one certificate (the KMS's TLS certificate
  from the enrolment, the group server's from ``ptt-server client-info``; self-signed is fine) and check the host
  name against it. Used by the control channel client.
- ``PinnedCertificatePolicy``: the same for ``twisted.web.client.Agent`` (the KMS provisioning client).
- ``stdlib_client_context``: a standard-library context for the synchronous ``ptt-dispatch`` CLI, trusting a given
  CA/certificate file (else the system's CAs).
"""

from __future__ import annotations

import ssl
from typing import Any, cast

from twisted.internet import ssl as twisted_ssl
from twisted.internet.interfaces import IAcceptableCiphers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

__all__ = ["TLS12_CIPHERS", "PinnedCertificatePolicy", "pinned_client_options", "stdlib_client_context"]

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


def pinned_client_options(hostname: str, certificate_pem: bytes) -> Any:
    """Twisted client connection options (TLS 1.3, or 1.2 with ``TLS12_CIPHERS``) trusting only
    ``certificate_pem`` for ``hostname``."""
    return twisted_ssl.optionsForClientTLS(
        hostname,
        trustRoot=twisted_ssl.Certificate.loadPEM(certificate_pem),
        extraCertificateOptions={
            "raiseMinimumTo": twisted_ssl.TLSVersion.TLSv1_2,
            "acceptableCiphers": acceptable_ciphers(),
        },
    )


@implementer(IPolicyForHTTPS)
class PinnedCertificatePolicy:
    """An ``Agent`` policy trusting exactly one certificate (self-signed is fine), the same TLS as
    ``pinned_client_options``."""

    def __init__(self, certificate_pem: bytes) -> None:
        twisted_ssl.Certificate.loadPEM(certificate_pem)  # a malformed certificate fails here, not at first use
        self._pem = certificate_pem

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
