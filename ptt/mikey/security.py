"""MIKEY security payloads: SP (security policy), SAKKE (the encapsulated key), GENERAL-EXT (3GPP key parameters),
SIGN (the ECCSI signature).

See :mod:`ptt.mikey.payloads` for how payloads parse and encode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from ptt.mikey.codes import (
    ChainedPayload,
    Payload,
    PayloadType,
    ProtType,
    SakkeIdScheme,
    SakkeParams,
    SignatureType,
    SrtpParam,
)
from ptt.mikey.errors import KeyParametersError
from ptt.mikey.keyparams import (
    KEY_PARAMETERS_EXT_TYPE,
    LegacyKeyParameters,
    ProtectedKeyParameters,
    parse_key_parameters_ext,
)
from ptt.mikey.wire import Reader, field, known, sized

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
