"""The one place clients build their TLS contexts: TLS 1.2 or later, trusting only what the caller pins.

- ``pinned_client_options``: Twisted client options that trust exactly one certificate (the KMS's TLS certificate
  from the enrolment, the group server's from ``ptt-server client-info``; self-signed is fine) and check the host
  name against it. Used by the control channel client.
- ``PinnedCertificatePolicy``: the same for ``twisted.web.client.Agent`` (the KMS provisioning client).
- ``stdlib_client_context``: a standard-library context for the synchronous ``ptt-dispatch`` CLI, trusting a given
  CA/certificate file (else the system's CAs).
"""

from __future__ import annotations

import ssl
from typing import Any

from twisted.internet import ssl as twisted_ssl
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

__all__ = ["PinnedCertificatePolicy", "pinned_client_options", "stdlib_client_context"]


def pinned_client_options(hostname: str, certificate_pem: bytes) -> Any:
    """Twisted client connection options (TLS ≥ 1.2) trusting only ``certificate_pem`` for ``hostname``."""
    return twisted_ssl.optionsForClientTLS(
        hostname,
        trustRoot=twisted_ssl.Certificate.loadPEM(certificate_pem),
        extraCertificateOptions={"raiseMinimumTo": twisted_ssl.TLSVersion.TLSv1_2},
    )


@implementer(IPolicyForHTTPS)
class PinnedCertificatePolicy:
    """An ``Agent`` policy trusting exactly one certificate (self-signed is fine), TLS 1.2 or newer."""

    def __init__(self, certificate_pem: bytes) -> None:
        twisted_ssl.Certificate.loadPEM(certificate_pem)  # a malformed certificate fails here, not at first use
        self._pem = certificate_pem

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return pinned_client_options(hostname.decode("ascii"), self._pem)


def stdlib_client_context(cafile: str | None) -> ssl.SSLContext:
    """A standard-library client context (TLS ≥ 1.2, host name checked) trusting the certificates in ``cafile``,
    or the system's trusted CAs if None. ``OSError`` or ``ssl.SSLError`` if the file is unusable."""
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
