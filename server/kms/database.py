"""The KMS store's database: the versioned schema, the connection and its transactions, settings, the audit log.

The schema is versioned by ``PRAGMA user_version``; ``_UPGRADES[v]`` takes a database from version v to v + 1,
so a newer KMS upgrades an older file in place and an older KMS refuses a newer file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Self

__all__ = ["SCHEMA_VERSION", "SETTINGS", "AuditRecord", "KmsDatabase", "StoreError"]

SETTINGS = ("domain", "kms_uri", "key_period", "key_period_offset", "base_url", "host", "port", "tls_trust")
"""The setting keys the CLI writes and the service reads."""


class StoreError(Exception):
    """The database is unusable (e.g. written by a newer KMS) or a record does not exist."""


@dataclass(frozen=True)
class AuditRecord:
    at: float
    event: str
    username: str | None
    detail: str


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


class KmsDatabase:
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

    def __enter__(self) -> Self:
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
