"""The group store's emergency alerts and broadcast rights (issue 16): each member's alert per group (the pure
decisions are ``ptt.emergency``), kept so that a group's emergency state survives a server restart, and the
per-member right to make broadcast group calls. Every change is audited.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ptt.emergency import Alert, EmergencyRefused, Level, acknowledge_alert, cancel_alert, raise_alert
from server.groups.database import StoreDatabase
from server.groups.records import GroupError, NoSuchGroup, NoSuchMember
from server.sqldb import Connection

__all__ = ["AlertRefused", "EmergencyStore"]

_ALERT_COLUMNS = "group_uri, member_uri, level, since, with_call, cancelled_at, cancelled_by, acked_at, acked_by"


class AlertRefused(GroupError):
    """An alert change that is not allowed (``code``: 403 not allowed, 404 no active alert, 409 conflict)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _alert(row: Sequence[Any]) -> Alert:
    group, uri, level, since, call, cancelled_at, cancelled_by, acked_at, acked_by = row
    return Alert(
        str(group),
        str(uri),
        Level(int(level)),
        float(since),
        bool(call),
        None if cancelled_at is None else float(cancelled_at),
        None if cancelled_by is None else str(cancelled_by),
        None if acked_at is None else float(acked_at),
        None if acked_by is None else str(acked_by),
    )


class EmergencyStore(StoreDatabase):
    """Alerts and broadcast rights in the group store's database."""

    @staticmethod
    def _current_alert(db: Connection, group: str, uri: str) -> Alert | None:
        row = db.execute(
            f"SELECT {_ALERT_COLUMNS} FROM emergency_alerts WHERE group_uri = ? AND member_uri = ?", (group, uri)
        ).fetchone()
        return None if row is None else _alert(row)

    def alerts(self, group: str) -> list[Alert]:
        """Every member's alert in ``group``: the active ones and the last cancelled one of each member."""
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_ALERT_COLUMNS} FROM emergency_alerts WHERE group_uri = ? ORDER BY since, member_uri",
                (group,),
            ).fetchall()
        return [_alert(r) for r in rows]

    def raise_alert(self, group: str, uri: str, level: Level, *, call: bool, now: float) -> Alert | None:
        """``uri`` raises its alert in ``group`` (a member only). None if it was already raised at that level."""
        with self._tx() as db:
            org = self._require_group_org(db, group)
            if not db.execute("SELECT 1 FROM members WHERE group_uri = ? AND uri = ?", (group, uri)).fetchone():
                raise NoSuchMember(group, uri)
            try:
                alert = raise_alert(self._current_alert(db, group, uri), group, uri, level, call, now)
            except EmergencyRefused as exc:
                raise AlertRefused(exc.code, str(exc)) from None
            if alert is None:
                return None
            db.execute(
                "INSERT INTO emergency_alerts (group_uri, member_uri, level, since, with_call) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (group_uri, member_uri) DO UPDATE SET level = excluded.level, since = excluded.since, "
                "with_call = excluded.with_call, cancelled_at = NULL, cancelled_by = NULL, acked_at = NULL, "
                "acked_by = NULL",
                (group, uri, int(level), float(now), int(call)),
            )
            what = f"{uri} in {group}: {level.label}" + (" with a call" if call else "")
            self._audit(db, now, None, "emergency-raised", what, org=org)
        return alert

    def cancel_alert(self, group: str, uri: str, *, by: str, dispatcher: bool, now: float) -> Alert:
        """``by`` cancels the alert of ``uri`` in ``group``: a member its own, a dispatcher (``dispatcher``) any."""
        with self._tx() as db:
            org = self._require_group_org(db, group)
            try:
                alert = cancel_alert(self._current_alert(db, group, uri), uri, by, dispatcher=dispatcher, now=now)
            except EmergencyRefused as exc:
                raise AlertRefused(exc.code, str(exc)) from None
            db.execute(
                "UPDATE emergency_alerts SET cancelled_at = ?, cancelled_by = ? WHERE group_uri = ? AND member_uri = ?",
                (float(now), by, group, uri),
            )
            self._audit(
                db, now, by if dispatcher else None, "emergency-cancelled", f"{uri} in {group} by {by}", org=org
            )
        return alert

    def acknowledge_alert(self, group: str, uri: str, *, by: str, now: float) -> Alert | None:
        """The dispatcher ``by`` acknowledges the active alert of ``uri`` in ``group`` (None: it already was)."""
        with self._tx() as db:
            org = self._require_group_org(db, group)
            try:
                alert = acknowledge_alert(self._current_alert(db, group, uri), uri, by, now)
            except EmergencyRefused as exc:
                raise AlertRefused(exc.code, str(exc)) from None
            if alert is None:
                return None
            db.execute(
                "UPDATE emergency_alerts SET acked_at = ?, acked_by = ? WHERE group_uri = ? AND member_uri = ?",
                (float(now), by, group, uri),
            )
            self._audit(db, now, by, "emergency-acknowledged", f"{uri} in {group} by {by}", org=org)
        return alert

    def set_broadcast(self, group: str, uri: str, allowed: bool, *, now: float, by: str | None = None) -> None:
        """Give or take the member's right to make broadcast group calls."""
        with self._tx() as db:
            org = self._require_group_org(db, group)
            updated = db.execute(
                "UPDATE members SET broadcast = ? WHERE group_uri = ? AND uri = ?", (int(allowed), group, uri)
            ).rowcount
            if updated == 0:
                raise NoSuchMember(group, uri)
            event = "broadcast-granted" if allowed else "broadcast-revoked"
            self._audit(db, now, by, event, f"{uri} in {group}", org=org)

    def broadcasters(self, group: str) -> set[str]:
        """The members of ``group`` with the broadcast right."""
        with self._read() as db:
            rows = db.execute("SELECT uri FROM members WHERE group_uri = ? AND broadcast = 1", (group,)).fetchall()
        return {str(r[0]) for r in rows}

    @staticmethod
    def _require_group_org(db: Connection, group: str) -> str:
        row = db.execute("SELECT org FROM groups WHERE uri = ?", (group,)).fetchone()
        if row is None:
            raise NoSuchGroup(group)
        return str(row[0])
