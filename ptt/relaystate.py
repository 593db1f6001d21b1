"""What the media relay (:mod:`ptt.relaycore`) keeps and speaks: bindings, configuration, the authenticated
``PTTJ`` binding packet and its key, results, and the per-group and per-member state (rate-limit buckets, binding
counters, the talker, the cached fan-out).

The ``PTTJ`` packet (44 octets, one RTCP APP packet, RFC 3550 §6.7; tshark decodes it as RTCP APP)::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |V=2|P=0| sub=0   |    PT=204     |          length=10            |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                     SSRC of the member's media                    |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                          name "PTTJ"                              |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                 binding ID (8 octets, from the join reply)        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |            counter (64 bits, strictly increasing per binding)     |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |   MAC: HMAC-SHA-256(binding key, octets 0..27), first 16 octets   |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

Binding key = KDF(CSK, FC 0xF0, P0 = "ptt-relay-binding", P1 = binding ID) with the TS 33.220 B.2 KDF
(:func:`ptt.kdf.kdf_3gpp`; FC 0xF0 is ours, the label keeps it apart from any 3GPP derivation). The server has the
member's CSK from its CSK I_MESSAGE, the client its own; the binding ID is public (the join reply over TLS carries
it, and every ``PTTJ`` in clear).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from ptt.kdf import kdf_3gpp

Address = tuple[str, int]

BINDING_ID_LENGTH = 8
TOKEN_LENGTH = BINDING_ID_LENGTH  # the join reply's ``token`` field carries the binding ID (public)
TOKEN_LIFETIME = 60.0
"""Seconds an :meth:`RelayCore.expect` binding stays usable before its first ``PTTJ``."""

BINDING_FC = 0xF0
BINDING_LABEL = b"ptt-relay-binding"
JOIN_NAME = b"PTTJ"
JOIN_MAC_LENGTH = 16
JOIN_SIGNED_LENGTH = 28
"""V/P/subtype, PT, length, SSRC (8) + name (4) + binding ID (8) + counter (8): what the MAC covers."""
JOIN_PACKET_LENGTH = JOIN_SIGNED_LENGTH + JOIN_MAC_LENGTH
JOIN_HEADER = bytes((0x80, 204)) + (JOIN_PACKET_LENGTH // 4 - 1).to_bytes(2, "big")
MAX_COUNTER = (1 << 64) - 1

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
    "dropped_fenced",  # anything after a cluster node's lease deadline (RelayCore.serving_until)
    "dropped_token",  # PTTJ with an unknown or expired binding ID, or an SSRC other than the binding's
    "dropped_join_limit",  # PTTJ for a binding from elsewhere than its address, over the binding's check limit
    "dropped_join_mac",  # PTTJ whose MAC does not verify under the binding's key (forged, or another CSK)
    "dropped_join_replay",  # PTTJ with a counter not above the binding's last accepted one (replayed, or late)
    "dropped_join_conflict",  # authentic PTTJ from an address another member is bound to: nobody is unbound
    "dropped_rtcp",  # RTCP that is neither PTTJ nor floor control from a bound member
    "joined",  # bindings made (first PTTJ of a binding)
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
    join_checks_per_s: float = 10.0
    join_check_burst: int = 20
    """``PTTJ`` packets per second whose MAC is checked for one binding when they come from anywhere but its
    bound address (a first binding, a move, or someone else's tries): a flood of forged packets for a public
    binding ID costs at most this many HMACs a second, and never touches the bound address's keepalives."""
    floor_packets_per_s: float = 10.0
    floor_burst: int = 30
    """Floor control packets a member may send (within its overall rate): a press is a Floor Request and a
    release a Floor Release, each retransmitted a few times if unanswered (T101/T100), plus Queue Position
    Requests; a person pressing twice a second stays far below. Floor messages cost the server an SRTCP check
    and the arbiter's work each, so a flood of them is cut here, before either."""

    def __post_init__(self) -> None:
        if self.floor_packets_per_s <= 0 or self.floor_burst < 1:
            raise ValueError("the floor control limit needs a positive rate and a burst of at least one packet")
        if self.join_checks_per_s <= 0 or self.join_check_burst < 1:
            raise ValueError("the binding check limit needs a positive rate and a burst of at least one packet")
        if self.rate_packets_per_s <= 0 or self.rate_burst < 1:
            raise ValueError("the rate limit needs a positive rate and a burst of at least one packet")
        if self.dead_after <= self.keepalive_interval:
            raise ValueError("dead_after must be longer than keepalive_interval")


@dataclass(frozen=True)
class RtcpResult:
    """What an RTCP datagram did: ``joined`` (a binding's first authentic ``PTTJ`` bound its address),
    ``keepalive`` (a binding refreshed from its address), ``moved`` (a fresh authentic ``PTTJ`` moved the binding
    to a new address: NAT rebinding; for the floor and the group nothing changed), ``floor`` (hand ``data`` to
    floor control for ``binding``), ``refused`` (a ``PTTJ`` refused: ``reason`` says why, ``binding`` names whose
    binding it claimed when known; counted, and for the shell to log rate-limited) or ``dropped``."""

    kind: str
    binding: Binding | None = None
    data: bytes = b""
    reason: str = ""


DROPPED = RtcpResult("dropped")


def binding_key(csk: bytes, binding_id: bytes) -> bytes:
    """The key of a binding's ``PTTJ`` MACs, from the member's CSK (both ends derive it)."""
    if len(binding_id) != BINDING_ID_LENGTH:
        raise ValueError(f"binding ID must be {BINDING_ID_LENGTH} octets")
    if not csk:
        raise ValueError("empty CSK")
    return kdf_3gpp(csk, BINDING_FC, BINDING_LABEL, binding_id)


def join_mac(key: bytes) -> hmac.HMAC:
    """An HMAC-SHA-256 under ``key`` to ``copy()`` per packet (the key schedule is done once)."""
    return hmac.new(key, digestmod=hashlib.sha256)


def join_packet(ssrc: int, binding_id: bytes, counter: int, key: bytes) -> bytes:
    """The RTCP APP ``PTTJ`` packet a client sends from its media socket to bind it (and as keepalive)."""
    if len(binding_id) != BINDING_ID_LENGTH:
        raise ValueError(f"binding ID must be {BINDING_ID_LENGTH} octets")
    if not 0 <= ssrc < 1 << 32:
        raise ValueError("SSRC must fit in 32 bits")
    if not 0 < counter <= MAX_COUNTER:
        raise ValueError("counter must be in 1 .. 2**64 - 1")
    signed = JOIN_HEADER + ssrc.to_bytes(4, "big") + JOIN_NAME + binding_id + counter.to_bytes(8, "big")
    return signed + hmac.digest(key, signed, "sha256")[:JOIN_MAC_LENGTH]


class JoinSigner:
    """A client's side of one binding: each :meth:`packet` is a fresh ``PTTJ`` (the counter goes up by one)."""

    __slots__ = ("_key", "binding_id", "counter", "ssrc")

    def __init__(self, ssrc: int, binding_id: bytes, csk: bytes) -> None:
        self.ssrc = ssrc
        self.binding_id = binding_id
        self._key = binding_key(csk, binding_id)
        self.counter = 0

    def packet(self) -> bytes:
        self.counter += 1
        return join_packet(self.ssrc, self.binding_id, self.counter, self._key)

    def __repr__(self) -> str:
        return f"JoinSigner(ssrc={self.ssrc:#x}, binding_id={self.binding_id.hex()}, counter={self.counter})"


class Bucket:
    """Token bucket state: ``tokens`` as of ``stamp``."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class JoinAuth:
    """What the relay checks a binding's ``PTTJ`` with: the binding, its MAC key, the last counter accepted, a
    bucket for checks of packets from elsewhere than the bound address, and (pending only) when it expires."""

    __slots__ = ("binding", "binding_id", "checks", "counter", "expiry", "mac")

    def __init__(
        self, binding: Binding, binding_id: bytes, key: bytes, expiry: float, check_burst: float, now: float
    ) -> None:
        self.binding = binding
        self.binding_id = binding_id
        self.mac = join_mac(key)
        self.counter = 0
        self.expiry = expiry
        self.checks = Bucket(check_burst, now)

    def __repr__(self) -> str:
        return f"JoinAuth({self.binding!r}, binding_id={self.binding_id.hex()}, counter={self.counter})"


class BoundMember(Bucket):
    """A bound member: its address, liveness, binding check state and (inherited) rate-limit bucket."""

    __slots__ = ("addr", "auth", "binding", "floor", "group", "last_seen", "ssrc_bytes", "token")

    def __init__(
        self,
        auth: JoinAuth,
        addr: Address,
        group: GroupState,
        now: float,
        burst: float,
        floor_burst: float,
    ) -> None:
        super().__init__(burst, now)
        self.floor = Bucket(floor_burst, now)
        self.auth = auth
        self.binding = binding = auth.binding
        self.token = auth.binding_id
        self.addr = addr
        self.group = group
        self.last_seen = now
        self.ssrc_bytes = binding.ssrc.to_bytes(4, "big")


class GroupState:
    __slots__ = ("fanout", "members", "recorded", "talker", "talker_ssrc")

    def __init__(self, recorded: bool = False) -> None:
        self.recorded = recorded  # the talker's forwarded packets go to the relay's BurstTap too (issue 17)
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
    """Shaped like a ``PTTJ`` (length, header, name): whether it is authentic is the relay core's check."""
    return len(data) == JOIN_PACKET_LENGTH and data.startswith(JOIN_HEADER) and data[8:12] == JOIN_NAME
