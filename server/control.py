"""The server end of the control channel (TLS, framed JSON; ``ptt.control`` has the protocol).

Each connection: challenge → ECCSI-signed auth within AUTH_TIMEOUT (the client's part; the server's check of it
in the worker pool gets VERIFY_TIMEOUT more: a pool still starting after a restart on a loaded host must not turn
away clients that did log in) → welcome (groups, relay address, then every stored I_MESSAGE for the member and its
voice message notices) → requests (csk, join, leave, ping). The server pings every PING_INTERVAL and drops a
connection silent for DEAD_AFTER. What the messages *do* is the backend's business (server.callshell).

The reactor never waits here: the backend may answer a login, a CSK or the stored I_MESSAGEs with a Deferred
(signature checks and SAKKE run in worker processes, the store in a thread). A session handles its frames one
at a time, in order, so a client's ``join`` after its ``csk`` sees the CSK installed; frames arriving meanwhile
wait in a bounded inbox. Cheap checks come before any expensive one: frame size, the login's form and key
period, per-address login and per-session CSK and join rates; a client over a limit gets an error with the
seconds to wait, and the event is logged once per session, not per message.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from typing import Any, Protocol

from twisted.internet import defer, protocol
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from ptt.control import (
    MAX_FRAME,
    NONCE_LENGTH,
    Authenticated,
    AuthError,
    ControlProtocolError,
    b64,
    decode_body,
    encode_frame,
    unb64,
)
from ptt.groupinfo import Refused
from ptt.privatecall.messages import CLIENT_REQUESTS
from ptt.ratelimit import BucketTable, TokenBucket

VOICE_MESSAGE_REQUESTS = frozenset({"message_send", "message_list", "message_fetch", "message_played"})

log = logging.getLogger("ptt.server.control")

AUTH_TIMEOUT = 10.0
VERIFY_TIMEOUT = 60.0
PING_INTERVAL = 20.0
DEAD_AFTER = 60.0
INBOX_LIMIT = 64
"""Frames a session keeps waiting while it works on one (a client pipelining more is told to slow down)."""
CSK_RATE, CSK_BURST = 0.2, 3
"""CSK messages a session may send: a client sends one at login and one per reconnect or key period."""
JOIN_RATE, JOIN_BURST = 5.0, 64
"""Joins a session may send: a client joins all its groups at login and after a reconnect."""
LOGIN_RATE, LOGIN_BURST = 50.0, 400
"""Logins from one IP address (a site behind one NAT logs in together after an outage)."""
MAX_PENDING_LOGINS = 512
"""Logins whose signature is being verified; beyond, new logins are told the server is busy."""

RequestRefused = Refused  # the name the backends raise


class ControlBackend(Protocol):
    server_uri: str

    def verify_login(self, message: dict[str, Any], nonce: bytes, now: float) -> Any:
        """An ``Authenticated`` (or a Deferred of one); AuthError if the login is refused."""
        ...

    def welcome(self, uri: str) -> dict[str, Any]: ...
    def stored_imessages(self, uri: str) -> Any:
        """A list of ``imessage`` messages (or a Deferred of one)."""
        ...

    def on_csk(self, uri: str, data: bytes, now: float) -> Any:
        """The CSK-ID in hex (or a Deferred of it); RequestRefused if the CSK is refused."""
        ...

    def on_join(self, uri: str, group: str, ssrc: int, now: float) -> dict[str, Any] | defer.Deferred[Any]: ...
    def on_leave(self, uri: str, group: str, now: float) -> None: ...
    def on_call_message(self, uri: str, message: dict[str, Any], now: float) -> None: ...
    def on_disconnected(self, uri: str, now: float) -> None: ...
    def on_emergency(self, uri: str, message: dict[str, Any], now: float) -> Any:
        """An ``emergency`` / ``emergency_cancel`` request: the reply (or a Deferred of it); RequestRefused."""
        ...

    def on_history(self, uri: str, message: dict[str, Any], now: float) -> Any:
        """A ``history`` / ``history_fetch`` request: the reply (or a Deferred of it); RequestRefused."""
        ...

    def on_voice_message(self, uri: str, message: dict[str, Any], now: float) -> Any:
        """A voice message request (``server.voicemessages``): the reply (or a Deferred of it); RequestRefused."""
        ...


class ControlSession(Int32StringReceiver):
    MAX_LENGTH = MAX_FRAME

    @property
    def link(self) -> Any:
        """The transport (zope interfaces do not type-check, so it is Any here)."""
        return self.transport

    def __init__(self, factory: ControlServerFactory) -> None:
        self.factory = factory
        self.uri: str | None = None
        self.nonce = os.urandom(NONCE_LENGTH)
        self._auth_timer: Any = None
        self._login_checking = False
        self._ping_timer: Any = None
        self._last_heard = 0.0
        self._ping_id = 0
        self._inbox: deque[bytes] = deque()
        self._busy = False
        self._draining = False
        self._closed = False
        now = factory.clock.seconds()
        self._csk_bucket = TokenBucket(CSK_RATE, CSK_BURST, now)
        self._join_bucket = TokenBucket(JOIN_RATE, JOIN_BURST, now)
        self._logged: set[str] = set()

    @property
    def clock(self) -> Any:
        return self.factory.clock

    def connectionMade(self) -> None:
        self._last_heard = self.clock.seconds()
        self.send({"type": "challenge", "nonce": b64(self.nonce), "server": self.factory.backend.server_uri})
        self._auth_timer = self.clock.callLater(AUTH_TIMEOUT, self._auth_timeout)

    def connectionLost(self, reason: Any = None) -> None:
        self._closed = True
        self._inbox.clear()
        for timer in (self._auth_timer, self._ping_timer):
            if timer is not None and timer.active():
                timer.cancel()
        if self.uri is not None:
            self.factory.forget(self)
            try:
                self.factory.backend.on_disconnected(self.uri, self.clock.seconds())
            except Exception:
                log.exception("control: disconnect handling failed for %s", self.uri)

    def lengthLimitExceeded(self, length: int) -> None:
        log.warning("control: frame of %d octets from %s: closing", length, self._peer())
        self.link.abortConnection()

    def send(self, message: dict[str, Any]) -> None:
        if not self._closed:
            self.link.write(encode_frame(message))

    def error(self, code: int, text: str, *, close: bool = False, **extra: Any) -> None:
        self.send({"type": "error", "code": code, "message": text, **extra})
        if close:
            self.link.loseConnection()

    # -- frames, one at a time ---------------------------------------------------------------------------------

    def stringReceived(self, data: bytes) -> None:
        self._last_heard = self.clock.seconds()
        if len(self._inbox) >= INBOX_LIMIT:
            self._log_once("inbox", "control: %s sends faster than it is served: frames dropped", self._who())
            self.error(429, "too many requests waiting: slow down")
            return
        self._inbox.append(data)
        self._drain()

    def _drain(self) -> None:
        if self._draining:
            return
        self._draining = True
        try:
            while self._inbox and not self._busy and not self._closed:
                result = self._handle(self._inbox.popleft())
                if isinstance(result, defer.Deferred):
                    self._busy = True
                    result.addBoth(self._served)
        finally:
            self._draining = False

    def _served(self, _: object) -> None:
        self._busy = False
        self._drain()

    def _handle(self, data: bytes) -> defer.Deferred[Any] | None:
        try:
            message = decode_body(data)
        except ControlProtocolError as exc:
            log.warning("control: bad frame from %s: %s", self._who(), exc)
            self.error(400, f"bad message: {exc}", close=self.uri is None)
            return None
        if self.uri is None:
            return self._authenticate(message)
        try:
            return self._request(message)
        except Refused as exc:
            self.error(exc.code, str(exc))
        except Exception:
            log.exception("control: request from %s failed", self.uri)
            self.error(500, "internal error")
        return None

    # -- login ---------------------------------------------------------------------------------------------------

    def _authenticate(self, message: dict[str, Any]) -> defer.Deferred[Any] | None:
        factory, now = self.factory, self.clock.seconds()
        host = getattr(self.link.getPeer(), "host", "?")
        if not factory.login_buckets.take(host, now):
            factory.log_login_limit(host)
            self.error(429, "too many logins from this address: retry later", close=True, retry_after=1.0)
            return None
        if factory.pending_logins >= MAX_PENDING_LOGINS:
            self.error(503, "server busy: retry later", close=True, retry_after=1.0)
            return None
        factory.pending_logins += 1
        if self._auth_timer is not None and self._auth_timer.active():  # the login came: now the check is bounded
            self._auth_timer.reset(VERIFY_TIMEOUT)
        self._login_checking = True
        d = defer.maybeDeferred(factory.backend.verify_login, message, self.nonce, now)
        d.addBoth(self._login_settled)
        d.addCallbacks(self._logged_in, self._login_refused)
        d.addErrback(self._failed, "login")
        return d

    def _login_settled(self, result: object) -> object:
        self.factory.pending_logins -= 1
        self._login_checking = False
        return result

    def _logged_in(self, who: Authenticated) -> defer.Deferred[Any] | None:
        if self._closed:
            return None
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        backend = self.factory.backend
        self.uri = who.uri
        self.factory.remember(self)
        log.info("control: %s logged in from %s", who.uri, self._peer())
        self.send({"type": "welcome", **backend.welcome(who.uri), "uri": who.uri})
        self._ping_timer = self.clock.callLater(PING_INTERVAL, self._ping)
        d = defer.maybeDeferred(backend.stored_imessages, who.uri)
        d.addCallback(self._send_all)
        d.addErrback(self._failed, "stored I_MESSAGEs")
        return d

    def _send_all(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            self.send(message)

    def _login_refused(self, failure: Failure) -> None:
        if failure.check(AuthError):
            log.warning("control: login refused from %s: %s", self._peer(), failure.value)
            self.error(401, f"login refused: {failure.value}", close=True)
        elif failure.check(ControlProtocolError):
            self.error(400, f"expected auth: {failure.value}", close=True)
        else:
            log.error("control: login from %s failed: %s", self._peer(), failure.getTraceback())
            self.error(500, "internal error", close=True)

    # -- requests ------------------------------------------------------------------------------------------------

    def _request(self, message: dict[str, Any]) -> defer.Deferred[Any] | None:
        assert self.uri is not None
        backend = self.factory.backend
        now = self.clock.seconds()
        kind = message["type"]
        if kind == "ping":
            self.send({"type": "pong", "id": message["id"]})
        elif kind == "pong":
            pass
        elif kind == "csk":
            self._admit("CSK", self._csk_bucket, now)
            d = defer.maybeDeferred(backend.on_csk, self.uri, _unb64(message["data"]), now)
            d.addCallback(lambda csk_id: self.send({"type": "csk_ok", "csk_id": csk_id}))
            d.addErrback(self._failed, "CSK")
            return d
        elif kind == "join":
            self._admit("join", self._join_bucket, now)
            d = defer.maybeDeferred(backend.on_join, self.uri, message["group"], message["ssrc"], now)
            d.addCallback(self.send)
            d.addErrback(self._failed, "join")
            return d
        elif kind == "leave":
            backend.on_leave(self.uri, message["group"], now)
        elif kind in ("emergency", "emergency_cancel"):
            return self._emergency(message, now)
        elif kind in ("history", "history_fetch"):  # replay of recorded bursts (issue 17)
            d = defer.maybeDeferred(backend.on_history, self.uri, message, now)
            d.addCallback(self.send)
            d.addErrback(self._failed, kind)
            return d
        elif kind in VOICE_MESSAGE_REQUESTS:  # deferred delivery (issue 17)
            d = defer.maybeDeferred(backend.on_voice_message, self.uri, message, now)
            d.addCallback(self.send)
            d.addErrback(self._failed, kind)
            return d
        elif kind in CLIENT_REQUESTS:  # private calls (issue 16)
            backend.on_call_message(self.uri, message, now)
        else:
            raise Refused(400, f"{kind} is not a client request")
        return None

    def _emergency(self, message: dict[str, Any], now: float) -> defer.Deferred[Any]:
        """Raise or cancel an emergency alert (issue 16; the backend checks, stores and tells the group)."""
        assert self.uri is not None
        d = defer.maybeDeferred(self.factory.backend.on_emergency, self.uri, message, now)
        d.addCallback(self.send)
        d.addErrback(self._failed, message["type"])
        return d

    def _admit(self, what: str, bucket: TokenBucket, now: float) -> None:
        if bucket.take(now):
            return
        wait = bucket.retry_after(now)
        self._log_once(what, "control: %s is over its %s limit: refused (logged once per session)", self.uri, what)
        raise Refused(429, f"too many {what} messages: retry in {wait:.1f} s")

    def _failed(self, failure: Failure, what: str) -> None:
        if failure.check(Refused):
            assert isinstance(failure.value, Refused)
            self.error(failure.value.code, str(failure.value))
        else:
            log.error("control: %s for %s failed: %s", what, self.uri, failure.getTraceback())
            self.error(500, "internal error")

    # -- liveness ------------------------------------------------------------------------------------------------

    def _ping(self) -> None:
        now = self.clock.seconds()
        if now - self._last_heard > DEAD_AFTER:
            log.warning("control: %s silent for %.0f s: closing", self.uri, now - self._last_heard)
            self.link.abortConnection()
            return
        self._ping_id += 1
        self.send({"type": "ping", "id": self._ping_id})
        self._ping_timer = self.clock.callLater(PING_INTERVAL, self._ping)

    def _auth_timeout(self) -> None:
        self._auth_timer = None
        if self.uri is None and self._login_checking:
            log.warning("control: login from %s not checked within %.0f s: server busy", self._peer(), VERIFY_TIMEOUT)
            self.error(503, "server busy: retry later", close=True, retry_after=1.0)
        elif self.uri is None:
            log.warning("control: no login from %s within %.0f s", self._peer(), AUTH_TIMEOUT)
            self.link.abortConnection()

    def _log_once(self, kind: str, text: str, *args: object) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning(text, *args)

    def _who(self) -> str:
        return self.uri or self._peer()

    def _peer(self) -> str:
        peer = self.link.getPeer() if self.transport else None
        return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"


def _unb64(text: str) -> bytes:
    try:
        return unb64(text, "data")
    except ControlProtocolError as exc:
        raise Refused(400, str(exc)) from None


class ControlServerFactory(protocol.Factory):
    def __init__(self, backend: ControlBackend, clock: Any) -> None:
        self.backend = backend
        self.clock = clock
        self.sessions: dict[str, list[ControlSession]] = {}
        self.login_buckets: BucketTable[str] = BucketTable(LOGIN_RATE, LOGIN_BURST)
        self.pending_logins = 0
        self._limited_hosts: BucketTable[str] = BucketTable(1 / 60, 1)  # one log line a minute per address

    def buildProtocol(self, addr: Any) -> ControlSession:
        return ControlSession(self)

    def log_login_limit(self, host: str) -> None:
        if self._limited_hosts.take(host, self.clock.seconds()):
            log.warning("control: logins from %s over %.0f/s: refused (logged once a minute)", host, LOGIN_RATE)

    def remember(self, session: ControlSession) -> None:
        assert session.uri is not None
        self.sessions.setdefault(session.uri, []).append(session)

    def forget(self, session: ControlSession) -> None:
        if session.uri and session in self.sessions.get(session.uri, []):
            self.sessions[session.uri].remove(session)
            if not self.sessions[session.uri]:
                del self.sessions[session.uri]

    def online(self, uri: str) -> bool:
        return uri in self.sessions

    def push(self, uri: str, message: dict[str, Any]) -> int:
        """Send to every session of ``uri``; returns how many got it."""
        sessions = list(self.sessions.get(uri, []))
        for session in sessions:
            session.send(message)
        return len(sessions)
