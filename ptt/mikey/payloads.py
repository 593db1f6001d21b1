"""MIKEY payloads (RFC 3830, RFC 6043, RFC 6509) as used by 3GPP TS 33.180 I_MESSAGEs.

Each payload is a frozen dataclass with ``parse(data, offset) -> (payload, offset_after)`` and ``__bytes__``.
Payloads keep their own ``next_payload`` field (the type of the payload that follows, 0 for the last one)
and any unknown values verbatim, so that parse → bytes is byte-identical; ``MikeyMessage.build`` fills
``next_payload`` in. Parsing raises ``MalformedMessage`` naming the payload and field; encoding raises
``ValueError`` on values that do not fit their field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, Self, cast

from ptt.mikey.errors import KeyParametersError, MalformedMessage
from ptt.mikey.keyparams import (
    KEY_PARAMETERS_EXT_TYPE,
    LegacyKeyParameters,
    ProtectedKeyParameters,
    parse_key_parameters_ext,
)
from ptt.mikey.wire import Reader, field, known, sized


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


_TS_LENGTH = {TsType.NTP_UTC: 8, TsType.NTP: 8, TsType.COUNTER: 4, TsType.NTP_UTC_32: 4}


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


# --- HDR ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SrtpIdEntry:
    """SRTP-ID CS ID map entry (RFC 3830 §6.1.1)."""

    policy_no: int
    ssrc: int
    roc: int

    def __bytes__(self) -> bytes:
        return field(self.policy_no, 1, "policy no") + field(self.ssrc, 4, "SSRC") + field(self.roc, 4, "ROC")


@dataclass(frozen=True, slots=True)
class GenericIdEntry:
    """GENERIC-ID CS ID map entry (RFC 6043 §6.12).

    TS 33.180: a GMK uses CS ID 4, SRTP, policy (0,), SPI = GMK-ID || GUK-ID; a CSK CS ID 6, SPI = CSK-ID.
    """

    cs_id: int
    spi: bytes
    prot_type: int = ProtType.SRTP
    policies: tuple[int, ...] = (0,)
    session_data: bytes = b""
    s_flag: bool = False

    def __bytes__(self) -> bytes:
        if len(self.policies) > 0x7F:
            raise ValueError(f"GENERIC-ID: {len(self.policies)} policies do not fit in 7 bits")
        return (
            field(self.cs_id, 1, "CS ID")
            + field(self.prot_type, 1, "prot type")
            + bytes([self.s_flag << 7 | len(self.policies)])
            + b"".join(field(p, 1, "policy") for p in self.policies)
            + sized(self.session_data, 2, "session data")
            + sized(self.spi, 1, "SPI")
        )


CsMapEntry = SrtpIdEntry | GenericIdEntry


@dataclass(frozen=True, slots=True)
class Hdr:
    """Common header (RFC 3830 §6.1 with the RFC 6043 CS ID map types).

    ``cs_map`` holds SrtpIdEntry items for map type 0, GenericIdEntry items for type 2, none for type 1.
    """

    data_type: int
    csb_id: int
    cs_map_type: int
    cs_map: tuple[CsMapEntry, ...] = ()
    prf_func: int = PrfFunc.HMAC_SHA_256
    v: bool = False
    version: int = 1
    next_payload: int = 0

    @classmethod
    def parse(cls, data: bytes, offset: int) -> tuple[Self, int]:
        r = Reader(data, offset, "HDR")
        version = r.uint(1, "version")
        if version != 1:
            raise r.fail(f"unsupported version {version}")
        data_type = r.uint(1, "data type")
        next_payload = r.uint(1, "next payload")
        v_prf = r.uint(1, "V/PRF func")
        csb_id = r.uint(4, "CSB ID")
        n_cs = r.uint(1, "#CS")
        map_type = r.uint(1, "CS ID map type")
        entries: list[CsMapEntry] = []
        if map_type == CsIdMapType.SRTP_ID:
            for _ in range(n_cs):
                entries.append(SrtpIdEntry(r.uint(1, "CS ID map"), r.uint(4, "CS ID map"), r.uint(4, "CS ID map")))
        elif map_type == CsIdMapType.GENERIC_ID:
            for _ in range(n_cs):
                entries.append(_parse_generic_id(r))
        elif map_type == CsIdMapType.EMPTY:
            if n_cs:
                raise r.fail(f"empty CS ID map with #CS={n_cs}")
        else:
            raise r.fail(f"unsupported CS ID map type {map_type}")
        hdr = cls(
            known(DataType, data_type),
            csb_id,
            CsIdMapType(map_type),
            tuple(entries),
            known(PrfFunc, v_prf & 0x7F),
            bool(v_prf & 0x80),
            version,
            known(PayloadType, next_payload),
        )
        return hdr, r.pos

    def __bytes__(self) -> bytes:
        entry_type = {CsIdMapType.SRTP_ID: SrtpIdEntry, CsIdMapType.GENERIC_ID: GenericIdEntry}.get(
            CsIdMapType(self.cs_map_type)
        )
        if any(type(e) is not entry_type for e in self.cs_map):
            raise ValueError(f"HDR: CS ID map entries do not match map type {self.cs_map_type}")
        if not 0 <= self.prf_func <= 0x7F:
            raise ValueError(f"HDR: PRF func does not fit in 7 bits: {self.prf_func}")
        return (
            field(self.version, 1, "version")
            + field(self.data_type, 1, "data type")
            + field(self.next_payload, 1, "next payload")
            + bytes([self.v << 7 | self.prf_func])
            + field(self.csb_id, 4, "CSB ID")
            + field(len(self.cs_map), 1, "#CS")
            + field(self.cs_map_type, 1, "CS ID map type")
            + b"".join(map(bytes, self.cs_map))
        )

    def with_next(self, next_type: int) -> Self:
        return dataclasses.replace(self, next_payload=next_type)


def _parse_generic_id(r: Reader) -> GenericIdEntry:
    cs_id = r.uint(1, "GENERIC-ID CS ID")
    prot_type = r.uint(1, "GENERIC-ID prot type")
    s_np = r.uint(1, "GENERIC-ID #P")
    policies = tuple(r.take(s_np & 0x7F, "GENERIC-ID policies"))
    session_data = r.take(r.uint(2, "GENERIC-ID session data length"), "GENERIC-ID session data")
    spi = r.take(r.uint(1, "GENERIC-ID SPI length"), "GENERIC-ID SPI")
    return GenericIdEntry(cs_id, spi, known(ProtType, prot_type), policies, session_data, bool(s_np & 0x80))


# --- T, RAND, ID, IDR ---------------------------------------------------------------------------------------

NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 (NTP era 0) to 1970-01-01


def ntp_to_unix(ntp: int) -> float:
    """64-bit NTP timestamp → Unix seconds; seconds with the top bit clear are era 1 (2036-), RFC 4330 §3."""
    seconds, fraction = ntp >> 32, ntp & 0xFFFFFFFF
    if not seconds & 0x80000000:
        seconds += 1 << 32
    return seconds - NTP_UNIX_OFFSET + fraction / (1 << 32)


def unix_to_ntp(unix_seconds: float) -> int:
    """Unix seconds → 64-bit NTP timestamp (seconds wrap modulo 2**32, as NTP does at era boundaries)."""
    whole = int(unix_seconds // 1)
    fraction = round((unix_seconds - whole) * (1 << 32))
    if fraction == 1 << 32:
        whole, fraction = whole + 1, 0
    return ((whole + NTP_UNIX_OFFSET) % (1 << 32)) << 32 | fraction


@dataclass(frozen=True, slots=True)
class T(ChainedPayload):
    """Timestamp (RFC 3830 §6.6): ``value`` is the raw TS value (64-bit NTP for NTP-UTC/NTP)."""

    TYPE: ClassVar[int] = PayloadType.T
    ts_type: int
    value: int
    next_payload: int = 0

    @classmethod
    def ntp_utc(cls, unix_seconds: float) -> Self:
        return cls(TsType.NTP_UTC, unix_to_ntp(unix_seconds))

    def unix_time(self) -> float:
        if self.ts_type not in (TsType.NTP_UTC, TsType.NTP):
            raise ValueError(f"T: TS type {self.ts_type} is not a 64-bit NTP time")
        return ntp_to_unix(self.value)

    @classmethod
    def parse(cls, data: bytes, offset: int) -> tuple[Self, int]:
        r = Reader(data, offset, "T")
        next_payload = r.uint(1, "next payload")
        ts_type = r.uint(1, "TS type")
        if ts_type not in _TS_LENGTH:
            raise r.fail(f"unknown TS type {ts_type}")
        value = r.uint(_TS_LENGTH[TsType(ts_type)], "TS value")
        return cls(TsType(ts_type), value, known(PayloadType, next_payload)), r.pos

    def __bytes__(self) -> bytes:
        length = _TS_LENGTH.get(TsType(self.ts_type)) if self.ts_type in TsType._value2member_map_ else None
        if length is None:
            raise ValueError(f"T: unknown TS type {self.ts_type}")
        return (
            field(self.next_payload, 1, "next payload")
            + field(self.ts_type, 1, "TS type")
            + field(self.value, length, "TS value")
        )


@dataclass(frozen=True, slots=True)
class Rand(ChainedPayload):
    """RAND (RFC 3830 §6.11)."""

    TYPE: ClassVar[int] = PayloadType.RAND
    rand: bytes
    next_payload: int = 0

    @classmethod
    def parse(cls, data: bytes, offset: int) -> tuple[Self, int]:
        r = Reader(data, offset, "RAND")
        next_payload = r.uint(1, "next payload")
        rand = r.take(r.uint(1, "RAND length"), "RAND")
        return cls(rand, known(PayloadType, next_payload)), r.pos

    def __bytes__(self) -> bytes:
        return field(self.next_payload, 1, "next payload") + sized(self.rand, 1, "RAND")


@dataclass(frozen=True, slots=True)
class IdPayload(ChainedPayload):
    """ID (RFC 3830 §6.7): the role-less identity payload."""

    TYPE: ClassVar[int] = PayloadType.ID
    id_type: int
    data: bytes
    next_payload: int = 0

    @classmethod
    def parse(cls, data: bytes, offset: int) -> tuple[Self, int]:
        r = Reader(data, offset, "ID")
        next_payload = r.uint(1, "next payload")
        id_type = r.uint(1, "ID type")
        value = r.take(r.uint(2, "ID length"), "ID data")
        return cls(known(IdType, id_type), value, known(PayloadType, next_payload)), r.pos

    def __bytes__(self) -> bytes:
        return (
            field(self.next_payload, 1, "next payload") + field(self.id_type, 1, "ID type") + sized(self.data, 2, "ID")
        )


@dataclass(frozen=True, slots=True)
class Idr(ChainedPayload):
    """IDR (RFC 6043 §6.6): identity with a role (initiator/responder UID, their KMSs...)."""

    TYPE: ClassVar[int] = PayloadType.IDR
    role: int
    id_type: int
    data: bytes
    next_payload: int = 0

    @classmethod
    def parse(cls, data: bytes, offset: int) -> tuple[Self, int]:
        r = Reader(data, offset, "IDR")
        next_payload = r.uint(1, "next payload")
        role = r.uint(1, "ID role")
        id_type = r.uint(1, "ID type")
        value = r.take(r.uint(2, "ID length"), "ID data")
        return cls(known(IdRole, role), known(IdType, id_type), value, known(PayloadType, next_payload)), r.pos

    def __bytes__(self) -> bytes:
        return (
            field(self.next_payload, 1, "next payload")
            + field(self.role, 1, "ID role")
            + field(self.id_type, 1, "ID type")
            + sized(self.data, 2, "ID")
        )


# --- SP -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpParam:
    """One security policy parameter: type (1) | length (1) | value."""

    type: int
    value: bytes

    @property
    def int_value(self) -> int:
        return int.from_bytes(self.value, "big")

    def __bytes__(self) -> bytes:
        return field(self.type, 1, "SP param type") + sized(self.value, 1, "SP param")


@dataclass(frozen=True, slots=True)
class Sp(ChainedPayload):
    """Security policy (RFC 3830 §6.10); parameters kept in wire order, unknown types verbatim."""

    TYPE: ClassVar[int] = PayloadType.SP
    policy_no: int
    prot_type: int
    params: tuple[SpParam, ...]
    next_payload: int = 0

    def get(self, param_type: int) -> SpParam | None:
        """The first parameter of ``param_type``, if any."""
        return next((p for p in self.params if p.type == param_type), None)

    @classmethod
    def parse(cls, data: bytes, offset: int) -> tuple[Self, int]:
        r = Reader(data, offset, "SP")
        next_payload = r.uint(1, "next payload")
        policy_no = r.uint(1, "policy no")
        prot_type = r.uint(1, "prot type")
        block = Reader(r.take(r.uint(2, "policy param length"), "policy params"), 0, "SP")
        params = []
        while block.pos < len(block.data):
            ptype = block.uint(1, "param type")
            value = block.take(block.uint(1, "param length"), "param value")
            params.append(SpParam(known(SrtpParam, ptype), value))
        return cls(policy_no, known(ProtType, prot_type), tuple(params), known(PayloadType, next_payload)), r.pos

    def __bytes__(self) -> bytes:
        return (
            field(self.next_payload, 1, "next payload")
            + field(self.policy_no, 1, "policy no")
            + field(self.prot_type, 1, "prot type")
            + sized(b"".join(map(bytes, self.params)), 2, "policy param")
        )


# --- SAKKE, GENERAL-EXT, SIGN -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sakke(ChainedPayload):
    """SAKKE (RFC 6509 §4.2): ``data`` is the SAKKE encapsulated data R || H (273 octets for set 1)."""

    TYPE: ClassVar[int] = PayloadType.SAKKE
    sakke_params: int
    id_scheme: int
    data: bytes
    next_payload: int = 0

    @classmethod
    def parse(cls, data: bytes, offset: int) -> tuple[Self, int]:
        r = Reader(data, offset, "SAKKE")
        next_payload = r.uint(1, "next payload")
        params = r.uint(1, "SAKKE params")
        scheme = r.uint(1, "ID scheme")
        value = r.take(r.uint(2, "SAKKE data length"), "SAKKE data")
        return cls(
            known(SakkeParams, params), known(SakkeIdScheme, scheme), value, known(PayloadType, next_payload)
        ), r.pos

    def __bytes__(self) -> bytes:
        return (
            field(self.next_payload, 1, "next payload")
            + field(self.sakke_params, 1, "SAKKE params")
            + field(self.id_scheme, 1, "ID scheme")
            + sized(self.data, 2, "SAKKE data")
        )


@dataclass(frozen=True, slots=True)
class GeneralExt(ChainedPayload):
    """General extension (RFC 3830 §6.15); type 7 carries the 3GPP key parameters (validated when parsed)."""

    TYPE: ClassVar[int] = PayloadType.GENERAL_EXT
    ext_type: int
    data: bytes
    next_payload: int = 0

    def key_parameters(self) -> ProtectedKeyParameters | LegacyKeyParameters:
        """The 3GPP key parameters carried here (KeyParametersError if this is not a well-formed type 7)."""
        if self.ext_type != KEY_PARAMETERS_EXT_TYPE:
            raise KeyParametersError(f"GENERAL-EXT type {self.ext_type} does not carry key parameters")
        return parse_key_parameters_ext(self.data)

    @classmethod
    def parse(cls, data: bytes, offset: int) -> tuple[Self, int]:
        r = Reader(data, offset, "GENERAL-EXT")
        next_payload = r.uint(1, "next payload")
        ext_type = r.uint(1, "type")
        value = r.take(r.uint(2, "length"), "data")
        ext = cls(ext_type, value, known(PayloadType, next_payload))
        if ext_type == KEY_PARAMETERS_EXT_TYPE:
            try:
                ext.key_parameters()
            except KeyParametersError as e:
                raise r.fail(f"bad 3GPP key parameters: {e}") from None
        return ext, r.pos

    def __bytes__(self) -> bytes:
        return (
            field(self.next_payload, 1, "next payload") + field(self.ext_type, 1, "type") + sized(self.data, 2, "data")
        )


@dataclass(frozen=True, slots=True)
class Sign(Payload):
    """Signature (RFC 3830 §6.5): S type (4 bits) | length (12 bits) | signature; no next payload, last."""

    TYPE: ClassVar[int] = PayloadType.SIGN
    sig_type: int
    signature: bytes

    @property
    def next_type(self) -> int:
        return PayloadType.LAST

    def with_next(self, next_type: int) -> Self:
        if next_type != PayloadType.LAST:
            raise ValueError("SIGN must be the last payload")
        return self

    @classmethod
    def parse(cls, data: bytes, offset: int) -> tuple[Self, int]:
        r = Reader(data, offset, "SIGN")
        head = r.uint(2, "S type/length")
        signature = r.take(head & 0x0FFF, "signature")
        return cls(known(SignatureType, head >> 12), signature), r.pos

    def __bytes__(self) -> bytes:
        if not 0 <= self.sig_type <= 0xF:
            raise ValueError(f"SIGN: S type does not fit in 4 bits: {self.sig_type}")
        if len(self.signature) > 0x0FFF:
            raise ValueError(f"SIGN: {len(self.signature)}-octet signature does not fit the 12-bit length")
        return (self.sig_type << 12 | len(self.signature)).to_bytes(2, "big") + self.signature


PAYLOAD_CLASSES: dict[int, type[Payload]] = {
    cls.TYPE: cls for cls in (T, Rand, IdPayload, Idr, Sp, Sakke, GeneralExt, Sign)
}


def parse_payload(payload_type: int, data: bytes, offset: int) -> tuple[Payload, int]:
    """Parse one payload of ``payload_type`` at ``offset``; unsupported types are MalformedMessage."""
    cls = PAYLOAD_CLASSES.get(payload_type)
    if cls is None:
        raise MalformedMessage(f"unsupported payload type {payload_type} at offset {offset}")
    return cls.parse(data, offset)


__all__ = [
    "ECCSI_SIGNATURE_LEN",
    "PAYLOAD_CLASSES",
    "SAKKE_DATA_LEN_SET1",
    "ChainedPayload",
    "CsIdMapType",
    "CsMapEntry",
    "DataType",
    "GeneralExt",
    "GenericIdEntry",
    "Hdr",
    "IdPayload",
    "IdRole",
    "IdType",
    "Idr",
    "Payload",
    "PayloadType",
    "PrfFunc",
    "ProtType",
    "Rand",
    "Sakke",
    "SakkeIdScheme",
    "SakkeParams",
    "Sign",
    "SignatureType",
    "Sp",
    "SpParam",
    "SrtpIdEntry",
    "SrtpParam",
    "T",
    "TsType",
    "ntp_to_unix",
    "parse_payload",
    "unix_to_ntp",
]
