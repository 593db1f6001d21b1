"""What the KMS service and the dispatcher API share on the web side: replies, HTTP Basic credentials, a
request factory that stops buffering oversized bodies, and a resource that runs a pure request handler on a
worker thread (scrypt, SQLite and key distribution must not stall the reactor)."""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import threads
from twisted.python.threadpool import ThreadPool
from twisted.web import resource, server
from twisted.web.server import NOT_DONE_YET

log = logging.getLogger("ptt.server.web")

MAX_BODY = 64 * 1024


@dataclass
class HttpReply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestInfo:
    """The plain values a handler gets (``body`` is MAX_BODY + 1 octets when the real one was larger)."""

    method: str
    path: str
    authorization: str | None
    body: bytes
    peer: str
    now: float


Handler = Callable[[RequestInfo], HttpReply]


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(username, password) from an ``Authorization: Basic`` header, or None if absent or malformed."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, sep, password = decoded.partition(":")
    if not sep or not username:
        return None
    return username, password


class LimitedRequest(server.Request):
    """Stops buffering a request body beyond MAX_BODY (the handler then answers 413)."""

    body_too_large = False

    def handleContentChunk(self, data: bytes) -> None:
        assert self.content is not None
        if self.body_too_large or self.content.tell() + len(data) > MAX_BODY:
            self.body_too_large = True
            return
        super().handleContentChunk(data)


class ThreadedResource(resource.Resource):
    """Every request → ``handler(RequestInfo)`` on ``pool``; ``internal_error`` answers a handler that failed."""

    isLeaf = True

    def __init__(
        self, handler: Handler, pool: ThreadPool, clock: Callable[[], float], internal_error: HttpReply, name: str
    ) -> None:
        super().__init__()
        self.handler = handler
        self.pool = pool
        self.clock = clock
        self.internal_error = internal_error
        self.name = name

    def render(self, request: server.Request) -> int:
        from twisted.internet import reactor

        assert request.content is not None
        body = request.content.read(MAX_BODY + 1)
        if getattr(request, "body_too_large", False):
            body = b"x" * (MAX_BODY + 1)
        address = request.getClientAddress()
        info = RequestInfo(
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("utf-8", "replace"),
            authorization=request.getHeader("authorization") or None,
            body=body,
            peer=str(getattr(address, "host", address)),
            now=self.clock(),
        )
        d = threads.deferToThreadPool(reactor, self.pool, lambda: self.handler(info))

        def respond(reply: HttpReply) -> None:
            if request.finished or request._disconnected:
                return
            request.setResponseCode(reply.status)
            for name, value in reply.headers.items():
                request.setHeader(name, value)
            request.write(reply.body)
            request.finish()

        def broken(failure: Any) -> None:
            log.error("%s response failed: %s", self.name, failure.getErrorMessage())
            respond(self.internal_error)

        d.addCallback(respond)
        d.addErrback(broken)
        return NOT_DONE_YET


def make_threaded_site(resource_: ThreadedResource) -> server.Site:
    site = server.Site(resource_)
    site.requestFactory = LimitedRequest
    site.displayTracebacks = False
    return site
