"""Ad-hoc (off-network) groups of one client: the groups it manages and those it is a member of. Sans-I/O.

A client creates a group on the fly and is its manager: it makes a GMK, and for every member builds an I_MESSAGE
signed with its *own* ECCSI key and SAKKE-encrypted to the member's UID for the current key period, computed from
the cached domain certificate (no KMS contact). Members are found by multicast: everyone sends a signed ``Hello``
(its unicast port and the ad-hoc GMKs it holds) every few seconds; a manager missing a member's address multicasts
a ``Probe``. Each ``KeyDelivery`` goes by unicast and is re-sent (freshly sealed, so it is no replay) until the
member's ``KeyAck``, pausing while the member is silent and resuming when it is heard again. A ``Hello`` that lists
an older GMK (or none) for a group makes the manager deliver again: that is how a member that lost its state
(restart, long absence) or joins late gets the key.

Trust: every signed datagram must come under a KMS we trust (our own, or an External one our KMS vouched for in
its certificate cache) that speaks for the sender's URI (``ptt.kmsformat.trust``: a partner KMS only for its own
users' domains); a member of a partner domain is keyed with SAKKE under its own KMS's Z. Members: a first key for
a group is accepted when the manager's domain is trusted and ``accept_from`` allows the manager; later changes
only from a member of the group as last known, with a higher revision (equal revisions: the lexicographically
smaller manager wins, so a split brain resolves the same way everywhere). The I_MESSAGE must verify as signed by
that manager, under the KMS that vouched for its datagram, and carry the GMK the signed group description names.

Changes: adding a member keeps the GMK (it gets the current one, as on-network); removing one, or one leaving,
makes a new GMK for the others (the removed member cannot decrypt what follows); so does a new key period, as
on-network (a GMK lives at most one key period, if the manager holds the new period's keys). When the manager
leaves, or is not heard for ``manager_timeout``, the first member of the list that is alive takes over with a new
revision and a fresh GMK; the next one waits ``takeover_step`` longer, and so on.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

from ptt.adhoc.messages import (
    AdhocMessageError,
    Body,
    Envelope,
    GroupAnnouncement,
    GroupInfo,
    Hello,
    KeyAck,
    KeyDelivery,
    Leave,
    Probe,
    open_envelope,
    seal,
)
from ptt.groupkeys import GroupKey, make_group_key
from ptt.kmsformat.trust import KmsTrust
from ptt.mikey.errors import MikeyError
from ptt.mikey.imessage import IdentityKeys, ReplayCache, build_i_message, receive_i_message
from ptt.ts33180 import KeyPurpose

log = logging.getLogger("ptt.adhoc")

MULTICAST = ("multicast", 0)  # destination meaning "the discovery multicast group"
Address = tuple[str, int]


@dataclass(frozen=True)
class AdhocConfig:
    hello_every: float = 2.0  # presence beacon period (jittered by the shell's clock granularity)
    peer_timeout: float = 7.0  # not heard for this long: the peer is away (deliveries to it pause)
    probe_every: float = 1.0  # while a member's address is unknown
    retransmit_first: float = 0.25  # key delivery: first retry, doubling…
    retransmit_max: float = 2.0  # …up to this
    rebuild_after: float = 120.0  # I_MESSAGEs are accepted within ±300 s: rebuild older ones before re-sending
    builds_per_turn: int = 3  # I_MESSAGEs built (SAKKE + ECCSI, ~3 ms each) per call at one `now`…
    build_spacing: float = 0.01  # …the rest wait this long, so a talking manager's media goes out in between
    rekey_each_period: bool = True  # a fresh GMK when a new key period begins (as the group server does)
    announce_every: float = 5.0  # a manager repeats its signed group description
    manager_timeout: float = 30.0  # manager not heard for this long: a member takes over
    takeover_step: float = 3.0  # extra wait per rank for the next candidate manager
    leave_copies: int = 3  # a Leave is sent this many times (no acknowledgement)
    window: float = 300.0  # time window of signed datagrams and I_MESSAGEs


class Role(Enum):
    MANAGER = "manager"
    MEMBER = "member"


@dataclass
class Delivery:
    """The key delivery to one member, re-sent until acknowledged."""

    member: str
    i_message: bytes = b""
    built_at: float = float("-inf")
    next_at: float = 0.0
    interval: float = 0.0
    attempts: int = 0
    acked: bool = False
    acked_at: float | None = None


@dataclass
class AdhocGroup:
    info: GroupInfo
    role: Role
    keys: list[GroupKey] = field(default_factory=list)  # newest last
    deliveries: dict[str, Delivery] = field(default_factory=dict)  # manager only
    created_at: float = 0.0
    next_announce: float = 0.0
    manager_gone_since: float | None = None  # member only: when the manager left or fell silent
    manager_left: bool = False  # it said Leave (else it is only silent and stays a member)

    @property
    def key(self) -> GroupKey | None:
        return self.keys[-1] if self.keys else None

    def keyed(self, member: str) -> bool:
        delivery = self.deliveries.get(member)
        return delivery is not None and delivery.acked


@dataclass
class Peer:
    uri: str
    address: Address
    last_seen: float
    held: dict[str, bytes] = field(default_factory=dict)  # group URI -> GMK-ID


# --- events for the shell -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupKeyed:
    """A (new) GMK for a group we belong to: install it for media and floor control."""

    info: GroupInfo
    key: GroupKey
    role: Role


@dataclass(frozen=True)
class GroupUpdated:
    """The group description changed (members, manager) without a new GMK."""

    info: GroupInfo
    role: Role


@dataclass(frozen=True)
class GroupRemoved:
    """We are no longer in the group (removed, left, or it was dissolved): forget its keys."""

    uri: str
    reason: str


@dataclass(frozen=True)
class MemberKeyed:
    """Manager: a member acknowledged the current GMK."""

    group: str
    member: str
    seconds: float  # since the GMK was made


@dataclass(frozen=True)
class Refused:
    """A datagram or key was refused (logged; surfaced so the UI and tests can see it)."""

    sender: str | None
    reason: str


Event = GroupKeyed | GroupUpdated | GroupRemoved | MemberKeyed | Refused


class AdhocError(ValueError):
    """A command that cannot be done (unknown group, not its manager, bad member URI, …)."""


_SLUG = re.compile(r"[^a-z0-9-]+")


def group_uri_for(name: str, creator: str, suffix: bytes) -> str:
    """``sip:adhoc.<name>.<hex>@<creator's domain>``: unique, readable, in the creator's domain."""
    slug = _SLUG.sub("-", name.lower()).strip("-")[:32] or "group"
    domain = creator.rpartition("@")[2] if "@" in creator else "adhoc.invalid"
    return f"sip:adhoc.{slug}.{suffix.hex()}@{domain}"


def random_media_address(rand: Callable[[int], bytes] = os.urandom) -> tuple[str, int]:
    """An administratively scoped multicast group (RFC 2365, 239.255/16) and an even port (RTP) in 20000-59998."""
    octets = rand(4)
    host = f"239.255.{octets[0]}.{1 + octets[1] % 254}"
    port = 20000 + 2 * (int.from_bytes(octets[2:], "big") % 20000)
    return host, port


class AdhocEngine:
    """All ad-hoc group signalling of one identity. Feed it datagrams and time; drain ``outgoing`` and ``events``."""

    def __init__(
        self,
        *,
        uri: str,
        keys_at: Callable[[float], IdentityKeys | None],
        held_keys: Callable[[], Sequence[IdentityKeys]],
        trust: KmsTrust,
        unicast_port: int,
        now: float,
        accept_from: Callable[[str, GroupInfo], bool] | None = None,
        config: AdhocConfig | None = None,
    ) -> None:
        self.uri = uri
        self.keys_at = keys_at
        self.held_keys = held_keys
        # the own KMS and the External ones our KMS vouches for, each speaking only for its users' domains
        self.trust = trust
        self.trusted_kms = trust.domains
        self.unicast_port = unicast_port
        # policy for a first key from a manager of a trusted domain (e.g. only some identities, only a group name)
        self.accept_from = accept_from or (lambda sender, info: True)
        self.config = config or AdhocConfig()
        self.groups: dict[str, AdhocGroup] = {}
        self.peers: dict[str, Peer] = {}
        self.replay_cache = ReplayCache()
        self.imessage_replay_cache = ReplayCache()
        self.stats: dict[str, int] = {"in": 0, "refused": 0, "out": 0}
        self._outgoing: list[tuple[bytes, Address]] = []
        self._events: list[Event] = []
        self._next_hello = now  # the first Hello goes out at once
        self._next_probe = now
        self._last_probe_answer = float("-inf")
        self._build_turn = (float("nan"), 0)  # (now, I_MESSAGEs built at that now)

    # --- outputs -------------------------------------------------------------------------------------------------

    def outgoing(self) -> list[tuple[bytes, Address]]:
        """Datagrams to send: destination ``MULTICAST`` (the discovery group) or a unicast address."""
        out, self._outgoing = self._outgoing, []
        self.stats["out"] += len(out)
        return out

    def events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> float:
        deadlines = [self._next_hello]
        for group in self.groups.values():
            if group.role == Role.MANAGER:
                deadlines.append(group.next_announce)
                deadlines.extend(d.next_at for d in group.deliveries.values() if not d.acked)
            elif group.manager_gone_since is None:
                deadlines.append(self._manager_heard(group) + self.config.manager_timeout)
            else:
                deadlines.append(group.manager_gone_since + self._takeover_delay(group))
        return min(deadlines)

    # --- commands ------------------------------------------------------------------------------------------------

    def create(
        self, name: str, members: Iterable[str], now: float, *, media: tuple[str, int] | None = None
    ) -> GroupInfo:
        """Create a group with us as manager and start delivering its GMK to ``members``."""
        listed = [self.uri] + [m for m in dict.fromkeys(members) if m != self.uri]
        for member in listed:
            self._check_member_uri(member)
        key = make_group_key()
        host, port = media or random_media_address()
        info = GroupInfo(
            uri=group_uri_for(name, self.uri, os.urandom(3)),
            name=name,
            manager=self.uri,
            revision=1,
            media_host=host,
            media_port=port,
            gmk_id=key.gmk_id,
            members=tuple(listed),
        )
        group = AdhocGroup(info, Role.MANAGER, [key], created_at=now)
        self.groups[info.uri] = group
        self._events.append(GroupKeyed(info, key, Role.MANAGER))
        self._distribute(group, now, listed[1:])
        self._announce(group, now)
        log.info("%s: created ad-hoc group %s (%s) with %d members", self.uri, name, info.uri, len(listed))
        return info

    def add_member(self, group_uri: str, member: str, now: float) -> GroupInfo:
        group = self._managed(group_uri)
        self._check_member_uri(member)
        if group.info.has_member(member):
            raise AdhocError(f"{member} is already a member of {group.info.name or group_uri}")
        # Late join: the member gets the current GMK (as on-network); the others learn the new member list.
        group.info = replace(group.info, revision=group.info.revision + 1, members=(*group.info.members, member))
        self._distribute(group, now, [member], new_key=False)
        self._announce(group, now)
        self._events.append(GroupUpdated(group.info, Role.MANAGER))
        return group.info

    def remove_member(self, group_uri: str, member: str, now: float) -> GroupInfo:
        group = self._managed(group_uri)
        if member == self.uri:
            raise AdhocError("the manager cannot remove itself: use leave")
        if not group.info.has_member(member):
            raise AdhocError(f"{member} is not a member of {group.info.name or group_uri}")
        self._rekey(group, now, [m for m in group.info.members if m != member])
        log.info("%s: removed %s from %s and rekeyed", self.uri, member, group_uri)
        return group.info

    def leave(self, group_uri: str, now: float) -> None:
        group = self.groups.get(group_uri)
        if group is None:
            raise AdhocError(f"not in group {group_uri}")
        for _ in range(self.config.leave_copies):
            self._send(Leave(group_uri, group.info.revision), MULTICAST, now)
        del self.groups[group_uri]
        self._events.append(GroupRemoved(group_uri, "left"))

    def find(self, name_or_uri: str) -> AdhocGroup:
        group = self.groups.get(name_or_uri)
        if group is not None:
            return group
        named = [g for g in self.groups.values() if g.info.name == name_or_uri]
        if len(named) == 1:
            return named[0]
        raise AdhocError(f"no single ad-hoc group named {name_or_uri!r}" if named else f"no group {name_or_uri!r}")

    def alive(self, uri: str, now: float) -> bool:
        if uri == self.uri:
            return True
        peer = self.peers.get(uri)
        return peer is not None and now - peer.last_seen <= self.config.peer_timeout

    # --- time ----------------------------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        if now >= self._next_hello:
            self._hello(now)
        for group in list(self.groups.values()):
            if group.role == Role.MANAGER:
                self._manager_tick(group, now)
            else:
                self._member_tick(group, now)

    def _hello(self, now: float) -> None:
        held = tuple((uri, g.key.gmk_id) for uri, g in self.groups.items() if g.key is not None)[:256]
        self._send(Hello(self.unicast_port, held), MULTICAST, now)
        self._next_hello = now + self.config.hello_every

    def _manager_tick(self, group: AdhocGroup, now: float, *, announce: bool = True) -> None:
        if self.config.rekey_each_period and self._new_period(group, now):
            log.info("%s: new key period: fresh GMK for %s", self.uri, group.info.uri)
            self._rekey(group, now, list(group.info.members))
            return
        missing = []
        for delivery in group.deliveries.values():
            if delivery.acked or now < delivery.next_at:
                continue
            peer = self.peers.get(delivery.member)
            if peer is None or not self.alive(delivery.member, now):
                missing.append(delivery.member)
                delivery.next_at = now + self.config.probe_every  # resumes when its Hello arrives
                continue
            self._deliver(group, delivery, peer, now)
        if missing and now >= self._next_probe:
            self._send(Probe(tuple(missing[:200])), MULTICAST, now)
            self._next_probe = now + self.config.probe_every
        if announce and now >= group.next_announce:
            self._announce(group, now)

    def _member_tick(self, group: AdhocGroup, now: float) -> None:
        manager = group.info.manager
        if group.manager_gone_since is None:
            seen = self._manager_heard(group)
            if now - seen > self.config.manager_timeout:
                log.warning("%s: manager %s of %s not heard for %.0f s", self.uri, manager, group.info.uri, now - seen)
                group.manager_gone_since = now  # starts the succession clock
        if group.manager_gone_since is not None and now >= group.manager_gone_since + self._takeover_delay(group):
            self._take_over(group, now)

    def _new_period(self, group: AdhocGroup, now: float) -> bool:
        """Whether the group's GMK was made in an earlier key period and we hold keys to rekey it under this one."""
        keys = self.keys_at(now)
        return keys is not None and keys.period_no > keys.domain.period_number(group.created_at)

    def _manager_heard(self, group: AdhocGroup) -> float:
        """When we last heard the group's manager (or were keyed, if we never heard it directly)."""
        peer = self.peers.get(group.info.manager)
        return peer.last_seen if peer is not None else group.created_at

    def _takeover_delay(self, group: AdhocGroup) -> float:
        """Our wait before taking over: members ahead of us in the list that are alive get their turn first."""
        ahead = 0
        for member in group.info.members:
            if member == self.uri:
                break
            if member != group.info.manager and self.alive(member, group.manager_gone_since or 0.0):
                ahead += 1
        return self.config.takeover_step * ahead

    def _take_over(self, group: AdhocGroup, now: float) -> None:
        old = group.info.manager
        # A silent manager stays a member (it gets the new key when it is heard again); one that left does not.
        members = [m for m in group.info.members if m != self.uri and not (m == old and group.manager_left)]
        group.role = Role.MANAGER
        group.manager_gone_since = None
        group.manager_left = False
        log.warning("%s: taking over %s from %s", self.uri, group.info.uri, old)
        self._rekey(group, now, [self.uri, *members])

    # --- manager internals ---------------------------------------------------------------------------------------

    def _managed(self, group_uri: str) -> AdhocGroup:
        group = self.find(group_uri)
        if group.role != Role.MANAGER:
            raise AdhocError(f"{group.info.name or group.info.uri} is managed by {group.info.manager}, not by us")
        return group

    def _check_member_uri(self, member: str) -> None:
        if not member or len(member.encode()) > 1024 or any(c.isspace() for c in member) or ":" not in member:
            raise AdhocError(f"not an identity URI: {member!r}")

    def _rekey(self, group: AdhocGroup, now: float, members: list[str]) -> None:
        key = make_group_key()
        group.keys = [*group.keys, key][-3:]
        group.info = replace(
            group.info, revision=group.info.revision + 1, gmk_id=key.gmk_id, members=tuple(members), manager=self.uri
        )
        group.deliveries = {}
        group.created_at = now
        self._events.append(GroupKeyed(group.info, key, Role.MANAGER))
        self._distribute(group, now, [m for m in members if m != self.uri])
        self._announce(group, now)

    def _distribute(self, group: AdhocGroup, now: float, members: Iterable[str], *, new_key: bool = True) -> None:
        for member in members:
            delivery = Delivery(member, next_at=now)
            group.deliveries[member] = delivery
            peer = self.peers.get(member)
            if peer is not None and self.alive(member, now):
                self._deliver(group, delivery, peer, now)
        self._manager_tick(group, now, announce=False)  # probes for the members not heard yet

    def _deliver(self, group: AdhocGroup, delivery: Delivery, peer: Peer, now: float) -> None:
        key = group.key
        keys = self.keys_at(now)
        if key is None or keys is None:
            log.warning("%s: cannot key %s: no keys of our own for this key period", self.uri, delivery.member)
            delivery.next_at = now + self.config.retransmit_max
            return
        if not delivery.i_message or now - delivery.built_at > self.config.rebuild_after:
            # Keying 20 members at once would hold the caller's thread ~60 ms: a talker's frames would stall.
            turn, built = self._build_turn
            built = built if turn == now else 0
            if built >= self.config.builds_per_turn:
                delivery.next_at = now + self.config.build_spacing
                return
            self._build_turn = (now, built + 1)
            delivery.i_message = build_i_message(
                initiator=keys,
                responder_uri=delivery.member,
                responder_domain=self.trust.kms_for(delivery.member),  # a partner domain's member: its KMS's Z
                key=key.gmk,
                key_id=key.gmk_id,
                now=now,
                rand=key.rand,
            )
            delivery.built_at = now
        self._send(KeyDelivery(group.info, delivery.i_message), peer.address, now)
        delivery.attempts += 1
        delivery.interval = (
            self.config.retransmit_first
            if delivery.interval == 0
            else min(delivery.interval * 2, self.config.retransmit_max)
        )
        delivery.next_at = now + delivery.interval

    def _announce(self, group: AdhocGroup, now: float) -> None:
        self._send(GroupAnnouncement(group.info), MULTICAST, now)
        group.next_announce = now + self.config.announce_every

    # --- incoming ------------------------------------------------------------------------------------------------

    def datagram(self, data: bytes, source: Address, now: float) -> None:
        """A datagram from the discovery group or our unicast socket. Never raises for bad input."""
        try:
            envelope = open_envelope(
                data, trusted_kms=self.trusted_kms, now=now, replay_cache=self.replay_cache, window=self.config.window
            )
        except AdhocMessageError as exc:
            self._refuse(None, f"datagram from {source[0]}:{source[1]} refused: {exc}")
            return
        if envelope.sender == self.uri:
            return  # our own multicast, looped back
        if not self.trust.speaks_for(envelope.sender_kms, envelope.sender):
            # a trusted partner KMS can issue keys for any URI: it may vouch only for its own users' domains
            self._refuse(None, f"{envelope.sender} signed under KMS {envelope.sender_kms}, which does not speak for it")
            return
        self.stats["in"] += 1
        peer = self.peers.get(envelope.sender)
        if peer is not None:
            peer.last_seen = now  # any authentic datagram shows it is alive
        body = envelope.body
        if isinstance(body, Hello):
            self._on_hello(envelope.sender, body, source, now)
        elif isinstance(body, Probe):
            if (not body.wanted or self.uri in body.wanted) and now - self._last_probe_answer > 0.2:
                self._last_probe_answer = now
                self._hello(now)
        elif isinstance(body, KeyDelivery):
            self._on_key(envelope, body, source, now)
        elif isinstance(body, KeyAck):
            self._on_ack(envelope.sender, body, now)
        elif isinstance(body, GroupAnnouncement):
            self._on_announcement(envelope.sender, body.group, now)
        elif isinstance(body, Leave):
            self._on_leave(envelope.sender, body, now)

    def _refuse(self, sender: str | None, reason: str) -> None:
        self.stats["refused"] += 1
        log.warning("%s: %s", self.uri, reason)
        self._events.append(Refused(sender, reason))

    def _on_hello(self, sender: str, hello: Hello, source: Address, now: float) -> None:
        peer = self.peers.get(sender)
        returning = peer is None or not self.alive(sender, now)
        held = dict(hello.held)
        self.peers[sender] = Peer(sender, (source[0], hello.port), now, held)
        for group in self.groups.values():
            if group.role == Role.MANAGER and group.info.has_member(sender) and sender != self.uri:
                delivery = group.deliveries.get(sender)
                holds = held.get(group.info.uri)
                current = group.key.gmk_id if group.key else b""
                if delivery is None:
                    delivery = group.deliveries[sender] = Delivery(sender, next_at=now)
                if holds is not None and hmac.compare_digest(holds, current):
                    self._acked(group, delivery, now)  # its ack was lost, or it kept the key over a restart
                elif delivery.acked or returning:
                    # it lost the key (restart) or was away: deliver again now
                    delivery.acked = False
                    delivery.interval = 0.0
                    delivery.next_at = now
                    self._deliver(group, delivery, self.peers[sender], now)
            elif group.role == Role.MEMBER and sender == group.info.manager and not group.manager_left:
                group.manager_gone_since = None

    def _on_ack(self, sender: str, ack: KeyAck, now: float) -> None:
        group = self.groups.get(ack.group_uri)
        if group is None or group.role != Role.MANAGER or group.key is None:
            return
        delivery = group.deliveries.get(sender)
        if delivery is None or not hmac.compare_digest(ack.gmk_id, group.key.gmk_id):
            return  # an ack of an older key, or from a non-member
        self._acked(group, delivery, now)

    def _acked(self, group: AdhocGroup, delivery: Delivery, now: float) -> None:
        if delivery.acked:
            return
        delivery.acked = True
        delivery.acked_at = now
        self._events.append(MemberKeyed(group.info.uri, delivery.member, now - group.created_at))

    def _accepts(self, sender: str, info: GroupInfo, known: AdhocGroup | None) -> str | None:
        """Why a signed group description from ``sender`` is not acceptable, or None if it is."""
        if info.manager != sender:
            return f"group description for {info.uri} names manager {info.manager} but is signed by {sender}"
        if known is None:
            return None if self.accept_from(sender, info) else f"{sender} may not key us for {info.name!r} (policy)"
        if not known.info.has_member(sender):
            return f"{sender} is not a member of {info.uri}: it cannot manage it"
        if info.revision < known.info.revision:
            return f"stale description of {info.uri} (revision {info.revision} < {known.info.revision})"
        if info.revision == known.info.revision and info != known.info and sender > known.info.manager:
            return f"conflicting description of {info.uri} from {sender} (revision {info.revision})"
        return None

    def _on_key(self, envelope: Envelope, body: KeyDelivery, source: Address, now: float) -> None:
        info = body.group
        sender = envelope.sender
        known = self.groups.get(info.uri)
        held = known.keys if known is not None else []
        if any(hmac.compare_digest(k.gmk_id, info.gmk_id) for k in held):
            self._send(KeyAck(info.uri, info.gmk_id), source, now)  # a retransmission: our ack was lost
            if known is not None and info.revision > known.info.revision and self._accepts(sender, info, known) is None:
                self._update(known, info, now)
            return
        if not info.has_member(self.uri):
            self._refuse(sender, f"key for {info.uri} from {sender} does not list us as a member")
            return
        problem = self._accepts(sender, info, known)
        if problem is not None:
            self._refuse(sender, problem)
            return
        try:
            received = receive_i_message(
                body.i_message,
                responder=list(self.held_keys()),
                expected_initiators=sender,
                trusted_kms=self.trusted_kms,
                now=now,
                replay_cache=self.imessage_replay_cache,
                window=self.config.window,
            )
        except MikeyError as exc:
            self._refuse(sender, f"GMK for {info.uri} from {sender} refused: {exc}")
            return
        if received.initiator_kms != envelope.sender_kms:
            self._refuse(sender, f"GMK for {info.uri}: I_MESSAGE signed under KMS {received.initiator_kms}, not "
                         f"{envelope.sender_kms} that speaks for {sender}")  # fmt: skip
            return
        if received.purpose != KeyPurpose.GMK or received.revoked:
            self._refuse(sender, f"{sender} sent a {received.purpose.name} key, not a GMK, for {info.uri}")
            return
        if not hmac.compare_digest(received.key_id, info.gmk_id):
            self._refuse(sender, f"GMK-ID of the I_MESSAGE differs from the group description of {info.uri}")
            return
        key = GroupKey(gmk=received.key, gmk_id=received.key_id, rand=received.rand)
        if known is None:
            known = self.groups[info.uri] = AdhocGroup(info, Role.MEMBER, created_at=now)
        elif known.role == Role.MANAGER:
            log.warning("%s: %s took over %s (revision %d)", self.uri, sender, info.uri, info.revision)
            known.role = Role.MEMBER
            known.deliveries = {}
        known.info = info
        known.manager_gone_since = None
        known.keys = [*known.keys, key][-3:]
        self._send(KeyAck(info.uri, info.gmk_id), source, now)
        self._events.append(GroupKeyed(info, key, Role.MEMBER))
        log.info("%s: keyed for %s by %s (GMK %s)", self.uri, info.uri, sender, key.gmk_id.hex())

    def _on_announcement(self, sender: str, info: GroupInfo, now: float) -> None:
        known = self.groups.get(info.uri)
        if known is None or info == known.info:
            return  # we learn groups only from their keys
        problem = self._accepts(sender, info, known)
        if problem is not None:
            if info.revision != known.info.revision or sender != known.info.manager:
                log.info("%s: announcement ignored: %s", self.uri, problem)
            return
        self._update(known, info, now)

    def _update(self, known: AdhocGroup, info: GroupInfo, now: float) -> None:
        if not info.has_member(self.uri):
            del self.groups[info.uri]
            self._events.append(GroupRemoved(info.uri, f"removed by {info.manager}"))
            log.warning("%s: removed from %s by %s", self.uri, info.uri, info.manager)
            return
        if known.role == Role.MANAGER and info.manager != self.uri:
            known.role = Role.MEMBER
            known.deliveries = {}
        known.manager_gone_since = None
        if not hmac.compare_digest(info.gmk_id, known.info.gmk_id):
            # a new GMK is on its way to us by unicast; keep the old description until it lands
            return
        known.info = info
        self._events.append(GroupUpdated(info, known.role))

    def _on_leave(self, sender: str, leave: Leave, now: float) -> None:
        group = self.groups.get(leave.group_uri)
        if group is None or not group.info.has_member(sender):
            return
        if group.role == Role.MANAGER:
            log.info("%s: %s left %s: rekeying", self.uri, sender, group.info.uri)
            self._rekey(group, now, [m for m in group.info.members if m != sender])
        elif sender == group.info.manager and group.manager_gone_since is None:
            log.info("%s: manager %s left %s", self.uri, sender, group.info.uri)
            group.manager_gone_since = now
            group.manager_left = True

    # --- sending -------------------------------------------------------------------------------------------------

    def _send(self, body: Body, destination: Address, now: float) -> None:
        keys = self.keys_at(now)
        if keys is None:
            log.warning("%s: no keys of our own for the current key period: cannot sign", self.uri)
            return
        self._outgoing.append((seal(keys, body, now), destination))
