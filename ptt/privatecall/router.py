"""The server's side of private calls (pure: time passed in): forwarding the call messages between the two users
and the call's relay binding, a two-party call in :class:`ptt.groupcall.GroupCall` (floor control per TS 24.380
as for a group, media forwarded by the relay without any key).

The server never holds the PCK. It checks what it can without it, cheapest first: the caller's setup rate
(1/s, burst 5), the message's form, the callee is another user logged in here and not in a call, the I_MESSAGE
(``PckOffer``) is a PCK I_MESSAGE (purpose tag 1) whose IDRi is the caller's UID and IDRr the callee's for the key
period of its time, and that time is within the I_MESSAGE window; then it forwards it as ``call_offer`` naming the
authenticated caller. The callee's client verifies the signature and opens the key. A refused setup is answered
``call_ended`` ``refused``; other refused messages are dropped; each is listed for a rate-limited log line.

Calls: OFFERED (offer sent; the callee may say ``call_ringing``, which goes to the caller) → CONNECTED (the
callee's ``call_accept``: the two-party call is set up in the GroupCall under the call ID and ``call_connected``
with the relay address goes to both; each then ``join``s the call ID like a group) → gone (``call_reject`` →
the caller gets ``call_ended`` with the reason; ``call_end`` from either → the other gets ``call_ended``; a party's
control channel lost → ``peer-lost``; no answer within ``ANSWER_TIMEOUT`` → both get ``timeout``). An offline
callee: the caller gets ``call_ended`` ``unreachable`` at once; a callee in another call: ``busy``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ptt.groupcall import GroupCall
from ptt.groupinfo import GroupInfo, MemberInfo
from ptt.mikey.errors import MikeyError
from ptt.mikey.identity import KmsDomain
from ptt.mikey.imessage_receive import DEFAULT_MAX_AGE, MAX_CLOCK_SKEW, check_time
from ptt.privatecall.messages import (
    CallAccept,
    CallConnected,
    CallEnd,
    CallEnded,
    CallMessage,
    CallMessageError,
    CallOffer,
    CallReject,
    CallRinging,
    CallSetup,
    parse_call_message,
)
from ptt.privatecall.pck import PckOffer
from ptt.ratelimit import BucketTable

__all__ = ["ANSWER_TIMEOUT", "CALL_MAX_BURST", "PrivateCallRouter"]


ANSWER_TIMEOUT = 35.0
"""Seconds a call may wait for the callee's answer (its client rings 30 s, then rejects with ``timeout``)."""
CALL_MAX_BURST = 60.0
"""Seconds one party may hold the floor of a private call (timer T2 of its arbiter)."""
SETUP_RATE, SETUP_BURST = 1.0, 5
MAX_CALLS = 4096


@dataclass
class _Call:
    call: str
    caller: str
    callee: str
    connected: bool = False
    deadline: float | None = None
    rang: bool = False

    def other(self, uri: str) -> str:
        return self.callee if uri == self.caller else self.caller


class PrivateCallRouter:
    """Every private call through one server."""

    def __init__(
        self, groupcall: GroupCall, domain: KmsDomain, online: Callable[[str], bool], *, max_calls: int = MAX_CALLS
    ) -> None:
        self.groupcall = groupcall
        self.domain = domain
        self.online = online
        self.max_calls = max_calls
        self._calls: dict[str, _Call] = {}
        self._in_call: dict[str, str] = {}  # user URI -> call ID
        self._pushes: list[tuple[str, dict[str, Any]]] = []
        self._refused: list[tuple[str, str]] = []
        self._setups: BucketTable[str] = BucketTable(SETUP_RATE, SETUP_BURST)

    # -- outputs ----------------------------------------------------------------------------------------------

    def pushes(self) -> list[tuple[str, dict[str, Any]]]:
        drained, self._pushes = self._pushes, []
        return drained

    def next_deadline(self) -> float | None:
        deadlines = [c.deadline for c in self._calls.values() if c.deadline is not None]
        return min(deadlines) if deadlines else None

    def calls(self) -> list[tuple[str, str, str, bool]]:
        """(call ID, caller, callee, connected) of every call."""
        return [(c.call, c.caller, c.callee, c.connected) for c in self._calls.values()]

    def is_call(self, call: str) -> bool:
        return call in self._calls

    # -- inputs -----------------------------------------------------------------------------------------------

    def handle(self, uri: str, message: dict[str, Any], now: float) -> None:
        """A call message from the logged-in ``uri``. Never raises: a refused setup is answered ``call_ended``
        ``refused`` (the caller's client is waiting for it); anything else refused is dropped. Every refusal is
        listed in :meth:`refused` for a rate-limited log line. (No control-channel error frame: a client matches
        those with its oldest pending request, which a call message is not.)"""
        try:
            parsed = parse_call_message(message)
        except CallMessageError as exc:
            self._refuse(uri, f"bad call message: {exc}")
            return
        if isinstance(parsed, CallSetup):
            self._setup(uri, parsed, now)
            return
        call = self._calls.get(parsed.call)
        if call is None or uri not in (call.caller, call.callee):
            if not isinstance(parsed, CallEnd | CallReject):  # those cross with the call's end: nothing to say
                self._refuse(uri, f"{parsed.TYPE} for {parsed.call}, which is not a call of this user")
            return
        if isinstance(parsed, CallRinging) and uri == call.callee and not call.connected:
            if not call.rang:  # once: a callee repeating it cannot make the server flood the caller
                call.rang = True
                self._push(call.caller, CallRinging(call.call))
        elif isinstance(parsed, CallAccept) and uri == call.callee and not call.connected:
            self._connect(call, now)
        elif isinstance(parsed, CallReject) and uri == call.callee and not call.connected:
            self._push(call.caller, CallEnded(call.call, parsed.reason))
            self._drop(call, now)
        elif isinstance(parsed, CallEnd):
            self._push(call.other(uri), CallEnded(call.call, parsed.reason))
            self._drop(call, now)
        else:
            self._refuse(uri, f"{parsed.TYPE} does not fit the state of {call.call}")

    def disconnected(self, uri: str, now: float) -> None:
        """The user's last control session ended: its call ends for the other party."""
        call_id = self._in_call.get(uri)
        call = self._calls.get(call_id) if call_id else None
        if call is not None:
            self._push(call.other(uri), CallEnded(call.call, "peer-lost"))
            self._drop(call, now)

    def tick(self, now: float) -> None:
        for call in [c for c in self._calls.values() if c.deadline is not None and c.deadline <= now]:
            self._push(call.caller, CallEnded(call.call, "timeout"))
            self._push(call.callee, CallEnded(call.call, "timeout"))
            self._drop(call, now)

    # -- internals --------------------------------------------------------------------------------------------

    def _setup(self, caller: str, setup: CallSetup, now: float) -> None:
        if not self._setups.take(caller, now):
            self._refuse(caller, "too many call setups", setup.call)
            return
        if setup.call in self._calls:
            self._refuse(caller, f"call ID {setup.call} in use")
            return
        if setup.to == caller:
            self._refuse(caller, "a call to oneself", setup.call)
            return
        try:
            offer = PckOffer.parse(setup.imessage)
            offer.check_parties(caller, setup.to, self.domain)
            check_time(offer.timestamp, now, max_age=DEFAULT_MAX_AGE, max_skew=MAX_CLOCK_SKEW)
        except MikeyError as exc:
            self._refuse(caller, f"call setup to {setup.to}: {exc}", setup.call)
            return
        if caller in self._in_call:
            self._push(caller, CallEnded(setup.call, "busy"))
            return
        if not self.online(setup.to):
            self._push(caller, CallEnded(setup.call, "unreachable"))
            return
        if setup.to in self._in_call or len(self._calls) >= self.max_calls:
            self._push(caller, CallEnded(setup.call, "busy"))
            return
        call = _Call(setup.call, caller, setup.to, deadline=now + ANSWER_TIMEOUT)
        self._calls[call.call] = call
        self._in_call[caller] = self._in_call[setup.to] = call.call
        self._push(setup.to, CallOffer(call.call, caller, setup.commencement, setup.imessage))

    def _connect(self, call: _Call, now: float) -> None:
        call.connected = True
        call.deadline = None
        members = {uri: MemberInfo(uri) for uri in (call.caller, call.callee)}
        info = GroupInfo(call.call, "private call", CALL_MAX_BURST, members, private_call=True)
        self.groupcall.set_group(info, now)
        relay = {"host": self.groupcall.relay_address.host, "port": self.groupcall.relay_address.port}
        self._push(call.caller, CallConnected(call.call, call.callee, relay))
        self._push(call.callee, CallConnected(call.call, call.caller, relay))

    def _drop(self, call: _Call, now: float) -> None:
        self._calls.pop(call.call, None)
        for uri in (call.caller, call.callee):
            if self._in_call.get(uri) == call.call:
                del self._in_call[uri]
        if call.connected:
            self.groupcall.drop_group(call.call, now)

    def refused(self) -> list[tuple[str, str]]:
        """(user URI, why) of every message refused since the last look."""
        drained, self._refused = self._refused, []
        return drained

    def _refuse(self, uri: str, reason: str, call: str | None = None) -> None:
        self._refused.append((uri, reason))
        if call is not None:
            self._push(uri, CallEnded(call, "refused"))

    def _push(self, uri: str, message: CallMessage) -> None:
        self._pushes.append((uri, message.to_json()))
