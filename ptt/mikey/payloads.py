"""MIKEY payloads (RFC 3830, RFC 6043, RFC 6509) as used by 3GPP TS 33.180 I_MESSAGEs.

Each payload is a frozen dataclass with ``parse(data, offset) -> (payload, offset_after)`` and ``__bytes__``.
Payloads keep their own ``next_payload`` field (the type of the payload that follows, 0 for the last one)
and any unknown values verbatim, so that parse → bytes is byte-identical; ``MikeyMessage.build`` fills
``next_payload`` in. Parsing raises ``MalformedMessage`` naming the payload and field; encoding raises
``ValueError`` on values that do not fit their field.
"""

from __future__ import annotations

from ptt.mikey.codes import (
    ECCSI_SIGNATURE_LEN,
    SAKKE_DATA_LEN_SET1,
    ChainedPayload,
    CsIdMapType,
    DataType,
    IdRole,
    IdType,
    Payload,
    PayloadType,
    PrfFunc,
    ProtType,
    SakkeIdScheme,
    SakkeParams,
    SignatureType,
    SrtpParam,
    TsType,
)
from ptt.mikey.errors import MalformedMessage
from ptt.mikey.header import (
    CsMapEntry,
    GenericIdEntry,
    Hdr,
    IdPayload,
    Idr,
    Rand,
    SrtpIdEntry,
    T,
    ntp_to_unix,
    unix_to_ntp,
)
from ptt.mikey.security import (
    GeneralExt,
    Sakke,
    Sign,
    Sp,
    SpParam,
)

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
