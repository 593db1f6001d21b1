"""The group server's SQLite store: dispatcher accounts, groups, members, group keys, I_MESSAGEs, audit log.

Password hashes, lockout and the login procedure are the KMS's (``server.accounts``). A GMK is never stored in
clear: it is sealed with AES-256-GCM under the server's data key (32 octets from a 0600 file, ``read_data_key``),
bound to its group URI and GMK-ID as associated data; when a group is rekeyed the superseded GMK is erased and only
its GMK-ID, key period and dates stay for the record.
Time is always passed in (``now``, Unix seconds).

The schema is versioned by ``PRAGMA user_version`` (``_UPGRADES[v]`` takes version v to v + 1). One connection,
usable from several threads: every public method holds the store's lock, and ``transaction()`` lets a caller
group several changes into one atomic SQLite transaction (the group manager stores a group, its members, its
key and their I_MESSAGEs all or nothing).
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ptt.groupkeys import GroupKey
from server import accounts
from server.accounts import LockedOut, LockoutPolicy, LoginFailed, LoginRecord, hash_password
from server.kms.secrets import SecretsFileError, check_private_mode, write_private_file

__all__ = [
    "DATA_KEY_LENGTH",
    "DEFAULT_MAX_BURST",
    "DEFAULT_PRIORITY",
    "DISPATCHER_ROLES",
    "MEMBER_ROLES",
    "AccountError",
    "AuditRecord",
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
    "check_priority",
    "check_role",
    "check_uri",
    "make_data_key",
    "read_data_key",
]

DATA_KEY_LENGTH = 32
DISPATCHER_ROLES = frozenset({"dispatcher", "admin"})
MEMBER_ROLES = frozenset({"member", "dispatcher"})  # a member with role 'dispatcher' may pre-empt the floor
DEFAULT_PRIORITY = 100
DEFAULT_MAX_BURST = 30.0
MAX_BURST_LIMIT = 3600.0
MAX_URI_LENGTH = 255
MAX_NAME_LENGTH = 100
URI_SCHEMES = ("sip", "sips", "tel", "urn")

_URI_RE = re.compile(r"([a-z][a-z0-9+.-]*):([\x21-\x7e]+)")
_USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
_GMK_AD = b"ptt-group-gmk|"
_CHECK_AD = b"ptt-group-data-key-check"
_CHECK_PLAINTEXT = b"ptt group store data key"


# --- errors ---


class GroupError(Exception):
    """A group operation was refused; the message says why in terms an operator can act on."""


class InvalidValue(GroupError):
    """A URI, name, priority, role or other value is malformed or out of range."""


class NoSuchGroup(GroupError):
    def __init__(self, uri: str) -> None:
        super().__init__(f"no group {uri}")
        self.uri = uri


class DuplicateGroup(GroupError):
    def __init__(self, uri: str) -> None:
        super().__init__(f"group {uri} already exists")
        self.uri = uri


class NoSuchMember(GroupError):
    def __init__(self, group: str, uri: str) -> None:
        super().__init__(f"{uri} is not a member of {group}")
        self.group, self.uri = group, uri


class DuplicateMember(GroupError):
    def __init__(self, group: str, uri: str) -> None:
        super().__init__(f"{uri} is already a member of {group}")
        self.group, self.uri = group, uri


class KeysUnavailable(GroupError):
    """The group server holds no signing keys for a group identity (the KMS account lacks a grant)."""


class StoreError(GroupError):
    """The database or the data key is unusable (newer schema, wrong data key, altered sealed key)."""


class AccountError(GroupError, accounts.AccountError):
    """A dispatcher account operation was refused: duplicate or unknown account, bad name, role or password. (A
    refused login is ``LoginFailed`` or ``LockedOut`` from ``server.accounts``, shared with the KMS.)"""


# --- records ---


@dataclass(frozen=True)
class DispatcherAccount:
    username: str
    role: str
    disabled: bool


@dataclass(frozen=True)
class GroupRecord:
    uri: str
    name: str
    created_at: float
    created_by: str
    max_burst: float


@dataclass(frozen=True)
class MemberRecord:
    group: str
    uri: str
    priority: int
    role: str
    added_at: float


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown of a group's active key: its public GMK-ID, key period and creation time."""

    gmk_id: bytes
    period_no: int
    created_at: float


@dataclass(frozen=True, repr=False)
class StoredIMessage:
    group: str
    member: str
    gmk_id: bytes
    data: bytes
    created_at: float

    def __repr__(self) -> str:
        return f"StoredIMessage(group={self.group!r}, member={self.member!r}, gmk_id={self.gmk_id.hex()})"


@dataclass(frozen=True)
class AuditRecord:
    at: float
    actor: str | None
    event: str
    detail: str


# --- validation (module functions so the manager and the API check before any expensive work) ---


def check_uri(uri: object, what: str = "URI") -> str:
    """A group or member URI: ``sip:``, ``sips:``, ``tel:`` or ``urn:``, printable ASCII, no whitespace, ≤ 255."""
    if not isinstance(uri, str) or not uri:
        raise InvalidValue(f"the {what} must be a non-empty string")
    if len(uri) > MAX_URI_LENGTH:
        raise InvalidValue(f"the {what} is longer than {MAX_URI_LENGTH} characters")
    m = _URI_RE.fullmatch(uri)
    if m is None:
        raise InvalidValue(f"bad {what} {uri[:80]!r}: expected scheme:rest with no whitespace or control characters")
    if m[1] not in URI_SCHEMES:
        raise InvalidValue(f"bad {what} {uri[:80]!r}: the scheme must be one of {', '.join(URI_SCHEMES)}")
    return uri


def check_group_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidValue("the group name must be a non-empty string")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidValue(f"the group name is longer than {MAX_NAME_LENGTH} characters")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise InvalidValue("the group name must not contain control characters")
    return name


def check_priority(priority: object) -> int:
    if type(priority) is not int or not 0 <= priority <= 255:
        raise InvalidValue(f"priority must be an integer from 0 to 255, not {priority!r}")
    return priority


def check_role(role: object) -> str:
    if not isinstance(role, str) or role not in MEMBER_ROLES:
        raise InvalidValue(f"member role must be one of {', '.join(sorted(MEMBER_ROLES))}, not {role!r}")
    return role


def check_max_burst(seconds: object) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= MAX_BURST_LIMIT:
        raise InvalidValue(f"max_burst must be a number of seconds in (0, {MAX_BURST_LIMIT:.0f}], not {seconds!r}")
    return float(seconds)


# --- the data key file ---


def make_data_key(path: Path) -> bytes:
    """Create a fresh 32-octet data key file (mode 0600); refuses to replace an existing one."""
    path = Path(path)
    if path.exists():
        raise StoreError(f"{path} already exists; a new data key would make the stored group keys unreadable")
    key = os.urandom(DATA_KEY_LENGTH)
    write_private_file(path, key)
    return key


def read_data_key(path: Path) -> bytes:
    """The 32 octets of a data key file; refuses a file the group or others may read."""
    path = Path(path)
    try:
        info = path.stat()
        key = path.read_bytes()
        check_private_mode(path, info.st_mode)
    except SecretsFileError as exc:
        raise StoreError(str(exc)) from None
    except OSError as exc:
        raise StoreError(f"cannot read the data key {path}: {exc.strerror or exc}") from None
    if len(key) != DATA_KEY_LENGTH:
        raise StoreError(f"{path} holds {len(key)} octets; a data key is exactly {DATA_KEY_LENGTH}")
    return key


# --- schema ---

_UPGRADES: dict[int, list[str]] = {
    0: [
        "CREATE TABLE settings (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
        """CREATE TABLE dispatchers (
            username TEXT PRIMARY KEY,
            password_hash TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('dispatcher', 'admin')),
            disabled INTEGER NOT NULL DEFAULT 0,
            failures INTEGER NOT NULL DEFAULT 0,
            locked_until REAL NOT NULL DEFAULT 0,
            created REAL NOT NULL,
            changed REAL NOT NULL)""",
        """CREATE TABLE groups (
            uri TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            created_at REAL NOT NULL,
            created_by TEXT NOT NULL,
            max_burst REAL NOT NULL DEFAULT 30)""",
        """CREATE TABLE members (
            group_uri TEXT NOT NULL REFERENCES groups(uri) ON DELETE CASCADE,
            uri TEXT NOT NULL,
            priority INTEGER NOT NULL DEFAULT 100 CHECK (priority BETWEEN 0 AND 255),
            role TEXT NOT NULL DEFAULT 'member' CHECK (role IN ('member', 'dispatcher')),
            added_at REAL NOT NULL,
            UNIQUE (group_uri, uri))""",
        "CREATE INDEX members_by_uri ON members (uri)",
        # sealed_gmk: nonce || AES-256-GCM(data key) ciphertext; NULL once the key is superseded (erased).
        # rand: the RAND every member's I_MESSAGE for this GMK carries (public; bound into the seal).
        """CREATE TABLE group_keys (
            id INTEGER PRIMARY KEY,
            group_uri TEXT NOT NULL REFERENCES groups(uri) ON DELETE CASCADE,
            gmk_id BLOB NOT NULL,
            rand BLOB NOT NULL,
            sealed_gmk BLOB,
            period_no INTEGER NOT NULL,
            created_at REAL NOT NULL,
            active INTEGER NOT NULL CHECK (active IN (0, 1)))""",
        "CREATE UNIQUE INDEX one_active_key ON group_keys (group_uri) WHERE active = 1",
        # A member's I_MESSAGEs go with its membership (removal deletes them).
        """CREATE TABLE imessages (
            id INTEGER PRIMARY KEY,
            group_uri TEXT NOT NULL,
            member_uri TEXT NOT NULL,
            gmk_id BLOB NOT NULL,
            data BLOB NOT NULL,
            created_at REAL NOT NULL,
            FOREIGN KEY (group_uri, member_uri) REFERENCES members(group_uri, uri) ON DELETE CASCADE)""",
        "CREATE INDEX imessages_by_member ON imessages (member_uri, group_uri)",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            actor TEXT,
            event TEXT NOT NULL,
            detail TEXT NOT NULL)""",
    ],
}
SCHEMA_VERSION = len(_UPGRADES)


class GroupStore:
    """Groups and their keys in one SQLite file (WAL; other processes may read it, e.g. an admin CLI)."""

    def __init__(self, path: Path, data_key: bytes) -> None:
        if not isinstance(data_key, bytes) or len(data_key) != DATA_KEY_LENGTH:
            raise StoreError(f"the data key must be {DATA_KEY_LENGTH} octets")
        self.path = Path(path)
        self._aead = AESGCM(data_key)
        self._lock = threading.RLock()
        self._depth = 0
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0, check_same_thread=False)
        try:
            self._db.execute("PRAGMA foreign_keys = ON")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal" and str(self.path) != ":memory:":
                raise StoreError(f"{self.path}: cannot switch the database to WAL mode (got {mode})")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._upgrade()
            self._check_data_key()
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> GroupStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transactions ---

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything done through this store inside the block is one atomic transaction (nesting is allowed:
        only the outermost block commits). Holds the store's lock for the whole block."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._depth = 0
                self._db.execute("ROLLBACK")
                raise
            self._depth = 0
            self._db.execute("COMMIT")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self.transaction():
            yield self._db

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db

    def _upgrade(self) -> None:
        with self._tx() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}, newer than this server ({SCHEMA_VERSION}); upgrade ptt"
                )
            for step in range(version, SCHEMA_VERSION):
                for statement in _UPGRADES[step]:
                    db.execute(statement)
            if version != SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")

    def _check_data_key(self) -> None:
        """The first open records a value sealed under the data key; later opens check it, so a wrong key file is
        refused at start rather than at the first rekey."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM settings WHERE key = 'data_key_check'").fetchone()
            if row is None:
                nonce = os.urandom(12)
                sealed = nonce + self._aead.encrypt(nonce, _CHECK_PLAINTEXT, _CHECK_AD)
                db.execute("INSERT INTO settings (key, value) VALUES ('data_key_check', ?)", (sealed,))
                return
            try:
                value = bytes(row[0])
                self._aead.decrypt(value[:12], value[12:], _CHECK_AD)
            except (InvalidTag, ValueError, TypeError):
                raise StoreError(f"{self.path}: the data key does not belong to this database") from None

    def schema_version(self) -> int:
        with self._read() as db:
            return int(db.execute("PRAGMA user_version").fetchone()[0])

    def journal_mode(self) -> str:
        with self._read() as db:
            return str(db.execute("PRAGMA journal_mode").fetchone()[0])

    # --- dispatcher accounts ---

    def add_dispatcher(self, username: str, password: str, role: str = "dispatcher", *, now: float) -> None:
        if not isinstance(username, str) or not _USERNAME_RE.fullmatch(username):
            raise AccountError(
                f"bad account name {username!r}: 1-64 of A-Z a-z 0-9 . _ @ + -, starting with a letter or digit"
            )
        if role not in DISPATCHER_ROLES:
            raise AccountError(f"role must be one of {', '.join(sorted(DISPATCHER_ROLES))}, not {role!r}")
        self._check_new_password(password)
        stored = hash_password(password)
        with self._tx() as db:
            if db.execute("SELECT 1 FROM dispatchers WHERE username = ?", (username,)).fetchone():
                raise AccountError(f"account {username!r} already exists")
            db.execute(
                "INSERT INTO dispatchers (username, password_hash, role, created, changed) VALUES (?, ?, ?, ?, ?)",
                (username, stored, role, now, now),
            )
            self._audit(db, now, None, "account-added", f"{username} as {role}")

    @staticmethod
    def _check_new_password(password: str) -> None:
        problem = accounts.password_problem(password)
        if problem is not None:
            raise AccountError(problem)

    def _require_account(self, db: sqlite3.Connection, username: str) -> None:
        if not db.execute("SELECT 1 FROM dispatchers WHERE username = ?", (username,)).fetchone():
            raise AccountError(f"no account {username!r}")

    def remove_dispatcher(self, username: str, *, now: float) -> None:
        with self._tx() as db:
            self._require_account(db, username)
            db.execute("DELETE FROM dispatchers WHERE username = ?", (username,))
            self._audit(db, now, None, "account-removed", username)

    def set_dispatcher_password(self, username: str, password: str, *, now: float) -> None:
        """A new password; also lifts any lockout."""
        self._check_new_password(password)
        stored = hash_password(password)
        with self._tx() as db:
            self._require_account(db, username)
            db.execute(
                "UPDATE dispatchers SET password_hash = ?, failures = 0, locked_until = 0, changed = ? "
                "WHERE username = ?",
                (stored, now, username),
            )
            self._audit(db, now, None, "password-changed", username)

    def set_dispatcher_disabled(self, username: str, disabled: bool, *, now: float) -> None:
        with self._tx() as db:
            self._require_account(db, username)
            db.execute(
                "UPDATE dispatchers SET disabled = ?, changed = ? WHERE username = ?", (int(disabled), now, username)
            )
            self._audit(db, now, None, "account-disabled" if disabled else "account-enabled", username)

    def dispatcher(self, username: str) -> DispatcherAccount | None:
        with self._read() as db:
            row = db.execute("SELECT role, disabled FROM dispatchers WHERE username = ?", (username,)).fetchone()
        return None if row is None else DispatcherAccount(username, str(row[0]), bool(row[1]))

    def dispatchers(self) -> list[DispatcherAccount]:
        with self._read() as db:
            rows = db.execute("SELECT username, role, disabled FROM dispatchers ORDER BY username").fetchall()
        return [DispatcherAccount(str(u), str(r), bool(d)) for u, r, d in rows]

    def authenticate(self, username: str, password: str, *, now: float) -> DispatcherAccount:
        """The account if ``password`` is right; ``LoginFailed`` or ``LockedOut`` otherwise (both audited), by the
        KMS's policy (``server.accounts.authenticate``)."""
        try:
            return accounts.authenticate(self, username, password, now=now)
        except accounts.MalformedHash as exc:
            raise StoreError(str(exc)) from None

    # ``server.accounts.LoginLedger``: the login procedure's reads and writes of this store.

    def login_record(self, username: str) -> LoginRecord | None:
        with self._read() as db:
            row = db.execute(
                "SELECT password_hash, locked_until FROM dispatchers WHERE username = ?", (username,)
            ).fetchone()
        return None if row is None else LoginRecord(str(row[0]), float(row[1]))

    def login_audit(self, event: str, username: str | None, detail: str, now: float) -> None:
        self.audit(event, actor=username, detail=detail, now=now)

    def login_failure(self, username: str, now: float, policy: LockoutPolicy) -> None:
        with self._tx() as db:
            db.execute("UPDATE dispatchers SET failures = failures + 1 WHERE username = ?", (username,))
            row = db.execute("SELECT failures FROM dispatchers WHERE username = ?", (username,)).fetchone()
            failures = 0 if row is None else int(row[0])
            detail = f"wrong password ({failures} consecutive)"
            locked_until = policy.locked_until(failures, now)
            if locked_until is not None:
                db.execute("UPDATE dispatchers SET locked_until = ? WHERE username = ?", (locked_until, username))
                detail += f", locked for {locked_until - now:.0f} s"
            self._audit(db, now, username, "login-failed", detail)

    def login_success(self, username: str, now: float, new_hash: str | None) -> DispatcherAccount | None:
        with self._tx() as db:
            row = db.execute("SELECT role, disabled FROM dispatchers WHERE username = ?", (username,)).fetchone()
            if row is None:
                return None
            account = DispatcherAccount(username, str(row[0]), bool(row[1]))
            if account.disabled:
                self._audit(db, now, username, "login-failed", "account disabled")
                return account
            db.execute("UPDATE dispatchers SET failures = 0, locked_until = 0 WHERE username = ?", (username,))
            if new_hash is not None:
                db.execute("UPDATE dispatchers SET password_hash = ? WHERE username = ?", (new_hash, username))
            return account  # not audited: the dispatcher API logs in on every request

    # --- groups ---

    @staticmethod
    def _group_record(row: Sequence[Any]) -> GroupRecord:
        uri, name, created_at, created_by, max_burst = row
        return GroupRecord(str(uri), str(name), float(created_at), str(created_by), float(max_burst))

    def _require_group(self, db: sqlite3.Connection, uri: str) -> None:
        if not db.execute("SELECT 1 FROM groups WHERE uri = ?", (uri,)).fetchone():
            raise NoSuchGroup(uri)

    def create_group(
        self, uri: str, name: str, *, created_by: str, max_burst: float = DEFAULT_MAX_BURST, now: float
    ) -> GroupRecord:
        check_uri(uri, "group URI")
        check_group_name(name)
        burst = check_max_burst(max_burst)
        with self._tx() as db:
            if db.execute("SELECT 1 FROM groups WHERE uri = ?", (uri,)).fetchone():
                raise DuplicateGroup(uri)
            db.execute(
                "INSERT INTO groups (uri, name, created_at, created_by, max_burst) VALUES (?, ?, ?, ?, ?)",
                (uri, name, now, created_by, burst),
            )
            self._audit(db, now, created_by, "group-created", f"{uri} ({name})")
        return GroupRecord(uri, name, now, created_by, burst)

    def delete_group(self, uri: str, *, now: float, by: str | None = None) -> None:
        """Delete a group with its members, keys and I_MESSAGEs."""
        with self._tx() as db:
            self._require_group(db, uri)
            db.execute("DELETE FROM groups WHERE uri = ?", (uri,))
            self._audit(db, now, by, "group-deleted", uri)

    def groups(self) -> list[GroupRecord]:
        with self._read() as db:
            rows = db.execute("SELECT uri, name, created_at, created_by, max_burst FROM groups ORDER BY uri").fetchall()
        return [self._group_record(r) for r in rows]

    def group(self, uri: str) -> GroupRecord | None:
        with self._read() as db:
            row = db.execute(
                "SELECT uri, name, created_at, created_by, max_burst FROM groups WHERE uri = ?", (uri,)
            ).fetchone()
        return None if row is None else self._group_record(row)

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
            self._require_group(db, group)
            if db.execute("SELECT 1 FROM members WHERE group_uri = ? AND uri = ?", (group, uri)).fetchone():
                raise DuplicateMember(group, uri)
            db.execute(
                "INSERT INTO members (group_uri, uri, priority, role, added_at) VALUES (?, ?, ?, ?, ?)",
                (group, uri, priority, role, now),
            )
            self._audit(db, now, by, "member-added", f"{uri} to {group} (priority {priority}, {role})")
        return MemberRecord(group, uri, priority, role, now)

    def remove_member(self, group: str, uri: str, *, now: float, by: str | None = None) -> None:
        """Remove a member and its stored I_MESSAGEs."""
        with self._tx() as db:
            self._require_group(db, group)
            if db.execute("DELETE FROM members WHERE group_uri = ? AND uri = ?", (group, uri)).rowcount == 0:
                raise NoSuchMember(group, uri)
            self._audit(db, now, by, "member-removed", f"{uri} from {group}")

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
            self._require_group(db, group)
            current = self._member(db, group, uri)
            if current is None:
                raise NoSuchMember(group, uri)
            new_priority = current.priority if priority is None else priority
            new_role = current.role if role is None else role
            db.execute(
                "UPDATE members SET priority = ?, role = ? WHERE group_uri = ? AND uri = ?",
                (new_priority, new_role, group, uri),
            )
            self._audit(db, now, by, "member-updated", f"{uri} in {group}: priority {new_priority}, {new_role}")
        return MemberRecord(group, uri, new_priority, new_role, current.added_at)

    @staticmethod
    def _member(db: sqlite3.Connection, group: str, uri: str) -> MemberRecord | None:
        row = db.execute(
            "SELECT priority, role, added_at FROM members WHERE group_uri = ? AND uri = ?", (group, uri)
        ).fetchone()
        return None if row is None else MemberRecord(group, uri, int(row[0]), str(row[1]), float(row[2]))

    def member(self, group: str, uri: str) -> MemberRecord | None:
        with self._read() as db:
            return self._member(db, group, uri)

    def members(self, group: str) -> list[MemberRecord]:
        """The members of ``group`` in URI order (``NoSuchGroup`` if there is no such group)."""
        with self._read() as db:
            self._require_group(db, group)
            rows = db.execute(
                "SELECT uri, priority, role, added_at FROM members WHERE group_uri = ? ORDER BY uri", (group,)
            ).fetchall()
        return [MemberRecord(group, str(u), int(p), str(r), float(a)) for u, p, r, a in rows]

    def groups_of(self, member_uri: str) -> list[GroupRecord]:
        with self._read() as db:
            rows = db.execute(
                "SELECT g.uri, g.name, g.created_at, g.created_by, g.max_burst FROM groups g "
                "JOIN members m ON m.group_uri = g.uri WHERE m.uri = ? ORDER BY g.uri",
                (member_uri,),
            ).fetchall()
        return [self._group_record(r) for r in rows]

    # --- group keys ---

    @staticmethod
    def _gmk_ad(group: str, gmk_id: bytes, rand: bytes) -> bytes:
        return _GMK_AD + group.encode("utf-8") + b"|" + gmk_id + b"|" + rand

    def set_active_key(self, group: str, key: GroupKey, period_no: int, *, now: float, by: str | None = None) -> None:
        """Make ``key`` the group's active GMK (sealed under the data key); the superseded GMK is erased."""
        nonce = os.urandom(12)
        sealed = nonce + self._aead.encrypt(nonce, key.gmk, self._gmk_ad(group, key.gmk_id, key.rand))
        with self._tx() as db:
            self._require_group(db, group)
            db.execute("UPDATE group_keys SET active = 0, sealed_gmk = NULL WHERE group_uri = ?", (group,))
            db.execute(
                "INSERT INTO group_keys (group_uri, gmk_id, rand, sealed_gmk, period_no, created_at, active) "
                "VALUES (?, ?, ?, ?, ?, ?, 1)",
                (group, key.gmk_id, key.rand, sealed, period_no, now),
            )
            self._audit(db, now, by, "group-key", f"{group}: GMK-ID {key.gmk_id.hex()} for key period {period_no}")

    def active_key(self, group: str) -> tuple[GroupKey, int] | None:
        with self._read() as db:
            row = db.execute(
                "SELECT gmk_id, rand, sealed_gmk, period_no FROM group_keys WHERE group_uri = ? AND active = 1",
                (group,),
            ).fetchone()
        if row is None:
            return None
        gmk_id, rand, sealed = bytes(row[0]), bytes(row[1]), bytes(row[2])
        try:
            gmk = self._aead.decrypt(sealed[:12], sealed[12:], self._gmk_ad(group, gmk_id, rand))
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

    # --- audit log ---

    @staticmethod
    def _audit(db: sqlite3.Connection, now: float, actor: str | None, event: str, detail: str) -> None:
        db.execute("INSERT INTO audit (at, actor, event, detail) VALUES (?, ?, ?, ?)", (now, actor, event, detail))

    def audit(self, event: str, *, actor: str | None, detail: str, now: float) -> None:
        """Append an event. Callers must never put passwords or keys in ``detail``."""
        with self._tx() as db:
            self._audit(db, now, actor, event, detail)

    def audit_log(self, limit: int = 100) -> list[AuditRecord]:
        """The last ``limit`` events, oldest first."""
        with self._read() as db:
            rows = db.execute(
                "SELECT at, actor, event, detail FROM (SELECT * FROM audit ORDER BY id DESC LIMIT ?) ORDER BY id",
                (limit,),
            ).fetchall()
        return [AuditRecord(float(a), None if u is None else str(u), str(e), str(d)) for a, u, e, d in rows]
