"""What a client needs to trust a KMS, in one file (exported by ``ptt-kms export-enrolment``).

The KMS's URI and HTTPS base URL (its host is the KMS's public name, which its TLS certificate must name), the TLS
certificate to pin for that connection or, if the operator's certificate is a CA's (``tls_ca``), the CA bundle to
trust instead (``"system"``: the system's trusted CAs), the IdMS's token endpoint (``idms_token_url``, absent in
files from before issue 14: the base URL + ``/idms/token``), the certificate whose key signs
the KMS responses (XML-DSig over a TS 33.180 D.2.3 SignedKmsResponse), and the KMS certificate (D.3.2.2). The file is
JSON; the KMS certificate is kept in its Annex D XML form (``certificate_to_xml``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ptt.kmsformat.model import KmsCertificate, MalformedEnrolment
from ptt.kmsformat.xml import certificate_to_xml, parse_certificate

__all__ = ["ENROLMENT_FORMAT", "MAX_ENROLMENT_SIZE", "SYSTEM_TRUST", "TOKEN_PATH", "Enrolment"]

SYSTEM_TRUST = "system"

ENROLMENT_FORMAT = "ptt-kms-enrolment/1"
TOKEN_PATH = "/idms/token"  # the IdMS's token endpoint below the base URL, unless the enrolment names another
MAX_ENROLMENT_SIZE = 1024 * 1024


def _load_pem(name: str, pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except (ValueError, TypeError) as exc:
        raise MalformedEnrolment(f"{name}: not a PEM X.509 certificate") from exc


@dataclass(frozen=True)
class Enrolment:
    """Trust anchor of a client for one KMS (pinned TLS and signing certificates, and the KMS certificate)."""

    kms_uri: str
    base_url: str  # e.g. "https://127.0.0.1:8443"; the Annex D paths (…/keymanagement/identity/v1/init) go below
    tls_cert_pem: bytes
    signing_cert_pem: bytes
    certificate: KmsCertificate
    tls_ca: str | None = None  # None: pin tls_cert_pem; a PEM CA bundle; or "system" (the system's CAs)
    idms_token_url: str | None = None  # the IdMS's OAuth 2.0 token endpoint (None: base_url + /idms/token)

    def __post_init__(self) -> None:
        if not isinstance(self.kms_uri, str) or self.kms_uri != self.certificate.kms_uri:
            raise MalformedEnrolment("kms_uri differs from the KMS certificate's KmsUri")
        if (
            not isinstance(self.base_url, str)
            or not self.base_url.startswith("https://")
            or len(self.base_url) <= len("https://")
            or any(c.isspace() for c in self.base_url)
        ):
            raise MalformedEnrolment(f"base_url must be an https:// URL, got {self.base_url!r}")
        _load_pem("tls_cert_pem", self.tls_cert_pem)
        if self.idms_token_url is not None and (
            not isinstance(self.idms_token_url, str)
            or not self.idms_token_url.startswith("https://")
            or any(c.isspace() for c in self.idms_token_url)
        ):
            raise MalformedEnrolment(f"idms_token_url must be an https:// URL, got {self.idms_token_url!r}")
        if self.tls_ca is not None and self.tls_ca != SYSTEM_TRUST:
            try:
                if not isinstance(self.tls_ca, str) or not x509.load_pem_x509_certificates(self.tls_ca.encode("ascii")):
                    raise ValueError("no certificate")
            except (ValueError, UnicodeEncodeError) as exc:
                raise MalformedEnrolment(f"tls_ca must be a PEM CA bundle or {SYSTEM_TRUST!r}") from exc
        if not isinstance(_load_pem("signing_cert_pem", self.signing_cert_pem).public_key(), ec.EllipticCurvePublicKey):
            raise MalformedEnrolment("signing certificate must hold an elliptic-curve key (ECDSA-SHA256)")

    @property
    def token_url(self) -> str:
        """Where the client logs in (the IdMS's token endpoint, on the KMS's HTTPS port by default)."""
        return self.idms_token_url or self.base_url.rstrip("/") + TOKEN_PATH

    @property
    def tls_cert(self) -> x509.Certificate:
        """The certificate the KMS's HTTPS server presents (pinned, not checked against any CA)."""
        return _load_pem("tls_cert_pem", self.tls_cert_pem)

    @property
    def tls_trust_pem(self) -> bytes | None:
        """What the client trusts for the KMS's HTTPS: the pinned certificate, the CA bundle, or None (the system's
        CAs); the certificate must name the host of ``base_url`` in every case."""
        if self.tls_ca is None:
            return self.tls_cert_pem
        return None if self.tls_ca == SYSTEM_TRUST else self.tls_ca.encode("ascii")

    @property
    def signing_cert(self) -> x509.Certificate:
        """The certificate whose key signs SignedKmsResponse documents (``verify_signed_response``)."""
        return _load_pem("signing_cert_pem", self.signing_cert_pem)

    def to_json(self) -> bytes:
        document = {
            "format": ENROLMENT_FORMAT,
            "kms_uri": self.kms_uri,
            "base_url": self.base_url,
            "tls_cert_pem": self.tls_cert_pem.decode("ascii"),
            "signing_cert_pem": self.signing_cert_pem.decode("ascii"),
            "certificate": certificate_to_xml(self.certificate).decode("utf-8"),
        }
        if self.tls_ca is not None:
            document["tls_ca"] = self.tls_ca
        if self.idms_token_url is not None:
            document["idms_token_url"] = self.idms_token_url
        return json.dumps(document, indent=2).encode("utf-8") + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Enrolment:
        """Parse ``to_json`` output; ``MalformedEnrolment`` (or ``MalformedKmsXml`` for the certificate) if bad."""
        if not isinstance(data, bytes | bytearray) or len(data) > MAX_ENROLMENT_SIZE:
            raise MalformedEnrolment(f"enrolment must be at most {MAX_ENROLMENT_SIZE} octets of JSON")
        try:
            document: Any = json.loads(bytes(data).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise MalformedEnrolment(f"enrolment is not JSON: {exc}") from exc
        if not isinstance(document, dict) or document.get("format") != ENROLMENT_FORMAT:
            raise MalformedEnrolment(f"not a {ENROLMENT_FORMAT} document")
        fields = ("kms_uri", "base_url", "tls_cert_pem", "signing_cert_pem", "certificate")
        values = {name: value for name in fields if isinstance(value := document.get(name), str)}
        missing = [name for name in fields if name not in values]
        if missing:
            raise MalformedEnrolment(f"enrolment lacks string fields: {', '.join(missing)}")
        tls_ca = document.get("tls_ca")
        if tls_ca is not None and not isinstance(tls_ca, str):
            raise MalformedEnrolment("tls_ca must be a string")
        token_url = document.get("idms_token_url")
        if token_url is not None and not isinstance(token_url, str):
            raise MalformedEnrolment("idms_token_url must be a string")
        try:
            tls_pem = values["tls_cert_pem"].encode("ascii")
            signing_pem = values["signing_cert_pem"].encode("ascii")
        except UnicodeEncodeError as exc:
            raise MalformedEnrolment("certificates must be ASCII PEM") from exc
        return cls(
            kms_uri=values["kms_uri"],
            base_url=values["base_url"],
            tls_cert_pem=tls_pem,
            signing_cert_pem=signing_pem,
            certificate=parse_certificate(values["certificate"].encode("utf-8")),
            tls_ca=tls_ca,
            idms_token_url=token_url,
        )
