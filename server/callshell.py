"""The Twisted shell of the group call: :class:`ptt.groupcall.GroupCall` wired to the relay's UDP port, the
control channel, a timer, the crypto worker pool and the store thread.

Everything the core decides is drained after each input (:meth:`CallShell._flush`): floor control datagrams
out of the relay's port, control-channel pushes to members, rate-limited log lines for what was dropped. The
reactor thread runs only the core and these moves; logins and CSKs are checked in the worker processes
(``server.workers``), stored I_MESSAGEs and membership are read on the store thread, and the group manager
reports committed changes (:class:`server.groups.manager.GroupChange`) back through ``callFromThread``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool

from ptt.control import Authenticated, auth_claim, b64
from ptt.emergency import Alert
from ptt.groupcall import GroupCall
from ptt.groupinfo import GroupInfo, MemberInfo, Refused
from ptt.mikey.errors import MikeyError, OutsideTimeWindow
from ptt.mikey.imessage import MAX_CLOCK_SKEW, IdentityKeys, KmsDomain, check_time, replay_key
from ptt.privatecall.messages import is_call_id
from ptt.ratelimit import BucketTable
from ptt.relaycore import BINDING_ID_LENGTH, Address, Binding
from ptt.srtcp import CskKeys
from server.emergencyshell import EmergencyRequests
from server.groups.manager import GroupChange, GroupManager
from server.groups.store import GroupRecord, MemberRecord
from server.privatecalls import PrivateCallService
from server.replaystore import CskReplay, csk_replay_path
from server.workers import CryptoPool, CskRefused, open_csk, verify_login

log = logging.getLogger("ptt.server")

CSK_WINDOW = 300.0  # how old a CSK I_MESSAGE may be (sent directly, never stored)
CSK_SKEW = MAX_CLOCK_SKEW  # how far ahead its time may be: the members' clock skew
MAX_CSK_MESSAGE = 4096
"""A CSK I_MESSAGE is about 500 octets; anything far larger is refused before it is parsed."""


def _private_call_event(message: dict[str, Any]) -> bool:
    group = message.get("group")
    return message.get("type") == "event" and isinstance(group, str) and is_call_id(group)


def group_info(record: GroupRecord, members: list[MemberRecord], alerts: Iterable[Alert] = ()) -> GroupInfo:
    return GroupInfo(
        record.uri,
        record.name,
        record.max_burst,
        {m.uri: MemberInfo(m.uri, m.priority, m.role, m.broadcast) for m in members},
        {a.uri: a for a in alerts},
        recorded=record.recording_days is not None,
    )


class CallShell:
    """The control backend and the relay's callbacks, around one :class:`GroupCall`."""

    def __init__(
        self,
        reactor: Any,
        call: GroupCall,
        *,
        server_uri: str,
        domain: KmsDomain,
        server_keys: Callable[[], list[IdentityKeys]],
        manager: GroupManager,
        pool: CryptoPool,
        store_pool: Any,
    ) -> None:
        self.reactor = reactor
        self.call = call
        self.server_uri = server_uri
        self._domain = domain
        self._server_keys = server_keys
        self.manager = manager
        self.pool = pool
        self.store_pool = store_pool
        self.relay: Any = None  # the RelayProtocol, once listening
        self.control: Any = None  # the ControlServerFactory
        self.cluster: Any = None  # the ClusterNode when several nodes share the store (server.cluster.node)
        self._csk_replay = CskReplay(reactor, csk_replay_path(manager))  # kept across restarts
        self.csk_replay = self._csk_replay.cache
        self._timer: Any = None
        self._log_limit: BucketTable[str] = BucketTable(1.0, 5)  # per member: at most ~1 log line a second
        self._emergency: EmergencyRequests | None = None
        self.floor_dropped = 0  # floor messages the call dropped (SRTCP check, foreign SSRC): logged at most 1/s
        self.private_calls = PrivateCallService(self)  # issue 16: two-party calls keyed end to end (PCK)
        self.dispatch_stream: Any = None  # the dispatchers' event stream (server.dispatch.stream), told of activity
        self.history: Any = None  # server.history.HistoryRequests once recording is wired (issue 17)
        self.voice_messages: Any = None  # server.voicemessages.VoiceMessages: deferred delivery (issue 17)

    # --- inputs from the control channel (ControlBackend) -----------------------------------------------------

    def domain(self) -> KmsDomain:
        return self._domain

    def verify_login(self, message: dict[str, Any], nonce: bytes, now: float) -> defer.Deferred[Authenticated]:
        auth_claim(message, self._domain, now)  # form and key period, before any work for the pool
        return self.pool.run(verify_login, message, nonce, self.server_uri, self._domain, now)

    def welcome(self, uri: str) -> dict[str, Any]:
        if self.cluster is not None:
            self.cluster.session_started(uri)
        if self.dispatch_stream is not None:
            self.dispatch_stream.poke()  # online now
        return self.call.welcome(uri)

    def stored_imessages(self, uri: str) -> defer.Deferred[list[dict[str, Any]]]:
        """The member's stored GMK I_MESSAGEs, then its voice message notices and the states of the messages it
        sent that it has not been told of (deferred delivery)."""
        now = self.reactor.seconds()

        def read() -> list[dict[str, Any]]:
            stored = [
                {"type": "imessage", "group": m.group, "gmk_id": m.gmk_id.hex(), "data": b64(m.data)}
                for m in self.manager.imessages_for(uri)
            ]
            if self.voice_messages is not None:
                stored += self.voice_messages.login_pushes(uri, now)
            return stored

        return deferToThreadPool(self.reactor, self.store_pool, read)

    def on_csk(self, uri: str, data: bytes, now: float) -> defer.Deferred[str]:
        if len(data) > MAX_CSK_MESSAGE:
            raise Refused(413, "CSK message too large")
        try:
            digest, timestamp = replay_key(data)
        except MikeyError as exc:
            raise Refused(400, f"CSK refused: {exc}") from None
        try:
            check_time(timestamp, now, max_age=CSK_WINDOW, max_skew=CSK_SKEW)
        except OutsideTimeWindow:
            raise Refused(403, f"CSK refused: its time is {timestamp - now:+.0f} s from now") from None
        if self.csk_replay.seen(digest, timestamp):
            self._log(uri, "CSK from %s refused: replayed", uri)
            raise Refused(403, "CSK refused: I_MESSAGE already received")
        d = self.pool.run(open_csk, data, uri, self._server_keys(), self._domain, now, CSK_WINDOW, CSK_SKEW)

        def opened(keys: CskKeys) -> str:
            try:
                self.csk_replay.sweep(now)
                self.csk_replay.check_and_remember(digest, timestamp, timestamp + CSK_WINDOW)
            except MikeyError as exc:  # the same message was opened for another session meanwhile
                raise Refused(403, f"CSK refused: {exc}") from None
            self._csk_replay.changed()
            self.call.csk_keyed(uri, keys)
            log.info("CSK %s from %s: floor control keyed", keys.csk_id.hex(), uri)
            return str(keys.csk_id.hex())

        def refused(failure: Any) -> str:  # always raises: the errback turns the worker's refusal into Refused
            failure.trap(CskRefused)
            self._log(uri, "CSK from %s refused: %s", uri, failure.value)
            raise Refused(403, f"CSK refused: {failure.value}")

        return d.addCallbacks(opened, refused)

    def on_join(self, uri: str, group: str, ssrc: int, now: float) -> dict[str, Any] | defer.Deferred[Any]:
        reply: dict[str, Any] | defer.Deferred[Any]
        if self.cluster is not None and not is_call_id(group):
            reply = self.cluster.join(uri, group, ssrc, now)  # here, or forwarded to the node serving the group
        elif self.cluster is not None and (home := self.private_calls.home_of(group, uri)) is not None:
            reply = self.cluster.join_call(uri, group, ssrc, home)  # a private call is served at its home node
        else:
            reply = self.call.join(uri, group, ssrc, os.urandom(BINDING_ID_LENGTH), now)
        self._flush()
        return reply

    def on_call_message(self, uri: str, message: dict[str, Any], now: float) -> None:
        """A private call message (``ptt.privatecall.messages``); Refused for a bad one."""
        self.private_calls.handle(uri, message, now)

    def on_leave(self, uri: str, group: str, now: float) -> None:
        if self.cluster is None or not self.cluster.leave(uri, group, now):
            self.call.leave(uri, group, now)
        self._flush()

    def on_disconnected(self, uri: str, now: float) -> None:
        if self.control is not None and self.control.online(uri):
            return  # another session of the same identity is still connected
        if self.cluster is not None:
            self.cluster.session_ended(uri)
        self.private_calls.disconnected(uri, now)
        self.call.disconnected(uri, now)
        self._flush()

    def on_emergency(self, uri: str, message: dict[str, Any], now: float) -> defer.Deferred[dict[str, Any]]:
        """Raise or cancel an emergency alert (server.emergencyshell)."""
        if self._emergency is None:
            self._emergency = EmergencyRequests(self.reactor, self.call, self.manager, self.store_pool)
        return self._emergency.handle(uri, message, now)

    def on_history(self, uri: str, message: dict[str, Any], now: float) -> defer.Deferred[dict[str, Any]]:
        """List or fetch recorded bursts (server.history)."""
        if self.history is None:
            raise Refused(404, "this server records nothing")
        result: defer.Deferred[dict[str, Any]] = self.history.handle(uri, message, now)
        return result

    def on_voice_message(self, uri: str, message: dict[str, Any], now: float) -> defer.Deferred[dict[str, Any]]:
        """Send, list, fetch or mark played a voice message (server.voicemessages)."""
        if self.voice_messages is None:
            raise Refused(404, "this server keeps no voice messages")
        result: defer.Deferred[dict[str, Any]] = self.voice_messages.handle(uri, message, now)
        return result

    # --- inputs from the relay -----------------------------------------------------------------------------------

    def relay_joined(self, binding: Binding, addr: Address) -> None:
        if self.call.member_bound(binding, self.reactor.seconds()):
            log.info("%s joined %s from %s:%d", binding.member, binding.group, *addr)
        self._flush()

    def relay_floor(self, binding: Binding, data: bytes, addr: Address) -> None:
        self.call.floor_packet(binding, data, addr, self.reactor.seconds())
        self._flush()

    def relay_dead(self, bindings: list[Binding]) -> None:
        for binding in bindings:
            log.warning("%s in %s stopped sending keepalives: dropped", binding.member, binding.group)
        self.call.members_dead(bindings, self.reactor.seconds())
        self._flush()

    # --- inputs from the group manager (its thread) ----------------------------------------------------------------

    def change_from_thread(self, change: GroupChange) -> None:
        self.reactor.callFromThread(self._changed_here, change)

    def _changed_here(self, change: GroupChange) -> None:
        self.group_changed(change)
        if self.cluster is not None:
            self.cluster.changed_here(change)  # the other nodes re-read the group from the store

    def group_changed(self, change: GroupChange) -> None:
        now = self.reactor.seconds()
        if change.record is None:
            self.call.drop_group(change.group, now)
        else:
            self.call.set_group(group_info(change.record, change.members, change.alerts), now)
        if change.messages:
            online = self.control.online if self.control is not None else None
            self.call.imessages(change.group, change.gmk_id, change.messages, online)
        if self.dispatch_stream is not None:
            self.dispatch_stream.rights_changed()  # a group created or deleted may change who sees what
        self._flush()

    # --- status for the dispatcher API -----------------------------------------------------------------------------

    def status(self, group: str) -> dict[str, Any]:
        """Called on the dispatcher API's thread: read on the reactor (cheap: no store, no crypto)."""
        from twisted.internet.threads import blockingCallFromThread

        if self.cluster is not None:
            return dict(
                blockingCallFromThread(self.reactor, self.cluster.status, group, lambda: self.local_status(group))
            )
        return dict(blockingCallFromThread(self.reactor, self.local_status, group))

    def node_stats(self) -> dict[str, Any]:
        """Called on the dispatcher API's thread: this node's counters, read on the reactor."""
        from twisted.internet.threads import blockingCallFromThread

        return dict(blockingCallFromThread(self.reactor, self.local_stats))

    def local_stats(self) -> dict[str, Any]:
        """The relay's counters (``ptt.relaycore.STAT_NAMES``: forwarded and every drop reason), the floor messages
        the call dropped, and the cluster node's rounds and fencing (None on a single server)."""
        return {
            "relay": dict(self.call.relay.stats),
            "floor_dropped": self.floor_dropped,
            "cluster": self.cluster.stats() if self.cluster is not None else None,
        }

    def live_status(self, group: str) -> defer.Deferred[dict[str, Any]]:
        """On the reactor: the status of ``status`` (with several nodes, asked of the node serving the group)."""
        if self.cluster is not None:
            d: defer.Deferred[dict[str, Any]] = self.cluster.status(group, lambda: self.local_status(group))
            return d
        return defer.succeed(self.local_status(group))

    def local_status(self, group: str) -> dict[str, Any]:
        members = self.call.members(group)
        online = [m for m in members if self.control is not None and self.control.online(m)]
        return self.call.status(group, online)

    # --- for the cluster node ---------------------------------------------------------------------------------------

    def push_to_members(self, group: str, message: dict[str, Any]) -> None:
        """To the group's members connected here (a call event or a move from another node)."""
        if self.control is not None:
            for member in self.call.members(group):
                self.control.push(member, message)
        if self.dispatch_stream is not None:
            self.dispatch_stream.poke()

    def push_event(self, group: str, event: dict[str, Any]) -> None:
        if event.get("type") == "event" and event.get("group") == group:
            self.push_to_members(group, event)

    def pushed_from_node(self, member: str, message: dict[str, Any], node: str) -> None:
        """Another node's voice message notice or status, or private call message, for ``member`` (sent there
        only if connected here)."""
        kind, group = message.get("type"), message.get("group")
        if str(kind).startswith("call_"):
            self.private_calls.pushed_from_node(node, member, message)
        elif kind == "event" and isinstance(group, str) and self.private_calls.home_of(group, member) == node:
            if self.control is not None:
                self.control.push(member, message)  # the private call's floor events, from its home node
        elif self.voice_messages is not None:
            self.voice_messages.pushed_from_node(member, message)

    def reload_groups(self) -> defer.Deferred[Any]:
        """Every group and its members as the store has them now (after cluster notifications were missed)."""

        def read() -> list[GroupInfo]:
            store = self.manager.store
            return [
                group_info(record, store.members(record.uri), store.alerts(record.uri))
                for record in self.manager.groups()
            ]

        def apply(infos: list[GroupInfo]) -> None:
            now = self.reactor.seconds()
            known = {info.uri for info in infos}
            for uri in [u for u in self.call.group_uris() if u not in known and not is_call_id(u)]:
                self.call.drop_group(uri, now)
            for info in infos:
                self.call.set_group(info, now)
            self._flush()

        d = deferToThreadPool(self.reactor, self.store_pool, read)
        d.addCallback(apply)
        d.addErrback(lambda failure: log.error("groups not re-read: %s", failure.getErrorMessage()))
        return d

    def flush(self) -> None:
        self._flush()

    # --- outputs ----------------------------------------------------------------------------------------------------

    def _flush(self) -> None:
        call = self.call
        if self.relay is not None:
            for data, address in call.datagrams_to_send():
                self.relay.send(data, address)
        pushes = call.pushes()
        if self.cluster is not None:
            spread: set[int] = set()
            for _member, message in pushes:
                if message.get("type") == "event" and id(message) not in spread:
                    spread.add(id(message))  # one message object per event, pushed to each member
                    self.cluster.call_event(message["group"], message)
        if self.control is not None:
            for member, message in pushes:
                delivered = self.control.push(member, message)
                if not delivered and self.cluster is not None and _private_call_event(message):
                    self.cluster.push_elsewhere(member, message)  # the callee of a call set up here
        for dropped in call.dropped():
            self.floor_dropped += 1
            self._log(dropped.member, "%s", dropped.reason)
        if self.dispatch_stream is not None:
            self.dispatch_stream.poke()
        self._arm()

    def _arm(self) -> None:
        deadline = self.call.next_deadline()
        if self._timer is not None and self._timer.active():
            if deadline is not None and abs(self._timer.getTime() - deadline) < 1e-6:
                return
            self._timer.cancel()
        self._timer = None
        if deadline is not None:
            self._timer = self.reactor.callLater(max(0.0, deadline - self.reactor.seconds()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.call.tick(self.reactor.seconds())
        self._flush()

    def _log(self, member: str, text: str, *args: object) -> None:
        if self._log_limit.take(member, self.reactor.seconds()):
            log.warning(text, *args)
