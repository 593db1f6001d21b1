"""3GPP TS 24.380 floor control messages: RTCP APP packets named "MCPT", byte-exact and pure.

Wire format (TS 24.380 §8.1.2, RFC 3550 §6.7): ``V=2 P=0 subtype(5) | PT=204 | length | SSRC | "MCPT" | fields``,
where ``length`` counts 32-bit words minus one and every media plane control message is exactly one APP packet
(§8.1.1: never compound, but several may share one datagram — see ``parse_rtcp``). The subtype's top bit is the
"acknowledgement required" flag of the messages coded ``x....`` in table 8.2.2.1-1 (table 8.2.2-1 in early
versions); ``FloorMessage`` keeps it apart as ``ack_required``.

Floor control specific fields (§8.2.3.1): field ID (1 octet) ‖ length (1 octet; 2 octets for field IDs ≥ 192
in later releases, as tshark 4.0 decodes them) ‖ value, the whole field zero-padded to a multiple of 4 octets;
the length excludes the padding. Padding octets "shall be ignored" (§8.2.3), so non-zero padding is accepted, and
so is an all-zero tail after the last field (a stray padding word); such inputs re-encode canonically, not
byte-identically.

``FloorMessage.parse`` takes one whole APP packet and raises only ``FloorMessageError``; ``bytes(message)`` writes
the fields in ascending field-ID order (known and unknown alike, unknown ones in their original relative order) and
raises ``ValueError`` for values that do not fit. The per-message tables of §8.2.4-§8.2.13 list fields in another
order in a few messages (Floor Granted: Duration, SSRC of granted participant, Floor Priority, User ID, Queue Size,
…; Floor Taken: Granted Party's Identity, Permission to Request the Floor, User ID, Message Sequence Number, …, SSRC,
…); receivers decode fields by ID (tshark does), and the ascending order keeps the encoding canonical.

Repeated fields: a known field that occurs more than once is refused, except in the off-network Floor Granted
(§8.2.5), which repeats "SSRC of queued floor participant (14), Queued User ID (9), Queue Info (3)" once per
queued participant after Queue Size, in that order. ``FloorMessage.queued`` holds them as an ordered tuple of
``QueuedParticipant``. A triple is recognised in a Floor Granted as an SSRC field immediately followed by a Queued
User ID field, which must be immediately followed by a Queue Info field; with triples present, Queue Size must be
present and equal their number, and no other Queued User ID may occur. (An SSRC field not followed by a Queued User
ID is the granted participant's.) The canonical ascending-ID order cannot express repeats, so ``__bytes__`` writes
the triples as one block, in their tuple order and in the standard's internal order, right after Queue Size (7)
and before the next single field; the other fields stay in ascending ID order. A Floor Granted in the standard's
table order (Duration, SSRC of the granted participant, Floor Priority, User ID, Queue Size, triples, …) parses to
the same message. Without triples, Queue Size alone (as on-network) is accepted with any value.

Not modelled: fields 15 and above (List of Granted Users, List of SSRCs, Functional Alias, Location, …) are kept
verbatim in ``unknown_fields``, as is the Track Info value (§8.2.3.13) in ``track_info``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from ptt.floor.fields import (
    ACK_CAPABLE_SUBTYPES,
    ACK_REQUIRED_BIT,
    APP_PACKET_TYPE,
    HEADER_LEN,
    LONG_LENGTH_FIELD_ID,
    MAX_PACKET_LEN,
    NAME,
    QUEUE_POSITION_NOT_QUEUED,
    QUEUE_POSITION_UNKNOWN,
    RTCP_PT_MAX,
    RTCP_PT_MIN,
    RTCP_VERSION,
    DenyCause,
    FieldId,
    FloorIndicator,
    FloorMessageError,
    QueueInfo,
    RejectCause,
    RevokeCause,
    Source,
    Subtype,
    decode_fixed,
    decode_known,
    decode_subtype,
    decode_u16,
    decode_utf8,
    encode_field,
    encode_text,
    encode_uint,
    field_name,
    max_value_len,
)

__all__ = [
    "ACK_CAPABLE_SUBTYPES",
    "ACK_REQUIRED_BIT",
    "APP_PACKET_TYPE",
    "HEADER_LEN",
    "LONG_LENGTH_FIELD_ID",
    "MAX_PACKET_LEN",
    "NAME",
    "QUEUE_POSITION_NOT_QUEUED",
    "QUEUE_POSITION_UNKNOWN",
    "RTCP_PT_MAX",
    "RTCP_PT_MIN",
    "RTCP_VERSION",
    "DenyCause",
    "FieldId",
    "FloorIndicator",
    "FloorMessage",
    "FloorMessageError",
    "QueueInfo",
    "QueuedParticipant",
    "RejectCause",
    "RevokeCause",
    "Source",
    "Subtype",
    "is_rtcp",
    "parse_rtcp",
]

_PT_SR: Final = 200
_PT_RR: Final = 201
_PT_BYE: Final = 203


@dataclass(frozen=True)
class QueuedParticipant:
    """One queued participant of an off-network Floor Granted (§8.2.5): its SSRC, Queued User ID and Queue Info."""

    ssrc: int
    user_id: str
    queue_info: QueueInfo


def _split_queued(
    subtype: Subtype, raw: list[tuple[int, bytes]]
) -> tuple[list[tuple[int, bytes]], list[QueuedParticipant]]:
    """Take the queued-participant triples out of a Floor Granted's fields (module docstring); the rest as they are."""
    if subtype != Subtype.GRANTED:
        return raw, []
    rest: list[tuple[int, bytes]] = []
    queued: list[QueuedParticipant] = []
    i = 0
    while i < len(raw):
        field_id, value = raw[i]
        if field_id == FieldId.SSRC and i + 1 < len(raw) and raw[i + 1][0] == FieldId.QUEUED_USER_ID:
            which = f"queued participant {len(queued) + 1}"
            if i + 2 >= len(raw) or raw[i + 2][0] != FieldId.QUEUE_INFO:
                raise FloorMessageError(f"{which}: SSRC and Queued User ID not followed by Queue Info")
            ssrc = int.from_bytes(decode_fixed(FieldId.SSRC, value, 6)[:4], "big")
            user = decode_utf8(FieldId.QUEUED_USER_ID, raw[i + 1][1])
            position, priority = decode_fixed(FieldId.QUEUE_INFO, raw[i + 2][1], 2)
            queued.append(QueuedParticipant(ssrc, user, QueueInfo(position, priority)))
            i += 3
            continue
        rest.append((field_id, value))
        i += 1
    if queued:
        if any(fid == FieldId.QUEUED_USER_ID for fid, _ in rest):
            raise FloorMessageError("Floor Granted: a Queued User ID not preceded by the SSRC of its participant")
        sizes = [v for fid, v in rest if fid == FieldId.QUEUE_SIZE]
        if len(sizes) != 1:
            raise FloorMessageError(f"Floor Granted: {len(queued)} queued participant(s) but no single Queue Size")
        size = decode_u16(FieldId.QUEUE_SIZE, sizes[0])
        if size != len(queued):
            raise FloorMessageError(f"Floor Granted: Queue Size {size}, but {len(queued)} queued participant(s)")
    return rest, queued


@dataclass(frozen=True)
class FloorMessage:
    """One TS 24.380 floor control message (§8.2): subtype, sender SSRC, and the fields present (None = absent).

    ``ssrc`` is the packet's SSRC (of the sender: floor participant or floor control server); ``ssrc_field`` is the
    SSRC field (§8.2.3.16), e.g. of the granted participant in Floor Taken. ``priority`` is the Floor Priority
    (0..255), ``duration`` seconds, ``sequence`` the Message Sequence Number, ``source`` a ``Source`` value,
    ``message_type`` the acknowledged message's subtype in Floor Ack, ``floor_indicator`` a ``FloorIndicator`` bit
    map. ``unknown_fields`` holds (field ID, value) of fields not modelled here, values verbatim, in ascending ID
    order after ``parse`` (the order ``__bytes__`` writes). ``queued`` lists the queued participants of an
    off-network Floor Granted in queue order (then ``queue_size`` must equal their number).
    """

    subtype: Subtype
    ssrc: int
    ack_required: bool = False
    priority: int | None = None
    duration: int | None = None
    reject_cause: RejectCause | None = None
    queue_info: QueueInfo | None = None
    granted_party: str | None = None
    permission_to_request: bool | None = None
    user_id: str | None = None
    queue_size: int | None = None
    sequence: int | None = None
    queued_user_id: str | None = None
    source: int | None = None
    track_info: bytes | None = None
    message_type: int | None = None
    floor_indicator: int | None = None
    ssrc_field: int | None = None
    unknown_fields: tuple[tuple[int, bytes], ...] = ()
    queued: tuple[QueuedParticipant, ...] = ()

    @classmethod
    def parse(cls, data: bytes) -> FloorMessage:
        """Parse exactly one MCPT APP packet occupying the whole buffer (TS 24.380 §8.1.2, §8.2).

        Raises ``FloorMessageError`` (and nothing else) naming what is wrong.
        """
        data = bytes(data)
        if len(data) < HEADER_LEN:
            raise FloorMessageError(f"truncated: {len(data)} octets, an MCPT APP packet has at least {HEADER_LEN}")
        if data[0] >> 6 != RTCP_VERSION:
            raise FloorMessageError(f"RTCP version {data[0] >> 6}, must be {RTCP_VERSION}")
        if data[0] & 0x20:
            raise FloorMessageError("padding bit set: TS 24.380 §8.1.2 requires P = 0")
        if data[1] != APP_PACKET_TYPE:
            raise FloorMessageError(f"packet type {data[1]}, must be {APP_PACKET_TYPE} (APP)")
        declared = (int.from_bytes(data[2:4], "big") + 1) * 4
        if declared != len(data):
            raise FloorMessageError(f"length field gives {declared} octets, the buffer has {len(data)}")
        if data[8:12] != NAME:
            raise FloorMessageError(f"APP name {data[8:12]!r}, must be {NAME!r}")
        subtype, ack_required = decode_subtype(data[0] & 0x1F)

        raw: list[tuple[int, bytes]] = []
        end_of_data = len(data.rstrip(b"\x00"))  # beyond this, only zero octets: tolerated as padding
        pos = HEADER_LEN
        while pos < end_of_data:
            field_id = data[pos]
            length_octets = 2 if field_id >= LONG_LENGTH_FIELD_ID else 1
            start = pos + 1 + length_octets
            if start > len(data):
                raise FloorMessageError(f"{field_name(field_id)} at octet {pos}: truncated length")
            length = int.from_bytes(data[pos + 1 : start], "big")
            if start + length > len(data):
                raise FloorMessageError(
                    f"{field_name(field_id)} at octet {pos}: length {length} overruns the packet "
                    f"by {start + length - len(data)} octet(s)"
                )
            raw.append((field_id, data[start : start + length]))
            pos = start + length + (-(1 + length_octets + length) % 4)
        rest, queued = _split_queued(subtype, raw)
        values: dict[str, Any] = {}
        unknown: list[tuple[int, bytes]] = []
        for field_id, value in rest:
            if field_id in FieldId._value2member_map_:
                name, decoded = decode_known(field_id, value)
                if name in values:
                    raise FloorMessageError(f"{field_name(field_id)} occurs more than once")
                values[name] = decoded
            else:
                unknown.append((field_id, value))
        ssrc = int.from_bytes(data[4:8], "big")
        unknown.sort(key=lambda f: f[0])  # canonical, as written by __bytes__; equal IDs keep their order
        return cls(subtype, ssrc, ack_required, unknown_fields=tuple(unknown), queued=tuple(queued), **values)

    def fields(self) -> list[tuple[int, bytes]]:
        """(field ID, value) of every field present, in ascending field-ID order; raises ``ValueError``."""
        out: list[tuple[int, bytes]] = []
        if self.priority is not None:
            out.append((FieldId.FLOOR_PRIORITY, encode_uint(self.priority, 1, "priority") + b"\x00"))
        if self.duration is not None:
            out.append((FieldId.DURATION, encode_uint(self.duration, 2, "duration")))
        if self.reject_cause is not None:
            code = encode_uint(self.reject_cause.code, 2, "reject cause")
            out.append((FieldId.REJECT_CAUSE, code + encode_text(self.reject_cause.phrase, "reject phrase", 0xFF - 2)))
        if self.queue_info is not None:
            position = encode_uint(self.queue_info.position, 1, "queue position")
            out.append((FieldId.QUEUE_INFO, position + encode_uint(self.queue_info.priority, 1, "queue priority")))
        if self.granted_party is not None:
            out.append((FieldId.GRANTED_PARTY_IDENTITY, encode_text(self.granted_party, "granted party", 0xFF)))
        if self.permission_to_request is not None:
            if not isinstance(self.permission_to_request, bool):
                raise ValueError("permission_to_request must be a bool")
            out.append((FieldId.PERMISSION_TO_REQUEST, int(self.permission_to_request).to_bytes(2, "big")))
        if self.user_id is not None:
            out.append((FieldId.USER_ID, encode_text(self.user_id, "user ID", 0xFF)))
        if self.queue_size is not None:
            out.append((FieldId.QUEUE_SIZE, encode_uint(self.queue_size, 2, "queue size")))
        if self.sequence is not None:
            out.append((FieldId.MESSAGE_SEQUENCE_NUMBER, encode_uint(self.sequence, 2, "message sequence number")))
        if self.queued_user_id is not None:
            out.append((FieldId.QUEUED_USER_ID, encode_text(self.queued_user_id, "queued user ID", 0xFF)))
        if self.source is not None:
            out.append((FieldId.SOURCE, encode_uint(self.source, 2, "source")))
        if self.track_info is not None:
            if not isinstance(self.track_info, bytes) or len(self.track_info) > 0xFF:
                raise ValueError("track_info must be bytes of at most 255 octets")
            out.append((FieldId.TRACK_INFO, self.track_info))
        if self.message_type is not None:
            out.append((FieldId.MESSAGE_TYPE, encode_uint(self.message_type, 1, "message type") + b"\x00"))
        if self.floor_indicator is not None:
            out.append((FieldId.FLOOR_INDICATOR, encode_uint(int(self.floor_indicator), 2, "floor indicator")))
        if self.ssrc_field is not None:
            out.append((FieldId.SSRC, encode_uint(self.ssrc_field, 4, "SSRC field") + b"\x00\x00"))
        for field_id, value in self.unknown_fields:
            encode_uint(field_id, 1, "unknown field ID")
            if field_id in FieldId._value2member_map_:
                raise ValueError(f"unknown_fields holds {field_name(field_id)}: set the attribute instead")
            if not isinstance(value, bytes) or len(value) > max_value_len(field_id):
                raise ValueError(f"field {field_id}: value must be bytes of at most {max_value_len(field_id)} octets")
            out.append((field_id, value))
        out.sort(key=lambda f: f[0])  # stable: unknown fields with equal IDs keep their order
        if self.queued:
            # The repeats cannot sort by ID: one block in the standard's order, right after Queue Size (§8.2.5).
            block = self._queued_fields()
            at = next(i for i, (field_id, _) in enumerate(out) if field_id == FieldId.QUEUE_SIZE) + 1
            out[at:at] = block
        return out

    def _queued_fields(self) -> list[tuple[int, bytes]]:
        if self.subtype != Subtype.GRANTED:
            raise ValueError("queued participants are carried by Floor Granted only (§8.2.5)")
        if self.queue_size != len(self.queued):
            raise ValueError(f"queue size {self.queue_size} does not match {len(self.queued)} queued participant(s)")
        if self.queued_user_id is not None:
            raise ValueError("queued_user_id and queued participants cannot both be set in a Floor Granted")
        out: list[tuple[int, bytes]] = []
        for n, member in enumerate(self.queued, start=1):
            if not isinstance(member, QueuedParticipant):
                raise ValueError(f"queued participant {n} must be a QueuedParticipant")
            info = member.queue_info
            out.append((FieldId.SSRC, encode_uint(member.ssrc, 4, f"queued participant {n} SSRC") + b"\x00\x00"))
            out.append((FieldId.QUEUED_USER_ID, encode_text(member.user_id, f"queued participant {n} user ID", 0xFF)))
            position = encode_uint(info.position, 1, f"queued participant {n} queue position")
            priority = encode_uint(info.priority, 1, f"queued participant {n} queue priority")
            out.append((FieldId.QUEUE_INFO, position + priority))
        return out

    def __bytes__(self) -> bytes:
        """The APP packet: fields in ascending field-ID order but for the queued-participant block (§8.2.5)."""
        subtype = Subtype(self.subtype)
        raw_subtype = int(subtype)
        if self.ack_required:
            if subtype not in ACK_CAPABLE_SUBTYPES:
                raise ValueError(f"{subtype.name} has no acknowledgement-required form (table 8.2.2.1-1)")
            raw_subtype |= ACK_REQUIRED_BIT
        body = b"".join(encode_field(field_id, value) for field_id, value in self.fields())
        total = HEADER_LEN + len(body)
        if total > MAX_PACKET_LEN:
            raise ValueError(f"message of {total} octets exceeds the RTCP length field ({MAX_PACKET_LEN})")
        header = bytes([RTCP_VERSION << 6 | raw_subtype, APP_PACKET_TYPE]) + (total // 4 - 1).to_bytes(2, "big")
        return header + encode_uint(self.ssrc, 4, "SSRC") + NAME + body


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 §4 demultiplexing of RTP and RTCP on one port: version 2 and packet type 192..223 means RTCP."""
    return len(data) >= 2 and data[0] >> 6 == RTCP_VERSION and RTCP_PT_MIN <= data[1] <= RTCP_PT_MAX


def parse_rtcp(data: bytes) -> list[FloorMessage]:
    """The MCPT floor control messages in an RTCP datagram of one or more (possibly compound) packets.

    TS 24.380 §8.1.1 sends each floor control message as its own APP packet, several possibly in one datagram;
    other RTCP packets (SR, RR, SDES, BYE, APP with other names such as "MCPC" or "MCCP", …) are skipped after
    checking their headers: version 2, packet type 192..223, length within the datagram, report/source counts
    that fit (SR, RR, BYE), padding (RFC 3550 §6.4.1: only on the last packet, count within the packet). Any
    malformation raises ``FloorMessageError`` naming the packet's offset.
    """
    data = bytes(data)
    if not data:
        raise FloorMessageError("empty RTCP datagram")
    messages: list[FloorMessage] = []
    pos = 0
    while pos < len(data):
        where = f"RTCP packet at octet {pos}"
        if len(data) - pos < 4:
            raise FloorMessageError(f"{where}: truncated header ({len(data) - pos} octets)")
        first, packet_type = data[pos], data[pos + 1]
        if first >> 6 != RTCP_VERSION:
            raise FloorMessageError(f"{where}: version {first >> 6}, must be {RTCP_VERSION}")
        if not RTCP_PT_MIN <= packet_type <= RTCP_PT_MAX:
            raise FloorMessageError(f"{where}: packet type {packet_type} is not RTCP ({RTCP_PT_MIN}..{RTCP_PT_MAX})")
        size = (int.from_bytes(data[pos + 2 : pos + 4], "big") + 1) * 4
        end = pos + size
        if end > len(data):
            raise FloorMessageError(f"{where}: length field gives {size} octets, only {len(data) - pos} remain")
        content = size
        if first & 0x20:
            if end != len(data):
                raise FloorMessageError(f"{where}: padding bit set on a packet that is not the last")
            padding = data[end - 1]
            if not 1 <= padding <= size - 4:
                raise FloorMessageError(f"{where}: padding count {padding} does not fit the packet")
            content = size - padding
        count = first & 0x1F
        minimum = {_PT_SR: 28 + 24 * count, _PT_RR: 8 + 24 * count, _PT_BYE: 4 + 4 * count}.get(packet_type, 4)
        if packet_type == APP_PACKET_TYPE:
            minimum = HEADER_LEN
        if content < minimum:
            raise FloorMessageError(f"{where}: {content} octets, packet type {packet_type} needs at least {minimum}")
        if packet_type == APP_PACKET_TYPE and data[pos + 8 : pos + 12] == NAME:
            try:
                messages.append(FloorMessage.parse(data[pos:end]))
            except FloorMessageError as e:
                raise FloorMessageError(f"{where}: {e}") from None
        pos = end
    return messages
