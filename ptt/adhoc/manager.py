"""The ad-hoc manager's keying (``ptt.adhoc.engine``): new GMKs, deliveries to each member re-sent until acked,
at most ``builds_per_turn`` I_MESSAGEs built per instant, probes for members not heard, group announcements.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace

from ptt.adhoc.bodies import GroupAnnouncement, KeyDelivery, Probe
from ptt.adhoc.events import GroupKeyed
from ptt.adhoc.state import MULTICAST, AdhocEngineState, AdhocError, AdhocGroup, Delivery, Peer, Role
from ptt.groupkeys import make_group_key
from ptt.keyrollover import KeyOrigin, rekey_due
from ptt.mikey.imessage_build import build_i_message

log = logging.getLogger("ptt.adhoc")


class AdhocManager(AdhocEngineState):
    """The procedures of the groups we manage: rekeying, distributing and re-sending keys, announcing."""

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

    def _new_period(self, group: AdhocGroup, now: float) -> bool:
        """Whether the group's GMK was made in an earlier key period and we hold keys to rekey it under this one."""
        keys = self.keys_at(now)
        return keys is not None and rekey_due(keys.domain, group.created_at, now, [keys.period_no])

    def _own_origin(self, now: float) -> KeyOrigin:
        """A GMK we make: signed by us (our keys for ``now``'s period, -1 if we hold none), no RSK of ours."""
        keys = self.keys_at(now)
        return KeyOrigin(self.uri, -1 if keys is None else keys.period_no, None, now)

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
        self._events.append(GroupKeyed(group.info, key, Role.MANAGER, self._own_origin(now)))
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
