"""One group-server node of a cluster, wired to its call: rounds and fencing on the reactor's clock, joins of
groups served elsewhere forwarded to their node, call events and committed changes spread to the other nodes.

Every node holds every group's membership (``GroupCall.set_group`` from the shared store), so any node can log a
member in, list its groups and push its keys; only the lease holder runs a group's call (arbiter, bindings,
forwarding). A member's control session stays at the node it connected to; its media and floor control go to the
relay of the node serving each group, which its ``joined`` reply names. When a group moves (failover), the
members joined to it are told ``{"type": "moved", "group": …}`` and join again.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet import defer, task
from twisted.internet.threads import deferToThreadPool

from ptt.cluster import ROUND_INTERVAL, Adopted, ClusterError, Lease, Lost, Moved, NodeInfo, Ownership
from ptt.cluster_messages import (
    CallEvent,
    CallForward,
    ClusterMessage,
    GroupChanged,
    GroupMoved,
    JoinReply,
    JoinRequest,
    Left,
    StatusReply,
    StatusRequest,
    UserPush,
    parse,
)
from ptt.control import b64, unb64
from ptt.groupinfo import Refused, check_membership
from ptt.privatecall.messages import is_call_id
from ptt.relaycore import BINDING_ID_LENGTH
from ptt.srtcp import CskKeys
from server.cluster.database import BROADCAST_CHANNEL, node_channel
from server.groups.manager import GroupChange

if TYPE_CHECKING:
    from server.callshell import CallShell
    from server.cluster.link import ClusterLink

log = logging.getLogger("ptt.server.cluster")

FORWARD_TIMEOUT = 5.0
"""How long a forwarded join or status request waits for the serving node (a busy one answers in milliseconds;
a dead one is replaced within the lease time, 2.5 s). Under the client's request timeout (15 s)."""
FENCE_CHECK = 0.1
"""How often the reactor compares the clock with the lease deadline (the relay also checks every datagram)."""
RETRY_HINT = "retry in 1 s"


class _Rerouted(Exception):
    """The group moved while a join forwarded to its old node waited: it is routed again."""


def seal_csk(data_key: bytes, member: str, keys: CskKeys) -> str:
    nonce = os.urandom(12)
    plain = keys.csk + keys.csk_id + keys.rand
    return b64(nonce + AESGCM(data_key).encrypt(nonce, plain, b"ptt-cluster-csk|" + member.encode()))


def open_csk(data_key: bytes, member: str, sealed: str) -> CskKeys:
    blob = unb64(sealed, "csk")
    try:
        plain = AESGCM(data_key).decrypt(blob[:12], blob[12:], b"ptt-cluster-csk|" + member.encode())
    except (InvalidTag, ValueError):
        raise ClusterError("a forwarded CSK that does not open under the data key") from None
    if len(plain) != 36:
        raise ClusterError("a forwarded CSK of the wrong length")
    return CskKeys(plain[:16], plain[16:20], plain[20:])


class ClusterNode:
    def __init__(
        self,
        reactor: Any,
        shell: CallShell,
        link: ClusterLink,
        me: NodeInfo,
        data_key: bytes,
        *,
        reload_group: Callable[[str, bytes], GroupChange],
    ) -> None:
        self.reactor, self.shell, self.link, self.me = reactor, shell, link, me
        self.ownership = Ownership(me.name)
        self._data_key = data_key
        self._reload_group = reload_group  # on the store thread: a group's record, members and fresh I_MESSAGEs
        self._requests = itertools.count(1)
        self._pending: dict[int, tuple[defer.Deferred[Any], str, str]] = {}  # request -> (reply, node, group)
        self._remote: dict[tuple[str, str], str] = {}  # (group, member) joined here, served at node
        self._origin: dict[tuple[str, str], str] = {}  # (group, member) served here, joined at node
        self._announced: dict[str, int] = {}  # group -> generation whose "moved" our members were told
        self._round_running = False
        self._counters = dict.fromkeys(("rounds", "rounds_failed", "fenced", "adopted", "lost"), 0)
        self._round_max = 0.0  # the slowest round (sent -> applied on the reactor), seconds
        self._slack_min = float("inf")  # the least time left before the deadline when a renewal was applied
        self._rounds = task.LoopingCall(self._round)
        self._rounds.clock = reactor
        self._fence = task.LoopingCall(self._check_fence)
        self._fence.clock = reactor

    # -- life ----------------------------------------------------------------------------------------------------------

    def start(self) -> defer.Deferred[None]:
        self.shell.call.relay.serving_until = float("-inf")  # nothing is served before the first round

        def loops(_: object) -> None:
            self._rounds.start(ROUND_INTERVAL, now=True)
            self._fence.start(FENCE_CHECK, now=False)

        return self.link.start().addCallback(loops)

    def stop(self) -> None:
        for loop in (self._rounds, self._fence):
            if loop.running:
                loop.stop()
        self.link.stop()

    # -- rounds and fencing --------------------------------------------------------------------------------------------

    def _round(self) -> None:
        if self._round_running:
            return  # the last one is still waiting for the database
        self._round_running = True
        groups = [g for g in self.shell.call.group_uris() if not is_call_id(g)]  # a private call has no lease
        claims = self.ownership.to_claim(groups, time.monotonic())
        d = self.link.run_round(claims, self.ownership.to_reclaim())

        def done(result: Any) -> None:
            self._round_running = False
            now = time.monotonic()
            self._counters["rounds"] += 1
            if result.renewed:
                self._round_max = max(self._round_max, now - result.started)
                if self.ownership.held:
                    self._slack_min = min(self._slack_min, self.ownership.valid_until - now)
            else:
                self._counters["rounds_failed"] += 1
            self._apply(self.ownership.apply(result, now))

        def failed(failure: Any) -> None:
            self._round_running = False  # whatever failed, the next round runs (or the node fences itself)
            log.error("cluster round: %s", failure.getTraceback())

        d.addCallback(done)
        d.addErrback(failed)

    def _check_fence(self) -> None:
        now = time.monotonic()
        self.ownership.renewal_committed(self.link.last_renewal, now)  # a round whose answer the reactor has not had
        events = self.ownership.fence(now)
        if events:
            self._counters["fenced"] += 1
        self._apply(events)

    def stats(self) -> dict[str, Any]:
        """Rounds (failed ones too), times this node fenced itself (its deadline passed before a renewal), groups
        adopted and lost, the slowest round and the least time that was left before the deadline."""
        return {
            **self._counters,
            "serving": len(self.ownership.held),
            "round_max_s": round(self._round_max, 4),
            "slack_min_s": round(self._slack_min, 4) if self._slack_min != float("inf") else None,
        }

    def _apply(self, events: list[Any]) -> None:
        for event in events:
            try:
                self._apply_one(event)
            except Exception:
                log.exception("%s: ownership change %s not fully applied", self.me.name, event)
        # The relay compares the reactor's (wall) clock: the monotonic deadline as a wall time, again every
        # FENCE_CHECK, so a step of the wall clock moves the relay's deadline for at most that long. Holding no
        # lease (the groups lost were released just above), the node still serves the private calls set up here:
        # those have no lease and no other node serves them.
        left = self.ownership.valid_until - time.monotonic()
        self.shell.call.relay.serving_until = self.reactor.seconds() + left if self.ownership.held else float("inf")
        self.shell.flush()

    def _apply_one(self, event: Any) -> None:
        if isinstance(event, Lost):
            self._counters["lost"] += 1
            log.warning("%s: group %s is no longer served here", self.me.name, event.group)
            self.shell.call.release(event.group)
            for key in [k for k in self._origin if k[0] == event.group]:
                del self._origin[key]
        elif isinstance(event, Adopted):
            self._counters["adopted"] += 1
            log.info("%s: serving group %s (lease generation %d)", self.me.name, event.group, event.generation)
            self.link.send(BROADCAST_CHANNEL, bytes(GroupMoved(self.me.name, event.group, event.generation)))
            self._moved(event.group, event.generation)
        elif isinstance(event, Moved):
            self._moved(event.group, event.lease.generation)

    def _moved(self, group: str, generation: int) -> None:
        """The group is served by another node (or newly by this one): members joined here through the old one
        join again (their client asks when told)."""
        if self._announced.get(group, 0) >= generation:
            return
        self._announced[group] = generation
        for key in [k for k in self._remote if k[0] == group]:
            del self._remote[key]
        owner = self.ownership.owner(group)
        for request, (reply, node, pending_group) in list(self._pending.items()):
            if pending_group == group and (owner is None or owner.name != node) and not reply.called:
                del self._pending[request]
                reply.errback(_Rerouted())  # a join waiting on the old node goes to the new one at once
        self.shell.push_to_members(group, {"type": "moved", "group": group})

    # -- the control channel's requests (CallShell delegates) ----------------------------------------------------------

    def join(self, member: str, group: str, ssrc: int, now: float) -> dict[str, Any] | defer.Deferred[dict[str, Any]]:
        call = self.shell.call
        check_membership(call.group(group), group, member)
        binding_id = os.urandom(BINDING_ID_LENGTH)
        if self.ownership.holds(group, time.monotonic()):
            self._remote.pop((group, member), None)
            self._origin.pop((group, member), None)
            return call.join(member, group, ssrc, binding_id, now)
        owner = self.ownership.owner(group)
        if owner is None or owner.name == self.me.name:
            raise Refused(503, f"the call of {group} is moving to another server node: {RETRY_HINT}")
        return self._forward_join(member, group, ssrc, owner, binding_id)

    def join_call(self, member: str, call: str, ssrc: int, home: str) -> defer.Deferred[dict[str, Any]]:
        """The callee connected here joins a private call served at its home node (the caller's)."""
        node = self.ownership.nodes.get(home)
        if node is None:
            raise Refused(503, f"server node {home}, which serves the call, is gone")
        return self._forward_join(member, call, ssrc, node, os.urandom(BINDING_ID_LENGTH))

    def _forward_join(
        self, member: str, group: str, ssrc: int, owner: NodeInfo, binding_id: bytes
    ) -> defer.Deferred[dict[str, Any]]:
        call = self.shell.call
        keys = call.csk_keys(member)
        if keys is None:
            raise Refused(409, "send a CSK before joining (floor control and the relay binding need it)")
        if not 0 <= ssrc <= 0xFFFFFFFF:
            raise Refused(400, "ssrc out of range")
        request = next(self._requests)
        message = JoinRequest(
            self.me.name, request, group, member, ssrc, b64(binding_id), seal_csk(self._data_key, member, keys)
        )
        reply = self._ask(request, owner.name, message, group)

        def answered(answer: JoinReply) -> dict[str, Any]:
            if answer.code:
                raise Refused(answer.code, answer.message)
            self._remote[(group, member)] = owner.name
            return {"type": "joined", "group": group, "token": b64(binding_id), "relay": owner.relay_json()}

        def rerouted(failure: Any) -> Any:
            failure.trap(_Rerouted)
            return self.join(member, group, ssrc, self.reactor.seconds())

        return reply.addCallbacks(answered, rerouted)

    def leave(self, member: str, group: str, now: float) -> bool:
        """True if the group is served elsewhere (the serving node was told)."""
        node = self._remote.pop((group, member), None)
        if node is not None:
            self.link.send(node_channel(node), bytes(Left(self.me.name, member, group)))
            return True
        return False

    def session_started(self, member: str) -> None:
        self.link.presence([member], [])

    def session_ended(self, member: str) -> None:
        """The member's last session here ended: the nodes serving its groups drop what it joined through us."""
        self.link.presence([], [member])
        nodes = {node for (group, uri), node in self._remote.items() if uri == member}
        for key in [k for k in self._remote if k[1] == member]:
            del self._remote[key]
        for node in nodes:
            self.link.send(node_channel(node), bytes(Left(self.me.name, member)))

    # -- what this node's call and manager produce ---------------------------------------------------------------------

    def call_event(self, group: str, event: dict[str, Any]) -> None:
        """A call event of a group served here, for the members connected to other nodes."""
        generation = self.ownership.held.get(group)
        if generation is not None:
            self.link.send(BROADCAST_CHANNEL, bytes(CallEvent(self.me.name, group, generation, event)))

    def push_elsewhere(self, member: str, message: dict[str, Any]) -> None:
        """A voice message notice or status, or a private call message, for ``member``, not connected here: the
        node it is connected to sends it."""
        self.link.send(BROADCAST_CHANNEL, bytes(UserPush(self.me.name, member, message)))

    def forward_call_message(self, home: str, member: str, message: dict[str, Any]) -> None:
        """A callee's private call message, for the node serving the call."""
        self.link.send(node_channel(home), bytes(CallForward(self.me.name, member, message)))

    def changed_here(self, change: GroupChange) -> None:
        """A change committed by this node's manager: the others re-read the group from the store."""
        if change.record is None:
            self.ownership.forget_group(change.group)
            self.link.forget_group(change.group)
        self.link.send(BROADCAST_CHANNEL, bytes(GroupChanged(self.me.name, change.group, change.gmk_id.hex())))

    def status(self, group: str, local: Callable[[], dict[str, Any]]) -> defer.Deferred[dict[str, Any]]:
        """A dispatcher's live view: from this node's call if it serves the group, else asked of the serving node;
        presence from every node."""
        owner = self.ownership.owner(group)
        if self.ownership.holds(group, time.monotonic()) or owner is None:
            d: defer.Deferred[dict[str, Any]] = defer.succeed(local())
        else:
            request = next(self._requests)

            def unavailable(failure: Any) -> dict[str, Any]:
                return {**local(), "unavailable": failure.getErrorMessage()}

            status_request = StatusRequest(self.me.name, request, group)
            asked: defer.Deferred[Any] = self._ask(request, owner.name, status_request, "")
            d = asked.addCallback(lambda reply: dict(reply.status)).addErrback(unavailable)
        members = self.shell.call.members(group)

        def with_presence(status: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
            def merge(present: set[str]) -> dict[str, Any]:
                here = set(status.get("present", []))
                status["present"] = [m for m in members if m in present or m in here]
                status["node"] = owner.name if owner is not None else None
                return status

            present: defer.Deferred[Any] = self.link.present(members)
            return present.addCallback(merge)

        return d.addCallback(with_presence)

    # -- messages from other nodes -------------------------------------------------------------------------------------

    def received(self, payload: bytes) -> None:
        try:
            message = parse(payload)
        except ClusterError as exc:
            log.warning("cluster message dropped: %s", exc)
            return
        if message.sender == self.me.name:
            return
        try:
            self._dispatch(message)
        except (ClusterError, ValueError) as exc:
            log.warning("cluster %s message from %s dropped: %s", message.kind, message.sender, exc)
        self.shell.flush()

    def listening(self) -> None:
        """(Re)connected to the notifications: what was missed is re-read (every group from the store)."""
        self.shell.reload_groups()

    def _dispatch(self, message: ClusterMessage) -> None:
        now = self.reactor.seconds()
        if isinstance(message, JoinRequest):
            self._join_request(message, now)
        elif isinstance(message, (JoinReply, StatusReply)):
            pending = self._pending.pop(message.request, None)
            if pending is not None and pending[1] == message.sender and not pending[0].called:
                pending[0].callback(message)
        elif isinstance(message, Left):
            keys = (
                [(message.group, message.member)]
                if message.group
                else [k for k in self._origin if k[1] == message.member]
            )
            for group, member in keys:
                if self._origin.get((group, member)) == message.sender:
                    del self._origin[(group, member)]
                    self.shell.call.leave(member, group, now)
        elif isinstance(message, CallEvent):
            if message.generation >= self.ownership.generation(message.group):
                self.shell.push_event(message.group, message.event)
        elif isinstance(message, GroupMoved):
            node = self.ownership.nodes.get(message.sender)
            if message.generation > self.ownership.generation(message.group) and node is not None:
                self.ownership.leases[message.group] = Lease(message.group, message.sender, message.generation)
                self._moved(message.group, message.generation)
        elif isinstance(message, GroupChanged):
            gmk_id = bytes.fromhex(message.gmk_id)
            d = deferToThreadPool(self.reactor, self.shell.store_pool, self._reload_group, message.group, gmk_id)
            d.addCallback(self.shell.group_changed)
            d.addErrback(lambda failure: log.error("group %s not re-read: %s", message.group, failure.value))
        elif isinstance(message, UserPush):
            self.shell.pushed_from_node(message.member, message.message, message.sender)
        elif isinstance(message, CallForward):
            self.shell.private_calls.forwarded(message.sender, message.member, message.message, now)
        elif isinstance(message, StatusRequest):
            status = self.shell.local_status(message.group)
            self.link.send(node_channel(message.sender), bytes(StatusReply(self.me.name, message.request, status)))

    def _join_request(self, message: JoinRequest, now: float) -> None:
        reply = JoinReply(self.me.name, message.request, 0, generation=self.ownership.held.get(message.group, 0))
        try:
            served = self.ownership.holds(message.group, time.monotonic())
            if not served and not self.shell.private_calls.router.is_call(message.group):
                raise Refused(503, f"the call of {message.group} is moving to another server node: {RETRY_HINT}")
            binding_id = unb64(message.binding_id, "binding_id")
            if len(binding_id) != BINDING_ID_LENGTH:
                raise Refused(400, "binding ID of the wrong length")
            keys = open_csk(self._data_key, message.member, message.csk)
            call = self.shell.call
            check_membership(call.group(message.group), message.group, message.member)
            call.csk_keyed(message.member, keys)
            call.join(message.member, message.group, message.ssrc, binding_id, now)
            self._origin[(message.group, message.member)] = message.sender
        except Refused as exc:
            reply = JoinReply(self.me.name, message.request, exc.code, str(exc))
        self.link.send(node_channel(message.sender), bytes(reply))

    def _ask(self, request: int, node: str, message: ClusterMessage, group: str) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self._pending[request] = (d, node, group)

        def timed_out(failure: Any) -> Any:
            self._pending.pop(request, None)
            failure.trap(defer.TimeoutError, defer.CancelledError)
            raise Refused(503, f"server node {node} did not answer: {RETRY_HINT}")

        d.addTimeout(FORWARD_TIMEOUT, self.reactor)
        d.addErrback(timed_out)
        self.link.send(node_channel(node), bytes(message))
        return d
