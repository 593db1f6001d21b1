"""The group key lifecycle (TS 33.180 §7.1): one GMK per group, distributed to each member in its own I_MESSAGE.

- Creating a group makes a fresh GMK and sends it to every member, signed as the group's identity.
- Adding a member sends it the *current* GMK (an addition needs no rekey: the newcomer may hear what the group
  says from now on, and it never receives anything older).
- Removing a member rekeys: a fresh GMK goes to the remaining members only; the removed member's stored
  I_MESSAGEs are deleted, so it holds nothing of the new key.
- A GMK made in an earlier key period is replaced (``check_key_period``, called by the wiring from a timer).
- Recorded groups (issue 17, ``set_recording``): turning recording on rekeys, and the server keeps no GMK of a
  recorded group (``GroupStore.set_active_key``), so adding a member rekeys too: a newcomer never holds the key of
  a burst recorded before it joined, and the server never holds the key of any recorded burst.

Who may ask for which change is the dispatcher API's business (``server.dispatch.policy``); the manager refuses
what nobody may do: a wildcard URI (any ``*``) or one of ``reserved`` (the server's own identity, the KMS's) as a
group or a member.

Every change is one store transaction (group, members, key and I_MESSAGEs all or nothing); the I_MESSAGEs are
built before it (the SAKKE work stays outside the database lock) and pushed to connected members after it
commits. Calls are serialised by a lock, so the dispatch API's worker thread and a timer may both use one
manager. ``on_imessage`` runs on the calling thread once the change has committed and the lock is released (so
it may wait for the reactor even while the reactor waits for the manager): a wiring whose connections live on
the reactor hands the message over with ``reactor.callFromThread``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ptt.emergency import Alert, Level
from ptt.groupkeys import GroupKey, build_gmk_messages, make_group_key
from ptt.mikey.imessage import IdentityKeys, KmsDomain
from server.groups.store import (
    DEFAULT_MAX_BURST,
    DEFAULT_ORG,
    DEFAULT_PRIORITY,
    DuplicateGroup,
    DuplicateMember,
    GroupError,
    GroupRecord,
    GroupStore,
    InvalidValue,
    KeyInfo,
    KeysUnavailable,
    MemberRecord,
    NoSuchGroup,
    NoSuchMember,
    StoredIMessage,
    check_group_name,
    check_max_burst,
    check_not_reserved,
    check_priority,
    check_role,
    check_uri,
)
from server.keydistribution import GroupKeyDistributor

__all__ = ["LARGE_GROUP", "ChangeSink", "GroupChange", "GroupKeySource", "GroupManager", "IMessageSink", "MemberSpec"]

log = logging.getLogger("ptt.groups")

LARGE_GROUP = 50
"""From this many recipients, I_MESSAGEs are built on the distributor's process pool (if there is one)."""

IMessageSink = Callable[[str, str, bytes, bytes], None]
"""``on_imessage(group, member, gmk_id, data)``: hand a fresh I_MESSAGE to a connected member."""


@dataclass(frozen=True, repr=False)
class GroupChange:
    """A committed change of one group, as the live call must know it: the group and its members now (None:
    deleted) and the I_MESSAGEs made for the change (empty if the key did not change)."""

    group: str
    record: GroupRecord | None
    members: list[MemberRecord]
    gmk_id: bytes = b""
    messages: dict[str, bytes] = field(default_factory=dict)
    alerts: list[Alert] = field(default_factory=list)
    """The members' emergency alerts as committed (``GroupStore.alerts``)."""


ChangeSink = Callable[[GroupChange], None]
"""``on_change(change)``: runs on the calling thread after the commit, once per operation."""


class GroupKeySource(Protocol):
    """Where the group server's signing keys for group identities come from (the wiring: its KMS keystore)."""

    def keys_for(self, group_uri: str, now: float) -> IdentityKeys | None:
        """The group identity's keys for the key period at ``now``; None if they were not provisioned."""
        ...

    def domain(self) -> KmsDomain:
        """The KMS domain of the group identities and of the members."""
        ...


@dataclass(frozen=True)
class MemberSpec:
    uri: str
    priority: int = DEFAULT_PRIORITY
    role: str = "member"

    def check(self) -> MemberSpec:
        check_uri(self.uri, "member URI")
        check_priority(self.priority)
        check_role(self.role)
        return self


@dataclass(frozen=True, repr=False)
class _Push:
    """Committed I_MESSAGEs waiting to be handed to ``on_imessage``."""

    group: str
    key: GroupKey
    messages: dict[str, bytes]


class GroupManager:
    def __init__(
        self,
        store: GroupStore,
        keys: GroupKeySource,
        distributor: GroupKeyDistributor | None = None,
        on_imessage: IMessageSink | None = None,
        on_change: ChangeSink | None = None,
        reserved: Iterable[str] = (),
    ) -> None:
        self.store = store
        self.reserved = tuple(reserved)
        self.keys = keys
        self.distributor = distributor
        self.on_imessage = on_imessage
        self.on_change = on_change
        self._lock = threading.RLock()

    # --- operations ---

    def create_group(
        self,
        uri: str,
        name: str,
        members: Sequence[MemberSpec],
        *,
        created_by: str,
        now: float,
        max_burst: float = DEFAULT_MAX_BURST,
        org: str = DEFAULT_ORG,
    ) -> GroupRecord:
        """A new group of ``org`` owned by ``created_by``, with a fresh GMK sent to every member (one I_MESSAGE
        each, signed as ``uri``)."""
        check_uri(uri, "group URI")
        check_not_reserved(uri, self.reserved, "group URI")
        check_group_name(name)
        check_max_burst(max_burst)
        specs = [spec.check() for spec in members]
        seen: set[str] = set()
        for spec in specs:
            check_not_reserved(spec.uri, self.reserved, "member URI")
            if spec.uri in seen:
                raise InvalidValue(f"{spec.uri} is listed twice")
            if spec.uri == uri:
                raise InvalidValue(f"the group {uri} cannot be a member of itself")
            seen.add(spec.uri)
        with self._lock:
            if self.store.group(uri) is not None:
                raise DuplicateGroup(uri)
            signer = self._signing_keys(uri, now)
            key = make_group_key()
            messages = self._build(signer, key, [s.uri for s in specs], now)
            with self.store.transaction():
                record = self.store.create_group(
                    uri, name, created_by=created_by, max_burst=max_burst, now=now, org=org
                )
                for spec in specs:
                    self.store.add_member(uri, spec.uri, priority=spec.priority, role=spec.role, now=now, by=created_by)
                self._install(uri, key, signer.period_no, messages, now=now, by=created_by)
        log.info("group %s created by %s with %d members (GMK-ID %s)", uri, created_by, len(specs), key.gmk_id.hex())
        self._push(_Push(uri, key, messages))
        return record

    def add_member(self, group: str, spec: MemberSpec, *, by: str, now: float) -> MemberRecord:
        """Add a member and send it the current GMK (or rekey the group if its GMK is of an earlier period)."""
        spec.check()
        check_not_reserved(spec.uri, self.reserved, "member URI")
        if spec.uri == group:
            raise InvalidValue(f"the group {group} cannot be a member of itself")
        with self._lock:
            self._require_group(group)
            if self.store.member(group, spec.uri) is not None:
                raise DuplicateMember(group, spec.uri)
            active = self.store.active_key(group)
            if active is None or active[1] < self.keys.domain().period_number(now):
                reason = f"{spec.uri} added; key of an earlier period"
                _, push = self._rekey(group, add=spec, by=by, now=now, reason=reason)
            else:
                signer = self._signing_keys(group, now)
                key = active[0]
                messages = self._build(signer, key, [spec.uri], now)
                with self.store.transaction():
                    self.store.add_member(group, spec.uri, priority=spec.priority, role=spec.role, now=now, by=by)
                    self._store_messages(group, key, messages, now=now)
                push = _Push(group, key, messages)
            record = self.store.member(group, spec.uri)
        self._push(push)
        assert record is not None
        return record

    def remove_member(self, group: str, uri: str, *, by: str, now: float) -> KeyInfo:
        """Remove a member and rekey: a fresh GMK for the remaining members only. Returns the new key's info."""
        with self._lock:
            self._require_group(group)
            if self.store.member(group, uri) is None:
                raise NoSuchMember(group, uri)
            info, push = self._rekey(group, remove=uri, by=by, now=now, reason=f"{uri} removed")
        self._push(push)
        return info

    def update_member(
        self, group: str, uri: str, *, priority: int | None = None, role: str | None = None, by: str, now: float
    ) -> MemberRecord:
        """Change a member's floor priority or role (no key change)."""
        with self._lock:
            record = self.store.update_member(group, uri, priority=priority, role=role, now=now, by=by)
        self._changed(group)
        return record

    def set_recording(self, group: str, days: int | None, *, by: str, now: float) -> KeyInfo | None:
        """Record ``group`` keeping bursts ``days`` days, or stop (None). Turning it on rekeys (the new GMK is not
        kept by the server); returns the new key's info then."""
        with self._lock:
            self._require_group(group)
            self.store.set_recording(group, days, now=now, by=by)
            if days is None:
                push = None
                info = None
            else:
                info, push = self._rekey(group, by=by, now=now, reason=f"recording on ({days} days)")
        if push is None:
            self._changed(group)
        else:
            self._push(push)
        return info

    def delete_group(self, group: str, *, by: str, now: float) -> None:
        """Delete a group, its members, its keys and its stored I_MESSAGEs."""
        with self._lock:
            self.store.delete_group(group, now=now, by=by)
        log.info("group %s deleted by %s", group, by)
        self._changed(group)

    # --- emergency alerts and broadcast rights (issue 16: no key change) ---

    def raise_alert(self, group: str, uri: str, level: Level, *, call: bool, now: float) -> Alert | None:
        """``uri`` raises its emergency / imminent peril alert (None: already raised at that level)."""
        with self._lock:
            alert = self.store.raise_alert(group, uri, level, call=call, now=now)
        if alert is not None:
            log.warning("%s raised %s in %s", uri, level.label, group)
            self._changed(group)
        return alert

    def cancel_alert(self, group: str, uri: str, *, by: str, dispatcher: bool, now: float) -> Alert:
        """``by`` cancels the alert of ``uri`` (a member its own, a dispatcher any: ``GroupStore.cancel_alert``)."""
        with self._lock:
            alert = self.store.cancel_alert(group, uri, by=by, dispatcher=dispatcher, now=now)
        log.warning("%s's %s in %s cancelled by %s", uri, alert.level.label, group, by)
        self._changed(group)
        return alert

    def acknowledge_alert(self, group: str, uri: str, *, by: str, now: float) -> Alert | None:
        """A dispatcher acknowledges the alert of ``uri`` (None: already acknowledged; nothing changes then)."""
        with self._lock:
            alert = self.store.acknowledge_alert(group, uri, by=by, now=now)
        if alert is not None:
            log.warning("%s's %s in %s acknowledged by %s", uri, alert.level.label, group, by)
            self._changed(group)
        return alert

    def set_broadcast(self, group: str, uri: str, allowed: bool, *, by: str, now: float) -> MemberRecord:
        """Give or take a member's right to make broadcast group calls."""
        with self._lock:
            self.store.set_broadcast(group, uri, allowed, now=now, by=by)
            record = self.store.member(group, uri)
        self._changed(group)
        assert record is not None
        return record

    def rekey(self, group: str, *, by: str | None, now: float, reason: str = "requested") -> KeyInfo:
        """A fresh GMK for every current member (also the operator's answer to a suspected key compromise)."""
        with self._lock:
            self._require_group(group)
            info, push = self._rekey(group, by=by, now=now, reason=reason)
        self._push(push)
        return info

    def check_key_period(self, now: float, serves: Callable[[str], bool] | None = None) -> list[str]:
        """Rekey every group whose active GMK was made in an earlier key period (only those ``serves`` says
        this server serves, if given); returns their URIs. A group whose keys are missing is logged and skipped
        (the others are still rekeyed)."""
        rekeyed: list[str] = []
        pushes: list[_Push] = []
        with self._lock:
            period = self.keys.domain().period_number(now)
            for group in self.store.groups():
                if serves is not None and not serves(group.uri):
                    continue
                info = self.store.key_info(group.uri)
                if info is not None and info.period_no >= period:
                    continue
                try:
                    _, push = self._rekey(group.uri, by=None, now=now, reason=f"key period {period}")
                except GroupError as exc:
                    log.error("cannot rekey %s for key period %d: %s", group.uri, period, exc)
                    continue
                rekeyed.append(group.uri)
                pushes.append(push)
        for push in pushes:
            self._push(push)
        return rekeyed

    def imessages_for(self, member_uri: str) -> list[StoredIMessage]:
        """What a member (re)connecting should be given: its latest I_MESSAGE of each of its groups."""
        return self.store.imessages_for(member_uri)

    def groups(self) -> list[GroupRecord]:
        return self.store.groups()

    def members(self, group: str) -> list[MemberRecord]:
        return self.store.members(group)

    # --- the steps ---

    def _require_group(self, group: str) -> None:
        if self.store.group(group) is None:
            raise NoSuchGroup(group)

    def _signing_keys(self, group: str, now: float) -> IdentityKeys:
        period = self.keys.domain().period_number(now)
        keys = self.keys.keys_for(group, now)
        if keys is None:
            reason = getattr(self.keys, "missing_reason", lambda uri: None)(group)
            if reason:  # the KMS said why (refused login, no grant, unreachable): say that, not a guess
                raise KeysUnavailable(
                    f"the group server holds no keys of the group identity {group} for key period {period}: its "
                    f"KMS refused or failed them: {reason}"
                )
            raise KeysUnavailable(
                f"the group server holds no keys of the group identity {group} for key period {period}: grant the "
                f"server's KMS account that identity (ptt-kms grant ACCOUNT {group}) and let the server provision"
            )
        if keys.uri != group or keys.period_no != period:
            raise KeysUnavailable(
                f"the key source gave keys of {keys.uri} for key period {keys.period_no}, "
                f"not of {group} for key period {period}"
            )
        if not keys.ssk or not keys.pvt:
            raise KeysUnavailable(f"the keys held for {group} have no signing key (SSK/PVT)")
        return keys

    def _build(self, signer: IdentityKeys, key: GroupKey, members: list[str], now: float) -> dict[str, bytes]:
        if self.distributor is not None and (self.distributor.parallel or len(members) >= LARGE_GROUP):
            return self.distributor.distribute(signer, key, members, now=now)
        return build_gmk_messages(signer, key, members, now=now)

    def _rekey(
        self,
        group: str,
        *,
        add: MemberSpec | None = None,
        remove: str | None = None,
        by: str | None,
        now: float,
        reason: str,
    ) -> tuple[KeyInfo, _Push]:
        """The new key is committed; the caller pushes its I_MESSAGEs once it has released the lock."""
        signer = self._signing_keys(group, now)
        recipients = [m.uri for m in self.store.members(group) if m.uri != remove]
        if add is not None:
            recipients.append(add.uri)
        key = make_group_key()
        messages = self._build(signer, key, recipients, now)
        with self.store.transaction():
            if remove is not None:
                self.store.remove_member(group, remove, now=now, by=by)
            if add is not None:
                self.store.add_member(group, add.uri, priority=add.priority, role=add.role, now=now, by=by)
            record = self.store.group(group)
            org = None if record is None else record.org
            self.store.audit("rekey", actor=by, detail=f"{group}: {reason}", now=now, org=org)
            self._install(group, key, signer.period_no, messages, now=now, by=by)
        log.info("group %s rekeyed (%s): GMK-ID %s to %d members", group, reason, key.gmk_id.hex(), len(messages))
        return KeyInfo(key.gmk_id, signer.period_no, now), _Push(group, key, messages)

    def _install(
        self, group: str, key: GroupKey, period_no: int, messages: dict[str, bytes], *, now: float, by: str | None
    ) -> None:
        self.store.set_active_key(group, key, period_no, now=now, by=by)
        self._store_messages(group, key, messages, now=now)

    def _store_messages(self, group: str, key: GroupKey, messages: dict[str, bytes], *, now: float) -> None:
        for member, data in messages.items():
            self.store.store_imessage(group, member, key.gmk_id, data, now=now)

    def _changed(self, group: str, push: _Push | None = None) -> None:
        if self.on_change is None:
            return
        try:
            record = self.store.group(group)
            members = self.store.members(group) if record is not None else []
            alerts = self.store.alerts(group) if record is not None else []
            if push is None:
                self.on_change(GroupChange(group, record, members, alerts=alerts))
            else:
                self.on_change(GroupChange(group, record, members, push.key.gmk_id, push.messages, alerts))
        except Exception:  # the change is committed; a member missing it gets it on reconnect
            log.exception("announcing the change of %s failed", group)

    def _push(self, push: _Push) -> None:
        self._changed(push.group, push)
        if self.on_imessage is None:
            return
        for member, data in push.messages.items():
            try:
                self.on_imessage(push.group, member, push.key.gmk_id, data)
            except Exception:  # a failed push must not undo a committed change; the member gets it on reconnect
                log.exception("pushing the I_MESSAGE of %s to %s failed", push.group, member)
