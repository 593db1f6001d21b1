"""RTP packets (RFC 3550 §5.1), sequence and timestamp arithmetic, and an Opus sender (RFC 7587).

The fixed header is 12 octets::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |V=2|P|X|  CC   |M|     PT      |       sequence number         |
    |                           timestamp                           |
    |           synchronization source (SSRC) identifier            |
    |       contributing source (CSRC) identifiers (CC of them)     |
    |  extension: profile-defined (16) | length in 32-bit words (16) |
    |                        extension data ...                     |
    |                           payload ...   | padding ... | count |

Padding (P set) is a run of octets at the end whose last octet counts the run, itself included (§5.1); this
module writes zero octets before the count, so ``bytes(RtpPacket.parse(x)) == x`` holds for packets padded
that way (other padding contents are not kept). The extension (X set, §5.3.1) is kept as its 16-bit
profile-defined value and its data, whose length is a multiple of 4.

Opus (RFC 7587): the clock is always 48 kHz whatever the audio bandwidth, the payload type is dynamic (96
here), one Opus packet per RTP packet, and the marker bit is set on the first packet of a talk burst (RFC 3551
§4.1 for audio: the first packet after a silence period).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

RTP_VERSION = 2
HEADER_LENGTH = 12
OPUS_CLOCK = 48000
OPUS_PAYLOAD_TYPE = 96
OPUS_FRAME_SAMPLES = 960
"""20 ms at 48 kHz, the frame size this system sends."""

_HEADER = struct.Struct(">BBHII")
_MAX_CSRC = 15
_MAX_EXTENSION_DATA = 0xFFFF * 4


class RtpError(ValueError):
    """A malformed RTP packet, or header fields out of range."""


def _check_range(name: str, value: int, bits: int) -> None:
    if not 0 <= value < 1 << bits:
        raise RtpError(f"{name} {value} out of range (0..{(1 << bits) - 1})")


@dataclass(frozen=True)
class RtpPacket:
    """One RTP packet. ``padding`` is the number of padding octets on the wire (0: none, else 1..255)."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension: tuple[int, bytes] | None = None
    padding: int = 0

    def __post_init__(self) -> None:
        _check_range("payload type", self.payload_type, 7)
        _check_range("sequence number", self.sequence, 16)
        _check_range("timestamp", self.timestamp, 32)
        _check_range("SSRC", self.ssrc, 32)
        if len(self.csrc) > _MAX_CSRC:
            raise RtpError(f"{len(self.csrc)} CSRCs (at most {_MAX_CSRC})")
        for csrc in self.csrc:
            _check_range("CSRC", csrc, 32)
        if self.extension is not None:
            profile, data = self.extension
            _check_range("extension profile", profile, 16)
            if len(data) % 4 or len(data) > _MAX_EXTENSION_DATA:
                raise RtpError(
                    f"extension data of {len(data)} octets is not a multiple of 4 up to {_MAX_EXTENSION_DATA}"
                )
        _check_range("padding length", self.padding, 8)

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        if len(data) < HEADER_LENGTH:
            raise RtpError(f"truncated header: {len(data)} octets, at least {HEADER_LENGTH} needed")
        first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
        version = first >> 6
        if version != RTP_VERSION:
            raise RtpError(f"unsupported RTP version {version}")
        has_padding = bool(first & 0x20)
        has_extension = bool(first & 0x10)
        csrc_count = first & 0x0F
        offset = HEADER_LENGTH
        if len(data) < offset + 4 * csrc_count:
            raise RtpError(f"truncated CSRC list: {csrc_count} CSRCs need {4 * csrc_count} octets")
        csrc = struct.unpack_from(f">{csrc_count}I", data, offset)
        offset += 4 * csrc_count
        extension = None
        if has_extension:
            if len(data) < offset + 4:
                raise RtpError("truncated extension header")
            profile, words = struct.unpack_from(">HH", data, offset)
            offset += 4
            if len(data) < offset + 4 * words:
                raise RtpError(f"truncated extension: {4 * words} octets announced, {len(data) - offset} present")
            extension = (profile, bytes(data[offset : offset + 4 * words]))
            offset += 4 * words
        end = len(data)
        padding = 0
        if has_padding:
            if end == offset:
                raise RtpError("bad padding: padding bit set but no octet for the count")
            padding = data[-1]
            if padding == 0 or padding > end - offset:
                raise RtpError(f"bad padding: count {padding} with {end - offset} octets after the header")
            end -= padding
        return cls(
            payload_type=second & 0x7F,
            sequence=sequence,
            timestamp=timestamp,
            ssrc=ssrc,
            payload=bytes(data[offset:end]),
            marker=bool(second & 0x80),
            csrc=tuple(csrc),
            extension=extension,
            padding=padding,
        )

    def __bytes__(self) -> bytes:
        first = (
            RTP_VERSION << 6
            | (0x20 if self.padding else 0)
            | (0x10 if self.extension is not None else 0)
            | len(self.csrc)
        )
        second = (0x80 if self.marker else 0) | self.payload_type
        parts = [_HEADER.pack(first, second, self.sequence, self.timestamp, self.ssrc)]
        parts.append(struct.pack(f">{len(self.csrc)}I", *self.csrc))
        if self.extension is not None:
            profile, data = self.extension
            parts.append(struct.pack(">HH", profile, len(data) // 4))
            parts.append(data)
        parts.append(self.payload)
        if self.padding:
            parts.append(bytes(self.padding - 1) + bytes([self.padding]))
        return b"".join(parts)


def seq_diff(a: int, b: int) -> int:
    """``a - b`` for 16-bit sequence numbers, in -32768..32767 (the shorter way round the circle)."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def seq_lt(a: int, b: int) -> bool:
    """``a`` precedes ``b`` in 16-bit serial number arithmetic (RFC 1982 §3.2).

    Numbers exactly 32768 apart are unordered (neither precedes the other), as RFC 1982 leaves them undefined.
    """
    return 0 < (b - a) & 0xFFFF < 0x8000


def ts_diff(a: int, b: int) -> int:
    """``a - b`` for 32-bit RTP timestamps, in -2**31..2**31-1."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000


def random_ssrc(rand: Callable[[int], bytes] = os.urandom) -> int:
    """A random SSRC (RFC 3550 §8.1)."""
    return int.from_bytes(rand(4), "big")


class RtpSender:
    """Numbers one source's packets: random initial sequence number and timestamp (RFC 3550 §5.1).

    The timestamp advances by each packet's ``samples``; while nothing is sent (push-to-talk released, or
    silence suppressed) the caller reports the samples that went by with :meth:`skip`, so the timestamp keeps
    wall-clock pace and the receiver's playout stays in step. ``start_of_burst`` sets the marker bit.
    """

    def __init__(
        self, ssrc: int, payload_type: int = OPUS_PAYLOAD_TYPE, *, rand: Callable[[int], bytes] = os.urandom
    ) -> None:
        _check_range("SSRC", ssrc, 32)
        _check_range("payload type", payload_type, 7)
        self.ssrc = ssrc
        self.payload_type = payload_type
        self._sequence = int.from_bytes(rand(2), "big")
        self._timestamp = int.from_bytes(rand(4), "big")

    @property
    def sequence(self) -> int:
        """The sequence number of the next packet."""
        return self._sequence

    @property
    def timestamp(self) -> int:
        """The timestamp of the next packet."""
        return self._timestamp

    def packet(self, payload: bytes, samples: int, *, start_of_burst: bool = False) -> RtpPacket:
        if samples < 0:
            raise RtpError(f"negative sample count {samples}")
        packet = RtpPacket(
            payload_type=self.payload_type,
            sequence=self._sequence,
            timestamp=self._timestamp,
            ssrc=self.ssrc,
            payload=payload,
            marker=start_of_burst,
        )
        self._sequence = (self._sequence + 1) & 0xFFFF
        self._timestamp = (self._timestamp + samples) & 0xFFFFFFFF
        return packet

    def skip(self, samples: int) -> None:
        if samples < 0:
            raise RtpError(f"negative sample count {samples}")
        self._timestamp = (self._timestamp + samples) & 0xFFFFFFFF
