"""A PTT session's private calls (issue 16): the Twisted shell around :class:`ptt.privatecall.machine.PrivateCall`.

Calling: a fresh PCK (purpose tag 1) is put in an I_MESSAGE signed by us and SAKKE-encrypted to the callee's UID
(built in a thread: ECCSI + SAKKE take milliseconds) and sent in ``call_setup``. Called: the offer's I_MESSAGE is
checked in a thread (``receive_pck_message``: signature by the caller the server names, addressed to our UID,
replay, purpose tag) before the user is alerted or the call answered. Once the server says ``call_connected``, the
call becomes a "group" of the session under its call ID: a ``GroupState`` with the call's SRTP
(``ptt.privatecall.media``: our direction under CS-ID 0 or 1, the other party's the other), joined like a group
(relay binding, TS 24.380 floor control under our CSK), so the voice path, the floor and the headless client work
on it unchanged. The call ends (its state, socket and key dropped) on either side's end, on the control channel's
loss, or after the inactivity time without media (checked once a second).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.python.failure import Failure

from client.session_media import GroupState
from ptt.mikey.errors import MikeyError
from ptt.mikey.imessage import ReplayCache
from ptt.privatecall.machine import CallEvent, CallState, CallTimers, PrivateCall
from ptt.privatecall.media import PrivateSrtpReceiver, PrivateSrtpSender
from ptt.privatecall.messages import CallMessageError, CallOffer, new_call_id, parse_call_message
from ptt.privatecall.pck import PrivateCallKey, build_pck_message, make_private_call_key, receive_pck_message
from ptt.ratelimit import TokenBucket

if TYPE_CHECKING:
    from client.session import PttSession

log = logging.getLogger("ptt.client.calls")

ACTIVITY_CHECK = 1.0
"""Seconds between looks at a connected call's packet counters (media in or out keeps it alive)."""
CAPTURE = 8
"""Raw SRTP datagrams of a call kept for diagnostics (``ptt-headless --capture``)."""


class _CallReceiver(PrivateSrtpReceiver):
    """Counts (and keeps the first few of) the call's incoming packets."""

    def __init__(self, key: PrivateCallKey, *, caller: bool) -> None:
        super().__init__(key, caller=caller)
        self.packets = 0
        self.captured: list[bytes] = []

    def _unprotect(self, packet: bytes, *, rtcp: bool) -> tuple[bytes, bytes]:
        if len(self.captured) < CAPTURE:
            self.captured.append(bytes(packet))
        result = super()._unprotect(packet, rtcp=rtcp)
        self.packets += 1
        return result


class _CallSender(PrivateSrtpSender):
    def __init__(self, key: PrivateCallKey, *, caller: bool) -> None:
        super().__init__(key, caller=caller)
        self.packets = 0

    def protect(self, rtp: bytes) -> bytes:
        self.packets += 1
        return super().protect(rtp)


class PrivateCalls:
    """The private calls of one ``PttSession`` (at most one at a time, as the server allows)."""

    def __init__(self, session: PttSession, timers: CallTimers | None = None) -> None:
        self.session = session
        self.timers = timers or CallTimers()
        self.calls: dict[str, PrivateCall] = {}
        self.offers: dict[str, bytes] = {}  # call -> the offer's I_MESSAGE (diagnostics)
        self._keys: dict[str, PrivateCallKey] = {}
        self._counts: dict[str, int] = {}
        self._timer: Any = None
        self._replay = ReplayCache(256)
        self._log_bucket = TokenBucket(1.0, 5)
        self.listener: Callable[[CallEvent], None] = lambda event: None

    @property
    def reactor(self) -> Any:
        return self.session.reactor

    # --- the user ------------------------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def call(self, callee: str, *, manual: bool = False) -> Any:
        """Call ``callee``; the Deferred fires with the call ID once the setup is sent."""
        session = self.session
        if session.control is None:
            raise RuntimeError("not connected to the server")
        now = self.reactor.seconds()
        key = make_private_call_key()
        data = yield session._crypto(build_pck_message, session.identity_keys(now), callee, key, now=now)
        call = new_call_id()
        self._keys[call] = key
        self.calls[call] = PrivateCall.outgoing_call(
            call, callee, data, self.reactor.seconds(), manual=manual, timers=self.timers
        )
        log.info(
            "%s: calling %s (%s commencement, PCK %s)",
            session.uri,
            callee,
            "manual" if manual else "automatic",
            key.pck_id.hex(),
        )
        self._flush(call)
        return call

    def current(self, *states: CallState) -> str | None:
        """The call ID of the (newest) call in one of ``states`` (any state but ended if none given)."""
        for call, machine in reversed(list(self.calls.items())):
            if (machine.state in states) if states else not machine.ended:
                return call
        return None

    def accept(self, call: str | None = None) -> bool:
        call = call or self.current(CallState.RINGING)
        machine = self.calls.get(call) if call else None
        done = machine is not None and machine.accept(self.reactor.seconds())
        if done and call:
            self._flush(call)
        return done

    def reject(self, call: str | None = None) -> bool:
        call = call or self.current(CallState.RINGING, CallState.OFFERED)
        machine = self.calls.get(call) if call else None
        done = machine is not None and machine.reject(self.reactor.seconds())
        if done and call:
            self._flush(call)
        return done

    def hang_up(self, call: str | None = None) -> bool:
        call = call or self.current()
        machine = self.calls.get(call) if call else None
        done = machine is not None and machine.hang_up(self.reactor.seconds())
        if done and call:
            self._flush(call)
        return done

    # --- the server --------------------------------------------------------------------------------------------

    def on_message(self, message: dict[str, Any]) -> None:
        now = self.reactor.seconds()
        try:
            parsed = parse_call_message(message)
        except CallMessageError as exc:
            self._warn("%s: private call message refused: %s", self.session.uri, exc)
            return
        if isinstance(parsed, CallOffer):
            self._offered(parsed, now)
            return
        machine = self.calls.get(parsed.call)
        if machine is None:
            return  # a call we forgot (ended here first)
        machine.receive(parsed, now)
        self._flush(parsed.call)

    def connection_lost(self) -> None:
        for call, machine in list(self.calls.items()):
            machine.connection_lost()
            self._flush(call, send=False)

    def _offered(self, offer: CallOffer, now: float) -> None:
        session = self.session
        if offer.call in self.calls:
            return
        machine = PrivateCall.incoming_call(offer, now, timers=self.timers)
        self.calls[offer.call] = machine
        self.offers[offer.call] = offer.imessage
        d = session._crypto(
            receive_pck_message,
            offer.imessage,
            callee=session.keystore.held_keys(session.uri),
            caller_uri=offer.caller,
            trusted_kms={session.domain.kms_uri: session.domain},
            now=now,
            replay_cache=self._replay,
        )
        d.addCallbacks(self._key_ok, self._key_bad, callbackArgs=(offer.call,), errbackArgs=(offer.call,))

    def _key_ok(self, received: Any, call: str) -> None:
        machine = self.calls.get(call)
        if machine is None:
            return
        self._keys[call] = received.key
        log.info(
            "%s: incoming private call %s from %s (PCK %s)",
            self.session.uri,
            call,
            machine.peer,
            received.key.pck_id.hex(),
        )
        machine.key_accepted(self.reactor.seconds())
        self._flush(call)

    def _key_bad(self, failure: Failure, call: str) -> None:
        machine = self.calls.get(call)
        if failure.check(MikeyError):
            self._warn("%s: private call %s refused: its PCK I_MESSAGE: %s", self.session.uri, call, failure.value)
        else:
            log.error("%s: private call %s: key check failed: %s", self.session.uri, call, failure.getTraceback())
        if machine is not None:
            machine.key_refused(self.reactor.seconds())
            self._flush(call)

    # --- outputs -------------------------------------------------------------------------------------------------

    def _flush(self, call: str, *, send: bool = True) -> None:
        machine = self.calls.get(call)
        if machine is None:
            return
        control = self.session.control
        for message in machine.outgoing():
            if send and control is not None:
                control.send(message.to_json())
        for event in machine.events():
            if event.kind == "connected":
                self._start_media(call, machine)
            elif event.kind == "ended":
                log.info("%s: private call %s with %s ended: %s", self.session.uri, call, machine.peer, event.reason)
            self.listener(event)
        if machine.ended:
            self._stop_media(call)
            self.calls.pop(call, None)
        self._arm()

    def _start_media(self, call: str, machine: PrivateCall) -> None:
        key = self._keys.get(call)
        if key is None:
            return
        session = self.session
        state = GroupState(call, name=f"call with {machine.peer}")
        state.sender = _CallSender(key, caller=machine.caller)
        state.receiver = _CallReceiver(key, caller=machine.caller)
        session.groups[call] = state
        self._counts[call] = 0
        d = session.join(call)

        def failed(failure: Failure) -> None:
            self._warn("%s: private call %s: joining its relay binding failed: %s", session.uri, call, failure.value)
            self.hang_up(call)

        d.addErrback(failed)

    def _stop_media(self, call: str) -> None:
        session = self.session
        self._keys.pop(call, None)
        self._counts.pop(call, None)
        state = session.groups.pop(call, None)
        if state is not None:
            session._drop_participant(state)
            state.joined = False
            if state.port is not None:
                state.port.stopListening()
                state.port = None

    def packets(self, call: str) -> int:
        state = self.session.groups.get(call)
        if state is None:
            return 0
        sent = getattr(state.sender, "packets", 0)
        received = getattr(state.receiver, "packets", 0)
        return int(sent) + int(received)

    def captured(self, call: str) -> list[bytes]:
        state = self.session.groups.get(call)
        return list(getattr(state.receiver, "captured", [])) if state is not None else []

    # --- the timer ----------------------------------------------------------------------------------------------

    def _arm(self) -> None:
        now = self.reactor.seconds()
        deadlines = [d for d in (m.next_deadline() for m in self.calls.values()) if d is not None]
        if any(m.state is CallState.CONNECTED for m in self.calls.values()):
            deadlines.append(now + ACTIVITY_CHECK)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if deadlines:
            self._timer = self.reactor.callLater(max(0.0, min(deadlines) - now), self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self.reactor.seconds()
        for call, machine in list(self.calls.items()):
            if machine.state is CallState.CONNECTED:
                count = self.packets(call)
                if count != self._counts.get(call, 0):
                    self._counts[call] = count
                    machine.media_activity(now)
            machine.tick(now)
            self._flush(call)
        self._arm()

    def _warn(self, text: str, *args: object) -> None:
        if self._log_bucket.take(self.reactor.seconds()):
            log.warning(text, *args)


__all__ = ["PrivateCalls"]
