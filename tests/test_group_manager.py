"""The group store (accounts, groups, members, sealed keys, I_MESSAGEs, audit) and the GMK lifecycle of the group
manager, with a real KMS domain in-process: members decrypt what they are sent, and a removed member cannot."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ptt.crypto.kms import MasterSecrets, derive_user_keys, generate_master_secrets
from ptt.groupkeys import GroupKey, make_group_key
from ptt.mikey.errors import DecryptionFailed, WrongRecipient
from ptt.mikey.imessage import IdentityKeys, KmsDomain, ReceivedKey, ReplayCache, receive_i_message
from ptt.ts33180 import KeyPurpose
from server.accounts import passwords
from server.groups import store as store_module
from server.groups.manager import LARGE_GROUP, GroupManager, MemberSpec
from server.groups.store import (
    AccountError,
    DuplicateGroup,
    DuplicateMember,
    GroupError,
    GroupStore,
    InvalidValue,
    KeysUnavailable,
    LockedOut,
    LoginFailed,
    NoSuchGroup,
    NoSuchMember,
    StoreError,
)
from server.keydistribution import GroupKeyDistributor
from server.kms import store as kms_store
from tests.postgres import dump, integrity_errors, raw

NOW = 1_790_000_000.0
PERIOD = 30 * 24 * 3600
GROUP = "sip:fire-ops@example.org"
OTHER = "sip:rescue@example.org"
ALICE, BOB, CAROL, DAVE = (f"sip:{n}@example.org" for n in ("alice", "bob", "carol", "dave"))
DATA_KEY = bytes(range(32))
PASSWORD = "dispatch password"


@pytest.fixture(autouse=True)
def cheap_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "SCRYPT_N", 2**8)


# --- a KMS domain in-process ----------------------------------------------------------------------------------


@dataclass
class KmsWorld:
    master: MasterSecrets
    domain: KmsDomain
    _keys: dict[tuple[str, int], IdentityKeys] = field(default_factory=dict)

    def keys(self, uri: str, now: float) -> IdentityKeys:
        period = self.domain.period_number(now)
        if (uri, period) not in self._keys:
            material = derive_user_keys(self.domain.uid(uri, period), self.master)
            self._keys[uri, period] = IdentityKeys(uri, self.domain, period, material.ssk, material.pvt, material.rsk)
        return self._keys[uri, period]

    def receive(self, member: str, data: bytes, *, group: str = GROUP, now: float = NOW) -> ReceivedKey:
        return receive_i_message(
            data,
            responder=self.keys(member, now),
            expected_initiators=group,
            trusted_kms={self.domain.kms_uri: self.domain},
            now=now + 1,
            replay_cache=ReplayCache(),
        )


@dataclass
class KeySource:
    """The test's GroupKeySource: the group identities' keys straight from the KMS (None if not provisioned)."""

    world: KmsWorld
    provisioned: set[str] | None = None  # None: every identity

    def keys_for(self, group_uri: str, now: float) -> IdentityKeys | None:
        if self.provisioned is not None and group_uri not in self.provisioned:
            return None
        return self.world.keys(group_uri, now)

    def domain(self) -> KmsDomain:
        return self.world.domain


@pytest.fixture(scope="session")
def world() -> KmsWorld:
    master = generate_master_secrets()
    return KmsWorld(master, KmsDomain("kms.example.org", master.kpak, master.z_public, PERIOD, 0))


@pytest.fixture
def db(database_url: str) -> Iterator[GroupStore]:
    s = GroupStore(database_url, DATA_KEY)
    yield s
    s.close()


@dataclass
class Pushes:
    sent: list[tuple[str, str, bytes, bytes]] = field(default_factory=list)

    def __call__(self, group: str, member: str, gmk_id: bytes, data: bytes) -> None:
        self.sent.append((group, member, gmk_id, data))

    def to(self, member: str) -> list[bytes]:
        return [data for _, m, _, data in self.sent if m == member]


@pytest.fixture
def pushes() -> Pushes:
    return Pushes()


@pytest.fixture
def manager(db: GroupStore, world: KmsWorld, pushes: Pushes) -> GroupManager:
    return GroupManager(db, KeySource(world), on_imessage=pushes)


# --- store: groups and members --------------------------------------------------------------------------------


def test_schema_is_versioned_and_wal(db: GroupStore) -> None:
    assert db.schema_version() == store_module.SCHEMA_VERSION
    assert db.journal_mode() == ("wal" if db.backend == "sqlite" else "postgresql")


def test_newer_schema_is_refused(database_url: str) -> None:
    GroupStore(database_url, DATA_KEY).close()
    with raw(database_url) as db:
        if "://" in database_url:
            db.execute("UPDATE schema_version SET version = 99")
        else:
            db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="newer"):
        GroupStore(database_url, DATA_KEY)


def test_group_crud(db: GroupStore) -> None:
    record = db.create_group(GROUP, "Fire ops", created_by="admin", now=NOW)
    assert record == store_module.GroupRecord(GROUP, "Fire ops", NOW, "admin", 30.0)
    db.create_group(OTHER, "Rescue", created_by="admin", max_burst=12.5, now=NOW + 1)
    with pytest.raises(DuplicateGroup, match="already exists"):
        db.create_group(GROUP, "again", created_by="admin", now=NOW)
    assert [g.uri for g in db.groups()] == [GROUP, OTHER]
    assert db.group(OTHER) is not None and db.group(OTHER).max_burst == 12.5  # type: ignore[union-attr]
    assert db.group("sip:nobody@example.org") is None
    db.delete_group(OTHER, now=NOW, by="admin")
    assert db.group(OTHER) is None
    with pytest.raises(NoSuchGroup, match="no group"):
        db.delete_group(OTHER, now=NOW)
    assert [(a.actor, a.event) for a in db.audit_log()][-3:] == [
        ("admin", "group-created"),
        ("admin", "group-created"),
        ("admin", "group-deleted"),
    ]


def test_member_crud(db: GroupStore) -> None:
    db.create_group(GROUP, "Fire ops", created_by="admin", now=NOW)
    db.create_group(OTHER, "Rescue", created_by="admin", now=NOW)
    db.add_member(GROUP, BOB, now=NOW)
    added = db.add_member(GROUP, ALICE, priority=200, role="dispatcher", now=NOW + 1)
    assert added == store_module.MemberRecord(GROUP, ALICE, 200, "dispatcher", NOW + 1)
    db.add_member(OTHER, ALICE, now=NOW)
    with pytest.raises(DuplicateMember):
        db.add_member(GROUP, ALICE, now=NOW)
    with pytest.raises(NoSuchGroup):
        db.add_member("sip:nogroup@example.org", ALICE, now=NOW)
    assert [(m.uri, m.priority, m.role) for m in db.members(GROUP)] == [
        (ALICE, 200, "dispatcher"),
        (BOB, 100, "member"),
    ]
    assert [g.uri for g in db.groups_of(ALICE)] == [GROUP, OTHER]
    assert db.member_counts() == {GROUP: 2, OTHER: 1}

    updated = db.update_member(GROUP, BOB, priority=7, now=NOW)
    assert (updated.priority, updated.role) == (7, "member")
    assert db.update_member(GROUP, BOB, role="dispatcher", now=NOW).priority == 7
    with pytest.raises(NoSuchMember, match="not a member"):
        db.update_member(GROUP, CAROL, priority=1, now=NOW)

    db.remove_member(GROUP, BOB, now=NOW)
    with pytest.raises(NoSuchMember):
        db.remove_member(GROUP, BOB, now=NOW)
    db.delete_group(OTHER, now=NOW)  # cascades to its members
    assert [g.uri for g in db.groups_of(ALICE)] == [GROUP]
    with pytest.raises(NoSuchGroup):
        db.members(OTHER)


@pytest.mark.parametrize(
    "uri",
    [
        *("", "alice", "http://example.org", "sip:", "sip:a b@example.org", "sip:a\tb", "sip:\x00x", "SIP:a@b"),
        *("sip:é@x", "sip:" + "a" * 252),
    ],
)
def test_uri_validation(db: GroupStore, uri: str) -> None:
    with pytest.raises(InvalidValue):
        db.create_group(uri, "name", created_by="admin", now=NOW)
    db.create_group(GROUP, "ok", created_by="admin", now=NOW)
    with pytest.raises(InvalidValue):
        db.add_member(GROUP, uri, now=NOW)


def test_value_validation(db: GroupStore) -> None:
    for uri in ("sip:a@example.org", "sips:b@example.org", "tel:+441234567", "urn:service:sos", "sip:" + "a" * 251):
        store_module.check_uri(uri)
    db.create_group(GROUP, "ok", created_by="admin", now=NOW)
    for priority in (-1, 256, True, "5", 1.0):
        with pytest.raises(InvalidValue, match="priority"):
            db.add_member(GROUP, ALICE, priority=priority, now=NOW)  # type: ignore[arg-type]
    with pytest.raises(InvalidValue, match="role"):
        db.add_member(GROUP, ALICE, role="boss", now=NOW)
    for burst in (0, -1, float("nan"), float("inf"), 10_000, True):
        with pytest.raises(InvalidValue, match="max_burst"):
            db.create_group(OTHER, "x", created_by="admin", max_burst=burst, now=NOW)
    for name in ("", "   ", "a\nb", "x" * 101):
        with pytest.raises(InvalidValue, match="name"):
            db.create_group(OTHER, name, created_by="admin", now=NOW)
    assert db.members(GROUP) == [] and db.group(OTHER) is None


def test_transaction_is_all_or_nothing(db: GroupStore) -> None:
    with pytest.raises(DuplicateMember), db.transaction():
        db.create_group(GROUP, "Fire ops", created_by="admin", now=NOW)
        db.add_member(GROUP, ALICE, now=NOW)
        db.add_member(GROUP, ALICE, now=NOW)
    assert db.group(GROUP) is None and db.groups_of(ALICE) == []


# --- store: accounts and lockout ------------------------------------------------------------------------------


def test_dispatcher_accounts(database_url: str, db: GroupStore) -> None:
    db.add_dispatcher("dana", PASSWORD, now=NOW)
    db.add_dispatcher("root", PASSWORD, role="admin", now=NOW)
    assert db.authenticate("dana", PASSWORD, now=NOW) == store_module.DispatcherAccount("dana", "dispatcher", False)
    assert db.authenticate("root", PASSWORD, now=NOW).role == "admin"
    with pytest.raises(AccountError, match="already exists"):
        db.add_dispatcher("dana", PASSWORD, now=NOW)
    with pytest.raises(AccountError, match="bad account name"):
        db.add_dispatcher("-x y", PASSWORD, now=NOW)
    with pytest.raises(AccountError, match="at least"):
        db.add_dispatcher("eve", "short", now=NOW)
    with pytest.raises(AccountError, match="role"):
        db.add_dispatcher("eve", PASSWORD, role="user", now=NOW)
    with pytest.raises(LoginFailed):
        db.authenticate("nobody", PASSWORD, now=NOW)
    db.set_dispatcher_disabled("dana", True, now=NOW)
    with pytest.raises(LoginFailed, match="disabled"):
        db.authenticate("dana", PASSWORD, now=NOW)
    db.remove_dispatcher("root", now=NOW)
    assert [a.username for a in db.dispatchers()] == ["dana"]
    # the password is kept only as a scrypt hash
    assert PASSWORD.encode() not in dump(database_url)


def test_lockout_policy_is_the_kms_one(db: GroupStore) -> None:
    db.add_dispatcher("dana", PASSWORD, now=NOW)
    for i in range(kms_store.LOCKOUT_AFTER):
        with pytest.raises(LoginFailed):
            db.authenticate("dana", "wrong password", now=NOW + i)
    t = NOW + kms_store.LOCKOUT_AFTER - 1
    with pytest.raises(LockedOut) as locked:
        db.authenticate("dana", PASSWORD, now=t + 1)  # the right password does not help while locked
    assert locked.value.retry_after == pytest.approx(kms_store.LOCKOUT_MIN - 1)
    assert db.authenticate("dana", PASSWORD, now=t + kms_store.LOCKOUT_MIN).username == "dana"
    # failures after a success count from zero again; a new password lifts a lock
    for i in range(kms_store.LOCKOUT_AFTER + 1):
        with pytest.raises((LoginFailed, LockedOut)):
            db.authenticate("dana", "wrong password", now=t + 100 + i)
    with pytest.raises(LockedOut):
        db.authenticate("dana", PASSWORD, now=t + 110)
    db.set_dispatcher_password("dana", "a new password", now=t + 110)
    assert db.authenticate("dana", "a new password", now=t + 110).username == "dana"
    events = [a.event for a in db.audit_log(200)]
    assert "login-failed" in events and "login-locked" in events


# --- store: keys and I_MESSAGEs -------------------------------------------------------------------------------


def test_gmk_is_sealed_and_superseded_keys_erased(database_url: str, db: GroupStore) -> None:
    db.create_group(GROUP, "Fire ops", created_by="admin", now=NOW)
    assert db.active_key(GROUP) is None and db.key_info(GROUP) is None
    first, second = make_group_key(), make_group_key()
    db.set_active_key(GROUP, first, 7, now=NOW)
    active = db.active_key(GROUP)
    assert active is not None and active[0] == first and active[1] == 7
    assert first.gmk not in dump(database_url)
    db.set_active_key(GROUP, second, 8, now=NOW + 5)
    assert db.active_key(GROUP) == (second, 8)
    assert db.key_info(GROUP) == store_module.KeyInfo(second.gmk_id, 8, NOW + 5)
    assert [k.gmk_id for k in db.key_history(GROUP)] == [first.gmk_id, second.gmk_id]
    with raw(database_url) as tables:
        rows = tables.execute("SELECT gmk_id, sealed_gmk, active FROM group_keys ORDER BY id").fetchall()
        assert rows[0][1] is None and rows[0][2] == 0 and rows[1][2] == 1  # the superseded GMK is erased
        with pytest.raises(integrity_errors(database_url)):  # at most one active key per group
            tables.execute(
                "INSERT INTO group_keys (group_uri, gmk_id, rand, sealed_gmk, period_no, created_at, active) "
                "VALUES (?, ?, ?, ?, 1, 1, 1)",
                (GROUP, first.gmk_id, b"\x00", b"\x00"),
            )
    assert second.gmk not in dump(database_url)


def test_altered_sealed_gmk_is_refused(database_url: str, db: GroupStore) -> None:
    db.create_group(GROUP, "Fire ops", created_by="admin", now=NOW)
    db.create_group(OTHER, "Rescue", created_by="admin", now=NOW)
    db.set_active_key(GROUP, make_group_key(), 1, now=NOW)
    db.set_active_key(OTHER, make_group_key(), 1, now=NOW)
    with raw(database_url) as tables:  # move one group's sealed key to the other: bound to its group, refused
        sealed = tables.execute("SELECT sealed_gmk FROM group_keys WHERE group_uri = ?", (GROUP,)).fetchone()[0]
        tables.execute("UPDATE group_keys SET sealed_gmk = ? WHERE group_uri = ?", (sealed, OTHER))
    with pytest.raises(StoreError, match="does not decrypt"):
        db.active_key(OTHER)


def test_imessages_latest_per_group_of_current_memberships(db: GroupStore) -> None:
    db.create_group(GROUP, "Fire ops", created_by="admin", now=NOW)
    db.create_group(OTHER, "Rescue", created_by="admin", now=NOW)
    for group in (GROUP, OTHER):
        db.add_member(group, ALICE, now=NOW)
    db.store_imessage(GROUP, ALICE, b"\x00\x00\x00\x01", b"old", now=NOW)
    db.store_imessage(GROUP, ALICE, b"\x00\x00\x00\x02", b"new", now=NOW + 1)
    db.store_imessage(OTHER, ALICE, b"\x00\x00\x00\x03", b"other", now=NOW + 2)
    got = db.imessages_for(ALICE)
    assert [(m.group, m.gmk_id, m.data, m.created_at) for m in got] == [
        (GROUP, b"\x00\x00\x00\x02", b"new", NOW + 1),
        (OTHER, b"\x00\x00\x00\x03", b"other", NOW + 2),
    ]
    with pytest.raises(NoSuchMember):
        db.store_imessage(GROUP, BOB, b"\x00\x00\x00\x01", b"x", now=NOW)
    db.remove_member(OTHER, ALICE, now=NOW)
    assert [m.group for m in db.imessages_for(ALICE)] == [GROUP]
    db.delete_group(GROUP, now=NOW)
    assert db.imessages_for(ALICE) == []


def test_reopen_loses_nothing_and_checks_the_data_key(tmp_path: Path) -> None:
    path = tmp_path / "groups.sqlite3"
    key = make_group_key()
    with GroupStore(path, DATA_KEY) as s:
        s.add_dispatcher("dana", PASSWORD, now=NOW)
        s.create_group(GROUP, "Fire ops", created_by="dana", max_burst=20, now=NOW)
        s.add_member(GROUP, ALICE, priority=42, role="dispatcher", now=NOW)
        s.set_active_key(GROUP, key, 5, now=NOW)
        s.store_imessage(GROUP, ALICE, key.gmk_id, b"message", now=NOW)
    with GroupStore(path, DATA_KEY) as s:
        assert s.group(GROUP) == store_module.GroupRecord(GROUP, "Fire ops", NOW, "dana", 20.0, "default", "dana")
        assert [(m.uri, m.priority, m.role) for m in s.members(GROUP)] == [(ALICE, 42, "dispatcher")]
        assert s.active_key(GROUP) == (key, 5)
        assert [m.data for m in s.imessages_for(ALICE)] == [b"message"]
        assert s.authenticate("dana", PASSWORD, now=NOW).role == "dispatcher"
        assert len(s.audit_log()) >= 4
    with pytest.raises(StoreError, match="data key does not belong"):
        GroupStore(path, bytes(32))
    with pytest.raises(StoreError, match="32 octets"):
        GroupStore(path, bytes(16))


def test_data_key_file(tmp_path: Path) -> None:
    path = tmp_path / "data.key"
    key = store_module.make_data_key(path)
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store_module.read_data_key(path) == key
    with pytest.raises(StoreError, match="already exists"):
        store_module.make_data_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(StoreError, match="chmod 600"):
        store_module.read_data_key(path)
    short = tmp_path / "short.key"
    short.write_bytes(bytes(16))
    os.chmod(short, 0o600)
    with pytest.raises(StoreError, match="exactly 32"):
        store_module.read_data_key(short)
    with pytest.raises(StoreError, match="cannot read"):
        store_module.read_data_key(tmp_path / "missing.key")


# --- the manager: GMK lifecycle -------------------------------------------------------------------------------


def _gmk_of(db: GroupStore, group: str = GROUP) -> GroupKey:
    active = db.active_key(group)
    assert active is not None
    return active[0]


def test_create_group_sends_every_member_the_same_gmk(
    manager: GroupManager, db: GroupStore, world: KmsWorld, pushes: Pushes
) -> None:
    specs = [MemberSpec(ALICE), MemberSpec(BOB, priority=150), MemberSpec(CAROL, role="dispatcher")]
    record = manager.create_group(GROUP, "Fire ops", specs, created_by="dana", now=NOW)
    assert record.uri == GROUP and record.created_by == "dana"
    key = _gmk_of(db)
    assert db.key_info(GROUP) == store_module.KeyInfo(key.gmk_id, world.domain.period_number(NOW), NOW)
    assert sorted(m for _, m, _, _ in pushes.sent) == [ALICE, BOB, CAROL]
    for member in (ALICE, BOB, CAROL):
        (stored,) = manager.imessages_for(member)
        assert (stored.group, stored.gmk_id, stored.created_at) == (GROUP, key.gmk_id, NOW)
        assert pushes.to(member) == [stored.data]
        received = world.receive(member, stored.data)
        assert received.purpose == KeyPurpose.GMK and received.initiator_uri == GROUP
        assert (received.key, received.key_id, received.rand) == (key.gmk, key.gmk_id, key.rand)
        assert received.csb_id == key.guk_id(member)
    assert [(m.uri, m.priority, m.role) for m in db.members(GROUP)] == [
        (ALICE, 100, "member"),
        (BOB, 150, "member"),
        (CAROL, 100, "dispatcher"),
    ]
    with pytest.raises(DuplicateGroup):
        manager.create_group(GROUP, "again", [], created_by="dana", now=NOW)
    with pytest.raises(InvalidValue, match="twice"):
        manager.create_group(OTHER, "x", [MemberSpec(ALICE), MemberSpec(ALICE)], created_by="dana", now=NOW)
    with pytest.raises(InvalidValue, match="itself"):
        manager.create_group(OTHER, "x", [MemberSpec(OTHER)], created_by="dana", now=NOW)
    with pytest.raises(InvalidValue, match="priority"):
        manager.create_group(OTHER, "x", [MemberSpec(ALICE, priority=300)], created_by="dana", now=NOW)
    assert db.group(OTHER) is None


def test_added_member_gets_the_current_gmk(
    manager: GroupManager, db: GroupStore, world: KmsWorld, pushes: Pushes
) -> None:
    manager.create_group(GROUP, "Fire ops", [MemberSpec(ALICE), MemberSpec(BOB)], created_by="dana", now=NOW)
    key = _gmk_of(db)
    pushes.sent.clear()
    record = manager.add_member(GROUP, MemberSpec(DAVE, priority=5), by="dana", now=NOW + 60)
    assert (record.uri, record.priority, record.role) == (DAVE, 5, "member")
    assert _gmk_of(db) == key  # no rekey for an addition
    assert [(g, m) for g, m, _, _ in pushes.sent] == [(GROUP, DAVE)]  # only the newcomer is sent anything
    (stored,) = manager.imessages_for(DAVE)
    received = world.receive(DAVE, stored.data, now=NOW + 60)
    # the same GMK and the same RAND as the others: all derive the same per-sender SRTP keys
    assert (received.key, received.rand) == (key.gmk, key.rand)
    assert world.receive(ALICE, manager.imessages_for(ALICE)[0].data).rand == key.rand
    assert manager.imessages_for(ALICE)[0].created_at == NOW  # the others keep what they had
    with pytest.raises(DuplicateMember):
        manager.add_member(GROUP, MemberSpec(DAVE), by="dana", now=NOW)
    with pytest.raises(NoSuchGroup):
        manager.add_member(OTHER, MemberSpec(DAVE), by="dana", now=NOW)


def test_removal_rekeys_and_the_removed_member_gets_nothing(
    database_url: str, manager: GroupManager, db: GroupStore, world: KmsWorld, pushes: Pushes
) -> None:
    manager.create_group(
        GROUP, "Fire ops", [MemberSpec(ALICE), MemberSpec(BOB), MemberSpec(CAROL)], created_by="dana", now=NOW
    )
    old = _gmk_of(db)
    pushes.sent.clear()
    info = manager.remove_member(GROUP, BOB, by="dana", now=NOW + 120)
    new = _gmk_of(db)
    assert new.gmk != old.gmk and new.gmk_id != old.gmk_id and info.gmk_id == new.gmk_id
    assert [m.uri for m in db.members(GROUP)] == [ALICE, CAROL]
    assert sorted(m for _, m, _, _ in pushes.sent) == [ALICE, CAROL]
    new_messages = [data for _, _, _, data in pushes.sent]
    for member in (ALICE, CAROL):
        (stored,) = manager.imessages_for(member)
        assert stored.gmk_id == new.gmk_id
        assert world.receive(member, stored.data, now=NOW + 120).key == new.gmk
    # Bob: no stored message, and none of the new messages is for him
    assert manager.imessages_for(BOB) == []
    for data in new_messages:
        with pytest.raises((WrongRecipient, DecryptionFailed)):
            world.receive(BOB, data, now=NOW + 120)
    assert [k.gmk_id for k in db.key_history(GROUP)] == [old.gmk_id, new.gmk_id]
    assert old.gmk not in dump(database_url) and new.gmk not in dump(database_url)
    events = [(a.actor, a.event) for a in db.audit_log()]
    assert ("dana", "member-removed") in events and ("dana", "rekey") in events
    with pytest.raises(NoSuchMember):
        manager.remove_member(GROUP, BOB, by="dana", now=NOW)


def test_key_period_change_rekeys(manager: GroupManager, db: GroupStore, world: KmsWorld, pushes: Pushes) -> None:
    manager.create_group(GROUP, "Fire ops", [MemberSpec(ALICE), MemberSpec(BOB)], created_by="dana", now=NOW)
    manager.create_group(OTHER, "Rescue", [MemberSpec(CAROL)], created_by="dana", now=NOW)
    old = _gmk_of(db)
    assert manager.check_key_period(NOW + 3600) == []
    later = NOW + PERIOD
    period = world.domain.period_number(later)
    assert period == world.domain.period_number(NOW) + 1
    pushes.sent.clear()
    assert manager.check_key_period(later) == [GROUP, OTHER]
    new = _gmk_of(db)
    assert new.gmk != old.gmk and db.key_info(GROUP) == store_module.KeyInfo(new.gmk_id, period, later)
    for member in (ALICE, BOB):
        received = world.receive(member, manager.imessages_for(member)[0].data, now=later)
        assert received.key == new.gmk and received.responder_uid == world.keys(member, later).uid
    assert len(pushes.sent) == 3
    assert manager.check_key_period(later + 60) == []


def test_addition_to_a_group_keyed_in_an_earlier_period_rekeys(
    manager: GroupManager, db: GroupStore, world: KmsWorld
) -> None:
    manager.create_group(GROUP, "Fire ops", [MemberSpec(ALICE)], created_by="dana", now=NOW)
    old = _gmk_of(db)
    later = NOW + PERIOD
    manager.add_member(GROUP, MemberSpec(BOB), by="dana", now=later)
    new = _gmk_of(db)
    assert new != old
    for member in (ALICE, BOB):
        assert world.receive(member, manager.imessages_for(member)[0].data, now=later).key == new.gmk


def test_missing_group_keys_are_a_clear_error(db: GroupStore, world: KmsWorld) -> None:
    manager = GroupManager(db, KeySource(world, provisioned={OTHER}))
    with pytest.raises(KeysUnavailable, match=r"ptt-kms grant ACCOUNT sip:fire-ops@example.org") as error:
        manager.create_group(GROUP, "Fire ops", [MemberSpec(ALICE)], created_by="dana", now=NOW)
    assert isinstance(error.value, GroupError)
    assert db.group(GROUP) is None  # nothing half-made
    manager.create_group(OTHER, "Rescue", [MemberSpec(ALICE)], created_by="dana", now=NOW)
    # a group whose keys are gone is skipped by the period check; the others are still rekeyed
    db.create_group(GROUP, "Fire ops", created_by="dana", now=NOW)
    assert manager.check_key_period(NOW + PERIOD) == [OTHER]
    with pytest.raises(KeysUnavailable):
        manager.rekey(GROUP, by="dana", now=NOW)


def test_the_kmss_refusal_is_the_error_not_a_guess(db: GroupStore, world: KmsWorld) -> None:
    class Refusing(KeySource):
        def missing_reason(self, group_uri: str) -> str | None:
            return "HTTP 429: too many failed logins to this account from your address"

    manager = GroupManager(db, Refusing(world, provisioned=set()))
    with pytest.raises(KeysUnavailable, match="its KMS refused or failed them: HTTP 429: too many") as error:
        manager.create_group(GROUP, "Fire ops", [MemberSpec(ALICE)], created_by="dana", now=NOW)
    assert "ptt-kms grant" not in str(error.value)


def test_wrong_keys_from_the_source_are_refused(db: GroupStore, world: KmsWorld) -> None:
    class Confused(KeySource):
        def keys_for(self, group_uri: str, now: float) -> IdentityKeys | None:
            return self.world.keys(ALICE, now)

    manager = GroupManager(db, Confused(world))
    with pytest.raises(KeysUnavailable, match="not of sip:fire-ops"):
        manager.create_group(GROUP, "Fire ops", [MemberSpec(BOB)], created_by="dana", now=NOW)


def test_update_delete_and_failed_push(db: GroupStore, world: KmsWorld) -> None:
    def broken(group: str, member: str, gmk_id: bytes, data: bytes) -> None:
        raise RuntimeError("connection gone")

    manager = GroupManager(db, KeySource(world), on_imessage=broken)
    manager.create_group(GROUP, "Fire ops", [MemberSpec(ALICE), MemberSpec(BOB)], created_by="dana", now=NOW)
    assert len(manager.imessages_for(ALICE)) == 1  # a failed push undoes nothing: the member gets it on reconnect
    updated = manager.update_member(GROUP, ALICE, priority=250, role="dispatcher", by="dana", now=NOW)
    assert (updated.priority, updated.role) == (250, "dispatcher")
    manager.delete_group(GROUP, by="root", now=NOW + 1)
    assert db.group(GROUP) is None and manager.imessages_for(ALICE) == []
    assert db.audit_log()[-1].actor == "root"


def test_large_groups_use_the_distributor(db: GroupStore, world: KmsWorld, pushes: Pushes) -> None:
    calls: list[int] = []

    class Counting(GroupKeyDistributor):
        def distribute(
            self,
            manager: IdentityKeys,
            group_key: GroupKey,
            members: Sequence[str],
            *,
            now: float | None = None,
            member_domains: Mapping[str, KmsDomain] | None = None,
        ) -> dict[str, bytes]:
            calls.append(len(members))
            return super().distribute(manager, group_key, members, now=now, member_domains=member_domains)

    members = [MemberSpec(f"sip:user{i}@example.org") for i in range(LARGE_GROUP)]
    with Counting(workers=1) as distributor:
        manager = GroupManager(db, KeySource(world), distributor=distributor, on_imessage=pushes)
        manager.create_group(OTHER, "Small", [MemberSpec(ALICE)], created_by="dana", now=NOW)
        assert calls == []
        manager.create_group(GROUP, "Large", members, created_by="dana", now=NOW)
        assert calls == [LARGE_GROUP]
    key = _gmk_of(db)
    member = members[-1].uri
    assert world.receive(member, manager.imessages_for(member)[0].data).key == key.gmk
    assert len(pushes.sent) == LARGE_GROUP + 1


def test_pushes_run_after_commit_outside_the_lock(db: GroupStore, world: KmsWorld) -> None:
    """A push that waits for another thread using the manager (a reactor, say) must not deadlock."""
    seen: list[tuple[str, bool]] = []

    def push(group: str, member: str, gmk_id: bytes, data: bytes) -> None:
        committed = any(m.data == data for m in gm.imessages_for(member))
        worker = threading.Thread(target=gm.update_member, args=(group, member), kwargs={"by": "x", "now": NOW})
        worker.start()
        worker.join(5)
        seen.append((member, committed and not worker.is_alive()))

    gm = GroupManager(db, KeySource(world), on_imessage=push)
    gm.create_group(GROUP, "Fire ops", [MemberSpec(ALICE), MemberSpec(BOB)], created_by="dana", now=NOW)
    gm.add_member(GROUP, MemberSpec(CAROL), by="dana", now=NOW)
    gm.remove_member(GROUP, BOB, by="dana", now=NOW)
    gm.check_key_period(NOW + PERIOD)
    # create: Alice, Bob; add: Carol; remove Bob: Alice, Carol; new key period: Alice, Carol
    assert seen == [(m, True) for m in (ALICE, BOB, CAROL, ALICE, CAROL, ALICE, CAROL)]


def test_a_version_1_database_is_upgraded_with_owners_orgs_and_a_chained_audit_log(tmp_path: Path) -> None:
    from server.groups import database

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:  # what a server before dispatcher authorisation left behind
        for statement in database._UPGRADES[0]:
            assert isinstance(statement, str)
            db.execute(statement)
        db.execute("PRAGMA user_version = 1")
        db.execute(
            "INSERT INTO dispatchers (username, password_hash, role, created, changed) "
            "VALUES ('root', 'x', 'admin', 0, 0)"
        )
        db.execute("INSERT INTO groups (uri, name, created_at, created_by) VALUES (?, 'G', 1, 'root')", (GROUP,))
        db.execute("INSERT INTO groups (uri, name, created_at, created_by) VALUES (?, 'O', 1, 'gone')", (OTHER,))
        db.execute("INSERT INTO audit (at, actor, event, detail) VALUES (1, 'root', 'group-created', 'G')")
        db.execute("INSERT INTO audit (at, actor, event, detail) VALUES (2, NULL, 'account-added', 'root')")
    with GroupStore(path, DATA_KEY) as s:
        assert s.schema_version() == store_module.SCHEMA_VERSION >= 2
        assert s.dispatcher("root") == store_module.DispatcherAccount("root", "admin", False, "default")
        assert (s.group(GROUP).org, s.group(GROUP).owner) == ("default", "root")  # type: ignore[union-attr]
        assert s.group(OTHER).owner is None  # type: ignore[union-attr]  # its creator is no account
        assert s.verify_audit().ok and s.verify_audit().records == 2
        s.audit("test", actor="root", detail="after the upgrade", now=3)
        check = s.verify_audit()
        assert check.ok and check.records == 3
        assert s.audit_log(1)[0].org == "default"  # the actor's organisation


def test_concurrent_writers_keep_one_audit_chain(database_url: str) -> None:
    """Two stores on one database (two processes' worth of connections), each written from two threads: the
    writers are serialised, so every record chains onto the one before it."""
    stores = [GroupStore(database_url, DATA_KEY) for _ in range(2)]
    errors: list[BaseException] = []

    def write(store: GroupStore, n: int) -> None:
        try:
            for i in range(15):
                store.audit("test", actor=None, detail=f"writer {n} record {i}", now=NOW + i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(stores[n % 2], n)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        check = stores[0].verify_audit()
        assert check.ok and check.records == 60
    finally:
        for s in stores:
            s.close()
