"""The dispatcher API's recording routes (issue 17), a part of ``DispatchApplication``:

    GET    /api/groups/{uri}/recording     {"group", "recording": bool, "retention_days", "bursts": [last 20]}
    PUT    /api/groups/{uri}/recording     {"retention_days": N}: record the group (rekeys it), keep bursts N days
    DELETE /api/groups/{uri}/recording     stop recording (what was recorded stays until its retention ends)

Turning recording on or off needs the right to manage the group's members (``server.dispatch.policy``); seeing
it, that the group is visible to the account. The bursts are listed by their metadata only: the server cannot
play them (they are SRTP under GMKs it does not keep).
"""

from __future__ import annotations

from typing import Any

from server.dispatch.policy import Access, Refused
from server.dispatch.routes import Route, json_object, key_json
from server.groups.manager import GroupManager
from server.groups.store import DispatcherAccount, GroupRecord, GroupStore

__all__ = ["RecordingRoutes"]

LISTED_BURSTS = 20


class RecordingRoutes:
    """The handlers (found by ``DispatchApplication._handle`` as ``_{method}_{route}``)."""

    manager: GroupManager
    store: GroupStore

    def _group(self, route: Route, account: DispatcherAccount) -> tuple[GroupRecord, Access]:
        raise NotImplementedError

    def _get_recording(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        record, _ = self._group(route, account)
        bursts = self.store.bursts(record.uri, limit=LISTED_BURSTS)
        return (
            200,
            {
                "group": record.uri,
                "recording": record.recording_days is not None,
                "retention_days": record.recording_days,
                "bursts": [b.to_json() for b in bursts],
            },
            {},
        )

    def _put_recording(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        record, access = self._group(route, account)
        if not access.manage:
            raise Refused(f"this account may not change the recording of {record.uri}")
        days = json_object(body, required=("retention_days",))["retention_days"]
        key = self.manager.set_recording(record.uri, days, by=account.username, now=now)
        return 200, {"group": record.uri, "recording": True, "retention_days": days, "key": key_json(key)}, {}

    def _delete_recording(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        record, access = self._group(route, account)
        if not access.manage:
            raise Refused(f"this account may not change the recording of {record.uri}")
        self.manager.set_recording(record.uri, None, by=account.username, now=now)
        return 200, {"group": record.uri, "recording": False, "retention_days": None}, {}
