"""MIKEY header and identity payloads: HDR (SRTP-ID / empty / GENERIC-ID maps), T (and NTP time), RAND, ID, IDR.

See :mod:`ptt.mikey.payloads` for how payloads parse and encode.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Self

from ptt.mikey.codes import (
    ChainedPayload,
    CsIdMapType,
    DataType,
    IdRole,
    IdType,
    PayloadType,
    PrfFunc,
    ProtType,
    TsType,
)
from ptt.mikey.wire import Reader, field, known, sized

_TS_LENGTH = {TsType.NTP_UTC: 8, TsType.NTP: 8, TsType.COUNTER: 4, TsType.NTP_UTC_32: 4}

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
