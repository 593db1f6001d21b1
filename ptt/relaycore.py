"""The media relay's decisions, without I/O: which datagram goes where, who is bound, who is dead.

The relay forwards SRTP without decrypting it. Per group, only the floor holder's packets are forwarded, to
every other bound member; everything else is dropped and counted in :attr:`RelayCore.stats`. RTP and RTCP share
one port and are told apart as RFC 5761 §4 does: a second octet of 192..223 is RTCP.

Binding. On ``join`` the control plane names a new binding with a random 8-octet binding ID and gives the relay
its key, derived from the member's CSK (:func:`~ptt.relaystate.binding_key`, :meth:`RelayCore.expect`); the client
derives the same key from its CSK and sends, from its media socket, an RTCP APP packet named ``PTTJ`` carrying its
media SSRC, the binding ID, a counter and a truncated HMAC-SHA-256 under that key (the layout is in
:mod:`ptt.relaystate`). The binding ID is public; the key never leaves either end. The same packet with the next
counter every ``keepalive_interval`` seconds keeps the binding alive. A member silent for ``dead_after`` seconds
is unbound by :meth:`RelayCore.sweep`. The rules, cheap checks first:

* the packet must have the ``PTTJ`` form, name a binding the relay knows (pending and not expired, or bound)
  and carry that binding's SSRC;
* a packet from anywhere but the binding's bound address draws on the binding's check bucket
  (``join_checks_per_s``) before its MAC is computed, so a flood of forgeries costs a bounded number of HMACs and
  never delays the member's own keepalives;
* the MAC must verify (:func:`hmac.compare_digest`) and the counter must be above the last one accepted for the
  binding: a replayed packet, from any address, is refused;
* an authentic fresh packet binds (first use) or refreshes (from the bound address) the binding, or moves it to a
  new address (NAT rebinding, network switch) -- unless that address is bound to *another* member: then it is
  refused (its counter is used up all the same) and the other member stays bound. A binding never displaces
  another member's.

Every refusal is counted in :attr:`RelayCore.stats` and returned as an ``RtcpResult("refused", ...)`` with the
reason, for the shell to log (rate-limited); nothing is ever sent back to the packet's source.

An attacker who sees a member's ``PTTJ`` on the path and delivers it to the relay *before* the original (from its
own address) moves the binding until the member's next keepalive moves it back (at most ``keepalive_interval``);
it receives SRTP it cannot decrypt. Dropping the member's packets is within an on-path attacker's power anyway.

Floor control (TS 24.380 RTCP APP ``MCPT``) from a bound member is handed to the caller. It is SRTCP-protected
with the member's CSK, and SRTCP encrypts everything after the first 8 octets, the APP name included, so the
relay cannot check the name: every APP packet other than ``PTTJ`` from a bound member is floor control, and
the floor control server authenticates it.

Rate limiting: a token bucket per source address covers every datagram, media and RTCP alike. Unbound sources
get buckets too (join attempts cost work), kept in a bounded table; when it is full, new unbound sources share
one bucket, so a spoofed-address flood cannot grow memory.

:meth:`RelayCore.route` is the per-packet fast path: two dict lookups, a few comparisons and arithmetic on
the member's bucket, and it returns the group's cached list of destinations (rebuilt only when membership or
the talker changes). Callers must not modify that list.
"""

from __future__ import annotations

import hmac
import math

from ptt.recording import BurstTap
from ptt.relaystate import (
    BINDING_ID_LENGTH,
    DROPPED,
    JOIN_MAC_LENGTH,
    JOIN_NAME,
    JOIN_PACKET_LENGTH,
    JOIN_SIGNED_LENGTH,
    MAX_UNBOUND_BUCKETS,
    RTCP_APP,
    RTP_HEADER_LENGTH,
    STAT_NAMES,
    TOKEN_LENGTH,
    TOKEN_LIFETIME,
    Address,
    Binding,
    BoundMember,
    Bucket,
    GroupState,
    JoinAuth,
    JoinSigner,
    RelayConfig,
    RtcpResult,
    binding_key,
    is_join_packet,
    join_packet,
    looks_like_rtcp,
)

__all__ = [
    "BINDING_ID_LENGTH",
    "DROPPED",
    "JOIN_NAME",
    "JOIN_PACKET_LENGTH",
    "MAX_UNBOUND_BUCKETS",
    "RTCP_APP",
    "RTP_HEADER_LENGTH",
    "STAT_NAMES",
    "TOKEN_LENGTH",
    "TOKEN_LIFETIME",
    "Address",
    "Binding",
    "JoinSigner",
    "RelayConfig",
    "RelayCore",
    "RtcpResult",
    "binding_key",
    "join_packet",
]


_DEFAULT_CONFIG = RelayConfig()  # frozen: sharing the default is safe


class RelayCore:
    """Binding, floor-holder forwarding, rate limiting and liveness for every group of one relay."""

    def __init__(self, config: RelayConfig = _DEFAULT_CONFIG) -> None:
        self.config = config
        self.stats: dict[str, int] = dict.fromkeys(STAT_NAMES, 0)
        self._rate = float(config.rate_packets_per_s)
        self._burst = float(config.rate_burst)
        self._groups: dict[str, GroupState] = {}
        self._by_addr: dict[Address, BoundMember] = {}
        self._by_token: dict[bytes, BoundMember] = {}  # binding ID -> bound member
        self._pending: dict[bytes, JoinAuth] = {}  # binding ID -> a binding not used yet
        self._unbound_buckets: dict[Address, Bucket] = {}
        self._overflow_bucket = Bucket(self._burst, 0.0)
        self._last_sweep: float | None = None
        self._sweep_queue: list[BoundMember] = []  # the current sweep round's members not looked at yet
        self._sweep_round = 0  # how many that round started with
        self.serving_until = float("inf")  # a cluster node's lease deadline (ptt.cluster): past it, serve nothing
        self.tap = BurstTap()  # recorded groups' bursts, ciphertext only (issue 17): the shell stores tap.completed
        self._recorded: set[str] = set()

    # -- control plane -------------------------------------------------------------------------------------

    def expect(self, binding_id: bytes, binding: Binding, key: bytes, now: float) -> None:
        """A member joined its group on the control channel and will bind within 60 s with ``PTTJ`` packets for
        ``binding_id`` under ``key`` (:func:`binding_key` of its CSK)."""
        if len(binding_id) != BINDING_ID_LENGTH:
            raise ValueError(f"binding ID must be {BINDING_ID_LENGTH} octets")
        if binding_id in self._by_token or binding_id in self._pending:
            raise ValueError("binding ID already in use")
        if len(key) < 16:
            raise ValueError("binding key too short")
        self._pending[binding_id] = JoinAuth(
            binding, binding_id, key, now + TOKEN_LIFETIME, float(self.config.join_check_burst), now
        )

    def unbind(self, group: str, member: str) -> None:
        """The member left or was removed: forget its binding and any token it has not used yet."""
        state = self._groups.get(group)
        if state is not None:
            bound = state.members.get(member)
            if bound is not None:
                self._remove(bound)
        for binding_id, auth in list(self._pending.items()):
            if auth.binding.group == group and auth.binding.member == member:
                del self._pending[binding_id]

    def set_recording(self, group: str, recorded: bool) -> None:
        """Whether the talker's forwarded packets of ``group`` are recorded (into :attr:`tap`)."""
        if recorded:
            self._recorded.add(group)
        else:
            self._recorded.discard(group)
            self.tap.talker_changed(group)
        state = self._groups.get(group)
        if state is not None:
            state.recorded = recorded

    def set_talker(self, group: str, ssrc: int | None) -> None:
        """The floor holder's media SSRC in ``group`` (None: the floor is idle, nothing is forwarded)."""
        state = self._groups.get(group)
        if state is None:
            if ssrc is None:
                return
            state = self._groups[group] = GroupState(group in self._recorded)
        if state.talker_ssrc != ssrc:
            self.tap.talker_changed(group)
        state.talker_ssrc = ssrc
        state.rebuild()
        self._forget_if_empty(group, state)

    # -- datagrams ------------------------------------------------------------------------------------------

    def route(self, data: bytes, addr: Address, now: float) -> list[Address] | None:
        """Where to send a datagram that arrived from ``addr``: the other members' addresses, or None to drop.

        RTCP is processed by :meth:`handle_rtcp` (and None returned); a shell that needs the result of an RTCP
        datagram (join, floor control) demultiplexes itself and calls :meth:`handle_rtcp` directly.
        """
        if now > self.serving_until:
            self.stats["dropped_fenced"] += 1
            return None
        member = self._by_addr.get(addr)
        if member is None:
            self._route_unbound(data, addr, now)
            return None
        # The member's token bucket, inlined: this runs for every datagram. A clock that went back refills
        # nothing (and does not drain the bucket either).
        tokens = member.tokens
        elapsed = now - member.stamp
        member.stamp = now
        if elapsed > 0.0:
            tokens += elapsed * self._rate
            if tokens > self._burst:
                tokens = self._burst
        if tokens < 1.0:
            member.tokens = tokens
            self.stats["dropped_rate"] += 1
            return None
        member.tokens = tokens - 1.0
        if len(data) < RTP_HEADER_LENGTH or data[0] & 0xC0 != 0x80:
            self.stats["dropped_malformed"] += 1
            return None
        if 192 <= data[1] <= 223:
            self._rtcp_from_member(member, data, addr, now)
            return None
        group = member.group
        if member is not group.talker:
            self.stats["dropped_not_talker"] += 1
            return None
        if not data.startswith(member.ssrc_bytes, 8):
            self.stats["dropped_ssrc"] += 1
            return None
        member.last_seen = now
        fanout = group.fanout
        if group.recorded:  # recorded even when nobody else is bound: the missed traffic is what replay is for
            binding = member.binding
            self.tap.packet(binding.group, binding.member, binding.ssrc, data, now)
        self.stats["forwarded"] += 1
        self.stats["copies"] += len(fanout)
        return fanout

    def _route_unbound(self, data: bytes, addr: Address, now: float) -> None:
        if not self._admit_unbound(addr, now):
            self.stats["dropped_rate"] += 1
            return
        if len(data) < 2 or data[0] & 0xC0 != 0x80:
            self.stats["dropped_malformed"] += 1
        elif 192 <= data[1] <= 223:
            self._rtcp_from_unbound(data, addr, now)
        elif len(data) < RTP_HEADER_LENGTH:
            self.stats["dropped_malformed"] += 1
        else:
            self.stats["dropped_unbound"] += 1

    def handle_rtcp(self, data: bytes, addr: Address, now: float) -> RtcpResult:
        """An RTCP datagram from ``addr``: a join or keepalive (``PTTJ``), floor control, or dropped."""
        if now > self.serving_until:
            self.stats["dropped_fenced"] += 1
            return DROPPED
        member = self._by_addr.get(addr)
        if member is None:
            if not self._admit_unbound(addr, now):
                self.stats["dropped_rate"] += 1
                return DROPPED
            return self._rtcp_from_unbound(data, addr, now)
        if not self._admit(member, now):
            self.stats["dropped_rate"] += 1
            return DROPPED
        return self._rtcp_from_member(member, data, addr, now)

    def _rtcp_from_member(self, member: BoundMember, data: bytes, addr: Address, now: float) -> RtcpResult:
        if not looks_like_rtcp(data):
            self.stats["dropped_malformed"] += 1
            return DROPPED
        if data[1] != RTCP_APP:
            self.stats["dropped_rtcp"] += 1
            return DROPPED
        if is_join_packet(data):
            return self._join(data, addr, now)
        if data[8:12] == JOIN_NAME:
            self.stats["dropped_malformed"] += 1
            return DROPPED
        member.last_seen = now
        if not self._admit(member.floor, now, self.config.floor_packets_per_s, self.config.floor_burst):
            self.stats["dropped_floor_rate"] += 1
            return DROPPED
        self.stats["floor"] += 1
        return RtcpResult("floor", member.binding, data)

    def _rtcp_from_unbound(self, data: bytes, addr: Address, now: float) -> RtcpResult:
        if not looks_like_rtcp(data):
            self.stats["dropped_malformed"] += 1
            return DROPPED
        if data[1] == RTCP_APP and is_join_packet(data):
            return self._join(data, addr, now)
        self.stats["dropped_rtcp"] += 1
        return DROPPED

    def _join(self, data: bytes, addr: Address, now: float) -> RtcpResult:
        binding_id = data[12:20]
        member = self._by_token.get(binding_id)
        auth = member.auth if member is not None else self._pending.get(binding_id)
        if auth is None or (member is None and auth.expiry < now):
            self.stats["dropped_token"] += 1
            return RtcpResult("refused", None, reason="unknown or expired binding")
        binding = auth.binding
        if data[4:8] != binding.ssrc.to_bytes(4, "big"):
            self.stats["dropped_token"] += 1
            return RtcpResult("refused", binding, reason="SSRC is not the binding's")
        from_bound = member is not None and member.addr == addr
        if not from_bound and not self._admit(
            auth.checks, now, self.config.join_checks_per_s, float(self.config.join_check_burst)
        ):
            self.stats["dropped_join_limit"] += 1
            return RtcpResult("refused", binding, reason="over the binding's check limit")
        mac = auth.mac.copy()
        mac.update(data[:JOIN_SIGNED_LENGTH])
        if not hmac.compare_digest(mac.digest()[:JOIN_MAC_LENGTH], data[JOIN_SIGNED_LENGTH:]):
            self.stats["dropped_join_mac"] += 1
            return RtcpResult("refused", binding, reason="MAC does not verify")
        counter = int.from_bytes(data[20:28], "big")
        if counter <= auth.counter:
            self.stats["dropped_join_replay"] += 1
            return RtcpResult("refused", binding, reason=f"replayed (counter {counter}, last {auth.counter})")
        auth.counter = counter  # used up, whatever follows: it cannot be replayed later either
        if from_bound:
            assert member is not None
            member.last_seen = now
            self.stats["keepalive"] += 1
            return RtcpResult("keepalive", binding)
        other = self._by_addr.get(addr)
        if other is not None and other is not member:
            self.stats["dropped_join_conflict"] += 1
            return RtcpResult("refused", binding, reason=f"address bound to {other.binding.member}")
        if member is not None:
            # NAT rebinding: the same member from a new address, with a fresh packet. For the floor and the group
            # nothing changed (a join would make floor control treat it as a new arrival).
            member.last_seen = now
            self._move(member, addr)
            self.stats["rebound"] += 1
            return RtcpResult("moved", binding)
        del self._pending[binding_id]
        self._bind(auth, addr, now)
        self.stats["joined"] += 1
        return RtcpResult("joined", binding)

    # -- liveness -----------------------------------------------------------------------------------------

    def sweep(self, now: float, share: float = 1.0) -> list[Binding]:
        """Unbind members silent for ``dead_after`` seconds and return them; expire unused tokens.

        Meant to run about every second with ``share`` 1, or in slices: a call looks at ``share`` of the bound
        members (a round's snapshot), so ten calls a second with 0.1 check each member once a second as one call
        would, without stopping the forwarding for a whole pass (~15 ms with 60 000 members on the benchmark
        machine: a tail on every packet that arrives meanwhile). Tokens, unbound buckets and the recording tap
        are expired when a round starts. A gap between calls longer than ``keepalive_interval`` (or a clock that
        went back) moves everyone's last-seen time along with it rather than killing them all.
        """
        previous, self._last_sweep = self._last_sweep, now
        if previous is not None and not 0.0 <= now - previous <= self.config.keepalive_interval:
            # The clock jumped, or the relay was not running (suspended, overloaded): it cannot have heard the
            # keepalives of the gap, so it does not hold their absence against anyone.
            for member in self._by_token.values():
                member.last_seen += now - previous
        if not self._sweep_queue:
            self._start_sweep_round(now)
        count = max(1, math.ceil(share * self._sweep_round))
        batch = self._sweep_queue[-count:]
        del self._sweep_queue[-count:]
        dead_before = now - self.config.dead_after
        by_token = self._by_token
        dead = [m for m in batch if m.last_seen < dead_before and by_token.get(m.token) is m]
        for member in dead:
            self._remove(member)
        self.stats["dead"] += len(dead)
        return [m.binding for m in dead]

    def _start_sweep_round(self, now: float) -> None:
        self._sweep_queue = list(self._by_token.values())
        self._sweep_round = len(self._sweep_queue)
        self.tap.sweep(now)
        for binding_id in [b for b, auth in self._pending.items() if auth.expiry < now]:
            del self._pending[binding_id]
        # A bucket that has refilled is no different from a new one: forget it.
        full_after = self._burst / self._rate
        for addr in [a for a, b in self._unbound_buckets.items() if now - b.stamp >= full_after]:
            del self._unbound_buckets[addr]

    def members(self, group: str) -> list[tuple[Binding, Address, float]]:
        """The bound members of ``group``: (binding, address, last seen)."""
        state = self._groups.get(group)
        if state is None:
            return []
        return [(m.binding, m.addr, m.last_seen) for m in state.members.values()]

    def address_of(self, group: str, member: str) -> Address | None:
        """Where ``member`` of ``group`` is bound now (for floor control replies), or None."""
        state = self._groups.get(group)
        bound = state.members.get(member) if state is not None else None
        return bound.addr if bound is not None else None

    # -- internals ----------------------------------------------------------------------------------------

    def _admit(self, bucket: Bucket, now: float, rate: float | None = None, burst: float | None = None) -> bool:
        rate = self._rate if rate is None else rate
        burst = self._burst if burst is None else burst
        tokens = bucket.tokens
        elapsed = now - bucket.stamp
        bucket.stamp = now
        if elapsed > 0.0:
            tokens += elapsed * rate
            if tokens > burst:
                tokens = burst
        if tokens < 1.0:
            bucket.tokens = tokens
            return False
        bucket.tokens = tokens - 1.0
        return True

    def _admit_unbound(self, addr: Address, now: float) -> bool:
        bucket = self._unbound_buckets.get(addr)
        if bucket is None:
            if len(self._unbound_buckets) >= MAX_UNBOUND_BUCKETS:
                bucket = self._overflow_bucket
            else:
                bucket = self._unbound_buckets[addr] = Bucket(self._burst, now)
        return self._admit(bucket, now)

    def _bind(self, auth: JoinAuth, addr: Address, now: float) -> None:
        binding = auth.binding
        state = self._groups.get(binding.group)
        previous = state.members.get(binding.member) if state is not None else None
        if previous is not None:  # the control plane named a new binding for a bound member: it replaces the old
            self._remove(previous)
        state = self._groups.get(binding.group)
        if state is None:
            state = self._groups[binding.group] = GroupState(binding.group in self._recorded)
        member = BoundMember(auth, addr, state, now, self._burst, float(self.config.floor_burst))
        bucket = self._unbound_buckets.pop(addr, None)
        if bucket is not None:  # keep what the source already spent while unbound
            member.tokens, member.stamp = bucket.tokens, bucket.stamp
        state.members[binding.member] = member
        self._by_addr[addr] = member
        self._by_token[auth.binding_id] = member
        state.rebuild()
        self.stats["bound"] = len(self._by_token)

    def _move(self, member: BoundMember, addr: Address) -> None:
        if self._by_addr.get(member.addr) is member:
            del self._by_addr[member.addr]
        member.addr = addr
        self._by_addr[addr] = member
        member.group.rebuild()

    def _remove(self, member: BoundMember) -> None:
        state = member.group
        if state.members.get(member.binding.member) is member:
            del state.members[member.binding.member]
        if self._by_addr.get(member.addr) is member:
            del self._by_addr[member.addr]
        if self._by_token.get(member.token) is member:
            del self._by_token[member.token]
        state.rebuild()
        self._forget_if_empty(member.binding.group, state)
        self.stats["bound"] = len(self._by_token)

    def _forget_if_empty(self, name: str, state: GroupState) -> None:
        if not state.members and state.talker_ssrc is None and self._groups.get(name) is state:
            del self._groups[name]
