"""The KMS's SQLite store: settings, accounts and their grants, issuance records, audit log, trusted domains.

No keys live here: user keys are derived again on every request (``ptt.crypto.kms.derive_user_keys``) and the
master secrets have their own file. Passwords are kept only as scrypt hashes. Time is always passed in
(``now``, Unix seconds) so tests can drive lockouts without waiting.

The schema is versioned by ``PRAGMA user_version``; ``_UPGRADES[v]`` takes a database from version v to v + 1,
so a newer KMS upgrades an older file in place and an older KMS refuses a newer file.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from server import accounts
from server.accounts import MIN_PASSWORD_LENGTH, LockedOut, LockoutPolicy, LoginFailed, LoginRecord, hash_password

__all__ = [
    "GRANT_KINDS",
    "LOCKOUT_AFTER",
    "LOCKOUT_MAX",
    "LOCKOUT_MIN",
    "MIN_PASSWORD_LENGTH",
    "ROLES",
    "SETTINGS",
    "Account",
    "AccountError",
    "AuditRecord",
    "IssueRecord",
    "KmsStore",
    "LockedOut",
    "LoginFailed",
    "StoreError",
    "TrustedDomain",
]

ROLES = frozenset({"user", "admin", "auditor"})
GRANT_KINDS = frozenset({"self", "group-manager"})
"""'self': the account's own identity (granted by ``add_account``); 'group-manager': a group it keys."""

SETTINGS = ("domain", "kms_uri", "key_period", "key_period_offset", "base_url", "host", "port")
"""The setting keys the CLI writes and the service reads."""

# The lockout policy shared with the dispatcher accounts (``server.accounts.LOCKOUT``), named here for callers.
LOCKOUT_AFTER = accounts.LOCKOUT.after  # consecutive failures before the first lock
LOCKOUT_MIN = accounts.LOCKOUT.first  # seconds, doubled on every further failure ...
LOCKOUT_MAX = accounts.LOCKOUT.longest  # ... up to an hour
_USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")


class StoreError(Exception):
    """The database is unusable (e.g. written by a newer KMS) or a record does not exist."""


class AccountError(StoreError, accounts.AccountError):
    """An account operation was refused: duplicate or unknown account, bad name, role or password. (A refused
    login is ``LoginFailed`` or ``LockedOut`` from ``server.accounts``, shared with the dispatcher accounts.)"""


@dataclass(frozen=True)
class Account:
    username: str
    uri: str | None
    roles: frozenset[str]
    disabled: bool


@dataclass(frozen=True)
class IssueRecord:
    at: float
    username: str
    identity_uri: str
    period_no: int
    uid: bytes
    kind: str


@dataclass(frozen=True)
class AuditRecord:
    at: float
    event: str
    username: str | None
    detail: str


@dataclass(frozen=True)
class TrustedDomain:
    kms_uri: str
    certificate_xml: bytes
    added: float


# --- schema ---

_UPGRADES: dict[int, list[str]] = {
    0: [
        "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE accounts (
            username TEXT PRIMARY KEY,
            password_hash TEXT NOT NULL,
            uri TEXT,
            disabled INTEGER NOT NULL DEFAULT 0,
            failures INTEGER NOT NULL DEFAULT 0,
            locked_until REAL NOT NULL DEFAULT 0,
            created REAL NOT NULL,
            changed REAL NOT NULL)""",
        """CREATE TABLE account_roles (
            username TEXT NOT NULL REFERENCES accounts(username) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('user', 'admin', 'auditor')),
            PRIMARY KEY (username, role))""",
        """CREATE TABLE grants (
            username TEXT NOT NULL REFERENCES accounts(username) ON DELETE CASCADE,
            identity_uri TEXT NOT NULL,
            kind TEXT NOT NULL,
            granted REAL NOT NULL,
            PRIMARY KEY (username, identity_uri))""",
        "CREATE INDEX grants_by_uri ON grants (identity_uri)",
        # No foreign key: the record of what was issued outlives the account it was issued to.
        """CREATE TABLE issues (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            username TEXT NOT NULL,
            identity_uri TEXT NOT NULL,
            period_no INTEGER NOT NULL,
            uid BLOB NOT NULL,
            kind TEXT NOT NULL)""",
        "CREATE INDEX issues_by_uri ON issues (identity_uri)",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            event TEXT NOT NULL,
            username TEXT,
            detail TEXT NOT NULL)""",
        """CREATE TABLE trusted_domains (
            kms_uri TEXT PRIMARY KEY,
            certificate_xml BLOB NOT NULL,
            added REAL NOT NULL)""",
    ],
}
SCHEMA_VERSION = len(_UPGRADES)


def _is_namespace(pattern: str) -> bool:
    scheme, sep, rest = pattern.partition(":")
    host = rest[2:]
    return bool(scheme and sep and rest.startswith("*@") and host and "*" not in host and "@" not in host)


def namespace_matches(pattern: str, uri: str) -> bool:
    """``scheme:*@host`` matches ``scheme:USER@host`` for any single USER (no '@', no '*')."""
    if not _is_namespace(pattern):
        return False
    scheme, _, rest = pattern.partition(":")
    uri_scheme, sep, uri_rest = uri.partition(":")
    user, at, host = uri_rest.rpartition("@")
    return bool(sep and at and user) and uri_scheme == scheme and host == rest[2:] and not {"@", "*"} & set(user)


class KmsStore:
    """One SQLite connection. Several processes may share the file (the service and the CLI): WAL mode, a busy
    timeout, and each change in its own ``BEGIN IMMEDIATE`` transaction."""

    def __init__(self, path: Path, *, check_same_thread: bool = True) -> None:
        """Open (creating and upgrading as needed) the store at ``path``. ``check_same_thread=False`` lets one
        worker thread other than the opening one use it (never two threads at once)."""
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0, check_same_thread=check_same_thread)
        try:
            self._db.execute("PRAGMA foreign_keys = ON")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal" and str(self.path) != ":memory:":
                raise StoreError(f"{self.path}: cannot switch the database to WAL mode (got {mode})")
            self._db.execute("PRAGMA synchronous = NORMAL")  # durable enough in WAL mode, much faster
            self._upgrade()
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> KmsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _upgrade(self) -> None:
        with self._tx() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}, newer than this KMS ({SCHEMA_VERSION}); upgrade ptt"
                )
            for step in range(version, SCHEMA_VERSION):
                for statement in _UPGRADES[step]:
                    db.execute(statement)
            if version != SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")

    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def journal_mode(self) -> str:
        return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    # --- settings ---

    def set_setting(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def get_setting(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def settings(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self._db.execute("SELECT key, value FROM settings ORDER BY key")}

    # --- accounts ---

    @staticmethod
    def _check_new_password(password: str) -> None:
        problem = accounts.password_problem(password)
        if problem is not None:
            raise AccountError(problem)

    def add_account(
        self,
        username: str,
        password: str,
        *,
        uri: str | None,
        roles: set[str] | frozenset[str] = frozenset({"user"}),
        now: float,
    ) -> None:
        """A new account; ``uri`` (the user's own identity) is granted to it as kind 'self'."""
        if not _USERNAME_RE.fullmatch(username):
            raise AccountError(
                f"bad account name {username!r}: 1-64 of A-Z a-z 0-9 . _ @ + -, starting with a letter or digit"
            )
        unknown = set(roles) - ROLES
        if unknown or not roles:
            raise AccountError(f"roles must be some of {', '.join(sorted(ROLES))}; got {', '.join(sorted(roles))}")
        if uri is not None and not uri:
            raise AccountError("the identity URI must not be empty")
        self._check_new_password(password)
        stored = hash_password(password)
        with self._tx() as db:
            if db.execute("SELECT 1 FROM accounts WHERE username = ?", (username,)).fetchone():
                raise AccountError(f"account {username!r} already exists")
            db.execute(
                "INSERT INTO accounts (username, password_hash, uri, created, changed) VALUES (?, ?, ?, ?, ?)",
                (username, stored, uri, now, now),
            )
            db.executemany(
                "INSERT INTO account_roles (username, role) VALUES (?, ?)", [(username, r) for r in sorted(roles)]
            )
            if uri is not None:
                db.execute(
                    "INSERT INTO grants (username, identity_uri, kind, granted) VALUES (?, ?, 'self', ?)",
                    (username, uri, now),
                )
            self._audit(db, "account-added", username, f"uri={uri} roles={','.join(sorted(roles))}", now)

    def _require(self, db: sqlite3.Connection, username: str) -> None:
        if not db.execute("SELECT 1 FROM accounts WHERE username = ?", (username,)).fetchone():
            raise AccountError(f"no account {username!r}")

    def remove_account(self, username: str, *, now: float) -> None:
        with self._tx() as db:
            self._require(db, username)
            db.execute("DELETE FROM accounts WHERE username = ?", (username,))  # roles and grants cascade
            self._audit(db, "account-removed", username, "", now)

    def set_password(self, username: str, password: str, *, now: float) -> None:
        """A new password; also lifts any lockout."""
        self._check_new_password(password)
        stored = hash_password(password)
        with self._tx() as db:
            self._require(db, username)
            db.execute(
                "UPDATE accounts SET password_hash = ?, failures = 0, locked_until = 0, changed = ? WHERE username = ?",
                (stored, now, username),
            )
            self._audit(db, "password-changed", username, "", now)

    def set_disabled(self, username: str, disabled: bool, *, now: float) -> None:
        """A disabled account keeps its grants but cannot log in."""
        with self._tx() as db:
            self._require(db, username)
            db.execute(
                "UPDATE accounts SET disabled = ?, changed = ? WHERE username = ?", (int(disabled), now, username)
            )
            self._audit(db, "account-disabled" if disabled else "account-enabled", username, "", now)

    def _account(self, db: sqlite3.Connection, username: str) -> Account | None:
        row = db.execute("SELECT uri, disabled FROM accounts WHERE username = ?", (username,)).fetchone()
        if row is None:
            return None
        roles = frozenset(
            str(r) for (r,) in db.execute("SELECT role FROM account_roles WHERE username = ?", (username,))
        )
        return Account(username=username, uri=row[0], roles=roles, disabled=bool(row[1]))

    def account(self, username: str) -> Account | None:
        return self._account(self._db, username)

    def accounts(self) -> list[Account]:
        names = [str(n) for (n,) in self._db.execute("SELECT username FROM accounts ORDER BY username")]
        return [a for a in (self._account(self._db, n) for n in names) if a is not None]

    def authenticate(self, username: str, password: str, *, now: float) -> Account:
        """The account if ``password`` is right; ``LoginFailed`` or ``LockedOut`` otherwise (both audited), by the
        policy of ``server.accounts.authenticate``."""
        try:
            return accounts.authenticate(self, username, password, now=now)
        except accounts.MalformedHash as exc:
            raise StoreError(str(exc)) from None

    # ``server.accounts.LoginLedger``: the login procedure's reads and writes of this store.

    def login_record(self, username: str) -> LoginRecord | None:
        row = self._db.execute(
            "SELECT password_hash, locked_until FROM accounts WHERE username = ?", (username,)
        ).fetchone()
        return None if row is None else LoginRecord(str(row[0]), float(row[1]))

    def login_audit(self, event: str, username: str | None, detail: str, now: float) -> None:
        self.audit(event, username=username, detail=detail, now=now)

    def login_failure(self, username: str, now: float, policy: LockoutPolicy) -> None:
        with self._tx() as db:
            # Count in SQL so that concurrent failures from two processes are both counted.
            db.execute("UPDATE accounts SET failures = failures + 1 WHERE username = ?", (username,))
            row = db.execute("SELECT failures FROM accounts WHERE username = ?", (username,)).fetchone()
            failures = 0 if row is None else int(row[0])
            detail = f"wrong password ({failures} consecutive)"
            locked_until = policy.locked_until(failures, now)
            if locked_until is not None:
                db.execute("UPDATE accounts SET locked_until = ? WHERE username = ?", (locked_until, username))
                detail += f", locked for {locked_until - now:.0f} s"
            self._audit(db, "login-failed", username, detail, now)

    def login_success(self, username: str, now: float, new_hash: str | None) -> Account | None:
        with self._tx() as db:
            account = self._account(db, username)
            if account is None:
                return None
            if account.disabled:
                self._audit(db, "login-failed", username, "account disabled", now)
                return account
            db.execute("UPDATE accounts SET failures = 0, locked_until = 0 WHERE username = ?", (username,))
            if new_hash is not None:
                db.execute("UPDATE accounts SET password_hash = ? WHERE username = ?", (new_hash, username))
            self._audit(db, "login", username, "", now)
            return account

    # --- grants ---

    def grant(self, username: str, identity_uri: str, kind: str = "group-manager", *, now: float) -> None:
        """Let ``username`` obtain the keys of ``identity_uri`` (replacing the kind of an existing grant)."""
        if kind not in GRANT_KINDS:
            raise AccountError(f"unknown grant kind {kind!r}; one of {', '.join(sorted(GRANT_KINDS))}")
        if not identity_uri:
            raise AccountError("the identity URI must not be empty")
        if "*" in identity_uri and (kind != "group-manager" or not _is_namespace(identity_uri)):
            raise AccountError(
                "a wildcard grant must be a group-manager grant of the form scheme:*@host "
                "(e.g. sip:*@groups.example.org)"
            )
        with self._tx() as db:
            self._require(db, username)
            db.execute(
                "INSERT INTO grants (username, identity_uri, kind, granted) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (username, identity_uri) DO UPDATE SET kind = excluded.kind, granted = excluded.granted",
                (username, identity_uri, kind, now),
            )
            self._audit(db, "grant", username, f"{identity_uri} as {kind}", now)

    def revoke(self, username: str, identity_uri: str, *, now: float) -> None:
        with self._tx() as db:
            self._require(db, username)
            cursor = db.execute("DELETE FROM grants WHERE username = ? AND identity_uri = ?", (username, identity_uri))
            if cursor.rowcount == 0:
                raise AccountError(f"{username!r} has no grant for {identity_uri}")
            self._audit(db, "revoke", username, identity_uri, now)

    def grants(self, username: str) -> dict[str, str]:
        """identity URI → kind."""
        rows = self._db.execute(
            "SELECT identity_uri, kind FROM grants WHERE username = ? ORDER BY identity_uri", (username,)
        )
        return {str(u): str(k) for u, k in rows}

    def grant_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM grants").fetchone()[0])

    def may_key(self, username: str, identity_uri: str) -> bool:
        """Whether an enabled account ``username`` holds a grant for ``identity_uri``: exactly, or through a
        group-manager grant for a whole group namespace (``sip:*@groups.example.org``)."""
        rows = self._db.execute(
            "SELECT identity_uri, kind FROM grants JOIN accounts USING (username) "
            "WHERE username = ? AND accounts.disabled = 0 AND (identity_uri = ? OR identity_uri LIKE '%*%')",
            (username, identity_uri),
        ).fetchall()
        return any(
            uri == identity_uri or (kind == "group-manager" and namespace_matches(uri, identity_uri))
            for uri, kind in rows
        )

    # --- issuance records ---

    def record_issue(
        self, username: str, identity_uri: str, period_no: int, uid: bytes, *, now: float, kind: str = "keyprov"
    ) -> None:
        """Record that ``username`` obtained the keys of ``identity_uri`` for ``period_no`` (never the keys)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO issues (at, username, identity_uri, period_no, uid, kind) VALUES (?, ?, ?, ?, ?, ?)",
                (now, username, identity_uri, period_no, bytes(uid), kind),
            )

    def issued(self, identity_uri: str | None = None) -> list[IssueRecord]:
        """Issuance records, oldest first, of one identity or of all."""
        query = "SELECT at, username, identity_uri, period_no, uid, kind FROM issues"
        params: tuple[str, ...] = ()
        if identity_uri is not None:
            query += " WHERE identity_uri = ?"
            params = (identity_uri,)
        return [
            IssueRecord(float(at), str(u), str(i), int(p), bytes(uid), str(k))
            for at, u, i, p, uid, k in self._db.execute(query + " ORDER BY id", params)
        ]

    # --- audit log ---

    @staticmethod
    def _audit(db: sqlite3.Connection, event: str, username: str | None, detail: str, now: float) -> None:
        db.execute(
            "INSERT INTO audit (at, event, username, detail) VALUES (?, ?, ?, ?)", (now, event, username, detail)
        )

    def audit(self, event: str, *, username: str | None, detail: str, now: float) -> None:
        """Append an event. Callers must never put passwords or keys in ``detail``."""
        with self._tx() as db:
            self._audit(db, event, username, detail, now)

    def audit_log(self, limit: int = 100) -> list[AuditRecord]:
        """The last ``limit`` events, oldest first."""
        rows = self._db.execute(
            "SELECT at, event, username, detail FROM (SELECT * FROM audit ORDER BY id DESC LIMIT ?) ORDER BY id",
            (limit,),
        )
        return [AuditRecord(float(at), str(e), None if u is None else str(u), str(d)) for at, e, u, d in rows]

    # --- trusted external domains ---

    def add_trusted_certificate(self, kms_uri: str, certificate_xml: bytes, *, now: float) -> None:
        """Trust another domain's KMS certificate (replacing an earlier one for the same KMS URI)."""
        if not kms_uri:
            raise StoreError("the KMS URI must not be empty")
        with self._tx() as db:
            db.execute(
                "INSERT INTO trusted_domains (kms_uri, certificate_xml, added) VALUES (?, ?, ?) ON CONFLICT (kms_uri) "
                "DO UPDATE SET certificate_xml = excluded.certificate_xml, added = excluded.added",
                (kms_uri, bytes(certificate_xml), now),
            )
            self._audit(db, "trusted-domain-added", None, kms_uri, now)

    def trusted_certificates(self) -> list[bytes]:
        return [bytes(x) for (x,) in self._db.execute("SELECT certificate_xml FROM trusted_domains ORDER BY kms_uri")]

    def trusted_domains(self) -> list[TrustedDomain]:
        rows = self._db.execute("SELECT kms_uri, certificate_xml, added FROM trusted_domains ORDER BY kms_uri")
        return [TrustedDomain(str(u), bytes(x), float(a)) for u, x, a in rows]

    def remove_trusted_certificate(self, kms_uri: str, *, now: float | None = None) -> None:
        with self._tx() as db:
            if db.execute("DELETE FROM trusted_domains WHERE kms_uri = ?", (kms_uri,)).rowcount == 0:
                raise StoreError(f"{kms_uri} is not a trusted domain")
            if now is not None:
                self._audit(db, "trusted-domain-removed", None, kms_uri, now)
