"""What a client checks before trusting a KMS response (TS 33.180 Annex D, RFC 6507 §5.1.2, RFC 6508 §6.1.2).

Run these on the response ``verify_signed_response`` returned (the signature says who wrote it; these say it is for
us, fresh, and that the keys are the right ones). Time is passed in.
"""

from __future__ import annotations

import hmac
import logging
from datetime import datetime, timedelta

from ptt import ts33180
from ptt.crypto import eccsi, sakke
from ptt.crypto.params import P256, SAKKE_CURVE
from ptt.kmsformat.model import (
    DomainMismatch,
    InvalidKeys,
    KmsCertCache,
    KmsCertificate,
    KmsErrorResponse,
    KmsInit,
    KmsKeyProv,
    KmsKeySet,
    KmsResponse,
    ProvisioningRejected,
    StaleResponse,
    UnexpectedMessage,
    WrongAddressee,
    as_utc,
)

__all__ = [
    "DEFAULT_MAX_SKEW",
    "check_cert_cache",
    "check_certificate",
    "check_init",
    "check_key_prov",
    "check_key_set",
]

log = logging.getLogger("ptt.kmsformat")

DEFAULT_MAX_SKEW = timedelta(minutes=5)


def _check_envelope(
    response: KmsResponse,
    *,
    kms_uri: str,
    user_uri: str,
    now: datetime,
    not_before: datetime | None,
    max_skew: timedelta,
) -> None:
    """KmsError, addressee (UserUri), KMS (KmsUri) and freshness (Time) of a response (D.2.3)."""
    if max_skew < timedelta(0):
        raise ValueError("max_skew must not be negative")
    if response.error is not None:
        raise KmsErrorResponse(response.error.code, response.error.message)
    if response.kms_uri != kms_uri:
        raise DomainMismatch(f"response from KMS {response.kms_uri!r}, expected {kms_uri!r}")
    if response.user_uri != user_uri:
        raise WrongAddressee(f"response for {response.user_uri!r}, expected {user_uri!r}")
    now = as_utc(now)
    if response.time < now - max_skew:
        raise StaleResponse(f"response Time {response.time.isoformat()} is older than now - {max_skew}")
    if response.time > now + max_skew:
        raise StaleResponse(f"response Time {response.time.isoformat()} is later than now + {max_skew}")
    if not_before is not None and response.time <= as_utc(not_before):
        raise StaleResponse(
            f"response Time {response.time.isoformat()} is not after the last accepted response (replayed?)"
        )


def check_certificate(certificate: KmsCertificate, *, now: datetime) -> None:
    """A KMS certificate (D.3.2.2) a client can use now: not revoked, within ValidFrom/ValidTo, user identifier format
    2, SAKKE parameter set 1, PubAuthKey a P-256 point and PubEncKey a point of order q on the SAKKE curve."""
    now = as_utc(now)
    if certificate.revoked:
        raise InvalidKeys(f"KMS certificate of {certificate.kms_uri!r} is revoked")
    if certificate.valid_from is not None and now < certificate.valid_from:
        raise StaleResponse(f"KMS certificate not valid before {certificate.valid_from.isoformat()}")
    if certificate.valid_to is not None and now > certificate.valid_to:
        raise StaleResponse(f"KMS certificate expired at {certificate.valid_to.isoformat()}")
    if certificate.user_id_format != "2":
        raise InvalidKeys(f"unsupported UserIdFormat {certificate.user_id_format!r} (only 2, TS 33.180 F.2.1)")
    if certificate.parameter_set not in (None, 1):
        raise InvalidKeys(f"unsupported SAKKE ParameterSet {certificate.parameter_set} (only 1, RFC 6509)")
    try:
        P256.decode(certificate.pub_auth_key)
    except ValueError as exc:
        raise InvalidKeys(f"PubAuthKey (KPAK) is not a P-256 point: {exc}") from exc
    try:
        z_point = SAKKE_CURVE.decode(certificate.pub_enc_key)
    except ValueError as exc:
        raise InvalidKeys(f"PubEncKey (Z) is not a SAKKE curve point: {exc}") from exc
    if not SAKKE_CURVE.in_subgroup(z_point):
        raise InvalidKeys("PubEncKey (Z) is not of order q")


def check_init(
    response: KmsResponse,
    *,
    expected_kms_uri: str,
    expected_user_uri: str,
    now: datetime,
    not_before: datetime | None = None,
    max_skew: timedelta = DEFAULT_MAX_SKEW,
) -> KmsCertificate:
    """Checks of a KmsInit response (Annex D) for ``expected_user_uri`` from ``expected_kms_uri``; returns its
    certificate, which must be the Root certificate of that KMS and usable now (``check_certificate``)."""
    _check_envelope(
        response,
        kms_uri=expected_kms_uri,
        user_uri=expected_user_uri,
        now=now,
        not_before=not_before,
        max_skew=max_skew,
    )
    if not isinstance(response.message, KmsInit):
        raise UnexpectedMessage("the response carries no KmsInit")
    certificate = response.message.certificate
    if certificate.kms_uri != expected_kms_uri:
        raise DomainMismatch(f"certificate of KMS {certificate.kms_uri!r}, expected {expected_kms_uri!r}")
    if certificate.role != "Root":
        raise DomainMismatch(f"certificate Role {certificate.role!r}: not the user's own (Root) KMS")
    check_certificate(certificate, now=now)
    return certificate


def check_key_set(key_set: KmsKeySet, *, certificate: KmsCertificate, expected_user_uri: str) -> None:
    """One KmsKeySet (Annex D): KMS, user, UID (F.2.1), period bounds, RFC 6507 §5.1.2 and RFC 6508 §6.1.2."""
    period = key_set.key_period_no
    if key_set.kms_uri != certificate.kms_uri:
        raise DomainMismatch(f"key set of KMS {key_set.kms_uri!r}, expected {certificate.kms_uri!r}")
    if key_set.user_uri != expected_user_uri:
        raise WrongAddressee(f"key set for {key_set.user_uri!r}, expected {expected_user_uri!r}")
    if key_set.revoked:
        raise InvalidKeys(f"key set for period {period} is revoked")
    uid = ts33180.uid(
        expected_user_uri, certificate.kms_uri, certificate.user_key_period, certificate.user_key_offset, period
    )
    if not hmac.compare_digest(uid, key_set.user_id):
        raise InvalidKeys(f"UserID is not the UID of {expected_user_uri!r} for key period {period}")
    start, end = ts33180.period_bounds(period, certificate.user_key_period, certificate.user_key_offset)
    valid_from = None if key_set.valid_from is None else key_set.valid_from.timestamp()
    valid_to = None if key_set.valid_to is None else key_set.valid_to.timestamp()
    if valid_from is not None and not start <= valid_from < end:
        raise InvalidKeys(f"ValidFrom is outside key period {period}")
    if valid_to is not None and not start < valid_to <= end:
        raise InvalidKeys(f"ValidTo is outside key period {period}")
    if valid_from is not None and valid_to is not None and valid_from >= valid_to:
        raise InvalidKeys(f"ValidFrom is not before ValidTo in key period {period}")
    if not eccsi.validate_signing_key(uid, key_set.ssk, key_set.pvt, certificate.pub_auth_key):
        raise InvalidKeys(f"SSK/PVT for key period {period} fail RFC 6507 §5.1.2 validation against the KPAK")
    if not sakke.validate_rsk(uid, key_set.rsk, certificate.pub_enc_key):
        raise InvalidKeys(f"RSK for key period {period} fails RFC 6508 §6.1.2 validation against Z")


def check_key_prov(
    response: KmsResponse,
    *,
    certificate: KmsCertificate,
    expected_user_uri: str,
    now: datetime,
    not_before: datetime | None = None,
    max_skew: timedelta = DEFAULT_MAX_SKEW,
) -> list[KmsKeySet]:
    """Checks of a KmsKeyProv response (Annex D) against the client's KMS certificate; returns the key sets by period.

    ``not_before`` is the Time of the last response the client accepted: a response not after it is a replay.
    """
    _check_envelope(
        response,
        kms_uri=certificate.kms_uri,
        user_uri=expected_user_uri,
        now=now,
        not_before=not_before,
        max_skew=max_skew,
    )
    if not isinstance(response.message, KmsKeyProv):
        raise UnexpectedMessage("the response carries no KmsKeyProv")
    check_certificate(certificate, now=now)
    periods = [key_set.key_period_no for key_set in response.message.key_sets]
    if len(set(periods)) != len(periods):
        raise InvalidKeys("two key sets for the same key period")
    for key_set in response.message.key_sets:
        check_key_set(key_set, certificate=certificate, expected_user_uri=expected_user_uri)
    return sorted(response.message.key_sets, key=lambda key_set: key_set.key_period_no)


def check_cert_cache(
    response: KmsResponse,
    *,
    expected_kms_uri: str,
    expected_user_uri: str,
    now: datetime,
    not_before: datetime | None = None,
    max_skew: timedelta = DEFAULT_MAX_SKEW,
) -> list[KmsCertificate]:
    """Checks of a KmsCertCache response (Annex D) from the client's own KMS; returns the External KMS
    certificates usable now, in the cache's order.

    The envelope must pass as for the other responses (else the whole cache is refused). Single certificates are
    skipped rather than refusing the cache, so that one partner's expired certificate does not cost the client all
    the others: the own KMS's (its Root certificate comes from init and the enrolment, never from here), one failing
    ``check_certificate`` (logged with the reason), and a second one for the same KMS URI (the first is kept).
    """
    _check_envelope(
        response,
        kms_uri=expected_kms_uri,
        user_uri=expected_user_uri,
        now=now,
        not_before=not_before,
        max_skew=max_skew,
    )
    if not isinstance(response.message, KmsCertCache):
        raise UnexpectedMessage("the response carries no KmsCertCache")
    usable: dict[str, KmsCertificate] = {}
    for certificate in response.message.certificates:
        uri = certificate.kms_uri
        if uri == expected_kms_uri:
            log.debug("certificate cache: skipping the own KMS %s", uri)
            continue
        if uri in usable:
            log.warning("certificate cache: a second certificate of KMS %s skipped (the first is kept)", uri)
            continue
        try:
            check_certificate(certificate, now=now)
        except ProvisioningRejected as exc:
            log.warning("certificate cache: KMS %s skipped: %s", uri, exc)
            continue
        usable[uri] = certificate
    return list(usable.values())
