"""RTP packets (RFC 3550 §5.1), serial-number arithmetic and the Opus sender (RFC 7587)."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptt.rtp import (
    OPUS_CLOCK,
    OPUS_PAYLOAD_TYPE,
    RtpError,
    RtpPacket,
    RtpSender,
    random_ssrc,
    seq_diff,
    seq_lt,
    ts_diff,
)

# Four consecutive RTP packets written by GStreamer 1.22 (an independent implementation), captured with
# multifilesink from:
#   gst-launch-1.0 audiotestsrc freq=440 num-buffers=3 samplesperbuffer=960 ! audio/x-raw,rate=48000,channels=1
#     ! opusenc frame-size=20 bitrate=16000 ! rtpopuspay pt=96 ssrc=305419896 timestamp-offset=4294966336
#     seqnum-offset=65535 ! multifilesink location=p%03d.bin
# Marker on the first, sequence numbers 65535, 0, 1, 2 and timestamps wrapping past 2**32; each payload is one
# Opus packet with TOC 0x78 (config 15: hybrid fullband 20 ms, mono, one frame).
GSTREAMER_OPUS = [
    bytes.fromhex(
        "80e0fffffffffc4012345678788427ad568274f400000b23a91e504e954fd8bba19ce74b2873fb3f9c7f1444fc7bdd51b46483"
        "de5ac4c6df56eea7078e52d7e52d789a32391a93aa94f4f852bd3a49b8f0f4bb1f"
    ),
    bytes.fromhex(
        "80600000fffffec81234567878b4af2e69b00aebe403698bcc5e7ee16456f6893cb916f0b327b9e147a527529ff27a4fd2e66f"
        "23589ae03496"
    ),
    bytes.fromhex(
        "80600001000002881234567878a98e55f5836ffcb2b2dcf383d05970d1f32a72732d3a496a85d569339c8827a0b49653294017"
        "4432766be10e4e19e8d8d24858f4ea"
    ),
    bytes.fromhex(
        "80600002000006481234567878b9fae26eea07c5b70a611613d90d4f676f7bfffb661356e7cfc096b62ab2389e7fa7ce5973e35dcb"
    ),
]


def test_gstreamer_opus_packets() -> None:
    packets = [RtpPacket.parse(data) for data in GSTREAMER_OPUS]
    assert [p.sequence for p in packets] == [65535, 0, 1, 2]
    assert [p.timestamp for p in packets] == [0xFFFFFC40, 0xFFFFFEC8, 0x288, 0x648]
    assert [p.marker for p in packets] == [True, False, False, False]
    assert {(p.payload_type, p.ssrc, p.csrc, p.extension, p.padding) for p in packets} == {
        (OPUS_PAYLOAD_TYPE, 0x12345678, (), None, 0)
    }
    assert all(p.payload[0] == 0x78 for p in packets)
    assert [len(p.payload) for p in packets] == [len(d) - 12 for d in GSTREAMER_OPUS]
    assert [bytes(p) for p in packets] == GSTREAMER_OPUS
    # across both wraps the numbers still advance
    assert [seq_diff(b.sequence, a.sequence) for a, b in itertools.pairwise(packets)] == [1, 1, 1]
    assert [ts_diff(b.timestamp, a.timestamp) for a, b in itertools.pairwise(packets)] == [648, 960, 960]


def test_csrcs_extension_and_padding_round_trip() -> None:
    # V=2 P=1 X=1 CC=2, M=1 PT=111, seq 0x0102, ts 0x03040506, SSRC 0x0708090A, CSRCs, extension profile 0xBEDE
    # with one word, payload "opus", 3 padding octets (00 00 03)
    data = (
        bytes([0b1011_0010, 0x80 | 111])
        + struct.pack(">HII", 0x0102, 0x03040506, 0x0708090A)
        + struct.pack(">II", 0x11111111, 0x22222222)
        + struct.pack(">HH", 0xBEDE, 1)
        + b"\x10\xaa\x00\x00"
        + b"opus"
        + b"\x00\x00\x03"
    )
    packet = RtpPacket.parse(data)
    assert packet == RtpPacket(
        payload_type=111,
        sequence=0x0102,
        timestamp=0x03040506,
        ssrc=0x0708090A,
        payload=b"opus",
        marker=True,
        csrc=(0x11111111, 0x22222222),
        extension=(0xBEDE, b"\x10\xaa\x00\x00"),
        padding=3,
    )
    assert bytes(packet) == data


def test_empty_extension_and_empty_payload() -> None:
    packet = RtpPacket(0, 1, 2, 3, b"", extension=(0x1000, b""), padding=1)
    data = bytes(packet)
    assert data == bytes.fromhex("b000000100000002000000031000000001")
    assert RtpPacket.parse(data) == packet


def test_padding_contents_are_not_kept() -> None:
    data = bytes(RtpPacket(96, 1, 2, 3, b"abc", padding=4))
    assert data.endswith(b"abc\x00\x00\x00\x04")
    odd = data[:-4] + b"\xff\xff\xff\x04"
    assert RtpPacket.parse(odd).payload == b"abc"
    assert bytes(RtpPacket.parse(odd)) == data


HEADER = bytes.fromhex("8060000100000002 00000003".replace(" ", ""))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated header"),
        (HEADER[:11], "truncated header"),
        (b"\x40" + HEADER[1:], "version 1"),
        (b"\xc0" + HEADER[1:], "version 3"),
        (b"\x00" + HEADER[1:], "version 0"),
        (b"\x81" + HEADER[1:], "truncated CSRC"),
        (b"\x82" + HEADER[1:] + b"\x00\x00\x00\x01", "truncated CSRC"),
        (b"\x90" + HEADER[1:] + b"\xbe\xde", "truncated extension header"),
        (b"\x90" + HEADER[1:] + b"\xbe\xde\x00\x02" + b"\x00" * 7, "truncated extension: 8"),
        (b"\xa0" + HEADER[1:], "bad padding"),
        (b"\xa0" + HEADER[1:] + b"abc\x00", "bad padding: count 0"),
        (b"\xa0" + HEADER[1:] + b"abc\x05", "bad padding: count 5"),
        (b"\xb0" + HEADER[1:] + b"\xbe\xde\x00\x01abcd\x02", "bad padding: count 2"),  # padding over the extension
    ],
)
def test_parse_errors(data: bytes, reason: str) -> None:
    with pytest.raises(RtpError, match=reason):
        RtpPacket.parse(data)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"payload_type": 128}, "payload type"),
        ({"sequence": 65536}, "sequence number"),
        ({"sequence": -1}, "sequence number"),
        ({"timestamp": 1 << 32}, "timestamp"),
        ({"ssrc": -1}, "SSRC"),
        ({"csrc": tuple(range(16))}, "16 CSRCs"),
        ({"csrc": (1 << 32,)}, "CSRC"),
        ({"extension": (0x10000, b"")}, "extension profile"),
        ({"extension": (1, b"abc")}, "multiple of 4"),
        ({"padding": 256}, "padding"),
    ],
)
def test_field_ranges(fields: dict[str, object], reason: str) -> None:
    arguments: dict[str, object] = {"payload_type": 96, "sequence": 0, "timestamp": 0, "ssrc": 0, "payload": b""}
    with pytest.raises(RtpError, match=reason):
        RtpPacket(**(arguments | fields))  # type: ignore[arg-type]


packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127),
    sequence=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=64),
    marker=st.booleans(),
    csrc=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15).map(tuple),
    extension=st.none() | st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=12).map(lambda b: b[: len(b) // 4 * 4])),
    padding=st.integers(0, 255),
)


@given(packets)
def test_round_trip(packet: RtpPacket) -> None:
    data = bytes(packet)
    assert RtpPacket.parse(data) == packet
    assert (
        len(data)
        == 12
        + 4 * len(packet.csrc)
        + (4 + len(packet.extension[1]) if packet.extension else 0)
        + len(packet.payload)
        + packet.padding
    )


@given(st.binary(max_size=80))
def test_parse_arbitrary_octets(data: bytes) -> None:
    try:
        packet = RtpPacket.parse(data)
    except RtpError:
        return
    assert RtpPacket.parse(bytes(packet)) == packet
    assert len(bytes(packet)) == len(data)


def test_sequence_arithmetic_around_the_wrap() -> None:
    assert seq_diff(0, 65535) == 1 and seq_diff(65535, 0) == -1
    assert seq_diff(5, 65530) == 11 and seq_diff(65530, 5) == -11
    assert seq_diff(7, 7) == 0
    assert seq_diff(32767, 0) == 32767 and seq_diff(32768, 0) == -32768
    assert seq_lt(65535, 0) and not seq_lt(0, 65535)
    assert seq_lt(65000, 100) and not seq_lt(100, 65000)
    assert not seq_lt(3, 3)
    assert seq_lt(0, 32767) and not seq_lt(32767, 0)
    assert not seq_lt(0, 32768) and not seq_lt(32768, 0)  # RFC 1982: undefined, so neither


def test_timestamp_arithmetic_around_the_wrap() -> None:
    assert ts_diff(0, 0xFFFFFFFF) == 1 and ts_diff(0xFFFFFFFF, 0) == -1
    assert ts_diff(0x288, 0xFFFFFEC8) == 960
    assert ts_diff(5, 10) == -5
    assert ts_diff(0x7FFFFFFF, 0) == 2**31 - 1 and ts_diff(0x80000000, 0) == -(2**31)


@given(st.integers(0, 0xFFFF), st.integers(-32768, 32767))
def test_seq_diff_inverts_addition(a: int, d: int) -> None:
    b = (a + d) & 0xFFFF
    assert seq_diff(b, a) == d
    assert seq_lt(a, b) == (d > 0)


@given(st.integers(0, 0xFFFFFFFF), st.integers(-(2**31), 2**31 - 1))
def test_ts_diff_inverts_addition(a: int, d: int) -> None:
    assert ts_diff((a + d) & 0xFFFFFFFF, a) == d


def fixed_rand(data: bytes) -> Callable[[int], bytes]:
    stream = iter(data)
    return lambda n: bytes(next(stream) for _ in range(n))


def test_sender_numbers_a_talk_burst() -> None:
    sender = RtpSender(0xCAFE, rand=fixed_rand(bytes.fromhex("fffe" + "fffffc40")))
    assert (sender.sequence, sender.timestamp) == (0xFFFE, 0xFFFFFC40)
    first = sender.packet(b"a", 960, start_of_burst=True)
    second = sender.packet(b"b", 960)
    third = sender.packet(b"c", 960)
    assert [(p.sequence, p.timestamp, p.marker) for p in (first, second, third)] == [
        (0xFFFE, 0xFFFFFC40, True),
        (0xFFFF, 0x00000000, False),
        (0x0000, 0x000003C0, False),
    ]
    assert {(p.ssrc, p.payload_type) for p in (first, second, third)} == {(0xCAFE, OPUS_PAYLOAD_TYPE)}
    # push-to-talk released for one second: the timestamp keeps wall-clock pace, the sequence number does not move
    sender.skip(OPUS_CLOCK)
    fourth = sender.packet(b"d", 960, start_of_burst=True)
    assert (fourth.sequence, fourth.timestamp, fourth.marker) == (0x0001, 0x3C0 + 960 + OPUS_CLOCK, True)
    assert RtpPacket.parse(bytes(fourth)) == fourth


def test_sender_randomises_its_start() -> None:
    sender = RtpSender(1, 111, rand=fixed_rand(bytes.fromhex("1234" + "89abcdef")))
    packet = sender.packet(b"", 480)
    assert (packet.sequence, packet.timestamp, packet.payload_type) == (0x1234, 0x89ABCDEF, 111)
    assert sender.timestamp == 0x89ABCDEF + 480
    assert random_ssrc(fixed_rand(b"\x01\x02\x03\x04")) == 0x01020304
    starts = {(s.sequence, s.timestamp) for s in (RtpSender(1) for _ in range(8))}
    assert len(starts) > 1


def test_sender_rejects_nonsense() -> None:
    sender = RtpSender(1)
    with pytest.raises(RtpError):
        sender.packet(b"", -1)
    with pytest.raises(RtpError):
        sender.skip(-960)
    with pytest.raises(RtpError):
        RtpSender(1 << 32)
    with pytest.raises(RtpError):
        RtpSender(1, 128)
