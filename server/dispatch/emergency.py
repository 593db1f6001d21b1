"""The dispatcher API's emergency and broadcast routes (issue 16), a part of ``DispatchApplication``:

    GET    /api/groups/{uri}/alerts                      the members' alerts: active ones and each last cancellation
    DELETE /api/groups/{uri}/alerts/{member}             cancel the member's alert (any dispatcher managing the group)
    POST   /api/groups/{uri}/alerts/{member}/ack         acknowledge it (seen, being handled; the first one stays)
    PUT    /api/groups/{uri}/members/{member}/broadcast  give the member the broadcast group call right
    DELETE /api/groups/{uri}/members/{member}/broadcast  take it away

Seeing alerts needs the group to be visible to the account; cancelling one and changing the broadcast right need
the right to manage its members (``server.dispatch.policy``), and so does acknowledging one. A cancel or an
acknowledgement of a member without an active alert is 404.
"""

from __future__ import annotations

from typing import Any

from ptt.emergency import Alert
from server.dispatch.policy import Access, Refused
from server.dispatch.routes import ApiError, Route, member_json
from server.groups.manager import GroupManager
from server.groups.store import AlertRefused, DispatcherAccount, GroupRecord, GroupStore, MemberRecord

__all__ = ["EmergencyRoutes", "alert_json"]


def alert_json(alert: Alert) -> dict[str, Any]:
    out: dict[str, Any] = {
        "uri": alert.uri,
        "level": alert.level.label,
        "since": alert.since,
        "call": alert.call,
        "active": alert.active,
    }
    if not alert.active:
        out["cancelled_at"] = alert.cancelled_at
        out["cancelled_by"] = alert.cancelled_by
    if alert.acknowledged:
        out["acked_at"] = alert.acked_at
        out["acked_by"] = alert.acked_by
    return out


class EmergencyRoutes:
    """The handlers (found by ``DispatchApplication._handle`` as ``_{method}_{route}``)."""

    manager: GroupManager
    store: GroupStore

    def _group(self, route: Route, account: DispatcherAccount) -> tuple[GroupRecord, Access]:
        raise NotImplementedError

    def _member(self, route: Route, account: DispatcherAccount) -> tuple[Access, MemberRecord]:
        raise NotImplementedError

    def _get_alerts(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        record, _ = self._group(route, account)
        return 200, {"group": record.uri, "alerts": [alert_json(a) for a in self.store.alerts(record.uri)]}, {}

    def _delete_alert(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        record, access = self._group(route, account)
        assert route.member is not None
        if not access.manage:
            raise Refused(f"this account may not cancel alerts in {record.uri}")
        try:
            alert = self.manager.cancel_alert(record.uri, route.member, by=account.username, dispatcher=True, now=now)
        except AlertRefused as exc:
            raise ApiError(exc.code, str(exc)) from None
        return 200, {"cancelled": alert_json(alert)}, {}

    def _post_alert_ack(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        record, access = self._group(route, account)
        assert route.member is not None
        if not access.manage:
            raise Refused(f"this account may not acknowledge alerts in {record.uri}")
        try:
            self.manager.acknowledge_alert(record.uri, route.member, by=account.username, now=now)
        except AlertRefused as exc:
            raise ApiError(exc.code, str(exc)) from None
        current = next(a for a in self.store.alerts(record.uri) if a.uri == route.member)
        return 200, {"acknowledged": alert_json(current)}, {}

    def _put_broadcast(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        return self._broadcast(route, account, True, now)

    def _delete_broadcast(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        return self._broadcast(route, account, False, now)

    def _broadcast(self, route: Route, account: DispatcherAccount, allowed: bool, now: float) -> Any:
        access, member = self._member(route, account)
        if not access.manage:
            raise Refused(f"this account may not change the members of {member.group}")
        record = self.manager.set_broadcast(member.group, member.uri, allowed, by=account.username, now=now)
        return 200, {"member": member_json(record)}, {}
