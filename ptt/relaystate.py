"""What the media relay (:mod:`ptt.relaycore`) keeps and speaks: bindings, configuration, the ``PTTJ`` join packet,
results, and the per-group and per-member state (rate-limit buckets, the talker, the cached fan-out).
"""

from __future__ import annotations

from dataclasses import dataclass

Address = tuple[str, int]

TOKEN_LENGTH = 16
TOKEN_LIFETIME = 60.0
"""Seconds an :meth:`RelayCore.expect` token stays usable before its first ``PTTJ``."""

JOIN_NAME = b"PTTJ"
JOIN_PACKET_LENGTH = 28
"""V/P/subtype, PT, length, SSRC (8) + name (4) + token (16)."""

RTCP_APP = 204
RTP_HEADER_LENGTH = 12
MAX_UNBOUND_BUCKETS = 4096
"""Rate-limit buckets kept for sources that are not bound; beyond this they share one bucket."""

STAT_NAMES = (
    "forwarded",  # media packets forwarded (each to every other bound member)
    "copies",  # datagrams those forwards became
    "dropped_unbound",  # media from an address no member is bound to
    "dropped_not_talker",  # media from a bound member who does not hold the floor
    "dropped_ssrc",  # media from the talker's address with another SSRC
    "dropped_rate",  # over the per-source rate limit
    "dropped_malformed",  # not RTP/RTCP version 2, or too short
    "dropped_token",  # PTTJ with an unknown or expired token, or an SSRC other than the expected one
    "dropped_rtcp",  # RTCP that is neither PTTJ nor floor control from a bound member
    "joined",  # bindings made (first PTTJ of a token)
    "rebound",  # bindings moved to a new address
    "keepalive",  # PTTJ refreshing an existing binding
    "floor",  # floor control packets handed over
    "dropped_floor_rate",  # floor control over the member's floor control limit
    "dead",  # members unbound by sweep
    "bound",  # members bound now (a gauge)
)


@dataclass(frozen=True)
class Binding:
    """Who a bound address belongs to: a member of a group, with the SSRC of its media."""

    group: str
    member: str
    ssrc: int


@dataclass(frozen=True)
class RelayConfig:
    rate_packets_per_s: float = 200.0
    rate_burst: int = 400
    dead_after: float = 15.0
    keepalive_interval: float = 5.0  # what clients send at; dead_after must leave room for lost keepalives
    floor_packets_per_s: float = 10.0
    floor_burst: int = 30
    """Floor control packets a member may send (within its overall rate): a press is a Floor Request and a
    release a Floor Release, each retransmitted a few times if unanswered (T101/T100), plus Queue Position
    Requests; a person pressing twice a second stays far below. Floor messages cost the server an SRTCP check
    and the arbiter's work each, so a flood of them is cut here, before either."""

    def __post_init__(self) -> None:
        if self.floor_packets_per_s <= 0 or self.floor_burst < 1:
            raise ValueError("the floor control limit needs a positive rate and a burst of at least one packet")
        if self.rate_packets_per_s <= 0 or self.rate_burst < 1:
            raise ValueError("the rate limit needs a positive rate and a burst of at least one packet")
        if self.dead_after <= self.keepalive_interval:
            raise ValueError("dead_after must be longer than keepalive_interval")


@dataclass(frozen=True)
class RtcpResult:
    """What an RTCP datagram did: ``joined`` (a token's first use bound its address), ``keepalive`` (a binding
    refreshed, possibly moved to a new address), ``floor`` (hand ``data`` to floor control for ``binding``) or
    ``dropped``."""

    kind: str
    binding: Binding | None = None
    data: bytes = b""


DROPPED = RtcpResult("dropped")


def join_packet(ssrc: int, token: bytes) -> bytes:
    """The RTCP APP ``PTTJ`` packet a client sends from its media socket to bind it (and as keepalive)."""
    if len(token) != TOKEN_LENGTH:
        raise ValueError(f"join token must be {TOKEN_LENGTH} octets")
    if not 0 <= ssrc < 1 << 32:
        raise ValueError("SSRC must fit in 32 bits")
    length_words = JOIN_PACKET_LENGTH // 4 - 1
    return bytes((0x80, RTCP_APP)) + length_words.to_bytes(2, "big") + ssrc.to_bytes(4, "big") + JOIN_NAME + token


class Bucket:
    """Token bucket state: ``tokens`` as of ``stamp``."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class BoundMember(Bucket):
    """A bound member: its address, liveness and (inherited) rate-limit bucket."""

    __slots__ = ("addr", "binding", "floor", "group", "last_seen", "ssrc_bytes", "token")

    def __init__(
        self,
        binding: Binding,
        token: bytes,
        addr: Address,
        group: GroupState,
        now: float,
        burst: float,
        floor_burst: float,
    ) -> None:
        super().__init__(burst, now)
        self.floor = Bucket(floor_burst, now)
        self.binding = binding
        self.token = token
        self.addr = addr
        self.group = group
        self.last_seen = now
        self.ssrc_bytes = binding.ssrc.to_bytes(4, "big")


class GroupState:
    __slots__ = ("fanout", "members", "talker", "talker_ssrc")

    def __init__(self) -> None:
        self.members: dict[str, BoundMember] = {}
        self.talker_ssrc: int | None = None
        self.talker: BoundMember | None = None
        self.fanout: list[Address] = []

    def rebuild(self) -> None:
        """Find the talker among the bound members and cache the addresses its media goes to."""
        talker = None
        if self.talker_ssrc is not None:
            for member in self.members.values():
                if member.binding.ssrc == self.talker_ssrc:
                    talker = member
                    break
        self.talker = talker
        # A new list each time: a caller may still be iterating over the old one.
        self.fanout = [m.addr for m in self.members.values() if m is not talker] if talker is not None else []


def looks_like_rtcp(data: bytes) -> bool:
    """Version 2, at least header + SSRC, and a length field that fits the datagram (compound: the first)."""
    if len(data) < 8 or data[0] & 0xC0 != 0x80:
        return False
    return (int.from_bytes(data[2:4], "big") + 1) * 4 <= len(data)


def is_join_packet(data: bytes) -> bool:
    return len(data) == JOIN_PACKET_LENGTH and data[0] == 0x80 and data[2:4] == b"\x00\x06" and data[8:12] == JOIN_NAME
