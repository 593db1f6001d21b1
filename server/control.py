"""The server end of the control channel (TLS, framed JSON; ``ptt.control`` has the protocol).

Each connection: challenge → ECCSI-signed auth within AUTH_TIMEOUT → welcome (groups, relay address, then every
stored I_MESSAGE for the member) → requests (csk, join, leave, ping). The server pings every PING_INTERVAL and
drops a connection silent for DEAD_AFTER. What the messages *do* is the backend's business (server.main).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Protocol

from twisted.internet import protocol
from twisted.protocols.basic import Int32StringReceiver

from ptt.control import (
    MAX_FRAME,
    NONCE_LENGTH,
    AuthError,
    ControlProtocolError,
    b64,
    decode_body,
    encode_frame,
    unb64,
    verify_auth,
)
from ptt.mikey.imessage import KmsDomain

log = logging.getLogger("ptt.server.control")

AUTH_TIMEOUT = 10.0
PING_INTERVAL = 20.0
DEAD_AFTER = 60.0


class RequestRefused(Exception):
    """A backend refusal with a code and a message for the client."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class ControlBackend(Protocol):
    server_uri: str

    def domain(self) -> KmsDomain: ...
    def welcome(self, uri: str) -> dict[str, Any]: ...
    def stored_imessages(self, uri: str) -> list[dict[str, Any]]: ...
    def on_csk(self, uri: str, data: bytes, now: float) -> str: ...
    def on_join(self, uri: str, group: str, ssrc: int, now: float) -> dict[str, Any]: ...
    def on_leave(self, uri: str, group: str, now: float) -> None: ...
    def on_disconnected(self, uri: str, now: float) -> None: ...


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
        self._ping_timer: Any = None
        self._last_heard = 0.0
        self._ping_id = 0

    @property
    def clock(self) -> Any:
        return self.factory.clock

    def connectionMade(self) -> None:
        self._last_heard = self.clock.seconds()
        self.send({"type": "challenge", "nonce": b64(self.nonce), "server": self.factory.backend.server_uri})
        self._auth_timer = self.clock.callLater(AUTH_TIMEOUT, self._auth_timeout)

    def connectionLost(self, reason: Any = None) -> None:
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
        self.link.write(encode_frame(message))

    def error(self, code: int, text: str, *, close: bool = False) -> None:
        self.send({"type": "error", "code": code, "message": text})
        if close:
            self.link.loseConnection()

    def stringReceived(self, data: bytes) -> None:
        self._last_heard = self.clock.seconds()
        try:
            message = decode_body(data)
        except ControlProtocolError as exc:
            log.warning("control: bad frame from %s: %s", self.uri or self._peer(), exc)
            self.error(400, f"bad message: {exc}", close=self.uri is None)
            return
        if self.uri is None:
            self._authenticate(message)
            return
        try:
            self._request(message)
        except RequestRefused as exc:
            self.error(exc.code, str(exc))
        except Exception:
            log.exception("control: request from %s failed", self.uri)
            self.error(500, "internal error")

    def _authenticate(self, message: dict[str, Any]) -> None:
        backend = self.factory.backend
        try:
            who = verify_auth(message, self.nonce, backend.server_uri, backend.domain(), self.clock.seconds())
        except AuthError as exc:
            log.warning("control: login refused from %s: %s", self._peer(), exc)
            self.error(401, f"login refused: {exc}", close=True)
            return
        except ControlProtocolError as exc:
            self.error(400, f"expected auth: {exc}", close=True)
            return
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        self.uri = who.uri
        self.factory.remember(self)
        log.info("control: %s logged in from %s", who.uri, self._peer())
        self.send({"type": "welcome", **backend.welcome(who.uri), "uri": who.uri})
        for stored in backend.stored_imessages(who.uri):
            self.send(stored)
        self._ping_timer = self.clock.callLater(PING_INTERVAL, self._ping)

    def _request(self, message: dict[str, Any]) -> None:
        assert self.uri is not None
        backend = self.factory.backend
        now = self.clock.seconds()
        kind = message["type"]
        if kind == "ping":
            self.send({"type": "pong", "id": message["id"]})
        elif kind == "pong":
            pass
        elif kind == "csk":
            csk_id = backend.on_csk(self.uri, _unb64(message["data"]), now)
            self.send({"type": "csk_ok", "csk_id": csk_id})
        elif kind == "join":
            ssrc = message["ssrc"]
            if not 0 <= ssrc <= 0xFFFFFFFF:
                raise RequestRefused(400, "ssrc out of range")
            self.send(backend.on_join(self.uri, message["group"], ssrc, now))
        elif kind == "leave":
            backend.on_leave(self.uri, message["group"], now)
        else:
            raise RequestRefused(400, f"{kind} is not a client request")

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
        if self.uri is None:
            log.warning("control: no login from %s within %.0f s", self._peer(), AUTH_TIMEOUT)
            self.link.abortConnection()

    def _peer(self) -> str:
        peer = self.link.getPeer() if self.transport else None
        return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"


def _unb64(text: str) -> bytes:
    try:
        return unb64(text, "data")
    except ControlProtocolError as exc:
        raise RequestRefused(400, str(exc)) from None


class ControlServerFactory(protocol.Factory):
    def __init__(self, backend: ControlBackend, clock: Any) -> None:
        self.backend = backend
        self.clock = clock
        self.sessions: dict[str, list[ControlSession]] = {}

    def buildProtocol(self, addr: Any) -> ControlSession:
        return ControlSession(self)

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
