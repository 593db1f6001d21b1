"""The client end of the control channel: TLS to the pinned server certificate, ECCSI login, requests.

``connect_control`` returns a Deferred firing with a logged-in ``ControlClient`` (after the welcome). Pushed
I_MESSAGEs, group lists and call events go to the ``ControlHandler``; requests (csk, join) return Deferreds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer, endpoints, protocol
from twisted.protocols.basic import Int32StringReceiver

from client.tls import pinned_client_options
from ptt.control import MAX_FRAME, ControlProtocolError, b64, decode_body, encode_frame, make_auth, unb64
from ptt.mikey.imessage import IdentityKeys
from ptt.privatecall.messages import SERVER_PUSHES

log = logging.getLogger("ptt.client.control")

REQUEST_TIMEOUT = 15.0
REPLIES = frozenset(
    {"joined", "csk_ok", "pong", "emergency_ok", "history_list", "history_burst"}
    | {"message_ack", "message_inbox", "message_data", "message_played_ok"}
)
"""Replies matched to the oldest request waiting for that type."""


class ControlError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.reason = message


class ControlHandler(Protocol):
    def on_imessage(self, group: str, gmk_id: bytes, data: bytes) -> object: ...
    def on_groups(self, groups: list[dict[str, Any]]) -> None: ...
    def on_event(self, message: dict[str, Any]) -> None: ...
    def on_disconnected(self, reason: str) -> None: ...


class ControlClient(Int32StringReceiver):
    MAX_LENGTH = MAX_FRAME

    @property
    def link(self) -> Any:
        """The transport (zope interfaces do not type-check, so it is Any here)."""
        return self.transport

    def __init__(self, keys: Callable[[float], IdentityKeys], handler: ControlHandler, clock: Any) -> None:
        self.keys = keys
        self.handler = handler
        self.clock = clock
        self.welcome: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.server_uri: str | None = None
        self.uri: str | None = None
        self.relay: tuple[str, int] | None = None
        self.groups: list[dict[str, Any]] = []
        self._waiting: dict[str, list[defer.Deferred[dict[str, Any]]]] = {}

    def send(self, message: dict[str, Any]) -> None:
        self.link.write(encode_frame(message))

    def stringReceived(self, data: bytes) -> None:
        try:
            message = decode_body(data)
        except ControlProtocolError as exc:
            log.warning("control: bad frame from the server: %s", exc)
            return
        kind = message["type"]
        if kind == "challenge":
            self.server_uri = message["server"]
            nonce = unb64(message["nonce"], "nonce")
            self.send(make_auth(self.keys(self.clock.seconds()), nonce, message["server"]))
        elif kind == "welcome":
            self.uri = message["uri"]
            self.groups = list(message["groups"])
            relay = message["relay"]
            self.relay = (str(relay.get("host")), int(relay.get("port", 0)))
            if not self.welcome.called:
                self.welcome.callback(message)
        elif kind == "error":
            error = ControlError(message["code"], message["message"])
            if not self.welcome.called:
                self.welcome.errback(error)
                return
            pending = [d for waiting in self._waiting.values() for d in waiting]
            if pending:  # the server answers requests in order: the oldest waiting one failed
                oldest = pending[0]
                for waiting in self._waiting.values():
                    if oldest in waiting:
                        waiting.remove(oldest)
                oldest.errback(error)
            else:
                log.warning("control: server error %s", error)
        elif kind == "imessage":
            try:
                self.handler.on_imessage(
                    message["group"], bytes.fromhex(message["gmk_id"]), unb64(message["data"], "data")
                )
            except (ValueError, ControlProtocolError) as exc:
                log.warning("control: unusable I_MESSAGE push: %s", exc)
        elif kind == "groups":
            self.groups = list(message["groups"])
            self.handler.on_groups(self.groups)
        elif kind == "event":
            self.handler.on_event(message)
        elif kind == "moved":
            on_moved = getattr(self.handler, "on_moved", None)
            if on_moved is not None and isinstance(message.get("group"), str):
                on_moved(message["group"])
        elif kind in SERVER_PUSHES:  # private calls (issue 16)
            on_call = getattr(self.handler, "on_call_message", None)
            if on_call is not None:
                on_call(message)
        elif kind == "ping":
            self.send({"type": "pong", "id": message["id"]})
        elif kind == "alert":  # an emergency alert raised or cancelled (issue 16: client.session_emergency)
            on_alert = getattr(self.handler, "on_alert", None)
            if on_alert is not None:
                on_alert(message)
        elif kind in ("message_new", "message_status"):  # voice messages (issue 17: client.voicemessages)
            on_voice = getattr(self.handler, "on_voice_message", None)
            if on_voice is not None:
                on_voice(message)
        elif kind in REPLIES:
            waiting = self._waiting.get(kind, [])
            if waiting:
                waiting.pop(0).callback(message)

    def _request(self, message: dict[str, Any], reply: str) -> defer.Deferred[dict[str, Any]]:
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._waiting.setdefault(reply, []).append(d)
        d.addTimeout(REQUEST_TIMEOUT, self.clock)
        self.send(message)
        return d

    def request(self, message: dict[str, Any], reply: str) -> defer.Deferred[dict[str, Any]]:
        """Send a request and wait for its ``reply`` type (an error from the server fails it)."""
        return self._request(message, reply)

    def send_csk(self, imessage: bytes) -> defer.Deferred[dict[str, Any]]:
        return self._request({"type": "csk", "data": b64(imessage)}, "csk_ok")

    def join(self, group: str, ssrc: int) -> defer.Deferred[dict[str, Any]]:
        return self._request({"type": "join", "group": group, "ssrc": ssrc}, "joined")

    def leave(self, group: str) -> None:
        self.send({"type": "leave", "group": group})

    def connectionLost(self, reason: Any = None) -> None:
        text = reason.getErrorMessage() if reason is not None else "closed"
        if not self.welcome.called:
            self.welcome.errback(ControlError(0, f"connection lost before login: {text}"))
        for waiting in self._waiting.values():
            for d in waiting:
                if not d.called:
                    d.errback(ControlError(0, "connection lost"))
        self._waiting.clear()
        self.handler.on_disconnected(text)


class _Factory(protocol.Factory):
    def __init__(self, build: Callable[[], ControlClient]) -> None:
        self.build = build

    def buildProtocol(self, addr: Any) -> ControlClient:
        return self.build()


@defer.inlineCallbacks
def connect_control(
    reactor: Any,
    host: str,
    port: int,
    server_cert_pem: bytes | None,
    keys: Callable[[float], IdentityKeys],
    handler: ControlHandler,
    *,
    tls_name: str | None = None,
) -> Any:
    """Connect, log in, and return the ControlClient once welcomed (ControlError if refused)."""
    options = pinned_client_options(tls_name or host, server_cert_pem)
    tcp: Any = endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=15)
    endpoint: Any = endpoints.wrapClientTLS(options, tcp)
    client = yield endpoint.connect(_Factory(lambda: ControlClient(keys, handler, reactor)))
    client.welcome.addTimeout(REQUEST_TIMEOUT, reactor)
    yield client.welcome
    return client
