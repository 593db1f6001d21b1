"""The group store's database: the versioned schema, one connection shared by threads, transactions, the data key
check and the audit log.

The database is SQLite (one file, the embedded default) or PostgreSQL, chosen by a URL (``server.sqldb``). The
schema is versioned (``_UPGRADES[v]`` takes version v to v + 1: SQL statements, or a function of the connection for
a step SQL cannot do). The store is usable from several threads, and ``transaction()`` lets a caller group several
changes into one atomic transaction (the group manager stores a group, its members, its key and their I_MESSAGEs
all or nothing); writers are serialised, so the audit hash chain's head is read and extended by one writer at a
time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from server.groups.datakey import CHECK_AD, CHECK_PLAINTEXT, DATA_KEY_LENGTH
from server.groups.records import (
    AUDIT_GENESIS,
    DEFAULT_ORG,
    AuditRecord,
    ChainCheck,
    StoreError,
    audit_digest,
    verify_audit_chain,
)
from server.sqldb import Connection, SqlStore, Upgrade

__all__ = ["SCHEMA_VERSION", "StoreDatabase"]

_AUDIT_COLUMNS = "id, at, actor, event, detail, org, hash"


def _audit_record(row: Sequence[Any]) -> AuditRecord:
    i, at, actor, event, detail, org, digest = row
    return AuditRecord(
        float(at),
        None if actor is None else str(actor),
        str(event),
        str(detail),
        int(i),
        None if org is None else str(org),
        b"" if digest is None else bytes(digest),
    )


def _chain_existing_audit(db: Connection) -> None:
    """Version 1 → 2: the records written before the chain existed are chained as they are."""
    previous = AUDIT_GENESIS
    rows = db.execute(f"SELECT {_AUDIT_COLUMNS} FROM audit ORDER BY id").fetchall()
    for row in rows:
        record = _audit_record(row)
        previous = audit_digest(previous, record)
        db.execute("UPDATE audit SET hash = ? WHERE id = ?", (previous, record.id))


_UPGRADES: dict[int, list[Upgrade]] = {
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
    # Dispatcher authorisation: organisations, group owners, dispatchers assigned to groups, the audit hash chain.
    1: [
        f"ALTER TABLE dispatchers ADD COLUMN org TEXT NOT NULL DEFAULT '{DEFAULT_ORG}'",
        f"ALTER TABLE groups ADD COLUMN org TEXT NOT NULL DEFAULT '{DEFAULT_ORG}'",
        "ALTER TABLE groups ADD COLUMN owner TEXT",
        "UPDATE groups SET owner = created_by WHERE created_by IN (SELECT username FROM dispatchers)",
        "CREATE INDEX groups_by_org ON groups (org)",
        """CREATE TABLE group_dispatchers (
            group_uri TEXT NOT NULL REFERENCES groups(uri) ON DELETE CASCADE,
            username TEXT NOT NULL REFERENCES dispatchers(username) ON DELETE CASCADE,
            assigned_by TEXT,
            assigned_at REAL NOT NULL,
            PRIMARY KEY (group_uri, username))""",
        "CREATE INDEX group_dispatchers_by_username ON group_dispatchers (username)",
        "ALTER TABLE audit ADD COLUMN org TEXT",
        "ALTER TABLE audit ADD COLUMN hash BLOB",
        _chain_existing_audit,
    ],
    # Issue 16, emergency and broadcast calls: each member's emergency / imminent peril alert (active while
    # cancelled_at is NULL; the last cancellation stays, with who cancelled), and the broadcast right of members.
    2: [
        "ALTER TABLE members ADD COLUMN broadcast INTEGER NOT NULL DEFAULT 0 CHECK (broadcast IN (0, 1))",
        """CREATE TABLE emergency_alerts (
            group_uri TEXT NOT NULL,
            member_uri TEXT NOT NULL,
            level INTEGER NOT NULL CHECK (level IN (1, 2)),
            since REAL NOT NULL,
            with_call INTEGER NOT NULL DEFAULT 0 CHECK (with_call IN (0, 1)),
            cancelled_at REAL,
            cancelled_by TEXT,
            PRIMARY KEY (group_uri, member_uri),
            FOREIGN KEY (group_uri, member_uri) REFERENCES members(group_uri, uri) ON DELETE CASCADE)""",
    ],
    # Issue 15, the dispatcher console: a dispatcher's acknowledgement of an active alert (who, when).
    3: [
        "ALTER TABLE emergency_alerts ADD COLUMN acked_at REAL",
        "ALTER TABLE emergency_alerts ADD COLUMN acked_by TEXT",
    ],
    # Issue 17, encrypted recording: per group whether it is recorded and how many days bursts are kept; the index
    # of stored bursts (the SRTP is in files under the data directory); every GMK I_MESSAGE sent to a member of a
    # recorded group, kept past removal (no foreign key to members) so that replay finds the key of the time.
    4: [
        "ALTER TABLE groups ADD COLUMN recording_days INTEGER",
        """CREATE TABLE recordings (
            id INTEGER PRIMARY KEY,
            group_uri TEXT NOT NULL REFERENCES groups(uri) ON DELETE CASCADE,
            talker TEXT NOT NULL,
            ssrc BIGINT NOT NULL,
            started REAL NOT NULL,
            ended REAL NOT NULL,
            gmk_ids BLOB NOT NULL,
            packets INTEGER NOT NULL,
            octets BIGINT NOT NULL,
            path TEXT NOT NULL)""",
        "CREATE INDEX recordings_by_group ON recordings (group_uri, started)",
        "CREATE INDEX recordings_by_end ON recordings (ended)",
        """CREATE TABLE key_archive (
            group_uri TEXT NOT NULL REFERENCES groups(uri) ON DELETE CASCADE,
            member_uri TEXT NOT NULL,
            gmk_id BLOB NOT NULL,
            data BLOB NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (group_uri, member_uri, gmk_id))""",
    ],
    # Issue 17, deferred delivery: voice messages kept for their addressee (server.groups.voicemessages): the PCK
    # I_MESSAGE encrypted to the addressee, the SRTP in a file, delivered/played times, what the sender was told;
    # a message to a group (under its GMK, no I_MESSAGE) has a receipt per member.
    5: [
        """CREATE TABLE voice_messages (
            id INTEGER PRIMARY KEY,
            sender TEXT NOT NULL,
            addressee TEXT NOT NULL,
            digest BLOB NOT NULL UNIQUE,
            imessage BLOB NOT NULL,
            sent_at REAL NOT NULL,
            stored_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            packets INTEGER NOT NULL,
            octets BIGINT NOT NULL,
            seconds REAL NOT NULL,
            path TEXT NOT NULL,
            delivered_at REAL,
            played_at REAL,
            sender_told INTEGER NOT NULL DEFAULT 0 CHECK (sender_told BETWEEN 0 AND 2),
            to_group INTEGER NOT NULL DEFAULT 0 CHECK (to_group IN (0, 1)))""",
        "CREATE INDEX voice_messages_by_addressee ON voice_messages (addressee, id)",
        "CREATE INDEX voice_messages_by_sender ON voice_messages (sender, id)",
        "CREATE INDEX voice_messages_by_expiry ON voice_messages (expires_at)",
        # a group message's delivery to each member: fetched (delivered), played, what the sender was told
        """CREATE TABLE voice_message_receipts (
            message_id INTEGER NOT NULL REFERENCES voice_messages(id) ON DELETE CASCADE,
            member TEXT NOT NULL,
            delivered_at REAL,
            played_at REAL,
            sender_told INTEGER NOT NULL DEFAULT 0 CHECK (sender_told BETWEEN 0 AND 2),
            PRIMARY KEY (message_id, member))""",
    ],
    # Several server nodes on one PostgreSQL: the recorded bursts' and voice messages' SRTP in the shared store,
    # so any node serves a replay or a fetch (``server.groups.mediablobs``; one host with SQLite keeps files).
    6: [
        """CREATE TABLE media_blobs (
            ref TEXT PRIMARY KEY,
            data BLOB NOT NULL,
            stored_at REAL NOT NULL)""",
    ],
}
SCHEMA_VERSION = len(_UPGRADES)


class StoreDatabase(SqlStore):
    """The database, transactions, schema upgrades, data key check and audit log every part of the group store
    shares (``server.sqldb.SqlStore``); ``GroupStore`` adds the tables' operations."""

    LOCK_NAME = "ptt.groups"
    PROGRAM = "server"
    UPGRADES = _UPGRADES
    ERROR = StoreError

    def __init__(self, url: Path | str, data_key: bytes) -> None:
        """Open (creating and upgrading as needed) the store at ``url``: a SQLite path (or ``sqlite:///path``), or
        ``postgresql://…`` (``server.sqldb.open_database``). For SQLite, ``path`` is the file (the CSK replay
        file goes next to it: ``server.replaystore``)."""
        if not isinstance(data_key, bytes) or len(data_key) != DATA_KEY_LENGTH:
            raise StoreError(f"the data key must be {DATA_KEY_LENGTH} octets")
        self._aead = AESGCM(data_key)
        super().__init__(url)

    # --- transactions ---

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything done through this store inside the block is one atomic transaction (nesting is allowed:
        only the outermost block commits); writers are serialised (``server.sqldb``)."""
        with self._tx():
            yield

    def _after_upgrade(self) -> None:
        self._check_data_key()

    def _check_data_key(self) -> None:
        """The first open records a value sealed under the data key; later opens check it, so a wrong key file is
        refused at start rather than at the first rekey."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM settings WHERE key = 'data_key_check'").fetchone()
            if row is None:
                nonce = os.urandom(12)
                sealed = nonce + self._aead.encrypt(nonce, CHECK_PLAINTEXT, CHECK_AD)
                db.execute("INSERT INTO settings (key, value) VALUES ('data_key_check', ?)", (sealed,))
                return
            try:
                value = bytes(row[0])
                self._aead.decrypt(value[:12], value[12:], CHECK_AD)
            except (InvalidTag, ValueError, TypeError):
                raise StoreError(f"{self.location}: the data key does not belong to this database") from None

    # --- audit log ---

    @staticmethod
    def _audit(
        db: Connection, now: float, actor: str | None, event: str, detail: str, *, org: str | None = None
    ) -> None:
        """Append a chained record (call inside a write transaction). ``org`` defaults to the actor's."""
        now = float(now)  # hashed as it reads back (an int 0 would hash as "0", and read back as 0.0)
        if org is None and actor is not None:
            row = db.execute("SELECT org FROM dispatchers WHERE username = ?", (actor,)).fetchone()
            org = None if row is None else str(row[0])
        last = db.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        previous = AUDIT_GENESIS if last is None or last[0] is None else bytes(last[0])
        (row_id,) = db.execute(
            "INSERT INTO audit (at, actor, event, detail, org) VALUES (?, ?, ?, ?, ?) RETURNING id",
            (now, actor, event, detail, org),
        ).fetchone()
        record = AuditRecord(now, actor, event, detail, int(row_id), org)
        db.execute("UPDATE audit SET hash = ? WHERE id = ?", (audit_digest(previous, record), row_id))

    def audit(self, event: str, *, actor: str | None, detail: str, now: float, org: str | None = None) -> None:
        """Append an event. Callers must never put passwords or keys in ``detail``."""
        with self._tx() as db:
            self._audit(db, now, actor, event, detail, org=org)

    def audit_log(self, limit: int = 100, *, org: str | None = None) -> list[AuditRecord]:
        """The last ``limit`` events (of organisation ``org`` if given), oldest first."""
        where, args = ("WHERE org = ?", (org, limit)) if org is not None else ("", (limit,))
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_AUDIT_COLUMNS} FROM (SELECT * FROM audit {where} ORDER BY id DESC LIMIT ?) AS latest "
                "ORDER BY id",
                args,
            ).fetchall()
        return [_audit_record(r) for r in rows]

    def verify_audit(self, *, anchor: tuple[int, bytes] | None = None) -> ChainCheck:
        """Walk the whole audit chain (``server.groups.records.verify_audit_chain``)."""
        with self._read() as db:
            rows = db.execute(f"SELECT {_AUDIT_COLUMNS} FROM audit ORDER BY id").fetchall()
        return verify_audit_chain((_audit_record(r) for r in rows), anchor=anchor)
