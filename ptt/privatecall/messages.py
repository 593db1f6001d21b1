"""The control channel's private call messages (pure): dataclasses, strict ``parse`` and ``to_json``.

TS 24.379 §11 signals private calls with SIP (INVITE with the PCK I_MESSAGE in its MIKEY body, 180 Ringing,
200 OK, 486/603, BYE); this system has no SIP, so the same steps are frames of its control channel
(``ptt.control``: the frame's JSON types are checked there first, the values here):

  C call_setup {call, to, commencement, imessage}     caller → server: start a call, PCK I_MESSAGE to the callee
  S call_offer {call, caller, commencement, imessage} server → callee (the server cannot open the I_MESSAGE)
  C call_ringing {call}                               callee → server: the user is alerted (manual commencement)
  S call_ringing {call}                               server → caller
  C call_accept {call}                                callee → server: answered (at once if automatic)
  C call_reject {call, reason}                        callee → server: refused (by the user, or the PCK was bad)
  S call_connected {call, peer, relay}                server → both: the call's relay binding exists: join it
  C call_end {call, reason}                           either party → server: hang up (or cancel while ringing)
  S call_ended {call, reason}                         server → a party: the call is over, and why

``call`` is the call's ID: 16 lowercase hex digits the caller chooses at random (``new_call_id``); the relay
binding and floor control of the call use it where a group call uses the group's URI. ``imessage`` is base64.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from ptt.privatecall.pck import MAX_PCK_MESSAGE

__all__ = [
    "CALL_ID_PREFIX",
    "CALL_MESSAGE_TYPES",
    "CLIENT_REQUESTS",
    "COMMENCEMENTS",
    "REASONS",
    "SERVER_PUSHES",
    "CallAccept",
    "CallConnected",
    "CallEnd",
    "CallEnded",
    "CallMessage",
    "CallMessageError",
    "CallOffer",
    "CallReject",
    "CallRinging",
    "CallSetup",
    "is_call_id",
    "new_call_id",
    "parse_call_message",
]

CALL_ID_PREFIX = "call:"
_CALL_ID = re.compile(r"call:[0-9a-f]{16}")
_MAX_URI = 255

AUTOMATIC, MANUAL = "automatic", "manual"
COMMENCEMENTS = (AUTOMATIC, MANUAL)

REASONS = frozenset(
    {
        "ended",  # a party hung up
        "rejected",  # the callee (its user) refused
        "timeout",  # no answer in time
        "unreachable",  # the callee is not logged in (or unknown)
        "busy",  # the callee (or caller) is in another private call
        "refused",  # the callee's client refused the PCK I_MESSAGE, or the server refused the setup
        "inactivity",  # no media for the inactivity time
        "peer-lost",  # the other party's control channel went away
        "cancelled",  # the caller hung up before the answer
    }
)


class CallMessageError(ValueError):
    """A private call message whose values are not what the protocol allows."""


def new_call_id() -> str:
    return CALL_ID_PREFIX + os.urandom(8).hex()


def is_call_id(value: str) -> bool:
    return _CALL_ID.fullmatch(value) is not None


def _call_id(value: Any) -> str:
    if not isinstance(value, str) or not is_call_id(value):
        raise CallMessageError("call: not a call ID (call: and 16 lowercase hex digits)")
    return value


def _uri(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_URI or any(c.isspace() for c in value):
        raise CallMessageError(f"{name}: not a URI")
    if ":" not in value or value.startswith(CALL_ID_PREFIX):
        raise CallMessageError(f"{name}: not a user URI")
    return value


def _choice(value: Any, allowed: Any, name: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise CallMessageError(f"{name}: {str(value)[:32]!r} is none of {sorted(allowed)}")
    return value


def _imessage(value: Any) -> bytes:
    if not isinstance(value, str) or len(value) > 4 * (MAX_PCK_MESSAGE // 3 + 1):
        raise CallMessageError("imessage: missing or too long")
    try:
        data = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise CallMessageError("imessage: not base64") from None
    if not data:
        raise CallMessageError("imessage: empty")
    return data


@dataclass(frozen=True)
class CallMessage:
    TYPE: ClassVar[str] = ""
    call: str

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.TYPE}
        for name, value in asdict(self).items():
            out[name] = base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value
        return out


@dataclass(frozen=True)
class CallSetup(CallMessage):
    TYPE: ClassVar[str] = "call_setup"
    to: str
    commencement: str
    imessage: bytes

    @classmethod
    def parse(cls, m: dict[str, Any]) -> CallSetup:
        return cls(
            _call_id(m.get("call")),
            _uri(m.get("to"), "to"),
            _choice(m.get("commencement"), COMMENCEMENTS, "commencement"),
            _imessage(m.get("imessage")),
        )


@dataclass(frozen=True)
class CallOffer(CallMessage):
    TYPE: ClassVar[str] = "call_offer"
    caller: str
    commencement: str
    imessage: bytes

    @classmethod
    def parse(cls, m: dict[str, Any]) -> CallOffer:
        return cls(
            _call_id(m.get("call")),
            _uri(m.get("caller"), "caller"),
            _choice(m.get("commencement"), COMMENCEMENTS, "commencement"),
            _imessage(m.get("imessage")),
        )


@dataclass(frozen=True)
class CallRinging(CallMessage):
    TYPE: ClassVar[str] = "call_ringing"

    @classmethod
    def parse(cls, m: dict[str, Any]) -> CallRinging:
        return cls(_call_id(m.get("call")))


@dataclass(frozen=True)
class CallAccept(CallMessage):
    TYPE: ClassVar[str] = "call_accept"

    @classmethod
    def parse(cls, m: dict[str, Any]) -> CallAccept:
        return cls(_call_id(m.get("call")))


@dataclass(frozen=True)
class CallReject(CallMessage):
    TYPE: ClassVar[str] = "call_reject"
    reason: str = "rejected"

    @classmethod
    def parse(cls, m: dict[str, Any]) -> CallReject:
        return cls(_call_id(m.get("call")), _choice(m.get("reason"), REASONS, "reason"))


@dataclass(frozen=True)
class CallConnected(CallMessage):
    TYPE: ClassVar[str] = "call_connected"
    peer: str
    relay: dict[str, Any]

    @classmethod
    def parse(cls, m: dict[str, Any]) -> CallConnected:
        relay = m.get("relay")
        if (
            not isinstance(relay, dict)
            or not isinstance(relay.get("host"), str)
            or not isinstance(relay.get("port"), int)
            or not 0 < relay["port"] < 65536
        ):
            raise CallMessageError("relay: not {host, port}")
        return cls(_call_id(m.get("call")), _uri(m.get("peer"), "peer"), {"host": relay["host"], "port": relay["port"]})


@dataclass(frozen=True)
class CallEnd(CallMessage):
    TYPE: ClassVar[str] = "call_end"
    reason: str = "ended"

    @classmethod
    def parse(cls, m: dict[str, Any]) -> CallEnd:
        return cls(_call_id(m.get("call")), _choice(m.get("reason"), REASONS, "reason"))


@dataclass(frozen=True)
class CallEnded(CallMessage):
    TYPE: ClassVar[str] = "call_ended"
    reason: str = "ended"

    @classmethod
    def parse(cls, m: dict[str, Any]) -> CallEnded:
        return cls(_call_id(m.get("call")), _choice(m.get("reason"), REASONS, "reason"))


_PARSERS: dict[str, Any] = {
    cls.TYPE: cls
    for cls in (CallSetup, CallOffer, CallRinging, CallAccept, CallReject, CallConnected, CallEnd, CallEnded)
}
CALL_MESSAGE_TYPES = frozenset(_PARSERS)
CLIENT_REQUESTS = frozenset({"call_setup", "call_ringing", "call_accept", "call_reject", "call_end"})
SERVER_PUSHES = frozenset({"call_offer", "call_ringing", "call_connected", "call_ended"})


def parse_call_message(message: dict[str, Any]) -> CallMessage:
    """A control-channel frame of a call type → its dataclass; CallMessageError for anything else."""
    kind = message.get("type")
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        raise CallMessageError(f"not a private call message: {str(kind)[:32]!r}")
    result: CallMessage = parser.parse(message)
    return result
