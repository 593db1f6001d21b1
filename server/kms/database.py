"""The KMS store's database: the versioned schema, settings, the audit log.

The audit log is a hash chain (``server.auditchain``, shared with the group store): ``verify_audit`` finds an
edited, inserted, deleted or reordered record. The database is SQLite (one file, the default) or PostgreSQL,
chosen by a URL; connections, transactions and schema upgrades are ``server.sqldb``'s, shared with the group
store. ``_UPGRADES[v]`` takes a database from version v to v + 1, so a newer KMS upgrades an older database in
place and an older KMS refuses a newer one. Writers are serialised (SQLite's ``BEGIN IMMEDIATE`` with a busy
timeout; a transaction-level advisory lock in PostgreSQL), so several KMS processes may share one database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from server.auditchain import AUDIT_GENESIS, ChainCheck, audit_digest, verify_audit_chain
from server.auditchain import AuditRecord as ChainedRecord
from server.sqldb import Connection, SqlStore, Upgrade

__all__ = ["SCHEMA_VERSION", "SETTINGS", "AuditRecord", "KmsDatabase", "StoreError"]

SETTINGS = (
    "domain",
    "kms_uri",
    "key_period",
    "key_period_offset",
    "base_url",
    "host",
    "port",
    "tls_trust",
    "basic_login",
    "access_token_lifetime",
)
"""The setting keys the CLI writes and the service reads."""


class StoreError(Exception):
    """The database is unusable (e.g. written by a newer KMS) or a record does not exist."""


@dataclass(frozen=True)
class AuditRecord:
    at: float
    event: str
    username: str | None
    detail: str


_UPGRADES: dict[int, list[Upgrade]] = {
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
    # issue 14: bulk issuance. Key sets computed ahead of their period by ``ptt-kms issue``, sealed (AES-256-GCM,
    # server.kms.issuance); keyprov serves them when present. One row per identity and period (idempotent runs).
    1: [
        """CREATE TABLE precomputed_keys (
            identity_uri TEXT NOT NULL,
            period_no INTEGER NOT NULL,
            uid BLOB NOT NULL,
            sealed BLOB NOT NULL,
            created REAL NOT NULL,
            PRIMARY KEY (identity_uri, period_no))""",
        "CREATE INDEX precomputed_keys_by_period ON precomputed_keys (period_no)",
    ],
    # issue 14: token login. The IdMS's refresh tokens (only their SHA-256; rotated on use, a used one kept
    # marked until it expires so that its reuse is noticed) and, for a domain initialised before, HTTP Basic login
    # kept on so that its clients keep working until the operator turns it off (``ptt-kms basic-login off``).
    2: [
        """CREATE TABLE refresh_tokens (
            token_hash TEXT PRIMARY KEY,
            username TEXT NOT NULL REFERENCES accounts(username) ON DELETE CASCADE,
            family TEXT NOT NULL,
            scope TEXT NOT NULL,
            credential TEXT NOT NULL,
            issued REAL NOT NULL,
            expires REAL NOT NULL,
            used INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family)",
        "CREATE INDEX refresh_tokens_by_user ON refresh_tokens (username)",
        "INSERT INTO settings (key, value) SELECT 'basic_login', 'on' "
        "WHERE EXISTS (SELECT 1 FROM settings WHERE key = 'kms_uri')",
    ],
    # Each login and refresh deletes the expired refresh tokens: without an index that scanned the whole table
    # (5.8 ms a refresh at 30 000 users, growing linearly towards 2 M).
    3: ["CREATE INDEX refresh_tokens_by_expiry ON refresh_tokens (expires)"],
    # Issue 17: the audit log becomes a hash chain (server.auditchain, as the group store's), so that an RSK export
    # or an audit run cannot be removed or edited unnoticed (``ptt-kms audit verify``); earlier records are chained
    # as they are.
    4: ["ALTER TABLE audit ADD COLUMN hash BLOB", lambda db: _chain_existing(db)],
}
SCHEMA_VERSION = len(_UPGRADES)


_AUDIT_COLUMNS = "id, at, username, event, detail, hash"


def _chained(row: Sequence[Any]) -> ChainedRecord:
    """A KMS audit row as the shared chain sees it (actor = the account, no organisation)."""
    i, at, username, event, detail, digest = row
    return ChainedRecord(
        float(at),
        None if username is None else str(username),
        str(event),
        str(detail),
        int(i),
        None,
        b"" if digest is None else bytes(digest),
    )


def _chain_existing(db: Connection) -> None:
    previous = AUDIT_GENESIS
    for row in db.execute(f"SELECT {_AUDIT_COLUMNS} FROM audit ORDER BY id").fetchall():
        record = _chained(row)
        previous = audit_digest(previous, record)
        db.execute("UPDATE audit SET hash = ? WHERE id = ?", (previous, record.id))


class KmsDatabase(SqlStore):
    """The KMS's database (``server.sqldb.SqlStore``): a SQLite path (or ``sqlite:///path``) or ``postgresql://…``.
    Several processes may share it (the service, its workers, the CLI); each change is one serialised
    transaction."""

    LOCK_NAME = "ptt.kms"
    PROGRAM = "KMS"
    UPGRADES = _UPGRADES
    ERROR = StoreError

    # --- settings ---

    def set_setting(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def get_setting(self, key: str) -> str | None:
        with self._read() as db:
            row = db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def settings(self) -> dict[str, str]:
        with self._read() as db:
            rows = db.execute("SELECT key, value FROM settings ORDER BY key").fetchall()
        return {str(k): str(v) for k, v in rows}

    # --- audit log ---

    @staticmethod
    def _audit(db: Connection, event: str, username: str | None, detail: str, now: float) -> None:
        """Append a chained record (inside the write transaction: writers are serialised, so the head is ours)."""
        now = float(now)  # hashed as it reads back
        last = db.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        previous = AUDIT_GENESIS if last is None or last[0] is None else bytes(last[0])
        (row_id,) = db.execute(
            "INSERT INTO audit (at, event, username, detail) VALUES (?, ?, ?, ?) RETURNING id",
            (now, event, username, detail),
        ).fetchone()
        record = ChainedRecord(now, username, event, detail, int(row_id), None)
        db.execute("UPDATE audit SET hash = ? WHERE id = ?", (audit_digest(previous, record), row_id))

    def verify_audit(self, *, anchor: tuple[int, bytes] | None = None) -> ChainCheck:
        """Walk the whole audit chain (``server.auditchain.verify_audit_chain``)."""
        with self._read() as db:
            rows = db.execute(f"SELECT {_AUDIT_COLUMNS} FROM audit ORDER BY id").fetchall()
        return verify_audit_chain((_chained(r) for r in rows), anchor=anchor)

    def audit(self, event: str, *, username: str | None, detail: str, now: float) -> None:
        """Append an event. Callers must never put passwords or keys in ``detail``."""
        with self._tx() as db:
            self._audit(db, event, username, detail, now)

    def audit_log(self, limit: int = 100) -> list[AuditRecord]:
        """The last ``limit`` events, oldest first."""
        with self._read() as db:
            rows = db.execute(
                "SELECT at, event, username, detail FROM (SELECT * FROM audit ORDER BY id DESC LIMIT ?) AS latest "
                "ORDER BY id",
                (limit,),
            ).fetchall()
        return [AuditRecord(float(at), str(e), None if u is None else str(u), str(d)) for at, e, u, d in rows]
