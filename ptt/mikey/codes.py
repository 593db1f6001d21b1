"""MIKEY code points (RFC 3830, RFC 6043, RFC 6509) and the payload base classes every payload family builds on.

See :mod:`ptt.mikey.payloads` for how payloads parse and encode.
"""

from __future__ import annotations

import dataclasses
from enum import IntEnum
from typing import Any, ClassVar, Self, cast


class PayloadType(IntEnum):
    """Next-payload values (RFC 3830 §6.1, RFC 6043, RFC 6509)."""

    LAST = 0
    KEMAC = 1
    PKE = 2
    DH = 3
    SIGN = 4
    T = 5
    ID = 6
    CERT = 7
    CHASH = 8
    V = 9
    SP = 10
    RAND = 11
    ERR = 12
    IDR = 14
    KEY_DATA = 20
    GENERAL_EXT = 21
    SAKKE = 26


class DataType(IntEnum):
    """HDR data type (RFC 3830 §6.1, RFC 6509 §4.1)."""

    PSK_INIT = 0
    PSK_VERIFY = 1
    PK_INIT = 2
    PK_VERIFY = 3
    DH_INIT = 4
    DH_RESP = 5
    ERROR = 6
    SAKKE_MSG = 26  # the I_MESSAGE
    SAKKE_RESP = 27


class PrfFunc(IntEnum):
    """HDR PRF function (RFC 3830 §6.1, RFC 6043 §6.1)."""

    MIKEY_1 = 0  # HMAC-SHA-1 based
    HMAC_SHA_256 = 1


class CsIdMapType(IntEnum):
    SRTP_ID = 0
    EMPTY = 1
    GENERIC_ID = 2


class TsType(IntEnum):
    NTP_UTC = 0
    NTP = 1
    COUNTER = 2
    NTP_UTC_32 = 3  # RFC 6043


class IdType(IntEnum):
    NAI = 0
    URI = 1
    BYTE_STRING = 2


class IdRole(IntEnum):
    """IDR ID role (RFC 6043 §6.6, RFC 6509, TS 33.180)."""

    INITIATOR = 1
    RESPONDER = 2
    KMS = 3
    PSK = 4
    APPLICATION = 5
    INITIATOR_KMS = 6
    RESPONDER_KMS = 7
    INITIATOR_UID = 8
    RESPONDER_UID = 9


class ProtType(IntEnum):
    SRTP = 0


class SrtpParam(IntEnum):
    """SP payload parameter types for SRTP (RFC 3830 §6.10.1, RFC 4771, RFC 7714)."""

    ENC_ALG = 0
    SESSION_ENC_KEY_LEN = 1
    AUTH_ALG = 2
    SESSION_AUTH_KEY_LEN = 3
    SESSION_SALT_LEN = 4
    SRTP_PRF = 5
    KEY_DERIVATION_RATE = 6
    SRTP_ENCRYPTION = 7
    SRTCP_ENCRYPTION = 8
    SENDER_FEC_ORDER = 9
    SRTP_AUTHENTICATION = 10
    AUTH_TAG_LEN = 11
    SRTP_PREFIX_LEN = 12
    ROC_TRANSMISSION_RATE = 13
    AEAD_AUTH_TAG_LEN = 20


class SakkeParams(IntEnum):
    PARAMETER_SET_1 = 1


class SakkeIdScheme(IntEnum):
    TEL_URI_MONTHLY = 1  # RFC 6509
    TS33180_UID = 2  # 3GPP hashed UID


class SignatureType(IntEnum):
    RSA_PKCS1_V1_5 = 0
    RSA_PSS = 1
    ECCSI = 2


SAKKE_DATA_LEN_SET1 = 273  # R (04 || x || y, 257 octets) || H (16 octets) for parameter set 1
ECCSI_SIGNATURE_LEN = 129  # r (32) || s (32) || PVT (65)


class Payload:
    """Common interface of the payloads that follow the HDR."""

    __slots__ = ()
    TYPE: ClassVar[int]

    @classmethod
    def parse(cls, data: bytes, offset: int) -> tuple[Self, int]:
        raise NotImplementedError

    def __bytes__(self) -> bytes:
        raise NotImplementedError

    @property
    def next_type(self) -> int:
        """Type of the payload that follows this one on the wire (0 = none)."""
        raise NotImplementedError

    def with_next(self, next_type: int) -> Self:
        """A copy chained to a following payload of ``next_type``."""
        raise NotImplementedError


class ChainedPayload(Payload):
    """A payload whose first octet is the next-payload field (all but SIGN)."""

    __slots__ = ()
    next_payload: int

    @property
    def next_type(self) -> int:
        return self.next_payload

    def with_next(self, next_type: int) -> Self:
        return cast(Self, dataclasses.replace(cast(Any, self), next_payload=next_type))
