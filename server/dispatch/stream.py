"""The dispatchers' live event stream (issue 15): ``GET /api/events`` on the dispatcher API, as server-sent events
(``text/event-stream``: one ``data: {json}`` per event, a comment line every 15 s to keep the connection open).

The login and the rights are the API's (HTTP Basic, ``DispatchApplication.authenticate``; a dispatcher sees only
the groups it may see, ``DispatchApplication.visible_groups``), checked on the store thread. The rights are read
again at every committed change of a group and every 5 s: a group assigned or created shows up, one taken away is
removed, a disabled account's stream ends. The events are ``ptt.dispatchfeed``'s: this module only builds the
views on the reactor (membership and alerts as the call has them committed, the live status of
``CallShell.live_status``), at most every 50 ms after the call did anything, and every second anyway (presence and
talkers at other nodes of a cluster reach this node's status through the cluster's status request; a node's own
call events are seen at once). A stream that cannot keep up (more than 1 MiB unsent) is closed: the console
reconnects and starts again from a snapshot.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.internet.threads import deferToThreadPool
from twisted.web import resource, server
from twisted.web.server import NOT_DONE_YET

from ptt.dispatchfeed import DispatcherFeed, GroupView, MemberView, group_view
from server.dispatch.api import DispatchApplication
from server.dispatch.routes import ApiError

__all__ = ["EventStream", "EventsResource", "with_events"]

log = logging.getLogger("ptt.dispatch")

COALESCE = 0.05
REFRESH = 1.0
RIGHTS_EVERY = 5.0
KEEPALIVE = 15.0
MAX_UNSENT = 1 << 20


def sse(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


class EventStream:
    """Subscribers (open ``/api/events`` requests), the feed, and when views are rebuilt."""

    def __init__(self, reactor: Any, app: DispatchApplication, shell: Any, store_pool: Any) -> None:
        self.reactor, self.app, self.shell, self.store_pool = reactor, app, shell, store_pool
        self.feed = DispatcherFeed()
        self._requests: dict[server.Request, str] = {}  # request -> account
        self._pending: Any = None
        self._running = False
        self._again = False
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = reactor
        self._ticks = 0

    # --- subscribers ------------------------------------------------------------------------------------------

    def subscribe(self, request: server.Request, username: str, visible: set[str]) -> None:
        self._requests[request] = username
        request.write(b"retry: 2000\n\n" + sse(self.feed.subscribe(request, visible)))
        request.notifyFinish().addBoth(lambda _: self._unsubscribe(request))
        if not self._loop.running:
            self._loop.start(REFRESH, now=False)
        self.poke()

    def _unsubscribe(self, request: server.Request) -> None:
        self._requests.pop(request, None)
        self.feed.unsubscribe(request)
        if not self._requests and self._loop.running:
            self._loop.stop()

    def _send(self, request: Any, event: dict[str, Any]) -> None:
        if request not in self._requests:
            return
        unsent = _unsent(getattr(request.channel, "transport", None))
        if unsent > MAX_UNSENT:
            log.warning("event stream of %s closed: %d octets unsent", self._requests[request], unsent)
            self._unsubscribe(request)
            request.loseConnection()
            return
        request.write(sse(event))

    # --- when to look ---------------------------------------------------------------------------------------------

    def poke(self) -> None:
        """Something may have changed (the call did something): views again shortly (coalesced)."""
        if self._requests and (self._pending is None or not self._pending.active()):
            self._pending = self.reactor.callLater(COALESCE, self.refresh)

    def rights_changed(self) -> None:
        """A group was committed (created, changed, deleted): every subscriber's rights are read again."""
        if self._requests:
            self._check_rights().addCallback(lambda _: self.poke())

    def _tick(self) -> None:
        self._ticks += 1
        if self._ticks % int(RIGHTS_EVERY / REFRESH) == 0:
            self._check_rights()
        if self._ticks % int(KEEPALIVE / REFRESH) == 0:
            self.keepalive()
        self.refresh()

    def _check_rights(self) -> defer.Deferred[None]:
        accounts = dict(self._requests)

        def read() -> dict[Any, set[str] | None]:
            cache: dict[str, set[str] | None] = {}
            for name in set(accounts.values()):
                cache[name] = self.app.visible_groups(name)
            return {request: cache[name] for request, name in accounts.items()}

        def apply(rights: dict[Any, set[str] | None]) -> None:
            for request, visible in rights.items():
                if request not in self._requests:
                    continue
                if visible is None:  # the account was disabled or removed: its stream ends
                    self._unsubscribe(request)
                    request.finish()
                    continue
                for event in self.feed.set_visible(request, visible):
                    self._send(request, event)

        d: defer.Deferred[Any] = deferToThreadPool(self.reactor, self.store_pool, read)
        d.addCallback(apply)
        d.addErrback(lambda failure: log.error("event stream rights not read: %s", failure.getErrorMessage()))
        return d

    def keepalive(self) -> None:
        for request in list(self._requests):
            request.write(b": keepalive\n\n")

    # --- views ----------------------------------------------------------------------------------------------------

    def refresh(self) -> None:
        if self._running:
            self._again = True
            return
        groups = sorted(self.feed.watched())
        if not groups:
            return
        self._running = True
        views = [self._view(group) for group in groups]
        d = defer.gatherResults(views, consumeErrors=True)
        d.addCallback(lambda results: self._deliver(dict(zip(groups, results, strict=True))))
        d.addErrback(lambda failure: log.error("event stream views failed: %s", failure.getErrorMessage()))
        d.addBoth(self._done)

    def _done(self, _: object) -> None:
        self._running = False
        if self._again:
            self._again = False
            self.poke()

    def _view(self, group: str) -> defer.Deferred[GroupView | None]:
        info = self.shell.call.group(group)
        if info is None:
            return defer.succeed(None)
        members = [MemberView(m.uri, m.priority, m.role) for m in info.members.values()]
        d: defer.Deferred[dict[str, Any]] = self.shell.live_status(group)
        return d.addCallback(lambda status: group_view(group, info.name, members, info.alerts.values(), status))

    def _deliver(self, views: dict[str, GroupView | None]) -> None:
        for request, event in self.feed.update(views):
            self._send(request, event)


def _unsent(transport: Any) -> int:
    """Octets written but not yet sent: the TCP transport's buffer, under the TLS layer if there is one."""
    total = 0
    for _ in range(3):  # TLS protocol → its TCP transport
        if transport is None:
            break
        total += len(getattr(transport, "dataBuffer", b"")) + int(getattr(transport, "_tempDataLen", 0))
        transport = getattr(transport, "transport", None)
    return total


class EventsResource(resource.Resource):
    """``GET /api/events``: log in on the store thread, then the stream stays open."""

    isLeaf = True

    def __init__(self, stream: EventStream, clock: Callable[[], float]) -> None:
        super().__init__()
        self.stream, self.clock = stream, clock

    def render(self, request: server.Request) -> Any:
        if request.method != b"GET":
            return self._error(request, ApiError(405, "use GET", {"Allow": "GET"}))
        authorization = request.getHeader("authorization") or None
        address = request.getClientAddress()
        peer, now = str(getattr(address, "host", address)), self.clock()
        stream = self.stream

        def login() -> tuple[str, set[str]]:
            account = stream.app.authenticate(authorization, now, peer)
            return account.username, stream.app.visible_groups(account.username) or set()

        def opened(result: tuple[str, set[str]]) -> None:
            if request.finished or request._disconnected:
                return
            request.setHeader("Content-Type", "text/event-stream; charset=utf-8")
            request.setHeader("Cache-Control", "no-store")
            stream.subscribe(request, *result)

        def refused(failure: Any) -> None:
            if request.finished or request._disconnected:
                return
            error = failure.value if failure.check(ApiError) else ApiError(500, "internal error")
            if not failure.check(ApiError):
                log.error("event stream login failed: %s", failure.getErrorMessage())
            request.write(self._error(request, error))
            request.finish()

        d = deferToThreadPool(stream.reactor, stream.store_pool, login)
        d.addCallbacks(opened, refused)
        return NOT_DONE_YET

    @staticmethod
    def _error(request: server.Request, error: ApiError) -> bytes:
        """Status and headers set; the body to return from render (or to write before finishing)."""
        request.setResponseCode(error.status)
        request.setHeader("Content-Type", "application/json; charset=utf-8")
        request.setHeader("Cache-Control", "no-store")
        for name, value in error.headers.items():
            request.setHeader(name, value)
        return json.dumps({"error": str(error)}).encode() + b"\n"


class _WithEvents(resource.Resource):
    """``/api/events`` to the event stream, every other path to the API."""

    isLeaf = True

    def __init__(self, api: resource.Resource, events: resource.Resource) -> None:
        super().__init__()
        self.api, self.events = api, events

    def render(self, request: server.Request) -> Any:
        target = self.events if request.path.rstrip(b"/") == b"/api/events" else self.api
        return target.render(request)


def with_events(site: server.Site, stream: EventStream, clock: Callable[[], float]) -> server.Site:
    """The dispatcher API's site with ``GET /api/events`` added."""
    site.resource = _WithEvents(site.resource, EventsResource(stream, clock))
    return site
