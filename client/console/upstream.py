"""The dispatcher console's side of the dispatcher API (HTTPS, the server's pinned certificate or CA, HTTP Basic
with the dispatcher's login): plain requests for the page's proxy, and the event stream (``GET /api/events``),
read as it comes and reconnected after a loss (each new stream starts with a snapshot)."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Callable
from typing import Any, cast

from twisted.internet import defer, protocol
from twisted.web.client import Agent, FileBodyProducer, ResponseDone, readBody
from twisted.web.http_headers import Headers

from client.tls import PinnedCertificatePolicy
from ptt.sse import SseDecoder, SseError

__all__ = ["DispatchUpstream"]

log = logging.getLogger("ptt.console")

RECONNECT = 2.0


class _EventReader(protocol.Protocol):
    def __init__(self, on_event: Callable[[dict[str, Any]], None], done: defer.Deferred[None]) -> None:
        self.decoder = SseDecoder()
        self.on_event, self.done = on_event, done

    def dataReceived(self, data: bytes) -> None:
        try:
            events = self.decoder.feed(data)
        except SseError as exc:
            log.warning("dispatcher event stream unusable: %s", exc)
            assert self.transport is not None
            self.transport.stopProducing()
            return
        for event in events:
            self.on_event(event)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(None)


class DispatchUpstream:
    def __init__(self, reactor: Any, base_url: str, trust_pem: bytes | None, username: str, password: str) -> None:
        self.reactor = reactor
        self.base_url = base_url.rstrip("/")
        self.agent = Agent(reactor, contextFactory=PinnedCertificatePolicy(trust_pem), connectTimeout=10)
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._authorization = f"Basic {token}"  # never sent to the browser
        self._stopped = False
        self._stream: _EventReader | None = None

    def __repr__(self) -> str:
        return f"DispatchUpstream({self.base_url!r})"

    @defer.inlineCallbacks
    def request(self, method: str, path: str, body: bytes | None = None) -> Any:
        """(status, content type, body) of the API's answer to ``method path``."""
        headers = Headers({"Authorization": [self._authorization], "Accept": ["application/json"]})
        if body:
            headers.addRawHeader("Content-Type", "application/json")
        producer: Any = FileBodyProducer(io.BytesIO(body)) if body else None
        response = yield self.agent.request(method.encode("ascii"), (self.base_url + path).encode(), headers, producer)
        content = yield readBody(response)
        kind = response.headers.getRawHeaders("content-type", ["application/json"])[0]
        return response.code, kind, content

    def follow_events(self, on_event: Callable[[dict[str, Any]], None], on_state: Callable[[bool], None]) -> None:
        """Keep the event stream open: every event to ``on_event``; ``on_state(connected)`` when it opens or is
        lost (reconnected after ``RECONNECT`` s)."""
        d = defer.ensureDeferred(self._follow(on_event, on_state))
        d.addErrback(lambda failure: log.error("event stream: %s", failure.getTraceback()))

    async def _follow(self, on_event: Callable[[dict[str, Any]], None], on_state: Callable[[bool], None]) -> None:
        while not self._stopped:
            try:
                headers = Headers({"Authorization": [self._authorization], "Accept": ["text/event-stream"]})
                response = await self.agent.request(b"GET", (self.base_url + "/api/events").encode(), headers)
                if response.code != 200:
                    text = await readBody(response)
                    log.warning("dispatcher event stream refused (%d): %s", response.code, text[:200].decode())
                else:
                    done: defer.Deferred[None] = defer.Deferred()
                    on_state(True)
                    self._stream = _EventReader(on_event, done)
                    cast(Any, response).deliverBody(self._stream)
                    await done
                    on_state(False)
            except Exception as exc:
                if not isinstance(exc, ResponseDone):
                    log.warning("dispatcher event stream lost: %s", exc)
                on_state(False)
            if not self._stopped:
                await _sleep(self.reactor, RECONNECT)

    def restart_events(self) -> None:
        """Drop the event stream: it is opened again (``RECONNECT`` s later) and starts with a new snapshot."""
        reader = self._stream
        if reader is not None and reader.transport is not None:
            self._stream = None
            reader.transport.stopProducing()

    def stop(self) -> None:
        self._stopped = True
        self.restart_events()


def _sleep(reactor: Any, seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d
