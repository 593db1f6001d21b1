"""TS 24.380 floor control fields (§8.2.3): constants, subtypes, field IDs, causes, indicators, the field value
types, and the field codec (ID ‖ length ‖ value, padded to 32 bits) the messages are assembled from.

The wire format is described in :mod:`ptt.floor.messages`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Final

RTCP_VERSION: Final = 2
APP_PACKET_TYPE: Final = 204  # RFC 3550 §6.7
NAME: Final = b"MCPT"  # TS 24.380 §8.1.2: floor control messages
HEADER_LEN: Final = 12  # V/P/subtype, PT, length, SSRC, name
ACK_REQUIRED_BIT: Final = 0x10  # the "x" of subtype "x0001" etc. (table 8.2.2.1-1)
LONG_LENGTH_FIELD_ID: Final = 192  # field IDs from here on have a 2-octet length (§8.2.3.1, later releases)
MAX_PACKET_LEN: Final = (0xFFFF + 1) * 4  # what the 16-bit length field can describe

RTCP_PT_MIN: Final = 192  # RFC 5761 §4: RTCP packet types are 192..223 when multiplexed with RTP
RTCP_PT_MAX: Final = 223

QUEUE_POSITION_NOT_QUEUED: Final = 254  # §8.2.3.5: the MCPTT client is not queued
QUEUE_POSITION_UNKNOWN: Final = 255  # §8.2.3.5: queued, position unknown or not disclosed by policy


class FloorMessageError(ValueError):
    """The octets are not a well-formed TS 24.380 floor control message (or RTCP packet carrying them)."""


class Subtype(IntEnum):
    """Floor control message subtypes, TS 24.380 table 8.2.2.1-1, without the acknowledgement-required bit.

    tshark 4.0 names subtypes 14 ("Floor Queued Cancel") and 15 ("Floor Release Multi Talker", Rel-15) as here.
    Subtypes 7, 11, 12 and 13 are not included: 7 and 11 appear only in later releases (per secondary sources), 12
    and 13 are unassigned as far as we could check; later releases reportedly give 14 another name.
    """

    REQUEST = 0
    GRANTED = 1
    TAKEN = 2
    DENY = 3
    RELEASE = 4
    IDLE = 5
    REVOKE = 6
    QUEUE_POSITION_REQUEST = 8
    QUEUE_POSITION_INFO = 9
    ACK = 10
    QUEUED_CANCEL = 14
    RELEASE_MULTI_TALKER = 15


# Subtypes coded "x…" in table 8.2.2.1-1 (x = 1: acknowledgement required); the others have a fixed top bit 0.
ACK_CAPABLE_SUBTYPES: Final = frozenset(
    {Subtype.GRANTED, Subtype.TAKEN, Subtype.DENY, Subtype.RELEASE, Subtype.IDLE, Subtype.QUEUE_POSITION_INFO}
)


class FieldId(IntEnum):
    """Floor control specific field IDs, TS 24.380 table 8.2.3.1-2 (those this module decodes)."""

    FLOOR_PRIORITY = 0
    DURATION = 1
    REJECT_CAUSE = 2
    QUEUE_INFO = 3
    GRANTED_PARTY_IDENTITY = 4
    PERMISSION_TO_REQUEST = 5
    USER_ID = 6
    QUEUE_SIZE = 7
    MESSAGE_SEQUENCE_NUMBER = 8
    QUEUED_USER_ID = 9
    SOURCE = 10
    TRACK_INFO = 11
    MESSAGE_TYPE = 12
    FLOOR_INDICATOR = 13
    SSRC = 14


class FloorIndicator(IntFlag):
    """The 16-bit Floor Indicator bit map, TS 24.380 §8.2.3.15 (bit A is the most significant).

    A-F are in every release; G dual floor and H temporary group call are in v14; I multi-talker is Rel-15+ (as
    tshark 4.0 names it). Other bits are reserved; unknown bits are kept (``IntFlag`` boundary KEEP).
    """

    NORMAL = 0x8000
    BROADCAST = 0x4000
    SYSTEM = 0x2000
    EMERGENCY = 0x1000
    IMMINENT_PERIL = 0x0800
    QUEUEING_SUPPORTED = 0x0400
    DUAL_FLOOR = 0x0200
    TEMPORARY_GROUP_CALL = 0x0100
    MULTI_TALKER = 0x0080


class DenyCause(IntEnum):
    """<Reject Cause> values of Floor Deny, TS 24.380 §8.2.6.2."""

    ANOTHER_CLIENT_HAS_PERMISSION = 1
    INTERNAL_ERROR = 2
    ONLY_ONE_PARTICIPANT = 3
    RETRY_AFTER_NOT_EXPIRED = 4
    RECEIVE_ONLY = 5
    NO_RESOURCES = 6
    QUEUE_FULL = 7
    OTHER = 255


class RevokeCause(IntEnum):
    """<Reject Cause> values of Floor Revoke, TS 24.380 §8.2.10.2 (cause 5 is unassigned)."""

    ONLY_ONE_CLIENT = 1
    MEDIA_BURST_TOO_LONG = 2
    NO_PERMISSION = 3
    PRE_EMPTED = 4
    NO_RESOURCES = 6
    OTHER = 255


class Source(IntEnum):
    """<Source> values, TS 24.380 §8.2.3.12 (other values reserved)."""

    FLOOR_PARTICIPANT = 0
    PARTICIPATING_FUNCTION = 1
    CONTROLLING_FUNCTION = 2
    NON_CONTROLLING_FUNCTION = 3


@dataclass(frozen=True)
class RejectCause:
    """Reject Cause field (§8.2.3.4): a 16-bit cause (``DenyCause`` / ``RevokeCause``) and an optional UTF-8 phrase."""

    code: int
    phrase: str = ""


@dataclass(frozen=True)
class QueueInfo:
    """Queue Info field (§8.2.3.5): queue position (254 not queued, 255 unknown) and queue priority level."""

    position: int
    priority: int


# --- encoding helpers -------------------------------------------------------------------------------------------


def encode_uint(value: int, octets: int, what: str) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an int, not {type(value).__name__}")
    if not 0 <= value < 1 << (8 * octets):
        raise ValueError(f"{what} does not fit in {octets} octet(s): {value}")
    return value.to_bytes(octets, "big")


def encode_text(value: str, what: str, limit: int) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a str, not {type(value).__name__}")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates
        raise ValueError(f"{what} is not encodable as UTF-8: {e}") from None
    if len(raw) > limit:
        raise ValueError(f"{what} is {len(raw)} octets in UTF-8, at most {limit} fit")
    return raw


def max_value_len(field_id: int) -> int:
    return 0xFFFF if field_id >= LONG_LENGTH_FIELD_ID else 0xFF


def encode_field(field_id: int, value: bytes) -> bytes:
    """ID ‖ length ‖ value ‖ zero padding to a multiple of 4 octets (§8.2.3.1)."""
    length_octets = 2 if field_id >= LONG_LENGTH_FIELD_ID else 1
    if len(value) > max_value_len(field_id):
        raise ValueError(f"field {field_id}: value of {len(value)} octets does not fit its length")
    out = bytes([field_id]) + len(value).to_bytes(length_octets, "big") + value
    return out + bytes(-len(out) % 4)


def field_name(field_id: int) -> str:
    if field_id in FieldId._value2member_map_:
        return f"{FieldId(field_id).name} ({field_id})"
    return f"field {field_id}"


def decode_subtype(raw: int) -> tuple[Subtype, bool]:
    if raw in Subtype._value2member_map_:
        return Subtype(raw), False
    base = raw & ~ACK_REQUIRED_BIT
    if raw & ACK_REQUIRED_BIT and base in Subtype._value2member_map_ and Subtype(base) in ACK_CAPABLE_SUBTYPES:
        return Subtype(base), True
    raise FloorMessageError(f"unknown floor control subtype {raw}")


def decode_fixed(field_id: int, value: bytes, length: int) -> bytes:
    if len(value) != length:
        raise FloorMessageError(f"{field_name(field_id)}: length {len(value)}, must be {length}")
    return value


def decode_utf8(field_id: int, value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FloorMessageError(f"{field_name(field_id)}: invalid UTF-8 at octet {e.start}") from None


def decode_u16(field_id: int, value: bytes) -> int:
    return int.from_bytes(decode_fixed(field_id, value, 2), "big")


def decode_known(field_id: int, value: bytes) -> tuple[str, object]:
    """(attribute name, decoded value) of a field this module models (TS 24.380 §8.2.3.2-§8.2.3.16)."""
    match field_id:
        case FieldId.FLOOR_PRIORITY:  # §8.2.3.2: priority 0..255 ‖ spare octet (ignored)
            return "priority", decode_fixed(field_id, value, 2)[0]
        case FieldId.DURATION:  # §8.2.3.3: seconds
            return "duration", decode_u16(field_id, value)
        case FieldId.REJECT_CAUSE:  # §8.2.3.4: cause ‖ optional reject phrase
            if len(value) < 2:
                raise FloorMessageError(f"{field_name(field_id)}: length {len(value)}, must be at least 2")
            return "reject_cause", RejectCause(int.from_bytes(value[:2], "big"), decode_utf8(field_id, value[2:]))
        case FieldId.QUEUE_INFO:  # §8.2.3.5: position ‖ priority level
            raw = decode_fixed(field_id, value, 2)
            return "queue_info", QueueInfo(raw[0], raw[1])
        case FieldId.GRANTED_PARTY_IDENTITY:  # §8.2.3.6, coded as the User ID
            return "granted_party", decode_utf8(field_id, value)
        case FieldId.PERMISSION_TO_REQUEST:  # §8.2.3.7: 0 not permitted, 1 permitted
            permission = decode_u16(field_id, value)
            if permission > 1:
                raise FloorMessageError(f"{field_name(field_id)}: value {permission}, must be 0 or 1")
            return "permission_to_request", permission == 1
        case FieldId.USER_ID:  # §8.2.3.8: the MCPTT ID
            return "user_id", decode_utf8(field_id, value)
        case FieldId.QUEUE_SIZE:  # §8.2.3.9
            return "queue_size", decode_u16(field_id, value)
        case FieldId.MESSAGE_SEQUENCE_NUMBER:  # §8.2.3.10
            return "sequence", decode_u16(field_id, value)
        case FieldId.QUEUED_USER_ID:  # §8.2.3.11, coded as the User ID
            return "queued_user_id", decode_utf8(field_id, value)
        case FieldId.SOURCE:  # §8.2.3.12
            return "source", decode_u16(field_id, value)
        case FieldId.TRACK_INFO:  # §8.2.3.13: kept verbatim
            return "track_info", value
        case FieldId.MESSAGE_TYPE:  # §8.2.3.14: message type ‖ spare octet (ignored)
            return "message_type", decode_fixed(field_id, value, 2)[0]
        case FieldId.FLOOR_INDICATOR:  # §8.2.3.15
            return "floor_indicator", decode_u16(field_id, value)
        case _:  # FieldId.SSRC, §8.2.3.16: SSRC ‖ 16-bit spare (ignored)
            return "ssrc_field", int.from_bytes(decode_fixed(field_id, value, 6)[:4], "big")
