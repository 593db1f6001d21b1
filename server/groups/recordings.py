"""The group store's part of recording (issue 17): which groups are recorded and for how long, the index of the
stored bursts (the SRTP itself is in files, ``server.recorder``), and the archive of every GMK I_MESSAGE sent to
each member of a recorded group.

The archive is what lets a member replay: the burst's GMK-IDs name the keys it was sent under, and the member
receives the I_MESSAGE *addressed to it* for each, which only its own RSK opens. Access follows the keys: a member
may fetch a burst only if the archive holds an I_MESSAGE for it of one of the burst's GMKs, stored before the burst
ended. Removing a member rekeys the group (it holds nothing of later bursts); adding a member to a recorded group
rekeys it too (``server.groups.manager``), so a newcomer holds nothing of earlier ones. A removed member keeps its
archived keys of the time it was a member: it heard those bursts then, and may replay them.

The server holds no GMK it could open a burst with: the archive holds I_MESSAGEs (SAKKE-encrypted to each member),
the active GMK is sealed under the data key and erased at the next rekey, which turning recording on does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from server.groups.database import StoreDatabase
from server.groups.records import InvalidValue, NoSuchGroup
from server.sqldb import Connection

__all__ = ["MAX_RETENTION_DAYS", "ArchivedKey", "BurstRecord", "RecordingStore", "check_retention"]

MAX_RETENTION_DAYS = 3650
_BURST_COLUMNS = "id, group_uri, talker, ssrc, started, ended, gmk_ids, packets, octets, path"


@dataclass(frozen=True)
class BurstRecord:
    id: int
    group: str
    talker: str
    ssrc: int
    started: float
    ended: float
    gmk_ids: list[bytes]
    packets: int
    octets: int
    path: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "talker": self.talker,
            "ssrc": self.ssrc,
            "started": self.started,
            "ended": self.ended,
            "gmk_ids": [g.hex() for g in self.gmk_ids],
            "packets": self.packets,
            "octets": self.octets,
        }


@dataclass(frozen=True, repr=False)
class ArchivedKey:
    """A GMK I_MESSAGE as it was sent to one member (SAKKE-encrypted to it: the server cannot open it)."""

    group: str
    member: str
    gmk_id: bytes
    data: bytes
    created_at: float

    def __repr__(self) -> str:
        return f"ArchivedKey({self.group!r}, {self.member!r}, gmk_id={self.gmk_id.hex()})"


def check_retention(days: object) -> int:
    if type(days) is not int or not 1 <= days <= MAX_RETENTION_DAYS:
        raise InvalidValue(f"retention must be a whole number of days from 1 to {MAX_RETENTION_DAYS}, not {days!r}")
    return days


def _burst(row: Sequence[Any]) -> BurstRecord:
    i, group, talker, ssrc, started, ended, gmk_ids, packets, octets, path = row
    ids = bytes(gmk_ids)
    return BurstRecord(
        int(i),
        str(group),
        str(talker),
        int(ssrc),
        float(started),
        float(ended),
        [ids[k : k + 4] for k in range(0, len(ids), 4)],
        int(packets),
        int(octets),
        str(path),
    )


class RecordingStore(StoreDatabase):
    """Recording settings, the burst index and the key archive in the group store's database."""

    def set_recording(self, group: str, days: int | None, *, now: float, by: str | None = None) -> None:
        """Record ``group`` and keep its bursts ``days`` days (None: stop recording; what was recorded stays until
        its retention ends). Turning it on archives the members' current I_MESSAGEs (the manager then rekeys)."""
        if days is not None:
            check_retention(days)
        with self._tx() as db:
            org = self._recording_org(db, group)
            db.execute("UPDATE groups SET recording_days = ? WHERE uri = ?", (days, group))
            if days is not None:
                rows = db.execute(
                    "SELECT member_uri, gmk_id, data, created_at FROM imessages WHERE group_uri = ?", (group,)
                ).fetchall()
                for member, gmk_id, data, created in rows:
                    self._archive(db, group, str(member), bytes(gmk_id), bytes(data), float(created))
            detail = f"{group}: recording on, kept {days} days" if days is not None else f"{group}: recording off"
            self._audit(db, now, by, "recording", detail, org=org)

    @staticmethod
    def _recording_org(db: Connection, group: str) -> str:
        row = db.execute("SELECT org FROM groups WHERE uri = ?", (group,)).fetchone()
        if row is None:
            raise NoSuchGroup(group)
        return str(row[0])

    def _archive_if_recorded(
        self, db: Connection, group: str, member: str, gmk_id: bytes, data: bytes, now: float
    ) -> None:
        row = db.execute("SELECT recording_days FROM groups WHERE uri = ?", (group,)).fetchone()
        if row is not None and row[0] is not None:
            self._archive(db, group, member, gmk_id, data, now)

    @staticmethod
    def _archive(db: Connection, group: str, member: str, gmk_id: bytes, data: bytes, now: float) -> None:
        db.execute(
            "INSERT INTO key_archive (group_uri, member_uri, gmk_id, data, created_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (group_uri, member_uri, gmk_id) DO NOTHING",
            (group, member, gmk_id, data, now),
        )

    def recorded_groups(self) -> dict[str, int]:
        with self._read() as db:
            rows = db.execute("SELECT uri, recording_days FROM groups WHERE recording_days IS NOT NULL").fetchall()
        return {str(u): int(d) for u, d in rows}

    # --- the burst index ---

    def add_burst(
        self,
        group: str,
        talker: str,
        ssrc: int,
        started: float,
        ended: float,
        gmk_ids: list[bytes],
        packets: int,
        octets: int,
        path: str,
    ) -> int | None:
        """Index a stored burst; None if the group is gone (its file is then the caller's to delete)."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM groups WHERE uri = ?", (group,)).fetchone() is None:
                return None
            (row_id,) = db.execute(
                "INSERT INTO recordings (group_uri, talker, ssrc, started, ended, gmk_ids, packets, octets, path) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (group, talker, ssrc, started, ended, b"".join(gmk_ids), packets, octets, path),
            ).fetchone()
        return int(row_id)

    def bursts(
        self, group: str, *, since: float | None = None, until: float | None = None, limit: int = 50
    ) -> list[BurstRecord]:
        """The group's last ``limit`` bursts started in [since, until], oldest first."""
        where = "group_uri = ?"
        args: list[object] = [group]
        if since is not None:
            where, args = where + " AND started >= ?", [*args, since]
        if until is not None:
            where, args = where + " AND started <= ?", [*args, until]
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_BURST_COLUMNS} FROM (SELECT * FROM recordings WHERE {where} "
                "ORDER BY started DESC, id DESC LIMIT ?) AS latest ORDER BY started, id",
                (*args, limit),
            ).fetchall()
        return [_burst(r) for r in rows]

    def burst(self, burst_id: int) -> BurstRecord | None:
        with self._read() as db:
            row = db.execute(f"SELECT {_BURST_COLUMNS} FROM recordings WHERE id = ?", (burst_id,)).fetchone()
        return None if row is None else _burst(row)

    # --- the key archive ---

    def archived_keys(self, group: str, member: str, gmk_ids: list[bytes] | None = None) -> list[ArchivedKey]:
        """The GMK I_MESSAGEs sent to ``member`` in ``group`` (of those GMK-IDs only, if given), oldest first."""
        with self._read() as db:
            rows = db.execute(
                "SELECT gmk_id, data, created_at FROM key_archive WHERE group_uri = ? AND member_uri = ? "
                "ORDER BY created_at",
                (group, member),
            ).fetchall()
        keys = [ArchivedKey(group, member, bytes(g), bytes(d), float(c)) for g, d, c in rows]
        return keys if gmk_ids is None else [k for k in keys if k.gmk_id in gmk_ids]

    def replayable(self, member: str, burst: BurstRecord) -> list[ArchivedKey]:
        """The archived keys that entitle ``member`` to ``burst`` (empty: it may not fetch it)."""
        return [k for k in self.archived_keys(burst.group, member, burst.gmk_ids) if k.created_at <= burst.ended]

    def was_member(self, group: str, member: str) -> bool:
        """Whether ``member`` holds any archived key of ``group`` (is or was a member while it was recorded)."""
        with self._read() as db:
            row = db.execute(
                "SELECT 1 FROM key_archive WHERE group_uri = ? AND member_uri = ? LIMIT 1", (group, member)
            ).fetchone()
        return row is not None

    # --- retention ---

    def expired_bursts(self, now: float, limit: int = 1000) -> list[BurstRecord]:
        """Bursts older than their group's retention (whether or not it is still recorded)."""
        with self._read() as db:
            rows = db.execute(
                f"SELECT {', '.join('r.' + c for c in _BURST_COLUMNS.split(', '))} FROM recordings r "
                "JOIN groups g ON g.uri = r.group_uri "
                "WHERE r.ended < ? - 86400.0 * COALESCE(g.recording_days, 0) ORDER BY r.id LIMIT ?",
                (now, limit),
            ).fetchall()
        return [_burst(r) for r in rows]

    def delete_bursts(self, bursts: list[BurstRecord], *, now: float) -> None:
        """Forget the bursts (their files are the recorder's) and the archived keys no remaining burst needs."""
        if not bursts:
            return
        groups = {b.group for b in bursts}
        with self._tx() as db:
            for b in bursts:
                db.execute("DELETE FROM recordings WHERE id = ?", (b.id,))
            for group in groups:
                rows = db.execute("SELECT gmk_ids FROM recordings WHERE group_uri = ?", (group,)).fetchall()
                needed = {bytes(r[0])[k : k + 4] for r in rows for k in range(0, len(bytes(r[0])), 4)}
                active = db.execute(
                    "SELECT gmk_id FROM group_keys WHERE group_uri = ? AND active = 1", (group,)
                ).fetchone()
                if active is not None:
                    needed.add(bytes(active[0]))
                for (gmk_id,) in db.execute(
                    "SELECT DISTINCT gmk_id FROM key_archive WHERE group_uri = ?", (group,)
                ).fetchall():
                    if bytes(gmk_id) not in needed:
                        db.execute("DELETE FROM key_archive WHERE group_uri = ? AND gmk_id = ?", (group, bytes(gmk_id)))
            self._audit(db, now, None, "recording-purge", f"{len(bursts)} bursts past their retention deleted")
