"""The domain's KmsCertificate (TS 33.180 D.3.3): one definition for the service's KmsInit and the enrolment
file, built from the store's settings and the master public keys."""

from __future__ import annotations

from datetime import UTC, datetime

from ptt.kmsformat.model import KmsCertificate

CERTIFICATE_YEARS = 10  # the domain certificate's validity from init; the key period is what renews keys


def domain_certificate(
    kms_uri: str,
    key_period: int,
    key_period_offset: int,
    kpak: bytes,
    z: bytes,
    valid_from: float | None = None,
    valid_to: float | None = None,
) -> KmsCertificate:
    return KmsCertificate(
        kms_uri=kms_uri,
        user_key_period=key_period,
        user_key_offset=key_period_offset,
        pub_enc_key=z,
        pub_auth_key=kpak,
        cert_uri=f"{kms_uri}/certificate",
        issuer=kms_uri,
        valid_from=None if valid_from is None else datetime.fromtimestamp(int(valid_from), UTC),
        valid_to=None if valid_to is None else datetime.fromtimestamp(int(valid_to), UTC),
        revoked=False,
    )


def certificate_validity(settings: dict[str, str]) -> tuple[float | None, float | None]:
    """(ValidFrom, ValidTo) recorded by ``ptt-kms init`` (absent in data directories made before they were)."""
    start = settings.get("cert_valid_from")
    end = settings.get("cert_valid_to")
    return (float(start) if start else None, float(end) if end else None)
