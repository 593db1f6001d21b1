"""The client-server control channel: framing, messages and password-less ECCSI login (pure, no I/O).

Transport (chosen here; TS 24.379 uses SIP, which this system does not): TLS ≥ 1.2 over TCP to the group server,
the server certificate pinned by the client. Frames: a 4-octet big-endian length and a UTF-8 JSON object with a
``type``. Binary values (nonces, signatures, I_MESSAGEs, tokens) are base64; key IDs hex.

Login: the server sends ``challenge`` {nonce, server}; the client answers ``auth`` {uri, period_no, signature}:
an ECCSI signature (RFC 6507) by the client's key for the UID of ``period_no`` over
"ptt-control-auth-v1" 00 nonce server 00 uri. The server checks it with the KMS's KPAK: no password crosses the
wire and nothing replayable does either (a fresh nonce per connection).

Messages (S: server → client, C: client → server):
  S challenge {nonce, server}            C auth {uri, period_no, signature}
  S welcome {uri, groups, relay}         S error {code, message}
  S imessage {group, gmk_id, data}       S groups {groups}          S event {group, kind, uri?}
  C csk {data}  → S csk_ok {csk_id}      C join {group, ssrc} → S joined {group, token, relay}
  C leave {group}                        C/S ping {id} / pong {id}
  C emergency {group, level, call?}      C emergency_cancel {group, uri?}  → S emergency_ok {group}
  S alert {group, state, uri, level, since, call, by?}   (ptt.emergency: emergency and imminent peril alerts)
  private calls: call_setup, call_offer, call_ringing, call_accept, call_reject, call_connected, call_end,
  call_ended (``ptt.privatecall.messages``)
  C history {group, limit?} → S history_list     C history_fetch {group, burst, offset?} → S history_burst
  (replay of recorded bursts, ``server.history``)
  voice messages: message_send → message_ack, message_new, message_list → message_inbox, message_fetch →
  message_data, message_played → message_played_ok, message_status (deferred delivery, ``server.voicemessages``)
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import struct
from dataclasses import dataclass
from typing import Any

from ptt import boundedjson
from ptt.crypto import eccsi
from ptt.mikey.imessage import IdentityKeys, KmsDomain

MAX_FRAME = 256 * 1024
NONCE_LENGTH = 32
AUTH_CONTEXT = b"ptt-control-auth-v1\x00"
JSON_LIMITS = boundedjson.JsonLimits(max_size=MAX_FRAME, max_depth=8, max_items=4096, max_string=MAX_FRAME)
"""Frames nest at most three levels (``welcome`` → ``relay``/``groups`` → a group); strings are bounded by the frame."""
PERIOD_GRACE = 3600.0  # a client may still log in with the previous period's key this long after the boundary

# which fields each message must carry, and their JSON types
SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "challenge": {"nonce": str, "server": str},
    "auth": {"uri": str, "period_no": int, "signature": str},
    "welcome": {"uri": str, "groups": list, "relay": dict},
    "error": {"code": int, "message": str},
    "imessage": {"group": str, "gmk_id": str, "data": str},
    "groups": {"groups": list},
    "event": {"group": str, "kind": str},
    "moved": {"group": str},  # another server node serves the group's call now: join it again
    "csk": {"data": str},
    "csk_ok": {"csk_id": str},
    "join": {"group": str, "ssrc": int},
    "joined": {"group": str, "token": str, "relay": dict},
    "leave": {"group": str},
    "ping": {"id": int},
    "pong": {"id": int},
}
# Emergency and imminent peril alerts (issue 16; the fields and their checks are ptt.emergency's)
SCHEMA.update(
    {
        "emergency": {"group": str, "level": str},  # C: raise one's alert {group, level, call?}
        "emergency_cancel": {"group": str},  # C: cancel an alert {group, uri?}
        "emergency_ok": {"group": str},  # S: the raise or cancel is committed
        "alert": {"group": str, "state": str, "uri": str, "level": str},  # S: to every member {since, call, by?}
    }
)
# Private calls (issue 16): the values are checked by ptt.privatecall.messages, which lists the steps.
SCHEMA.update(
    {
        "call_setup": {"call": str, "to": str, "commencement": str, "imessage": str},
        "call_offer": {"call": str, "caller": str, "commencement": str, "imessage": str},
        "call_ringing": {"call": str},
        "call_accept": {"call": str},
        "call_reject": {"call": str, "reason": str},
        "call_connected": {"call": str, "peer": str, "relay": dict},
        "call_end": {"call": str, "reason": str},
        "call_ended": {"call": str, "reason": str},
    }
)


# Replay of recorded traffic (issue 17; the server's side and the fields are server.history's)
SCHEMA.update(
    {
        "history": {"group": str},  # C: {group, limit?}
        "history_list": {"group": str, "bursts": list},  # S
        "history_fetch": {"group": str, "burst": int},  # C: {group, burst, offset?}
        "history_burst": {"group": str, "burst": int, "offset": int, "total": int, "packets": list},  # S: {keys?}
    }
)
# Deferred delivery of voice messages (issue 17; the server's side and the fields are server.voicemessages's)
SCHEMA.update(
    {
        "message_send": {"upload": str, "offset": int, "packets": list},  # C: {to?, imessage?, total?}
        "message_ack": {"upload": str, "received": int},  # S: {message?}
        "message_new": {"message": int, "from": str, "seconds": (int, float), "state": str},  # S: {sent}
        "message_list": {},  # C
        "message_inbox": {"messages": list},  # S
        "message_fetch": {"message": int},  # C: {offset?}
        "message_data": {"message": int, "from": str, "offset": int, "total": int, "packets": list},  # S: {imessage?}
        "message_played": {"message": int},  # C
        "message_played_ok": {"message": int},  # S
        "message_status": {"message": int, "to": str, "state": str},  # S: to the sender
    }
)


class ControlProtocolError(ValueError):
    """A frame or message that breaks the control protocol."""


class AuthError(ControlProtocolError):
    """A login that does not prove the claimed identity."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ControlProtocolError(f"{what}: not base64") from None


def encode_frame(message: dict[str, Any]) -> bytes:
    check_message(message)
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    if len(body) > MAX_FRAME:
        raise ControlProtocolError(f"message of {len(body)} octets exceeds {MAX_FRAME}")
    return struct.pack(">I", len(body)) + body


def decode_body(body: bytes) -> dict[str, Any]:
    """One frame's JSON body → a checked message."""
    if len(body) > MAX_FRAME:
        raise ControlProtocolError(f"frame of {len(body)} octets exceeds {MAX_FRAME}")
    try:
        message = boundedjson.loads(body, JSON_LIMITS)
    except boundedjson.JsonLimitError as exc:
        raise ControlProtocolError(f"frame body: {exc}") from None
    if not isinstance(message, dict):
        raise ControlProtocolError("frame is not a JSON object")
    check_message(message)
    return message


class FrameDecoder:
    """Splits a byte stream into checked messages."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= 4:
            (length,) = struct.unpack(">I", self._buffer[:4])
            if length > MAX_FRAME:
                raise ControlProtocolError(f"frame of {length} octets exceeds {MAX_FRAME}")
            if len(self._buffer) < 4 + length:
                break
            body = bytes(self._buffer[4 : 4 + length])
            del self._buffer[: 4 + length]
            messages.append(decode_body(body))
        return messages


def check_message(message: dict[str, Any]) -> None:
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in SCHEMA:
        raise ControlProtocolError(f"unknown message type {kind!r}")
    for name, expected in SCHEMA[kind].items():
        value = message.get(name)
        if not isinstance(value, expected) or isinstance(value, bool):
            raise ControlProtocolError(
                f"{kind}: field {name!r} missing or not {getattr(expected, '__name__', expected)}"
            )


def auth_payload(nonce: bytes, server_uri: str, client_uri: str) -> bytes:
    return AUTH_CONTEXT + nonce + server_uri.encode("utf-8") + b"\x00" + client_uri.encode("utf-8")


def make_auth(keys: IdentityKeys, nonce: bytes, server_uri: str) -> dict[str, Any]:
    """The client's answer to a challenge, signed with its ECCSI key for ``keys.period_no``."""
    signature = eccsi.sign(auth_payload(nonce, server_uri, keys.uri), keys.uid, keys.ssk, keys.pvt, keys.domain.kpak)
    return {"type": "auth", "uri": keys.uri, "period_no": keys.period_no, "signature": b64(signature)}


@dataclass(frozen=True)
class Authenticated:
    uri: str
    period_no: int


def auth_claim(message: dict[str, Any], domain: KmsDomain, now: float) -> Authenticated:
    """The cheap checks of an ``auth`` message (form, URI, key period), before any signature is verified."""
    check_message(message)
    if message["type"] != "auth":
        raise AuthError(f"expected auth, got {message['type']}")
    uri = message["uri"]
    period = message["period_no"]
    if not uri or len(uri) > 255 or any(c.isspace() for c in uri):
        raise AuthError("invalid URI")
    current = domain.period_number(now)
    allowed = {current}
    if domain.period_number(now - PERIOD_GRACE) == current - 1:
        allowed.add(current - 1)
    if period not in allowed:
        raise AuthError(f"key period {period} is not the current one ({current})")
    if len(message["signature"]) > 4 * 129:  # base64 of an ECCSI signature is 172 characters
        raise AuthError("signature too long")
    return Authenticated(uri, period)


def verify_auth(message: dict[str, Any], nonce: bytes, server_uri: str, domain: KmsDomain, now: float) -> Authenticated:
    """Check an ``auth`` message against the challenge ``nonce``: the period is the current one (or the previous
    within PERIOD_GRACE of the boundary) and the ECCSI signature verifies for the claimed URI's UID."""
    who = auth_claim(message, domain, now)
    signature = unb64(message["signature"], "signature")
    if not eccsi.verify(
        auth_payload(nonce, server_uri, who.uri), signature, domain.uid(who.uri, who.period_no), domain.kpak
    ):
        raise AuthError("signature does not verify for the claimed identity")
    return who


def same_nonce(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
