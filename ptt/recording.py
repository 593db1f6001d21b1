"""Encrypted recording of group calls (issue 17), without I/O: the relay's tap that cuts the floor holder's
forwarded SRTP into bursts, and the stored burst's format.

The relay never holds a media key: a burst is the SRTP packets exactly as forwarded, with what the relay knows
anyway (group, the talker's authenticated binding, SSRC, start and end, the GMK-IDs the packets' MKIs name). Only a
member holding the GMK of the time (its I_MESSAGE is archived per member, ``server.groups.recordings``) can play it.

A burst ends when the talker changes (floor released, revoked, granted to someone else), when its talker has sent
nothing for ``idle_gap`` seconds (:meth:`BurstTap.sweep`), or when it reaches ``max_packets`` (a new burst of the
same talker then begins): memory per recorded group is bounded by one burst.

Stored burst (``encode_burst`` / ``parse_burst``): magic ``PTTR``, version 1, packet count (4 octets), then per
packet its offset from the burst's start in milliseconds (4 octets) and its length (2 octets) and the packet.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

MAGIC = b"PTTR"
VERSION = 1
MAX_PACKET = 1500
MAX_PACKETS = 30_000
"""Packets in one stored burst at most (10 minutes at 50 packets/s): parsing refuses more."""
DEFAULT_MAX_PACKETS = 3000
"""Where the tap cuts a long burst (60 s at 50 packets/s)."""
IDLE_GAP = 2.0
MKI_LENGTH = 8
_HEADER = struct.Struct(">4sBI")
_ENTRY = struct.Struct(">IH")


class RecordingFormatError(ValueError):
    """A stored burst that is not in the format (truncated, too large, wrong magic or version)."""


@dataclass
class Burst:
    """One talker's burst in one group: the forwarded SRTP packets and their arrival offsets (seconds)."""

    group: str
    talker: str
    ssrc: int
    started: float
    ended: float
    packets: list[tuple[float, bytes]] = field(default_factory=list)
    gmk_ids: list[bytes] = field(default_factory=list)

    @property
    def octets(self) -> int:
        return sum(len(p) for _, p in self.packets)


def gmk_id_of(packet: bytes) -> bytes | None:
    """The GMK-ID an SRTP packet's MKI names (AEAD placement: the MKI is the last 8 octets, ``ptt.srtp``)."""
    if len(packet) < 12 + MKI_LENGTH + 16:
        return None
    return packet[-MKI_LENGTH : -MKI_LENGTH + 4]


def encode_burst(packets: list[tuple[float, bytes]]) -> bytes:
    if len(packets) > MAX_PACKETS:
        raise RecordingFormatError(f"{len(packets)} packets: at most {MAX_PACKETS} in a burst")
    out = [_HEADER.pack(MAGIC, VERSION, len(packets))]
    for offset, packet in packets:
        if len(packet) > MAX_PACKET:
            raise RecordingFormatError(f"a packet of {len(packet)} octets: at most {MAX_PACKET}")
        out.append(_ENTRY.pack(max(0, min(round(offset * 1000), 0xFFFFFFFF)), len(packet)))
        out.append(packet)
    return b"".join(out)


def parse_burst(data: bytes) -> list[tuple[float, bytes]]:
    """The (offset in seconds, SRTP packet) list of a stored burst; RecordingFormatError if malformed."""
    if len(data) < _HEADER.size:
        raise RecordingFormatError("truncated header")
    magic, version, count = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise RecordingFormatError("not a stored burst (magic)")
    if version != VERSION:
        raise RecordingFormatError(f"unsupported version {version}")
    if count > MAX_PACKETS:
        raise RecordingFormatError(f"{count} packets: at most {MAX_PACKETS}")
    at, packets = _HEADER.size, []
    for _ in range(count):
        if at + _ENTRY.size > len(data):
            raise RecordingFormatError("truncated packet entry")
        offset_ms, length = _ENTRY.unpack_from(data, at)
        at += _ENTRY.size
        if length > MAX_PACKET or at + length > len(data):
            raise RecordingFormatError("truncated or oversized packet")
        packets.append((offset_ms / 1000.0, data[at : at + length]))
        at += length
    if at != len(data):
        raise RecordingFormatError("trailing octets")
    return packets


class _Open:
    __slots__ = ("burst", "last")

    def __init__(self, burst: Burst, now: float) -> None:
        self.burst = burst
        self.last = now


class BurstTap:
    """Cuts the forwarded packets of recorded groups into bursts; completed ones wait in :attr:`completed` for the
    shell to store (it drains the list). ``packet`` runs on the relay's fast path: a dict lookup and an append."""

    def __init__(self, *, max_packets: int = DEFAULT_MAX_PACKETS, idle_gap: float = IDLE_GAP) -> None:
        if max_packets < 1 or max_packets > MAX_PACKETS:
            raise ValueError(f"max_packets must be in 1 .. {MAX_PACKETS}")
        self.max_packets = max_packets
        self.idle_gap = idle_gap
        self.completed: list[Burst] = []
        self._open: dict[str, _Open] = {}

    def packet(self, group: str, talker: str, ssrc: int, data: bytes, now: float) -> None:
        current = self._open.get(group)
        if current is not None and (current.burst.talker != talker or current.burst.ssrc != ssrc):
            self._close(group)
            current = None
        if current is None:
            current = self._open[group] = _Open(Burst(group, talker, ssrc, now, now), now)
        burst = current.burst
        burst.packets.append((now - burst.started, data))
        gmk_id = gmk_id_of(data)
        if gmk_id is not None and gmk_id not in burst.gmk_ids and len(burst.gmk_ids) < 8:
            burst.gmk_ids.append(gmk_id)
        burst.ended = current.last = now
        if len(burst.packets) >= self.max_packets:
            self._close(group)

    def talker_changed(self, group: str) -> None:
        """The floor changed hands (or went idle): the group's open burst is complete."""
        if group in self._open:
            self._close(group)

    def sweep(self, now: float) -> None:
        """Complete the bursts whose talker has been silent ``idle_gap`` seconds (or whose clock went back)."""
        for group in [g for g, o in self._open.items() if not 0.0 <= now - o.last < self.idle_gap]:
            self._close(group)

    def flush(self) -> None:
        """Complete every open burst (shutting down)."""
        for group in list(self._open):
            self._close(group)

    def open_groups(self) -> list[str]:
        return list(self._open)

    def _close(self, group: str) -> None:
        current = self._open.pop(group)
        if current.burst.packets:
            self.completed.append(current.burst)
