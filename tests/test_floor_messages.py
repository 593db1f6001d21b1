"""TS 24.380 floor control messages (ptt.floor.messages): known-good bytes, round trips, tshark, rejection, fuzz.

The known-good Floor Request is the one in /work/shared/STANDARDS_NOTES.md that tshark 4.0 decodes as "Floor Request -
Normal call". The tshark test writes one encoded message per subtype (and the acknowledgement-required forms) into a
pcap with text2pcap and compares what tshark's RTCP dissector decodes with our model.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptt.floor.messages import (
    ACK_CAPABLE_SUBTYPES,
    QUEUE_POSITION_NOT_QUEUED,
    QUEUE_POSITION_UNKNOWN,
    DenyCause,
    FieldId,
    FloorIndicator,
    FloorMessage,
    FloorMessageError,
    QueuedParticipant,
    QueueInfo,
    RejectCause,
    RevokeCause,
    Source,
    Subtype,
    is_rtcp,
    parse_rtcp,
)

KNOWN_GOOD = bytes.fromhex(
    "80cc000a 11223344 4d435054 0002 0700 0615 7369703a616c696365406578616d706c652e6f7267 00 0d02 8000".replace(" ", "")
)
SERVER = 0x5E2F0001
ALICE, BOB = "sip:alice@example.org", "sip:bob@example.org"
ALICE_SSRC, BOB_SSRC = 0x11223344, 0x55667788

# One realistic message per subtype (what an on-network floor control server and its participants send), then the
# acknowledgement-required forms.
REALISTIC: list[FloorMessage] = [
    FloorMessage(Subtype.REQUEST, ALICE_SSRC, priority=7, user_id=ALICE, floor_indicator=FloorIndicator.NORMAL),
    FloorMessage(
        Subtype.GRANTED,
        SERVER,
        duration=30,
        priority=7,
        queue_size=2,
        floor_indicator=FloorIndicator.NORMAL | FloorIndicator.QUEUEING_SUPPORTED,
    ),
    FloorMessage(
        Subtype.TAKEN,
        SERVER,
        granted_party=ALICE,
        permission_to_request=True,
        sequence=41,
        ssrc_field=ALICE_SSRC,
        floor_indicator=FloorIndicator.NORMAL,
    ),
    FloorMessage(
        Subtype.DENY,
        SERVER,
        reject_cause=RejectCause(DenyCause.ANOTHER_CLIENT_HAS_PERMISSION, "another talker"),
        floor_indicator=FloorIndicator.NORMAL,
    ),
    FloorMessage(Subtype.RELEASE, BOB_SSRC, user_id=BOB, floor_indicator=FloorIndicator.NORMAL),
    FloorMessage(Subtype.IDLE, SERVER, sequence=42, floor_indicator=FloorIndicator.NORMAL),
    FloorMessage(
        Subtype.REVOKE,
        SERVER,
        reject_cause=RejectCause(RevokeCause.MEDIA_BURST_TOO_LONG),
        floor_indicator=FloorIndicator.EMERGENCY,
    ),
    FloorMessage(Subtype.QUEUE_POSITION_REQUEST, BOB_SSRC, user_id=BOB),
    FloorMessage(
        Subtype.QUEUE_POSITION_INFO,
        SERVER,
        queue_info=QueueInfo(1, 5),
        queued_user_id=BOB,
        ssrc_field=BOB_SSRC,
        floor_indicator=FloorIndicator.NORMAL,
    ),
    FloorMessage(Subtype.ACK, SERVER, source=Source.CONTROLLING_FUNCTION, message_type=Subtype.RELEASE),
    FloorMessage(Subtype.QUEUED_CANCEL, BOB_SSRC, user_id=BOB),
    FloorMessage(Subtype.RELEASE_MULTI_TALKER, SERVER, user_id=ALICE, floor_indicator=FloorIndicator.MULTI_TALKER),
]
ACK_VARIANTS = [replace(m, ack_required=True) for m in REALISTIC if m.subtype in ACK_CAPABLE_SUBTYPES]
ALL_REALISTIC = REALISTIC + ACK_VARIANTS


def _ids(messages: list[FloorMessage]) -> list[str]:
    return [m.subtype.name + ("+ack" if m.ack_required else "") for m in messages]


# --- the known-good example -------------------------------------------------------------------------------------


def test_known_good_floor_request_parses_and_reencodes_identically() -> None:
    m = FloorMessage.parse(KNOWN_GOOD)
    assert len(KNOWN_GOOD) == 44
    assert m == FloorMessage(
        Subtype.REQUEST, 0x11223344, priority=7, user_id="sip:alice@example.org", floor_indicator=0x8000
    )
    assert m.floor_indicator == FloorIndicator.NORMAL and not m.ack_required
    assert bytes(m) == KNOWN_GOOD
    assert parse_rtcp(KNOWN_GOOD) == [m]


# --- round trips ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("message", ALL_REALISTIC, ids=_ids(ALL_REALISTIC))
def test_realistic_round_trip(message: FloorMessage) -> None:
    data = bytes(message)
    assert len(data) % 4 == 0 and int.from_bytes(data[2:4], "big") == len(data) // 4 - 1
    assert data[8:12] == b"MCPT" and data[1] == 204
    assert data[0] == 0x80 | message.subtype | (0x10 if message.ack_required else 0)
    parsed = FloorMessage.parse(data)
    assert parsed == message
    assert bytes(parsed) == data


def test_field_bytes_are_as_specified() -> None:
    def body(m: FloorMessage) -> bytes:
        return bytes(m)[12:]

    # Floor Granted: Floor Priority 7 + spare, Duration 30 s, Queue Size 2, Floor Indicator normal | queueing.
    assert body(REALISTIC[1]) == bytes.fromhex("00020700 0102001e 07020002 0d028400".replace(" ", ""))
    # Floor Taken: Granted Party's Identity (21 octets + 1 padding), Permission 1, Sequence 41, Floor Indicator,
    # SSRC field (SSRC + 16-bit spare).
    assert body(REALISTIC[2]) == (
        bytes.fromhex("0415") + ALICE.encode() + bytes.fromhex("00 05020001 08020029 0d028000 0e06112233440000")
    )
    # Floor Deny: Reject Cause 1 with a 14-octet phrase (field of 18 octets padded to 20).
    assert body(REALISTIC[3]) == bytes.fromhex("02100001") + b"another talker" + bytes.fromhex("0000 0d028000")
    # Floor Revoke: Reject Cause 2 without phrase, Floor Indicator emergency.
    assert body(REALISTIC[6]) == bytes.fromhex("02020002 0d021000".replace(" ", ""))
    assert bytes(replace(REALISTIC[5], ack_required=True))[0] == 0x95  # Floor Idle, acknowledgement required
    assert bytes(replace(REALISTIC[8], ack_required=True))[0] == 0x99  # Floor Queue Position Info, ditto


def test_empty_message_and_unknown_fields_with_long_length() -> None:
    assert bytes(FloorMessage(Subtype.RELEASE, 1)) == bytes.fromhex("84cc0002 00000001 4d435054".replace(" ", ""))
    m = FloorMessage(Subtype.TAKEN, 2, unknown_fields=((16, b"\x01\x00\x00\xaa\xbb\xcc\xdd"), (200, b"\x99" * 300)))
    data = bytes(m)
    assert data[12:24] == bytes.fromhex("10070100 00aabbcc dd000000".replace(" ", ""))  # field 16: 1-octet length
    assert data[24:28] == bytes.fromhex("c8012c99")  # field 200: 2-octet length 300
    assert len(data) == 24 + 3 + 300 + 1  # 303 octets padded to 304
    assert FloorMessage.parse(data) == m
    assert bytes(FloorMessage.parse(data)) == data


def test_fields_are_written_in_ascending_order_and_unknown_ones_merge() -> None:
    m = FloorMessage(Subtype.GRANTED, 3, duration=5, ssrc_field=9, unknown_fields=((20, b"x"), (15, b"y")))
    ids = [fid for fid, _ in m.fields()]
    assert ids == [FieldId.DURATION, FieldId.SSRC, 15, 20]
    parsed = FloorMessage.parse(bytes(m))
    assert parsed.unknown_fields == ((15, b"y"), (20, b"x"))


def test_queue_position_special_values() -> None:
    for position in (QUEUE_POSITION_NOT_QUEUED, QUEUE_POSITION_UNKNOWN):
        m = FloorMessage(Subtype.QUEUE_POSITION_INFO, 1, queue_info=QueueInfo(position, 0))
        assert FloorMessage.parse(bytes(m)).queue_info == QueueInfo(position, 0)


def test_lenient_inputs_parse_and_reencode_canonically() -> None:
    """Non-zero padding and spare octets are ignored (§8.2.3), fields in any order, a zero tail is padding."""
    data = bytearray(KNOWN_GOOD)
    data[15] = 0xAA  # Floor Priority spare octet
    data[39] = 0x55  # User ID padding
    assert FloorMessage.parse(bytes(data)) == FloorMessage.parse(KNOWN_GOOD)
    assert bytes(FloorMessage.parse(bytes(data))) == KNOWN_GOOD
    reordered = KNOWN_GOOD[:12] + KNOWN_GOOD[40:44] + KNOWN_GOOD[12:40]
    assert bytes(FloorMessage.parse(reordered)) == KNOWN_GOOD
    tail = bytearray(KNOWN_GOOD + bytes(8))
    tail[3] += 2
    assert FloorMessage.parse(bytes(tail)) == FloorMessage.parse(KNOWN_GOOD)


_u8 = st.integers(0, 0xFF)
_u16 = st.integers(0, 0xFFFF)
_u32 = st.integers(0, 0xFFFFFFFF)
_id_text = st.text(max_size=63)  # at most 252 octets of UTF-8


def _opt(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


@st.composite
def floor_messages(draw: st.DrawFn) -> FloorMessage:
    subtype = draw(st.sampled_from(Subtype))
    unknown = draw(
        st.lists(
            st.integers(15, 255).flatmap(
                lambda fid: st.tuples(st.just(fid), st.binary(max_size=300 if fid >= 192 else 255))
            ),
            max_size=3,
        )
    )
    return FloorMessage(
        subtype=subtype,
        ssrc=draw(_u32),
        ack_required=subtype in ACK_CAPABLE_SUBTYPES and draw(st.booleans()),
        priority=draw(_opt(_u8)),
        duration=draw(_opt(_u16)),
        reject_cause=draw(_opt(st.builds(RejectCause, _u16, st.text(max_size=63)))),
        queue_info=draw(_opt(st.builds(QueueInfo, _u8, _u8))),
        granted_party=draw(_opt(_id_text)),
        permission_to_request=draw(_opt(st.booleans())),
        user_id=draw(_opt(_id_text)),
        queue_size=draw(_opt(_u16)),
        sequence=draw(_opt(_u16)),
        queued_user_id=draw(_opt(_id_text)),
        source=draw(_opt(_u16)),
        track_info=draw(_opt(st.binary(max_size=255))),
        message_type=draw(_opt(_u8)),
        floor_indicator=draw(_opt(_u16)),
        ssrc_field=draw(_opt(_u32)),
        unknown_fields=tuple(sorted(unknown, key=lambda f: f[0])),
    )


@given(floor_messages())
def test_random_round_trip(message: FloorMessage) -> None:
    data = bytes(message)
    parsed = FloorMessage.parse(data)
    assert parsed == message
    assert bytes(parsed) == data
    assert parse_rtcp(data + data) == [message, message]


# --- encoding refuses what does not fit -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"priority": 256}, "priority"),
        ({"priority": -1}, "priority"),
        ({"duration": 0x10000}, "duration"),
        ({"ssrc": 1 << 32}, "SSRC"),
        ({"ssrc_field": -1}, "SSRC field"),
        ({"reject_cause": RejectCause(0x10000)}, "reject cause"),
        ({"reject_cause": RejectCause(1, "x" * 254)}, "reject phrase"),
        ({"queue_info": QueueInfo(256, 0)}, "queue position"),
        ({"user_id": "é" * 128}, "user ID"),
        ({"granted_party": "\ud800"}, "UTF-8"),
        ({"track_info": bytes(256)}, "track_info"),
        ({"message_type": 256}, "message type"),
        ({"floor_indicator": 0x10000}, "floor indicator"),
        ({"sequence": True}, "int"),
        ({"unknown_fields": ((6, b"x"),)}, "USER_ID"),
        ({"unknown_fields": ((256, b"x"),)}, "unknown field ID"),
        ({"unknown_fields": ((100, bytes(256)),)}, "at most 255"),
        ({"ack_required": True}, "acknowledgement"),
        ({"unknown_fields": tuple((200, bytes(0xFFFF)) for _ in range(5))}, "exceeds"),
    ],
)
def test_encoding_out_of_range_raises_value_error(change: dict[str, Any], words: str) -> None:
    base = FloorMessage(Subtype.REQUEST, 1)
    with pytest.raises(ValueError, match=words):
        bytes(replace(base, **change))


# --- the off-network queue: Floor Granted with queued participants, Floor Queue Position Request / Info -----------

CAROL, DAVE = "sip:carol@example.org", "sip:dave@example.org"
QUEUEING = FloorIndicator.NORMAL | FloorIndicator.QUEUEING_SUPPORTED
GRANTED_WITH_QUEUE = FloorMessage(
    Subtype.GRANTED,
    ALICE_SSRC,
    duration=30,
    priority=5,
    user_id=ALICE,
    granted_party=BOB,
    ssrc_field=BOB_SSRC,
    queue_size=2,
    queued=(
        QueuedParticipant(0x1003, CAROL, QueueInfo(1, 5)),
        QueuedParticipant(0x1004, DAVE, QueueInfo(2, 0)),
    ),
    floor_indicator=QUEUEING,
)
POSITION_INFO = FloorMessage(
    Subtype.QUEUE_POSITION_INFO,
    ALICE_SSRC,
    user_id=ALICE,
    queued_user_id=CAROL,
    ssrc_field=0x1003,
    queue_info=QueueInfo(1, 5),
    floor_indicator=QUEUEING,
)
POSITION_REQUEST = FloorMessage(Subtype.QUEUE_POSITION_REQUEST, 0x1003, user_id=CAROL)
QUEUE_MESSAGES = [GRANTED_WITH_QUEUE, POSITION_INFO, POSITION_REQUEST]


def _field(field_id: int, value: bytes) -> bytes:
    out = bytes([field_id, len(value)]) + value
    return out + bytes(-len(out) % 4)


def _triple(ssrc: int, user: str, position: int, priority: int) -> bytes:
    return (
        _field(FieldId.SSRC, ssrc.to_bytes(4, "big") + b"\0\0")
        + _field(FieldId.QUEUED_USER_ID, user.encode())
        + _field(FieldId.QUEUE_INFO, bytes([position, priority]))
    )


def test_floor_granted_with_queued_participants_bytes_and_round_trip() -> None:
    data = bytes(GRANTED_WITH_QUEUE)
    # Singles in ascending ID order; the triples as one block, in queue order, right after Queue Size (§8.2.5).
    body = (
        _field(FieldId.FLOOR_PRIORITY, b"\x05\x00")
        + _field(FieldId.DURATION, b"\x00\x1e")
        + _field(FieldId.GRANTED_PARTY_IDENTITY, BOB.encode())
        + _field(FieldId.USER_ID, ALICE.encode())
        + _field(FieldId.QUEUE_SIZE, b"\x00\x02")
        + _triple(0x1003, CAROL, 1, 5)
        + _triple(0x1004, DAVE, 2, 0)
        + _field(FieldId.FLOOR_INDICATOR, b"\x84\x00")
        + _field(FieldId.SSRC, BOB_SSRC.to_bytes(4, "big") + b"\0\0")
    )
    assert data == _packet(0x81, body, ssrc=ALICE_SSRC)
    parsed = FloorMessage.parse(data)
    assert parsed == GRANTED_WITH_QUEUE and parsed.ssrc_field == BOB_SSRC  # the last SSRC field: the grantee
    assert bytes(parsed) == data
    assert [fid for fid, _ in GRANTED_WITH_QUEUE.fields()] == [0, 1, 4, 6, 7, 14, 9, 3, 14, 9, 3, 13, 14]
    for message in QUEUE_MESSAGES:
        assert FloorMessage.parse(bytes(message)) == message and bytes(FloorMessage.parse(bytes(message))) == bytes(
            message
        )
    one = replace(GRANTED_WITH_QUEUE, queue_size=1, queued=GRANTED_WITH_QUEUE.queued[:1])
    assert FloorMessage.parse(bytes(one)) == one


def test_floor_granted_in_the_standards_table_order_parses_the_same() -> None:
    """Duration, SSRC of the granted participant, Floor Priority, User ID, Queue Size, the triples, Floor Indicator."""
    body = (
        _field(FieldId.DURATION, b"\x00\x1e")
        + _field(FieldId.SSRC, BOB_SSRC.to_bytes(4, "big") + b"\0\0")
        + _field(FieldId.FLOOR_PRIORITY, b"\x05\x00")
        + _field(FieldId.USER_ID, ALICE.encode())
        + _field(FieldId.QUEUE_SIZE, b"\x00\x02")
        + _triple(0x1003, CAROL, 1, 5)
        + _triple(0x1004, DAVE, 2, 0)
        + _field(FieldId.GRANTED_PARTY_IDENTITY, BOB.encode())
        + _field(FieldId.FLOOR_INDICATOR, b"\x84\x00")
    )
    parsed = FloorMessage.parse(_packet(0x81, body, ssrc=ALICE_SSRC))
    assert parsed == GRANTED_WITH_QUEUE
    assert bytes(parsed) == bytes(GRANTED_WITH_QUEUE)  # re-encoded canonically


def test_repeats_are_only_triples_of_floor_granted() -> None:
    # In other messages an SSRC field followed by Queued User ID is two single fields (Floor Queue Position Info).
    body = _field(FieldId.SSRC, (7).to_bytes(4, "big") + b"\0\0") + _field(FieldId.QUEUED_USER_ID, b"x")
    assert FloorMessage.parse(_packet(0x89, body)) == FloorMessage(
        Subtype.QUEUE_POSITION_INFO, 1, ssrc_field=7, queued_user_id="x"
    )
    with pytest.raises(FloorMessageError, match="SSRC \\(14\\) occurs more than once"):
        FloorMessage.parse(_packet(0x89, _triple(7, "x", 1, 0) + _triple(8, "y", 2, 0)))
    # Without triples, Queue Size alone (on-network) takes any value.
    assert FloorMessage.parse(bytes(REALISTIC[1])).queued == ()


_GRANTED_HEAD = _field(FieldId.USER_ID, ALICE.encode())
MALFORMED_QUEUES = [
    (
        _GRANTED_HEAD + _field(7, b"\x00\x01") + _field(14, bytes(6)) + _field(9, b"bob"),
        "queued participant 1: SSRC and Queued User ID not followed by Queue Info",
    ),
    (
        _GRANTED_HEAD + _field(7, b"\x00\x02") + _triple(7, "x", 1, 0) + _field(14, bytes(6)) + _field(9, b"y"),
        "queued participant 2: SSRC and Queued User ID not followed by Queue Info",
    ),
    (
        _GRANTED_HEAD + _field(7, b"\x00\x02") + _triple(7, "x", 1, 0) + _field(9, b"y") + _field(3, b"\x02\x00"),
        "a Queued User ID not preceded by the SSRC of its participant",
    ),
    (_GRANTED_HEAD + _field(7, b"\x00\x03") + _triple(7, "x", 1, 0) + _triple(8, "y", 2, 0), "Queue Size 3, but 2"),
    (_GRANTED_HEAD + _field(7, b"\x00\x00") + _triple(7, "x", 1, 0), "Queue Size 0, but 1"),
    (_GRANTED_HEAD + _triple(7, "x", 1, 0), "1 queued participant(s) but no single Queue Size"),
    (_field(7, b"\x00\x01") + _field(14, bytes(4)) + _field(9, b"x") + _field(3, b"\x01\x00"), "SSRC (14): length 4"),
    (_field(7, b"\x00\x01") + _field(14, bytes(6)) + _field(9, b"\xff") + _field(3, b"\x01\x00"), "QUEUED_USER_ID (9)"),
    (_field(7, b"\x00\x01") + _field(14, bytes(6)) + _field(9, b"x") + _field(3, b"\x01"), "QUEUE_INFO (3): length 1"),
]


@pytest.mark.parametrize(("body", "words"), MALFORMED_QUEUES, ids=[w for _, w in MALFORMED_QUEUES])
def test_malformed_queued_participants_are_refused(body: bytes, words: str) -> None:
    with pytest.raises(FloorMessageError) as e:
        FloorMessage.parse(_packet(0x81, body))
    assert words in str(e.value)
    with pytest.raises(FloorMessageError):
        parse_rtcp(RR + _packet(0x81, body))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"subtype": Subtype.TAKEN}, "carried by Floor Granted only"),
        ({"queue_size": 3}, "queue size 3 does not match 2"),
        ({"queue_size": None}, "queue size None does not match 2"),
        ({"queued_user_id": CAROL}, "cannot both be set"),
        ({"queued": (QueuedParticipant(1 << 32, "x", QueueInfo(1, 0)),), "queue_size": 1}, "participant 1 SSRC"),
        ({"queued": (QueuedParticipant(1, "é" * 128, QueueInfo(1, 0)),), "queue_size": 1}, "participant 1 user ID"),
        ({"queued": (QueuedParticipant(1, "x", QueueInfo(256, 0)),), "queue_size": 1}, "queue position"),
        ({"queued": ((1, "x", QueueInfo(1, 0)),), "queue_size": 1}, "must be a QueuedParticipant"),
    ],
)
def test_encoding_bad_queued_participants_raises_value_error(change: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        bytes(replace(GRANTED_WITH_QUEUE, **change))


@given(
    st.lists(
        st.builds(QueuedParticipant, _u32, st.text(max_size=63), st.builds(QueueInfo, _u8, _u8)), min_size=1, max_size=8
    ),
    _opt(_u32),
    _opt(_id_text),
)
def test_random_queues_round_trip(queued: list[QueuedParticipant], grantee: int | None, user: str | None) -> None:
    message = FloorMessage(
        Subtype.GRANTED, 9, user_id=user, ssrc_field=grantee, queue_size=len(queued), queued=tuple(queued)
    )
    data = bytes(message)
    assert FloorMessage.parse(data) == message and bytes(FloorMessage.parse(data)) == data


def test_tshark_decodes_the_queue_messages(tmp_path: Path) -> None:
    """Our Floor Granted with two queued participants and Floor Queue Position Info / Request: no malformation."""
    text2pcap = shutil.which("text2pcap")
    if shutil.which("tshark") is None or text2pcap is None:
        pytest.skip("tshark/text2pcap not installed (scripts/setup installs them)")
    (tmp_path / "in.txt").write_text(_hexdump([bytes(m) for m in QUEUE_MESSAGES]))
    pcap = tmp_path / "queue.pcap"
    command = [text2pcap, "-q", "-u", "5000,5001", str(tmp_path / "in.txt"), str(pcap)]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    names = [
        "subtype",
        "field_ids",
        "field_lengths",
        "queued_user_id",
        "ssrc_field",
        "queue_position",
        "queue_priority",
    ]
    names += ["queue_size", "user_id", "granted_party"]
    out = _tshark(pcap, "-T", "fields", "-E", "separator=\t", *[a for n in names for a in ("-e", TSHARK_FIELDS[n])])
    rows = [dict(zip(names, row.split("\t"), strict=True)) for row in out.splitlines()]
    assert rows[0] == {
        "subtype": "1",
        "field_ids": "0,1,4,6,7,14,9,3,14,9,3,13,14",
        "field_lengths": ",".join(str(len(v)) for _, v in GRANTED_WITH_QUEUE.fields()),
        "queued_user_id": f"{CAROL},{DAVE}",
        "ssrc_field": f"{0x1003},{0x1004},{BOB_SSRC}",
        "queue_position": "1,2",
        "queue_priority": "5,0",
        "queue_size": "2",
        "user_id": ALICE,
        "granted_party": BOB,
    }
    assert rows[1] == {
        "subtype": "9",
        "field_ids": "3,6,9,13,14",
        "field_lengths": "2,21,21,2,6",
        "queued_user_id": CAROL,
        "ssrc_field": str(0x1003),
        "queue_position": "1",
        "queue_priority": "5",
        "queue_size": "",
        "user_id": ALICE,
        "granted_party": "",
    }
    assert (rows[2]["subtype"], rows[2]["field_ids"], rows[2]["user_id"]) == ("8", "6", CAROL)
    assert _tshark(pcap, "-Y", "_ws.malformed") == ""
    assert _tshark(pcap, "-Y", "_ws.expert") == ""
    info = _tshark(pcap, "-T", "fields", "-e", "_ws.col.Info").splitlines()
    assert [line.split(" - ")[0] for line in info] == [
        "(MCPT) Floor Granted",
        "(MCPT) Floor Queue Position Info",
        "(MCPT) Floor Queue Position Request",
    ]


# --- tshark -----------------------------------------------------------------------------------------------------

TSHARK_FIELDS = {
    "name": "rtcp.app.name",
    "subtype": "rtcp.app.subtype",
    "ssrc": "rtcp.ssrc.identifier",
    "field_ids": "rtcp.mcptt.fld_id",
    "field_lengths": "rtcp.mcptt.fld_len",
    "priority": "rtcp.app_data.mcptt.priority",
    "duration": "rtcp.app_data.mcptt.duration",
    "reject_cause": "rtcp.app_data.mcptt.rej_cause",
    "deny_cause": "rtcp.app_data.mcptt.rej_cause.floor_deny",
    "revoke_cause": "rtcp.app_data.mcptt.rej_cause.floor_revoke",
    "reject_phrase": "rtcp.mcptt.rej_phrase",
    "queue_position": "rtcp.app_data.mcptt.queue_pos_inf",
    "queue_priority": "rtcp.app_data.mcptt.queue_pri_lev",
    "granted_party": "rtcp.mcptt.granted_partys_id",
    "permission": "rtcp.app_data.mcptt.perm_to_req_floor",
    "user_id": "rtcp.app_data.mcptt.user_id",
    "queue_size": "rtcp.app_data.mcptt.queue_size",
    "sequence": "rtcp.app_data.mcptt.msg_seq_num",
    "queued_user_id": "rtcp.mcptt.queued_user_id",
    "source": "rtcp.app_data.mcptt.source",
    "message_type": "rtcp.app_data.mcptt.msg_type",
    "floor_indicator": "rtcp.app_data.mcptt.floor_ind",
    "ssrc_field": "rtcp.app_data.mcptt.rtcp",
}
# The unknown field 200 (2-octet length, Rel-17+) checks that tshark 4.0 frames such fields as we do.
TSHARK_MESSAGES = [*ALL_REALISTIC, FloorMessage(Subtype.IDLE, SERVER, sequence=7, unknown_fields=((200, b"abcde"),))]


def _expected_tshark(m: FloorMessage) -> dict[str, str]:
    def s(value: int | str | None) -> str:
        """tshark's -T fields text: decimal for integers (booleans as 0/1), strings as they are."""
        if value is None or isinstance(value, str):
            return value or ""
        return str(int(value))

    raw_subtype = m.subtype | (0x10 if m.ack_required else 0)
    cause = m.reject_cause.code if m.reject_cause else None
    fields = [(fid, len(value)) for fid, value in m.fields()]
    return {
        "name": "MCPT",
        "subtype": str(raw_subtype),
        "ssrc": f"0x{m.ssrc:08x}",
        "field_ids": ",".join(str(fid) for fid, _ in fields),
        "field_lengths": ",".join(str(length) for _, length in fields),
        "priority": s(m.priority),
        "duration": s(m.duration),
        "reject_cause": s(cause) if raw_subtype not in (Subtype.DENY, Subtype.REVOKE) else "",
        "deny_cause": s(cause) if raw_subtype == Subtype.DENY else "",
        "revoke_cause": s(cause) if raw_subtype == Subtype.REVOKE else "",
        "reject_phrase": m.reject_cause.phrase if m.reject_cause else "",
        "queue_position": s(m.queue_info.position if m.queue_info else None),
        "queue_priority": s(m.queue_info.priority if m.queue_info else None),
        "granted_party": s(m.granted_party),
        "permission": s(m.permission_to_request),
        "user_id": s(m.user_id),
        "queue_size": s(m.queue_size),
        "sequence": s(m.sequence),
        "queued_user_id": s(m.queued_user_id),
        "source": s(m.source),
        "message_type": s(m.message_type),
        "floor_indicator": s(m.floor_indicator),
        "ssrc_field": s(m.ssrc_field),
    }


def _hexdump(packets: list[bytes]) -> str:
    """text2pcap's input: each packet as "offset hex…" lines, the offset restarting at 0 for the next packet."""
    lines = []
    for packet in packets:
        for at in range(0, len(packet), 16):
            lines.append(f"{at:06x} " + " ".join(f"{b:02x}" for b in packet[at : at + 16]))
    return "\n".join(lines) + "\n"


def _tshark(pcap: Path, *args: str) -> str:
    tshark = shutil.which("tshark")
    assert tshark
    command = [tshark, "-r", str(pcap), "-d", "udp.port==5001,rtcp", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=60).stdout


def test_tshark_decodes_every_subtype(tmp_path: Path) -> None:
    text2pcap = shutil.which("text2pcap")
    if shutil.which("tshark") is None or text2pcap is None:
        pytest.skip("tshark/text2pcap not installed (scripts/setup installs them)")
    (tmp_path / "in.txt").write_text(_hexdump([bytes(m) for m in TSHARK_MESSAGES]))
    pcap = tmp_path / "floor.pcap"
    command = [text2pcap, "-q", "-u", "5000,5001", str(tmp_path / "in.txt"), str(pcap)]
    subprocess.run(command, check=True, capture_output=True, timeout=60)

    names = list(TSHARK_FIELDS)
    out = _tshark(pcap, "-T", "fields", "-E", "separator=\t", *[a for n in names for a in ("-e", TSHARK_FIELDS[n])])
    rows = out.splitlines()
    assert len(rows) == len(TSHARK_MESSAGES)
    for message, row in zip(TSHARK_MESSAGES, rows, strict=True):
        decoded = dict(zip(names, row.split("\t"), strict=True))
        assert decoded == _expected_tshark(message), message
    assert _tshark(pcap, "-Y", "_ws.malformed") == ""
    # The only expert note allowed is tshark's "unknown field" for field 200 of the last packet.
    experts = _tshark(pcap, "-Y", "_ws.expert", "-T", "fields", "-e", "frame.number").split()
    assert experts in ([], [str(len(TSHARK_MESSAGES))])
    info = _tshark(pcap, "-T", "fields", "-e", "_ws.col.Info").splitlines()
    assert info[0] == "(MCPT) Floor Request - Normal call"
    assert info[3] == "(MCPT) Floor Deny - Another MCPTT client has permission - Normal call"


# --- rejection --------------------------------------------------------------------------------------------------


def _with(data: bytes, at: int, *octets: int) -> bytes:
    out = bytearray(data)
    out[at : at + len(octets)] = bytes(octets)
    return bytes(out)


def _packet(first: int, body: bytes, name: bytes = b"MCPT", ssrc: int = 1, pt: int = 204) -> bytes:
    body += bytes(-len(body) % 4)
    length = (12 + len(body)) // 4 - 1
    return bytes([first, pt]) + length.to_bytes(2, "big") + ssrc.to_bytes(4, "big") + name + body


MALFORMED_MESSAGES = [
    (b"", "truncated: 0 octets"),
    (KNOWN_GOOD[:11], "truncated: 11 octets"),
    (_with(KNOWN_GOOD, 0, 0x40), "version 1"),
    (_with(KNOWN_GOOD, 0, 0xA0), "padding bit"),
    (_with(KNOWN_GOOD, 1, 0xCD), "packet type 205"),
    (_with(KNOWN_GOOD, 1, 0xC9), "packet type 201"),
    (_with(KNOWN_GOOD, 8, *b"MCPC"), "APP name b'MCPC'"),
    (_with(KNOWN_GOOD, 3, 0x0B), "length field gives 48 octets, the buffer has 44"),
    (_with(KNOWN_GOOD, 3, 0x09), "length field gives 40 octets"),
    (KNOWN_GOOD[:40], "the buffer has 40"),
    (KNOWN_GOOD + b"\0", "the buffer has 45"),
    (_with(KNOWN_GOOD, 17, 0x30), "USER_ID (6) at octet 16: length 48 overruns the packet by 22"),
    (_with(KNOWN_GOOD, 41, 0x09), "FLOOR_INDICATOR (13) at octet 40: length 9 overruns"),
    (_with(KNOWN_GOOD, 20, 0xFF), "USER_ID (6): invalid UTF-8 at octet 2"),
    (_with(KNOWN_GOOD, 0, 0x87), "unknown floor control subtype 7"),
    (_with(KNOWN_GOOD, 0, 0x90), "unknown floor control subtype 16"),
    (_with(KNOWN_GOOD, 0, 0x96), "unknown floor control subtype 22"),
    (_packet(0x80, bytes.fromhex("00020700 00020800")), "FLOOR_PRIORITY (0) occurs more than once"),
    (_packet(0x80, bytes.fromhex("0003070000")), "FLOOR_PRIORITY (0): length 3, must be 2"),
    (_packet(0x82, bytes.fromhex("05020002")), "must be 0 or 1"),
    (_packet(0x83, bytes.fromhex("02010100")), "REJECT_CAUSE (2): length 1, must be at least 2"),
    (_packet(0x83, bytes.fromhex("020400ffc328")), "REJECT_CAUSE (2): invalid UTF-8"),
    (_packet(0x82, bytes.fromhex("0e04aabbccdd")), "SSRC (14): length 4, must be 6"),
    (_packet(0x89, bytes.fromhex("03030102 03000000")), "QUEUE_INFO (3): length 3"),
    (_packet(0x8A, bytes.fromhex("0c0104")), "MESSAGE_TYPE (12): length 1"),
    (_packet(0x81, bytes.fromhex("c8010000")), "field 200 at octet 12: length 256 overruns"),
]


@pytest.mark.parametrize(("data", "words"), MALFORMED_MESSAGES, ids=[w for _, w in MALFORMED_MESSAGES])
def test_malformed_messages_are_refused(data: bytes, words: str) -> None:
    with pytest.raises(FloorMessageError) as e:
        FloorMessage.parse(data)
    assert words in str(e.value)


# --- compound RTCP and demultiplexing ---------------------------------------------------------------------------

RR = bytes.fromhex("81c90007 aabbccdd 11223344 00000001 00001234 00000010 00000000 00000000".replace(" ", ""))
SDES = bytes.fromhex("81ca0005 aabbccdd 010a6d7963616d6572612d31 0000".replace(" ", "") + "0000")
SR = bytes.fromhex("80c80006 aabbccdd" + "00" * 20)
BYE = bytes.fromhex("81cb0001 aabbccdd")
OTHER_APP = _packet(0x80, b"\x01\x02\x03\x04", name=b"MCPC")


def test_parse_rtcp_compound_rr_app_sdes() -> None:
    assert len(SDES) == 24
    assert parse_rtcp(RR + KNOWN_GOOD + SDES) == [FloorMessage.parse(KNOWN_GOOD)]
    several = SR + bytes(REALISTIC[1]) + OTHER_APP + bytes(REALISTIC[2]) + BYE
    assert parse_rtcp(several) == [REALISTIC[1], REALISTIC[2]]
    assert parse_rtcp(RR + SDES) == []
    padded_bye = bytes.fromhex("a1cb0002 aabbccdd 00000004")  # padding on the last packet, count 4
    assert parse_rtcp(KNOWN_GOOD + padded_bye) == [FloorMessage.parse(KNOWN_GOOD)]


MALFORMED_COMPOUNDS = [
    (b"", "empty"),
    (RR + b"\x80\xcc", "RTCP packet at octet 32: truncated header (2 octets)"),
    (RR + _with(KNOWN_GOOD, 0, 0x40), "RTCP packet at octet 32: version 1"),
    (RR + bytes.fromhex("80600001 00000000"), "packet type 96 is not RTCP"),
    (RR + KNOWN_GOOD[:40], "length field gives 44 octets, only 40 remain"),
    (bytes.fromhex("a1cb0002 aabbccdd 00000004") + KNOWN_GOOD, "padding bit set on a packet that is not the last"),
    (bytes.fromhex("a1cb0002 aabbccdd 00000000"), "padding count 0"),
    (bytes.fromhex("a1cb0002 aabbccdd 00000009"), "padding count 9"),
    (bytes.fromhex("82c90007") + RR[4:], "needs at least 56"),
    (bytes.fromhex("81c80006 aabbccdd" + "00" * 20), "needs at least 52"),
    (bytes.fromhex("83cb0001 aabbccdd"), "needs at least 16"),
    (bytes.fromhex("80cc0001 aabbccdd"), "packet type 204 needs at least 12"),
    (RR + _with(KNOWN_GOOD, 17, 0x30), "RTCP packet at octet 32: USER_ID (6) at octet 16: length 48 overruns"),
]


@pytest.mark.parametrize(("data", "words"), MALFORMED_COMPOUNDS, ids=[w for _, w in MALFORMED_COMPOUNDS])
def test_parse_rtcp_refuses_malformed_compounds(data: bytes, words: str) -> None:
    with pytest.raises(FloorMessageError) as e:
        parse_rtcp(data)
    assert words in str(e.value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (KNOWN_GOOD, True),
        (RR, True),
        (bytes([0x80, 192]), True),
        (bytes([0x80, 223]), True),
        (bytes([0x80, 0x60, 0, 1]), False),  # RTP, payload type 96
        (bytes([0x80, 0xE0, 0, 1]), False),  # RTP, payload type 96 with the marker bit: 224
        (bytes([0x80, 0xBF]), False),  # RTP, payload type 63 with the marker bit: 191
        (bytes([0x40, 0xCC]), False),  # version 1
        (b"\x80", False),
        (b"", False),
    ],
)
def test_is_rtcp_demultiplexes_as_rfc5761(data: bytes, expected: bool) -> None:
    assert is_rtcp(data) is expected


# --- mutation fuzz ----------------------------------------------------------------------------------------------

FUZZ_COUNT = 10_000
SEEDS = [KNOWN_GOOD, *[bytes(m) for m in TSHARK_MESSAGES], *[bytes(m) for m in QUEUE_MESSAGES]]


def _fix_length(data: bytes) -> bytes:
    """Pad to whole words and make the RTCP length field agree, so mutations reach the field parser."""
    data = data + bytes(-len(data) % 4)
    if len(data) < 4:
        return data
    return data[:2] + (len(data) // 4 - 1).to_bytes(2, "big") + data[4:]


def _mutators() -> list[Callable[[random.Random, bytes], bytes]]:
    def flip(rng: random.Random, data: bytes) -> bytes:
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(out) * 8)
            out[i // 8] ^= 1 << (i % 8)
        return bytes(out)

    def set_byte(rng: random.Random, data: bytes) -> bytes:
        out = bytearray(data)
        out[rng.randrange(len(out))] = rng.choice([0, 1, 2, 0x7F, 0x80, 0xC0, 0xFF, rng.randrange(256)])
        return bytes(out)

    def field_length(rng: random.Random, data: bytes) -> bytes:  # the length octet of a field (word-aligned + 1)
        out = bytearray(data)
        if len(out) > 13:
            at = rng.randrange(12, len(out) - 1, 4) + 1
            out[at] = rng.choice([0, 1, 2, 3, 5, 6, 0xFF, rng.randrange(256)])
        return bytes(out)

    def truncate(rng: random.Random, data: bytes) -> bytes:
        return data[: rng.randrange(len(data))]

    def insert(rng: random.Random, data: bytes) -> bytes:
        at = rng.randrange(len(data) + 1)
        return data[:at] + rng.randbytes(rng.randint(1, 8)) + data[at:]

    def delete(rng: random.Random, data: bytes) -> bytes:
        at = rng.randrange(len(data))
        return data[:at] + data[at + rng.randint(1, 8) :]

    def splice(rng: random.Random, data: bytes) -> bytes:
        other = rng.choice(SEEDS)
        return data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other)) :]

    return [flip, set_byte, field_length, truncate, insert, delete, splice]


def test_mutation_fuzz_raises_only_floor_message_error() -> None:
    rng = random.Random(24380)
    mutators = _mutators()
    parsed = 0
    for _ in range(FUZZ_COUNT):
        data = rng.choice(SEEDS)
        for _step in range(rng.randint(1, 3)):
            data = rng.choice(mutators)(rng, data) or data
        if rng.random() < 0.6:
            data = _fix_length(data)
        try:
            message = FloorMessage.parse(data)
        except FloorMessageError:
            pass
        except Exception as e:  # pragma: no cover - a failure report
            raise AssertionError(f"{type(e).__name__} from parse({data.hex()})") from e
        else:
            parsed += 1
            canonical = bytes(message)  # whatever parses re-encodes, canonically
            assert FloorMessage.parse(canonical) == message, data.hex()
            assert bytes(FloorMessage.parse(canonical)) == canonical
        try:
            parse_rtcp(RR + data)
        except FloorMessageError:
            pass
        except Exception as e:  # pragma: no cover - a failure report
            raise AssertionError(f"{type(e).__name__} from parse_rtcp(RR + {data.hex()})") from e
    assert parsed > FUZZ_COUNT // 20  # the fuzz reaches the field parser, not only the header checks
