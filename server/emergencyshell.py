"""The control channel's emergency requests (issue 16): a member raises or cancels an emergency / imminent peril
alert. Checked cheaply on the reactor (form, membership, a rate limit), committed by the group manager on the
store thread; the committed change comes back as a ``GroupChange`` and ``ptt.groupcall`` tells every member and
the floor (``alert`` pushes, the arbiter's urgencies). The requester is answered ``emergency_ok``.
"""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool

from ptt.emergency import CancelRequest, EmergencyMessageError, RaiseRequest
from ptt.groupcall import GroupCall
from ptt.groupinfo import DISPATCHER_ROLE, Refused
from ptt.ratelimit import BucketTable
from server.groups.manager import GroupManager
from server.groups.store import AlertRefused, GroupError, NoSuchGroup

log = logging.getLogger("ptt.server.emergency")

RATE, BURST = 1.0, 6
"""Alert requests per member: a key pressed again and again is refused, never queued up."""


class EmergencyRequests:
    """What ``CallShell.on_emergency`` runs."""

    def __init__(self, reactor: Any, call: GroupCall, manager: GroupManager, store_pool: Any) -> None:
        self.reactor = reactor
        self.call = call
        self.manager = manager
        self.store_pool = store_pool
        self._limit: BucketTable[str] = BucketTable(RATE, BURST)
        self._log_limit: BucketTable[str] = BucketTable(0.2, 3)  # refusals: a log line per member every 5 s at most

    def handle(self, uri: str, message: dict[str, Any], now: float) -> defer.Deferred[dict[str, Any]]:
        try:
            return self._handle(uri, message, now)
        except Refused as exc:
            if self._log_limit.take(uri, now):
                log.warning("%s from %s refused: %s", message.get("type"), uri, exc)
            raise

    def _handle(self, uri: str, message: dict[str, Any], now: float) -> defer.Deferred[dict[str, Any]]:
        if not self._limit.take(uri, now):
            raise Refused(429, "too many emergency requests: retry in a second")
        try:
            request: RaiseRequest | CancelRequest = (
                RaiseRequest.parse(message) if message["type"] == "emergency" else CancelRequest.parse(message)
            )
        except EmergencyMessageError as exc:
            raise Refused(400, str(exc)) from None
        self.call.check_member(request.group, uri)
        if isinstance(request, RaiseRequest):
            return self._run(self._raise, uri, request, now)
        target = request.uri or uri
        info = self.call.group(request.group)
        spec = info.members.get(uri) if info is not None else None
        dispatcher = spec is not None and spec.role == DISPATCHER_ROLE  # a dispatcher member cancels anyone's
        if target != uri and not dispatcher:
            raise Refused(403, f"{uri} may cancel only its own alert, not {target}'s (a dispatcher may)")
        return self._run(self._cancel, uri, request, now, target, dispatcher)

    def _run(self, function: Any, *args: Any) -> defer.Deferred[dict[str, Any]]:
        d = deferToThreadPool(self.reactor, self.store_pool, function, *args)

        def refused(failure: Any) -> None:
            if failure.check(AlertRefused):
                raise Refused(failure.value.code, str(failure.value))
            if failure.check(NoSuchGroup):  # deleted since the membership check
                raise Refused(404, str(failure.value))
            if failure.check(GroupError):
                raise Refused(403, str(failure.value))
            return failure  # type: ignore[no-any-return]

        d.addErrback(refused)
        return d

    def _raise(self, uri: str, request: RaiseRequest, now: float) -> dict[str, Any]:
        self.manager.raise_alert(request.group, uri, request.level, call=request.call, now=now)
        return {"type": "emergency_ok", "group": request.group, "state": "raised", "level": request.level.label}

    def _cancel(self, uri: str, request: CancelRequest, now: float, target: str, dispatcher: bool) -> dict[str, Any]:
        self.manager.cancel_alert(request.group, target, by=uri, dispatcher=dispatcher, now=now)
        return {"type": "emergency_ok", "group": request.group, "state": "cancelled", "uri": target}
