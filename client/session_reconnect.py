"""A PTT session's reconnection: the control channel lost, another node of the server tried, the joined groups
joined again; a group's call moved to another node (``{"type": "moved"}``): joined again there. A part of
``client.session.PttSession``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, task
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from client.control import ControlClient
    from client.serverinfo import ServerInfo
    from client.session_media import GroupState

__all__ = ["RECONNECT_MAX", "RECONNECT_MIN", "REJOIN_ATTEMPTS", "REJOIN_DELAY", "SessionReconnect"]

log = logging.getLogger("ptt.client.session")

RECONNECT_MIN = 1.0
RECONNECT_MAX = 30.0
OTHER_NODE_DELAY = 0.1
"""After losing one node of several, the first attempt at the next one comes this soon."""
REJOIN_DELAY = 1.0
REJOIN_ATTEMPTS = 30
RETRIED_CODES = (0, 429, 503)
"""A join again is retried after these: the connection went (0), too many at once, the group between two nodes."""


class SessionReconnect:
    """Reconnecting and rejoining; the session's ``start``, ``join`` and state are ``PttSession``'s."""

    reactor: Any
    uri: str
    server: ServerInfo
    control: ControlClient | None
    groups: dict[str, GroupState]
    connected: bool
    _stopping: bool
    _backoff: float
    _endpoint: int

    def start(self) -> Any: ...

    def join(self, group: str) -> Any: ...

    def on_disconnected(self, reason: str) -> None:
        self.control = None
        if self._stopping:
            return
        self.connected = False
        self._next_endpoint()
        log.warning("%s: control channel lost (%s): reconnecting to %s", self.uri, reason, self._endpoint_name())
        if len(self.server.endpoints()) > 1 and self._backoff == RECONNECT_MIN:
            self.reactor.callLater(OTHER_NODE_DELAY, self._reconnect)  # another node: no reason to wait
            self._backoff = min(self._backoff * 2, RECONNECT_MAX)
        else:
            self._schedule_reconnect()

    def _next_endpoint(self) -> None:
        """Another node of the server, if it has several (the lost one may be down for good)."""
        self._endpoint = (self._endpoint + 1) % len(self.server.endpoints())

    def _endpoint_name(self) -> str:
        host, port, _ = self.server.endpoints()[self._endpoint]
        return f"{host}:{port}"

    def on_moved(self, group: str) -> None:
        """Another server node serves the group's call now: join again (the reply names its relay)."""
        state = self.groups.get(group)
        if state is not None and state.joined and self.control is not None:
            log.info("%s: the call of %s moved to another server node: joining again", self.uri, group)
            self._rejoin(group)

    def _rejoin(self, group: str, attempt: int = 0) -> None:
        def failed(failure: Failure) -> None:
            state = self.groups.get(group)
            if self._stopping or self.control is None or state is None or not state.joined:
                return
            code = getattr(failure.value, "code", 0)
            if attempt >= REJOIN_ATTEMPTS or code not in RETRIED_CODES:
                log.warning("%s: cannot join %s again: %s", self.uri, group, failure.getErrorMessage())
                return
            log.info("%s: join %s again failed (%s): retrying", self.uri, group, failure.getErrorMessage())
            self.reactor.callLater(REJOIN_DELAY, self._rejoin, group, attempt + 1)

        d = defer.maybeDeferred(self.join, group)
        d.addErrback(failed)

    @defer.inlineCallbacks
    def join_when_possible(self, group: str) -> Any:
        """``join``, tried again every second while the server answers that the group is between two nodes (503)
        or busy (429): what a user's first join of a group does, as a rejoin does."""
        for attempt in range(REJOIN_ATTEMPTS + 1):
            try:
                state = yield self.join(group)
                return state
            except Exception as exc:
                if attempt == REJOIN_ATTEMPTS or getattr(exc, "code", None) not in RETRIED_CODES[1:]:
                    raise
                log.info("%s: join %s failed (%s): retrying", self.uri, group, exc)
                yield task.deferLater(self.reactor, REJOIN_DELAY, lambda: None)
        return None

    def _schedule_reconnect(self) -> None:
        delay = self._backoff
        self._backoff = min(self._backoff * 2, RECONNECT_MAX)
        self.reactor.callLater(delay, self._reconnect)

    @defer.inlineCallbacks
    def _reconnect(self) -> Any:
        if self._stopping or self.control is not None:
            return
        rejoin = [group for group, state in self.groups.items() if state.joined]
        try:
            yield self.start()
            for group in rejoin:
                self._rejoin(group)  # each on its own: a group whose node is failing over is retried alone
        except Exception as exc:
            log.warning("%s: reconnect failed (%s); retrying in %.0f s", self.uri, exc, self._backoff)
            if self.control is not None:
                self.control.link.loseConnection()  # its loss schedules the next attempt
            else:
                self._next_endpoint()
                self._schedule_reconnect()
            return
        self._backoff = RECONNECT_MIN
        log.info("%s: reconnected, rejoined %s", self.uri, rejoin)
