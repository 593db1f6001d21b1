"""The group server's SQLite store: dispatcher accounts, groups, members, group keys, I_MESSAGEs, audit log.

``GroupStore`` is the one object callers use. Its parts: the values, refusals and checks
(``server.groups.records``), the data key and the sealing of GMKs (``server.groups.datakey``), the connection,
schema, transactions and audit log (``server.groups.database``), the dispatcher accounts
(``server.groups.dispatchers``); groups, members, keys and I_MESSAGEs are here.

A GMK is never stored in clear: it is sealed with AES-256-GCM under the server's data key, bound to its group URI
and GMK-ID as associated data; when a group is rekeyed the superseded GMK is erased and only its GMK-ID, key period
and dates stay for the record. Time is always passed in (``now``, Unix seconds).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from cryptography.exceptions import InvalidTag

from ptt.groupkeys import GroupKey
from server.accounts import LockedOut, LoginFailed
from server.groups.database import SCHEMA_VERSION
from server.groups.datakey import DATA_KEY_LENGTH, gmk_ad, make_data_key, read_data_key
from server.groups.dispatchers import DispatcherAccounts
from server.groups.emergencies import AlertRefused, EmergencyStore
from server.groups.mediablobs import SharedBlobStore
from server.groups.recordings import RecordingStore
from server.groups.records import (
    DEFAULT_MAX_BURST,
    DEFAULT_ORG,
    DEFAULT_PRIORITY,
    DISPATCHER_ROLES,
    MEMBER_ROLES,
    AccountError,
    AuditRecord,
    ChainCheck,
    DispatcherAccount,
    DuplicateGroup,
    DuplicateMember,
    GroupError,
    GroupRecord,
    InvalidValue,
    KeyInfo,
    KeysUnavailable,
    MemberRecord,
    NoSuchGroup,
    NoSuchMember,
    StoredIMessage,
    StoreError,
    check_group_name,
    check_max_burst,
    check_not_reserved,
    check_org,
    check_priority,
    check_role,
    check_uri,
)
from server.groups.voicemessages import VoiceMessageStore
from server.sqldb import Connection

__all__ = [
    "DATA_KEY_LENGTH",
    "DEFAULT_MAX_BURST",
    "DEFAULT_ORG",
    "DEFAULT_PRIORITY",
    "DEFAULT_PRIORITY_CEILING",
    "DISPATCHER_ROLES",
    "MEMBER_ROLES",
    "SCHEMA_VERSION",
    "AccountError",
    "AlertRefused",
    "AuditRecord",
    "ChainCheck",
    "DispatcherAccount",
    "DuplicateGroup",
    "DuplicateMember",
    "GroupError",
    "GroupRecord",
    "GroupStore",
    "InvalidValue",
    "KeyInfo",
    "KeysUnavailable",
    "LockedOut",
    "LoginFailed",
    "MemberRecord",
    "NoSuchGroup",
    "NoSuchMember",
    "StoreError",
    "StoredIMessage",
    "check_group_name",
    "check_max_burst",
    "check_not_reserved",
    "check_org",
    "check_priority",
    "check_role",
    "check_uri",
    "make_data_key",
    "read_data_key",
]

DEFAULT_PRIORITY_CEILING = 100
"""The highest floor priority a non-admin dispatcher may give (``GroupStore.priority_ceiling``)."""

_GROUP_COLUMNS = "uri, name, created_at, created_by, max_burst, org, owner, recording_days"


class GroupStore(DispatcherAccounts, EmergencyStore, RecordingStore, VoiceMessageStore, SharedBlobStore):
    """Groups and their keys in one SQLite file (WAL; other processes may read it, e.g. an admin CLI)."""

    # --- groups ---

    @staticmethod
    def _group_record(row: Sequence[Any]) -> GroupRecord:
        uri, name, created_at, created_by, max_burst, org, owner, recording_days = row
        return GroupRecord(
            str(uri),
            str(name),
            float(created_at),
            str(created_by),
            float(max_burst),
            str(org),
            None if owner is None else str(owner),
            None if recording_days is None else int(recording_days),
        )

    def _require_group(self, db: Connection, uri: str) -> str:
        """The group's organisation (``NoSuchGroup`` if there is no such group)."""
        row = db.execute("SELECT org FROM groups WHERE uri = ?", (uri,)).fetchone()
        if row is None:
            raise NoSuchGroup(uri)
        return str(row[0])

    def create_group(
        self,
        uri: str,
        name: str,
        *,
        created_by: str,
        max_burst: float = DEFAULT_MAX_BURST,
        now: float,
        org: str = DEFAULT_ORG,
    ) -> GroupRecord:
        """A new group of organisation ``org``, owned by ``created_by`` if that is an account."""
        check_uri(uri, "group URI")
        check_group_name(name)
        check_org(org)
        burst = check_max_burst(max_burst)
        with self._tx() as db:
            if db.execute("SELECT 1 FROM groups WHERE uri = ?", (uri,)).fetchone():
                raise DuplicateGroup(uri)
            is_account = db.execute("SELECT 1 FROM dispatchers WHERE username = ?", (created_by,)).fetchone()
            owner = created_by if is_account else None
            db.execute(
                "INSERT INTO groups (uri, name, created_at, created_by, max_burst, org, owner) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (uri, name, now, created_by, burst, org, owner),
            )
            self._audit(db, now, created_by, "group-created", f"{uri} ({name}) of {org}", org=org)
        return GroupRecord(uri, name, now, created_by, burst, org, owner)

    def delete_group(self, uri: str, *, now: float, by: str | None = None) -> None:
        """Delete a group with its members, keys, I_MESSAGEs and assigned dispatchers."""
        with self._tx() as db:
            org = self._require_group(db, uri)
            db.execute("DELETE FROM groups WHERE uri = ?", (uri,))
            self._audit(db, now, by, "group-deleted", uri, org=org)

    def groups(self, *, org: str | None = None) -> list[GroupRecord]:
        """Every group (of organisation ``org`` if given), in URI order."""
        where, args = ("WHERE org = ?", (org,)) if org is not None else ("", ())
        with self._read() as db:
            rows = db.execute(f"SELECT {_GROUP_COLUMNS} FROM groups {where} ORDER BY uri", args).fetchall()
        return [self._group_record(r) for r in rows]

    def group(self, uri: str) -> GroupRecord | None:
        with self._read() as db:
            row = db.execute(f"SELECT {_GROUP_COLUMNS} FROM groups WHERE uri = ?", (uri,)).fetchone()
        return None if row is None else self._group_record(row)

    # --- settings ---

    def priority_ceiling(self) -> int:
        """The highest floor priority a non-admin dispatcher may give (``DEFAULT_PRIORITY_CEILING`` unless set)."""
        with self._read() as db:
            row = db.execute("SELECT value FROM settings WHERE key = 'priority_ceiling'").fetchone()
        return DEFAULT_PRIORITY_CEILING if row is None else int(bytes(row[0]).decode("ascii"))

    def set_priority_ceiling(self, ceiling: int, *, now: float, by: str | None = None) -> None:
        check_priority(ceiling)
        with self._tx() as db:
            db.execute(
                "INSERT INTO settings (key, value) VALUES ('priority_ceiling', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(ceiling).encode(),),
            )
            self._audit(db, now, by, "priority-ceiling", f"non-admin dispatchers may give up to {ceiling}")

    def member_counts(self) -> dict[str, int]:
        """Group URI → number of members (groups without members count 0)."""
        with self._read() as db:
            rows = db.execute(
                "SELECT g.uri, count(m.uri) FROM groups g LEFT JOIN members m ON m.group_uri = g.uri GROUP BY g.uri"
            ).fetchall()
        return {str(u): int(n) for u, n in rows}

    # --- members ---

    def add_member(
        self,
        group: str,
        uri: str,
        *,
        priority: int = DEFAULT_PRIORITY,
        role: str = "member",
        now: float,
        by: str | None = None,
    ) -> MemberRecord:
        check_uri(uri, "member URI")
        check_priority(priority)
        check_role(role)
        with self._tx() as db:
            org = self._require_group(db, group)
            if db.execute("SELECT 1 FROM members WHERE group_uri = ? AND uri = ?", (group, uri)).fetchone():
                raise DuplicateMember(group, uri)
            db.execute(
                "INSERT INTO members (group_uri, uri, priority, role, added_at) VALUES (?, ?, ?, ?, ?)",
                (group, uri, priority, role, now),
            )
            self._audit(db, now, by, "member-added", f"{uri} to {group} (priority {priority}, {role})", org=org)
        return MemberRecord(group, uri, priority, role, now)

    def remove_member(self, group: str, uri: str, *, now: float, by: str | None = None) -> None:
        """Remove a member and its stored I_MESSAGEs."""
        with self._tx() as db:
            org = self._require_group(db, group)
            if db.execute("DELETE FROM members WHERE group_uri = ? AND uri = ?", (group, uri)).rowcount == 0:
                raise NoSuchMember(group, uri)
            self._audit(db, now, by, "member-removed", f"{uri} from {group}", org=org)

    def update_member(
        self,
        group: str,
        uri: str,
        *,
        priority: int | None = None,
        role: str | None = None,
        now: float,
        by: str | None = None,
    ) -> MemberRecord:
        if priority is not None:
            check_priority(priority)
        if role is not None:
            check_role(role)
        with self._tx() as db:
            org = self._require_group(db, group)
            current = self._member(db, group, uri)
            if current is None:
                raise NoSuchMember(group, uri)
            new_priority = current.priority if priority is None else priority
            new_role = current.role if role is None else role
            db.execute(
                "UPDATE members SET priority = ?, role = ? WHERE group_uri = ? AND uri = ?",
                (new_priority, new_role, group, uri),
            )
            change = f"priority {current.priority} → {new_priority}, role {current.role} → {new_role}"
            self._audit(db, now, by, "member-updated", f"{uri} in {group}: {change}", org=org)
        return MemberRecord(group, uri, new_priority, new_role, current.added_at, current.broadcast)

    @staticmethod
    def _member(db: Connection, group: str, uri: str) -> MemberRecord | None:
        row = db.execute(
            "SELECT priority, role, added_at, broadcast FROM members WHERE group_uri = ? AND uri = ?", (group, uri)
        ).fetchone()
        if row is None:
            return None
        return MemberRecord(group, uri, int(row[0]), str(row[1]), float(row[2]), bool(row[3]))

    def member(self, group: str, uri: str) -> MemberRecord | None:
        with self._read() as db:
            return self._member(db, group, uri)

    def members(self, group: str) -> list[MemberRecord]:
        """The members of ``group`` in URI order (``NoSuchGroup`` if there is no such group)."""
        with self._read() as db:
            self._require_group(db, group)
            rows = db.execute(
                "SELECT uri, priority, role, added_at, broadcast FROM members WHERE group_uri = ? ORDER BY uri",
                (group,),
            ).fetchall()
        return [MemberRecord(group, str(u), int(p), str(r), float(a), bool(b)) for u, p, r, a, b in rows]

    def groups_of(self, member_uri: str) -> list[GroupRecord]:
        with self._read() as db:
            rows = db.execute(
                "SELECT g.uri, g.name, g.created_at, g.created_by, g.max_burst, g.org, g.owner, g.recording_days "
                "FROM groups g "
                "JOIN members m ON m.group_uri = g.uri WHERE m.uri = ? ORDER BY g.uri",
                (member_uri,),
            ).fetchall()
        return [self._group_record(r) for r in rows]

    # --- group keys ---

    def set_active_key(self, group: str, key: GroupKey, period_no: int, *, now: float, by: str | None = None) -> None:
        """Make ``key`` the group's active GMK (sealed under the data key; not kept at all for a recorded group);
        the superseded GMK is erased."""
        nonce = os.urandom(12)
        sealed: bytes | None = nonce + self._aead.encrypt(nonce, key.gmk, gmk_ad(group, key.gmk_id, key.rand))
        with self._tx() as db:
            org = self._require_group(db, group)
            recorded = db.execute("SELECT recording_days FROM groups WHERE uri = ?", (group,)).fetchone()
            if recorded is not None and recorded[0] is not None:
                sealed = None  # a recorded group's GMK is never kept: the server must not be able to replay (issue 17)
            db.execute("UPDATE group_keys SET active = 0, sealed_gmk = NULL WHERE group_uri = ?", (group,))
            db.execute(
                "INSERT INTO group_keys (group_uri, gmk_id, rand, sealed_gmk, period_no, created_at, active) "
                "VALUES (?, ?, ?, ?, ?, ?, 1)",
                (group, key.gmk_id, key.rand, sealed, period_no, now),
            )
            detail = f"{group}: GMK-ID {key.gmk_id.hex()} for key period {period_no}"
            self._audit(db, now, by, "group-key", detail, org=org)

    def active_key(self, group: str) -> tuple[GroupKey, int] | None:
        with self._read() as db:
            row = db.execute(
                "SELECT gmk_id, rand, sealed_gmk, period_no FROM group_keys WHERE group_uri = ? AND active = 1",
                (group,),
            ).fetchone()
        if row is None or row[2] is None:  # none, or not kept (a recorded group: adding a member rekeys)
            return None
        gmk_id, rand, sealed = bytes(row[0]), bytes(row[1]), bytes(row[2])
        try:
            gmk = self._aead.decrypt(sealed[:12], sealed[12:], gmk_ad(group, gmk_id, rand))
        except (InvalidTag, ValueError):
            raise StoreError(f"the stored GMK of {group} does not decrypt (altered, or another data key)") from None
        try:
            return GroupKey(gmk=gmk, gmk_id=gmk_id, rand=rand), int(row[3])
        except ValueError as exc:
            raise StoreError(f"the stored key of {group} is malformed: {exc}") from None

    def key_info(self, group: str) -> KeyInfo | None:
        """The active key's GMK-ID, period and creation time, without unsealing it."""
        with self._read() as db:
            row = db.execute(
                "SELECT gmk_id, period_no, created_at FROM group_keys WHERE group_uri = ? AND active = 1", (group,)
            ).fetchone()
        return None if row is None else KeyInfo(bytes(row[0]), int(row[1]), float(row[2]))

    def key_history(self, group: str) -> list[KeyInfo]:
        """Every key the group has had, oldest first (GMK-IDs and dates only)."""
        with self._read() as db:
            rows = db.execute(
                "SELECT gmk_id, period_no, created_at FROM group_keys WHERE group_uri = ? ORDER BY id", (group,)
            ).fetchall()
        return [KeyInfo(bytes(i), int(p), float(c)) for i, p, c in rows]

    # --- I_MESSAGEs ---

    def store_imessage(self, group: str, member: str, gmk_id: bytes, data: bytes, *, now: float) -> None:
        """Keep ``data`` as the member's I_MESSAGE for the group (replacing the one it had)."""
        with self._tx() as db:
            self._require_group(db, group)
            if self._member(db, group, member) is None:
                raise NoSuchMember(group, member)
            db.execute("DELETE FROM imessages WHERE group_uri = ? AND member_uri = ?", (group, member))
            db.execute(
                "INSERT INTO imessages (group_uri, member_uri, gmk_id, data, created_at) VALUES (?, ?, ?, ?, ?)",
                (group, member, bytes(gmk_id), bytes(data), now),
            )
            self._archive_if_recorded(db, group, member, bytes(gmk_id), bytes(data), now)

    def imessages_for(self, member_uri: str) -> list[StoredIMessage]:
        """The latest I_MESSAGE of each group ``member_uri`` is (still) a member of, in group URI order."""
        with self._read() as db:
            rows = db.execute(
                "SELECT i.group_uri, i.gmk_id, i.data, i.created_at FROM imessages i "
                "WHERE i.member_uri = ? AND i.id = (SELECT max(id) FROM imessages j "
                "WHERE j.member_uri = i.member_uri AND j.group_uri = i.group_uri) ORDER BY i.group_uri",
                (member_uri,),
            ).fetchall()
        return [StoredIMessage(str(g), member_uri, bytes(k), bytes(d), float(c)) for g, k, d, c in rows]
