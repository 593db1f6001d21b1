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
from collections.abc import Iterable
from dataclasses import replace

from ptt.adhoc.bodies import GroupAnnouncement, GroupInfo, Hello, KeyAck, KeyDelivery, Leave, Probe
from ptt.adhoc.events import Event, GroupKeyed, GroupRemoved, GroupUpdated, MemberKeyed, Refused
from ptt.adhoc.fields import AdhocMessageError
from ptt.adhoc.manager import AdhocManager
from ptt.adhoc.messages import Envelope, ReplayedAdhocMessage, open_envelope
from ptt.adhoc.state import (
    MULTICAST,
    Address,
    AdhocConfig,
    AdhocError,
    AdhocGroup,
    Delivery,
    Peer,
    Role,
    group_uri_for,
    random_media_address,
)
from ptt.groupkeys import GroupKey, make_group_key
from ptt.keyrollover import key_origin
from ptt.mikey.errors import MikeyError
from ptt.mikey.imessage_receive import receive_i_message
from ptt.ts33180 import KeyPurpose

__all__ = [
    "MULTICAST",
    "AdhocConfig",
    "AdhocEngine",
    "AdhocError",
    "AdhocGroup",
    "Event",
    "GroupKeyed",
    "GroupRemoved",
    "GroupUpdated",
    "MemberKeyed",
    "Refused",
    "Role",
    "group_uri_for",
    "random_media_address",
]

log = logging.getLogger("ptt.adhoc")


class AdhocEngine(AdhocManager):
    """All ad-hoc group signalling of one identity. Feed it datagrams and time; drain ``outgoing`` and ``events``."""

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
        self._events.append(GroupKeyed(info, key, Role.MANAGER, self._own_origin(now)))
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

    def _member_tick(self, group: AdhocGroup, now: float) -> None:
        manager = group.info.manager
        if group.manager_gone_since is None:
            seen = self._manager_heard(group)
            if now - seen > self.config.manager_timeout:
                log.warning("%s: manager %s of %s not heard for %.0f s", self.uri, manager, group.info.uri, now - seen)
                group.manager_gone_since = now  # starts the succession clock
        if group.manager_gone_since is not None and now >= group.manager_gone_since + self._takeover_delay(group):
            self._take_over(group, now)

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

    # --- incoming ------------------------------------------------------------------------------------------------

    def datagram(self, data: bytes, source: Address, now: float) -> None:
        """A datagram from the discovery group or our unicast socket. Never raises for bad input."""
        try:
            envelope = open_envelope(
                data, trusted_kms=self.trusted_kms, now=now, replay_cache=self.replay_cache, window=self.config.window
            )
        except ReplayedAdhocMessage:
            # a copy of a datagram taken already: a Leave goes out several times, multicast may loop twice; a
            # replay by someone else changes nothing either, so it is counted, not reported
            self.stats["duplicate"] += 1
            return
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
                max_age=self.config.window,  # sealed afresh for every (re)send: never a stored message
                max_skew=self.config.window,
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
        self._events.append(GroupKeyed(info, key, Role.MEMBER, key_origin(received, self.held_keys())))
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
