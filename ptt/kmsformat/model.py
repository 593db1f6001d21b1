"""The messages of the TS 33.180 Annex D KMS interface as frozen dataclasses, and the errors of this package.

Clause references as in the Annex D schema: D.2.2 KmsRequest, D.2.3 KmsResponse (and its KmsMessage: KmsInit,
KmsKeyProv with KmsKeySet, KmsCertCache; or KmsError), D.3.2.2 KmsCertificate. Times are aware UTC datetimes (naive
ones are taken as UTC); keys are octet strings (points 04 || x || y).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ptt.mikey.imessage import KmsDomain

__all__ = [
    "NAMESPACE",
    "PUB_AUTH_KEY_LENGTH",
    "PUB_ENC_KEY_LENGTH",
    "PVT_LENGTH",
    "RSK_LENGTH",
    "SSK_LENGTH",
    "USER_ID_LENGTH",
    "DomainMismatch",
    "InvalidKeys",
    "KmsCertCache",
    "KmsCertificate",
    "KmsError",
    "KmsErrorResponse",
    "KmsFormatError",
    "KmsInit",
    "KmsKeyProv",
    "KmsKeySet",
    "KmsRequest",
    "KmsResponse",
    "MalformedEnrolment",
    "MalformedKmsXml",
    "ProvisioningRejected",
    "SignatureInvalid",
    "StaleResponse",
    "UnexpectedMessage",
    "Unsigned",
    "WrongAddressee",
    "as_utc",
]

NAMESPACE = "urn:3gpp:ns:mcsecKMSInterface:1.0"

PUB_ENC_KEY_LENGTH = 257  # Z, a point of the SAKKE parameter set 1 curve (RFC 6508)
RSK_LENGTH = 257
PUB_AUTH_KEY_LENGTH = 65  # KPAK, a P-256 point (RFC 6507)
PVT_LENGTH = 65
SSK_LENGTH = 32
USER_ID_LENGTH = 32  # TS 33.180 F.2.1: SHA-256

_ROLES = ("Root", "External")
_ID_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")


# --- Errors ---


class KmsFormatError(ValueError):
    """Base class of every error of ``ptt.kmsformat``."""


class MalformedKmsXml(KmsFormatError):
    """Not a well-formed, acceptable KMS document: parse failure, DTD or entity, too large, bad or missing element."""


class MalformedEnrolment(KmsFormatError):
    """An enrolment file that is not valid JSON of the expected shape, or whose parts disagree."""


class SignatureInvalid(KmsFormatError):
    """The XML-DSig signature does not verify with the pinned certificate (tampered, other key, wrong algorithm)."""


class Unsigned(SignatureInvalid):
    """No signature where one is required."""


class ProvisioningRejected(KmsFormatError):
    """Base class of the client-side checks (``ptt.kmsformat.validation``) that refuse a well-formed response."""


class WrongAddressee(ProvisioningRejected):
    """The response or a key set is for another user."""


class StaleResponse(ProvisioningRejected):
    """The response time is outside the allowed skew, not newer than the last accepted one, or the certificate is
    outside its validity."""


class InvalidKeys(ProvisioningRejected):
    """A key set or certificate fails a check (UID, validity, RFC 6507/6508 key validation, revocation...)."""


class DomainMismatch(ProvisioningRejected):
    """The response, certificate or a key set belongs to another KMS than the expected one."""


class UnexpectedMessage(ProvisioningRejected):
    """The response carries another message than the one asked for (e.g. no KmsKeyProv to a key request)."""


class KmsErrorResponse(ProvisioningRejected):
    """The KMS answered with a KmsError (TS 33.180 Annex D ErrorType)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"KMS error {code}: {message}")
        self.code = code
        self.message = message


# --- Helpers ---


def as_utc(value: datetime) -> datetime:
    """An aware UTC datetime: naive values are taken as UTC (as in the vendor samples), others converted."""
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


def _check_length(name: str, value: bytes, length: int) -> None:
    if not isinstance(value, bytes | bytearray) or len(value) != length:
        got = len(value) if isinstance(value, bytes | bytearray) else type(value).__name__
        raise KmsFormatError(f"{name} must be {length} octets, got {got}")


def _check_non_negative(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise KmsFormatError(f"{name} must be a non-negative integer")


def _check_uri(name: str, value: str, *, may_be_empty: bool = False) -> None:
    if not isinstance(value, str) or (not value and not may_be_empty) or value != value.strip():
        raise KmsFormatError(f"{name} must be a non-empty string without surrounding whitespace")


# --- Messages ---


@dataclass(frozen=True)
class KmsCertificate:
    """A KMS certificate (TS 33.180 D.3.2.2): the public keys and key-period policy of a KMS domain."""

    kms_uri: str
    user_key_period: int
    user_key_offset: int
    pub_enc_key: bytes  # Z (SAKKE), 257 octets
    pub_auth_key: bytes  # KPAK (ECCSI), 65 octets
    user_id_format: str = "2"
    cert_uri: str | None = None
    issuer: str | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    revoked: bool | None = None
    parameter_set: int | None = 1
    version: str = "1.1.0"
    role: str = "Root"
    # KmsDomainList (D.3.2.2); on an External certificate in our cache: the user domains that KMS speaks for
    kms_domains: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_uri("KmsUri", self.kms_uri)
        _check_non_negative("UserKeyPeriod", self.user_key_period)
        if self.user_key_period == 0:
            raise KmsFormatError("UserKeyPeriod must be positive")
        _check_non_negative("UserKeyOffset", self.user_key_offset)
        _check_length("PubEncKey", self.pub_enc_key, PUB_ENC_KEY_LENGTH)
        _check_length("PubAuthKey", self.pub_auth_key, PUB_AUTH_KEY_LENGTH)
        if self.parameter_set is not None:
            _check_non_negative("ParameterSet", self.parameter_set)
        if self.role not in _ROLES:
            raise KmsFormatError(f"Role must be Root or External, got {self.role!r}")
        object.__setattr__(self, "pub_enc_key", bytes(self.pub_enc_key))
        object.__setattr__(self, "pub_auth_key", bytes(self.pub_auth_key))
        object.__setattr__(self, "valid_from", _utc_or_none(self.valid_from))
        object.__setattr__(self, "valid_to", _utc_or_none(self.valid_to))
        object.__setattr__(self, "kms_domains", tuple(self.kms_domains))

    def domain(self) -> KmsDomain:
        """The public part the MIKEY-SAKKE code needs: KPAK, Z, URI and key-period policy."""
        return KmsDomain(
            kms_uri=self.kms_uri,
            kpak=self.pub_auth_key,
            z=self.pub_enc_key,
            key_period=self.user_key_period,
            key_period_offset=self.user_key_offset,
        )


@dataclass(frozen=True, repr=False)
class KmsKeySet:
    """One user's keys for one key period (TS 33.180 Annex D KmsKeySetType): RSK (SAKKE), SSK and PVT (ECCSI).

    ``repr`` never shows the RSK or SSK.
    """

    kms_uri: str
    user_uri: str
    user_id: bytes  # the UID (F.2.1), 32 octets
    key_period_no: int
    rsk: bytes  # UserDecryptKey, 257 octets
    ssk: bytes  # UserSigningKeySSK, 32 octets
    pvt: bytes  # UserPubTokenPVT, 65 octets
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    revoked: bool | None = None
    cert_uri: str | None = None
    issuer: str | None = None
    version: str = "1.1.0"

    def __post_init__(self) -> None:
        _check_uri("KmsUri", self.kms_uri)
        _check_uri("UserUri", self.user_uri)
        _check_length("UserID", self.user_id, USER_ID_LENGTH)
        _check_non_negative("KeyPeriodNo", self.key_period_no)
        _check_length("UserDecryptKey", self.rsk, RSK_LENGTH)
        _check_length("UserSigningKeySSK", self.ssk, SSK_LENGTH)
        _check_length("UserPubTokenPVT", self.pvt, PVT_LENGTH)
        for name in ("user_id", "rsk", "ssk", "pvt"):
            object.__setattr__(self, name, bytes(getattr(self, name)))
        object.__setattr__(self, "valid_from", _utc_or_none(self.valid_from))
        object.__setattr__(self, "valid_to", _utc_or_none(self.valid_to))

    def __repr__(self) -> str:
        return (
            f"KmsKeySet(kms_uri={self.kms_uri!r}, user_uri={self.user_uri!r}, user_id={self.user_id.hex()}, "
            f"key_period_no={self.key_period_no}, pvt={self.pvt[:9].hex()}…)"
        )


@dataclass(frozen=True)
class KmsInit:
    """KmsInit (Annex D KmsInitType): the KMS certificate a client is initialised with."""

    certificate: KmsCertificate


@dataclass(frozen=True)
class KmsKeyProv:
    """KmsKeyProv (Annex D KmsKeyProvType): the user's key sets, usually the current and the next key period."""

    key_sets: tuple[KmsKeySet, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_sets", tuple(self.key_sets))


@dataclass(frozen=True)
class KmsCertCache:
    """KmsCertCache (Annex D KmsCertCacheType): certificates of the KMSs a client may meet (own and external)."""

    certificates: tuple[KmsCertificate, ...]
    cache_num: int | None = None  # the CacheNum attribute: a version number of the cache

    def __post_init__(self) -> None:
        object.__setattr__(self, "certificates", tuple(self.certificates))
        if self.cache_num is not None:
            _check_non_negative("CacheNum", self.cache_num)


@dataclass(frozen=True)
class KmsError:
    """KmsError (Annex D ErrorType): an error code and a human-readable message."""

    code: int
    message: str

    def __post_init__(self) -> None:
        _check_non_negative("ErrorCode", self.code)


@dataclass(frozen=True)
class KmsRequest:
    """KmsRequest (D.2.2): who asks which KMS for what (ClientReqUrl), and when."""

    user_uri: str
    kms_uri: str
    time: datetime
    client_req_url: str
    client_id: str | None = None
    device_id: str | None = None

    def __post_init__(self) -> None:
        _check_uri("UserUri", self.user_uri)
        _check_uri("KmsUri", self.kms_uri)
        _check_uri("ClientReqUrl", self.client_req_url, may_be_empty=True)
        object.__setattr__(self, "time", as_utc(self.time))


@dataclass(frozen=True)
class KmsResponse:
    """KmsResponse (D.2.3): addressee, KMS, time, the request URL answered, and a KmsMessage or a KmsError.

    ``response_id`` is the ``Id`` attribute the XML-DSig reference of a SignedKmsResponse points at.
    """

    user_uri: str
    kms_uri: str
    time: datetime
    client_req_url: str
    message: KmsInit | KmsKeyProv | KmsCertCache | None = None
    error: KmsError | None = None
    kms_id: str | None = None
    response_id: str = field(default="xmldoc")

    def __post_init__(self) -> None:
        _check_uri("UserUri", self.user_uri)
        _check_uri("KmsUri", self.kms_uri)
        _check_uri("ClientReqUrl", self.client_req_url, may_be_empty=True)
        if not isinstance(self.response_id, str) or not _ID_RE.match(self.response_id):
            raise KmsFormatError(f"response Id must be an XML name, got {self.response_id!r}")
        object.__setattr__(self, "time", as_utc(self.time))
