"""The on-network group call of one group server, without I/O: members, bindings, floor, talker, call events.

Like :class:`ptt.adhoc.engine.AdhocEngine`, this is a state machine: every input carries ``now``; what must go out
is collected and drained by the shell (:meth:`GroupCall.datagrams_to_send` for floor control over the relay's UDP
port, :meth:`GroupCall.pushes` for control-channel messages to members); the one timer is exposed by
:meth:`GroupCall.next_deadline` and run by :meth:`GroupCall.tick`.

It owns
* the **membership** of every group as the store last committed it (:meth:`set_group`, :meth:`drop_group`): the
  shell reads the store off the reactor and hands the result over, so nothing here waits on a database;
* one :class:`~ptt.floor.arbiter.FloorArbiter` per group with joined members, and the **talker** of the relay's
  :class:`~ptt.relaycore.RelayCore` (the arbiter's holder: only its media is forwarded);
* the **floor control channels** (SRTCP under each member's CSK, :meth:`csk_keyed`): the CSK I_MESSAGE is opened
  by the shell off the reactor (ECCSI + SAKKE), the resulting key is installed here;
* the **bindings** in progress: a member that ``join``ed gets a binding ID, the relay the binding's key from the
  member's CSK (:func:`ptt.relaycore.binding_key`), and the member becomes a floor participant when the relay
  sees its first authentic ``PTTJ`` (:meth:`member_bound`).

The media fast path is not here: the shell hands media datagrams straight to :meth:`RelayCore.route`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ptt.control import b64
from ptt.emergency import alerts_json
from ptt.floor.arbiter import ArbiterConfig, FloorArbiter, Participant, Send
from ptt.floor.events import FloorEventKind
from ptt.floor.messages import FloorMessageError, parse_rtcp
from ptt.groupcall_alerts import alert_messages, entry_json, urgencies
from ptt.groupinfo import DISPATCHER_ROLE, GroupInfo, Refused, RelayAddress, check_membership
from ptt.relaycore import BINDING_ID_LENGTH, Address, Binding, RelayCore, binding_key
from ptt.srtcp import CskKeys, SrtcpChannel, SrtcpError


@dataclass(frozen=True)
class Dropped:
    """Something refused on the datagram path, for a rate-limited log line (never per packet)."""

    reason: str
    """The whole log line."""
    member: str
    addr: Address


@dataclass
class _Joined:
    participant: Participant
    bound: bool = False


class GroupCall:
    """Every group call of one group server."""

    def __init__(self, relay: RelayCore, relay_address: RelayAddress, *, server_ssrc: int | None = None) -> None:
        self.relay = relay
        self.relay_address = relay_address
        # The floor control server's SSRC is this call's own: SRTCP's keystream depends on it, so two nodes that
        # serve a member in turn (after a failover) under the same CSK never reuse one, and the member's SRTCP
        # keeps one replay window per node.
        self.server_ssrc = server_ssrc if server_ssrc is not None else int.from_bytes(os.urandom(4)) | 1
        self._groups: dict[str, GroupInfo] = {}
        self._groups_of: dict[str, set[str]] = {}  # member URI -> group URIs
        self._arbiters: dict[str, FloorArbiter] = {}
        self._deadlines: dict[str, float] = {}  # group -> its arbiter's next deadline
        self._channels: dict[str, SrtcpChannel] = {}  # member URI -> floor control SRTCP under its CSK
        self._joined: dict[tuple[str, str], _Joined] = {}  # (group, member) -> participant
        self._datagrams: list[tuple[bytes, Address]] = []
        self._pushes: list[tuple[str, dict[str, Any]]] = []
        self._dropped: list[Dropped] = []

    # -- outputs ---------------------------------------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        drained, self._datagrams = self._datagrams, []
        return drained

    def pushes(self) -> list[tuple[str, dict[str, Any]]]:
        """Control-channel messages for members: (member URI, message), to every session of that member."""
        drained, self._pushes = self._pushes, []
        return drained

    def dropped(self) -> list[Dropped]:
        drained, self._dropped = self._dropped, []
        return drained

    def next_deadline(self) -> float | None:
        return min(self._deadlines.values()) if self._deadlines else None

    # -- membership (from the store) ------------------------------------------------------------------------------

    def set_group(self, info: GroupInfo, now: float) -> None:
        """A group was created or changed: members that are gone are unbound and told; a joined member's new
        priority, role or broadcast right applies from its next floor request; alerts raised or cancelled are told
        to every member and reach the floor."""
        old = self._groups.get(info.uri)
        self._groups[info.uri] = info
        if info.recorded or (old is not None and old.recorded):
            self.relay.set_recording(info.uri, info.recorded)
        for uri in info.members:
            self._groups_of.setdefault(uri, set()).add(info.uri)
        if old is None:
            return
        for uri in old.members.keys() - info.members.keys():
            self._forget_membership(info.uri, uri)
            self._leave(info.uri, uri, now)
            self._push_groups(uri)
        arbiter = self._arbiters.get(info.uri)
        if arbiter is not None and arbiter.config.max_burst != info.max_burst:
            arbiter.config = self._arbiter_config(info)
        self._alerts_changed(old, info)
        self._rights_changed(old, info)

    def drop_group(self, group: str, now: float) -> None:
        """The group was deleted: everyone leaves it and is told."""
        info = self._groups.pop(group, None)
        if info is None:
            return
        for uri in info.members:
            self._leave(group, uri, now)
            self._forget_membership(group, uri)
            if not info.private_call:
                self._push_groups(uri)
        self._arbiters.pop(group, None)
        self._deadlines.pop(group, None)
        self.relay.set_talker(group, None)
        self.relay.set_recording(group, False)

    def load(self, groups: Iterable[GroupInfo]) -> None:
        """The membership at start."""
        for info in groups:
            self.set_group(info, 0.0)

    def group(self, uri: str) -> GroupInfo | None:
        return self._groups.get(uri)

    def group_uris(self) -> list[str]:
        return list(self._groups)

    def release(self, group: str) -> None:
        """Another node serves the group's call from now on (this one lost its lease): its bindings, arbiter and
        talker go without a word to anyone (the new node speaks to the members; this one must not)."""
        for key in [key for key in self._joined if key[0] == group]:
            del self._joined[key]
        for member in self.members(group):
            self.relay.unbind(group, member)
        self._arbiters.pop(group, None)
        self._deadlines.pop(group, None)
        self.relay.set_talker(group, None)
        self.relay.set_recording(group, False)

    def groups_of(self, member: str) -> list[dict[str, Any]]:
        """The member's groups as the welcome and ``groups`` messages list them."""
        result = []
        for group in sorted(self._groups_of.get(member, ())):
            info = self._groups[group]
            if info.private_call:
                continue
            spec = info.members[member]
            entry: dict[str, Any] = {"uri": group, "name": info.name, "role": spec.role, "priority": spec.priority}
            entry.update(entry_json(info.alerts, spec.broadcast))
            result.append(entry)
        return result

    def welcome(self, member: str) -> dict[str, Any]:
        return {"groups": self.groups_of(member), "relay": self._relay_json()}

    def members(self, group: str) -> list[str]:
        info = self._groups.get(group)
        return list(info.members) if info else []

    # -- control requests ----------------------------------------------------------------------------------------

    def csk_keys(self, member: str) -> CskKeys | None:
        channel = self._channels.get(member)
        return channel.keys if channel is not None else None

    def joined_groups(self, member: str) -> list[str]:
        return [group for group, uri in self._joined if uri == member]

    def csk_keyed(self, member: str, keys: CskKeys) -> None:
        """The member's CSK (opened and checked by the caller): its floor control is keyed from now on. The same
        CSK again (a join forwarded by another cluster node carries it each time) keeps the channel: a fresh one
        would restart the SRTCP index, reusing keystream under this SSRC (and the member would drop the messages
        as replays)."""
        channel = self._channels.get(member)
        if channel is None or channel.keys != keys:
            self._channels[member] = SrtcpChannel(keys)

    def join(self, member: str, group: str, ssrc: int, binding_id: bytes, now: float) -> dict[str, Any]:
        """The member wants to take part in the group's call: the reply's ``token`` is the binding ID (random,
        public) its ``PTTJ`` packets name; their key comes from the member's CSK, which both ends hold."""
        info = self._groups.get(group)
        check_membership(info, group, member)
        assert info is not None
        spec = info.members[member]
        channel = self._channels.get(member)
        if channel is None:
            raise Refused(409, "send a CSK before joining (floor control and the relay binding need it)")
        if not 0 <= ssrc <= 0xFFFFFFFF:
            raise Refused(400, "ssrc out of range")
        if len(binding_id) != BINDING_ID_LENGTH:
            raise ValueError("binding ID of the wrong length")
        previous = self._joined.get((group, member))
        if previous is not None and previous.bound:
            self._leave(group, member, now)  # a second join replaces the first binding
        self.relay.unbind(group, member)
        self.relay.expect(binding_id, Binding(group, member, ssrc), binding_key(channel.keys.csk, binding_id), now)
        participant = Participant(
            ssrc=ssrc,
            uri=member,
            priority=spec.priority,
            pre_emptive=spec.role == DISPATCHER_ROLE,
            broadcast=spec.broadcast,
        )
        self._joined[(group, member)] = _Joined(participant)
        if group not in self._arbiters:
            self._arbiters[group] = FloorArbiter(group, self._arbiter_config(info))
            self._arbiters[group].set_alerts(urgencies(info.alerts))
        return {"type": "joined", "group": group, "token": b64(binding_id), "relay": self._relay_json()}

    def leave(self, member: str, group: str, now: float) -> None:
        self._leave(group, member, now)

    def disconnected(self, member: str, now: float) -> None:
        """The member's last control session ended: it leaves every call and its CSK is forgotten."""
        for group, uri in [key for key in self._joined if key[1] == member]:
            self._leave(group, uri, now)
        self._channels.pop(member, None)

    # -- the relay's RTCP results ----------------------------------------------------------------------------------

    def member_bound(self, binding: Binding, now: float) -> bool:
        """The relay bound the member's address (first ``PTTJ``): it enters the floor (late entry)."""
        joined = self._joined.get((binding.group, binding.member))
        arbiter = self._arbiters.get(binding.group)
        if joined is None or arbiter is None or joined.participant.ssrc != binding.ssrc:
            return False
        joined.bound = True
        self._floor(binding.group, arbiter.join(joined.participant, now))
        self._event(binding.group, "joined", binding.member)
        return True

    def floor_packet(self, binding: Binding, data: bytes, addr: Address, now: float) -> None:
        """An SRTCP floor control packet from a bound member."""
        channel = self._channels.get(binding.member)
        arbiter = self._arbiters.get(binding.group)
        if channel is None or arbiter is None:
            return
        try:
            messages = parse_rtcp(channel.unprotect(data))
        except (SrtcpError, FloorMessageError) as exc:
            self._dropped.append(
                Dropped(f"floor message from {_at(binding.member, addr)} dropped: {exc}", binding.member, addr)
            )
            return
        for message in messages:
            if message.ssrc != binding.ssrc:
                text = f"floor message from {_at(binding.member, addr)} with a foreign SSRC dropped"
                self._dropped.append(Dropped(text, binding.member, addr))
                continue
            self._floor(binding.group, arbiter.receive(binding.ssrc, message, now))

    def members_dead(self, bindings: Iterable[Binding], now: float) -> None:
        """The relay unbound members that stopped sending keepalives."""
        for binding in bindings:
            joined = self._joined.pop((binding.group, binding.member), None)
            arbiter = self._arbiters.get(binding.group)
            if arbiter is not None and joined is not None:
                self._floor(binding.group, arbiter.leave(joined.participant.ssrc, now))
            self._event(binding.group, "dead", binding.member)

    # -- pushes of keys ----------------------------------------------------------------------------------------------

    def imessages(
        self, group: str, gmk_id: bytes, messages: Mapping[str, bytes], online: Callable[[str], bool] | None = None
    ) -> None:
        """Fresh I_MESSAGEs of a group (committed by the manager): each to its member, with its group list. Only
        to members ``online`` (with a control session), if given: the others get theirs from the store at login."""
        for member, data in messages.items():
            if online is not None and not online(member):
                continue
            self._pushes.append(
                (member, {"type": "imessage", "group": group, "gmk_id": gmk_id.hex(), "data": b64(data)})
            )
            self._push_groups(member)

    # -- timers ------------------------------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Run the floor timers due at ``now``."""
        for group in [g for g, deadline in self._deadlines.items() if deadline <= now]:
            arbiter = self._arbiters.get(group)
            if arbiter is None:
                self._deadlines.pop(group, None)
                continue
            self._floor(group, arbiter.on_timer(now))

    # -- status ------------------------------------------------------------------------------------------------------

    def status(self, group: str, online: Iterable[str] = ()) -> dict[str, Any]:
        """Live state of a group for dispatchers: ``online`` are the member URIs with a control session."""
        members = self.members(group)
        present = set(online)
        arbiter = self._arbiters.get(group)
        holder = arbiter.holder if arbiter is not None else None
        return {
            "present": [m for m in members if m in present],
            "joined": sorted(b.member for b, _, _ in self.relay.members(group)),
            "talker": holder.uri if holder else None,
            "queue": [p.uri for p in arbiter.queue] if arbiter else [],
            "alerts": alerts_json(self._groups[group].alerts.values()) if group in self._groups else [],
        }

    # -- emergency alerts and broadcast (issue 16) ---------------------------------------------------------------------

    def check_member(self, group: str, member: str) -> None:
        """Refused (404 no such group, 403 not a member) unless ``member`` is a member of ``group`` as committed
        (before any store work)."""
        check_membership(self._groups.get(group), group, member)

    def _arbiter_config(self, info: GroupInfo) -> ArbiterConfig:
        return ArbiterConfig(max_burst=info.max_burst, server_ssrc=self.server_ssrc, verified_call_types=True)

    def _alerts_changed(self, old: GroupInfo, info: GroupInfo) -> None:
        """Tell every member of each alert raised or cancelled, and the floor of the new urgencies."""
        messages = alert_messages(info.uri, old.alerts, info.alerts)
        arbiter = self._arbiters.get(info.uri)
        if messages and arbiter is not None:
            arbiter.set_alerts(urgencies(info.alerts))
        self._pushes += [(member, message) for message in messages for member in info.members]

    def _rights_changed(self, old: GroupInfo, info: GroupInfo) -> None:
        """A member's priority, role or broadcast right changed: its floor participant follows at once (from its
        next request) and the member is sent its group list (which names the broadcast right)."""
        arbiter = self._arbiters.get(info.uri)
        for uri, spec in info.members.items():
            before = old.members.get(uri)
            if before is None or before == spec:
                continue
            joined = self._joined.get((info.uri, uri))
            if joined is not None:
                p = joined.participant
                joined.participant = Participant(
                    p.ssrc, uri, spec.priority, spec.role == DISPATCHER_ROLE, p.receive_only, spec.broadcast
                )
                if arbiter is not None and joined.bound:
                    arbiter.update_participant(joined.participant)
            if before.broadcast != spec.broadcast:
                self._push_groups(uri)

    # -- internals ---------------------------------------------------------------------------------------------------

    def _relay_json(self) -> dict[str, Any]:
        return {"host": self.relay_address.host, "port": self.relay_address.port}

    def _forget_membership(self, group: str, member: str) -> None:
        groups = self._groups_of.get(member)
        if groups is not None:
            groups.discard(group)
            if not groups:
                del self._groups_of[member]

    def _push_groups(self, member: str) -> None:
        self._pushes.append((member, {"type": "groups", "groups": self.groups_of(member)}))

    def _leave(self, group: str, member: str, now: float) -> None:
        joined = self._joined.pop((group, member), None)
        self.relay.unbind(group, member)
        arbiter = self._arbiters.get(group)
        if arbiter is not None and joined is not None:
            self._floor(group, arbiter.leave(joined.participant.ssrc, now))

    def _floor(self, group: str, sends: list[Send]) -> None:
        """Protect and address the arbiter's messages, follow its events, re-arm its timer."""
        arbiter = self._arbiters[group]
        if sends:
            addresses = {b.ssrc: (b.member, a) for b, a, _ in self.relay.members(group)}
            everyone = [p.ssrc for p in arbiter.participants]
            for send in sends:
                for ssrc in [send.to] if send.to is not None else everyone:
                    if ssrc == send.exclude or ssrc not in addresses:
                        continue
                    member, address = addresses[ssrc]
                    channel = self._channels.get(member)
                    if channel is None:
                        continue
                    try:
                        self._datagrams.append((channel.protect(bytes(send.message)), address))
                    except SrtcpError as exc:  # the CSK's SRTCP index ran out: the member must send a new CSK
                        text = f"floor message to {_at(member, address)} not sent: {exc}"
                        self._dropped.append(Dropped(text, member, address))
        for event in arbiter.events():
            if event.kind is FloorEventKind.GRANTED:
                self.relay.set_talker(group, event.member_ssrc)
                self._event(group, "talking", event.member)
            elif event.kind in (FloorEventKind.IDLE, FloorEventKind.REVOKED):
                holder = arbiter.holder
                self.relay.set_talker(group, holder.ssrc if holder else None)
                if holder is None:
                    self._event(group, "idle", None)
        deadline = arbiter.next_deadline()
        if deadline is None:
            self._deadlines.pop(group, None)
        else:
            self._deadlines[group] = deadline

    def _event(self, group: str, kind: str, uri: str | None) -> None:
        message: dict[str, Any] = {"type": "event", "group": group, "kind": kind}
        if uri is not None:
            message["uri"] = uri
        for member in self.members(group):
            self._pushes.append((member, message))


def _at(member: str, addr: Address) -> str:
    return f"{member} ({addr[0]}:{addr[1]})"
