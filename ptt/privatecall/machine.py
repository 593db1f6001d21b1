"""One private call as a client sees it, caller or callee (pure: every input carries ``now``).

TS 24.379 §11.1 (on-network private call with floor control) adapted to our control channel
(``ptt.privatecall.messages``). The shell does the I/O and the crypto (building the PCK I_MESSAGE, checking a
received one off the reactor) and tells the machine the outcome; the machine says what to send
(:meth:`PrivateCall.outgoing`), what the user should see (:meth:`PrivateCall.events`) and when to wake it
(:meth:`PrivateCall.next_deadline`, :meth:`PrivateCall.tick`).

Caller:  CALLING ─ringing→ RINGING ─connected→ CONNECTED ─end/ended/inactivity→ ENDED
            └──────────────connected─────────────┘      (ended at any point: rejected, timeout, unreachable, ...)
Callee:  OFFERED ─key ok, automatic→ ACCEPTED ─connected→ CONNECTED
            └─key ok, manual→ RINGING ─accept→ ACCEPTED;  ─reject / ringing timeout→ ENDED;  key bad → ENDED

Timers (``CallTimers``; the server's own answer timer is ``ptt.privatecall.router``'s):
* ``ringing`` (30 s): a callee alerting its user for a manual-commencement call rejects with ``timeout`` when no
  one answers (TS 24.379 leaves the ringing time to the implementation);
* ``answer`` (40 s): a caller gives up (``call_end`` ``cancelled``; the user is told ``timeout``) when the
  call is neither connected nor ended by then (the server ends it at 35 s, so this is a backstop);
* ``connect`` (10 s): a callee that accepted gives up when the server does not connect the call;
* ``inactivity`` (60 s): a connected call with no media either way for this long is ended by either side
  (``inactivity``), like TS 24.379's private call inactivity timer; media in or out counts
  (:meth:`PrivateCall.media_activity`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ptt.privatecall.messages import (
    AUTOMATIC,
    MANUAL,
    CallAccept,
    CallConnected,
    CallEnd,
    CallEnded,
    CallMessage,
    CallOffer,
    CallReject,
    CallRinging,
    CallSetup,
)

__all__ = ["CallEvent", "CallState", "CallTimers", "PrivateCall"]


class CallState(Enum):
    CALLING = "calling"  # caller: setup sent, no answer yet
    OFFERED = "offered"  # callee: the offer is being checked (the PCK I_MESSAGE)
    RINGING = "ringing"  # manual commencement: the callee's user is alerted
    ACCEPTED = "accepted"  # callee: answered, waiting for the server to connect the call
    CONNECTED = "connected"  # the relay binding exists: media and floor
    ENDED = "ended"


@dataclass(frozen=True)
class CallTimers:
    ringing: float = 30.0
    answer: float = 40.0
    connect: float = 10.0
    inactivity: float = 60.0


@dataclass(frozen=True)
class CallEvent:
    """What the user interface shows: ``incoming`` (a call to answer or auto-answered), ``ringing``,
    ``connected``, ``ended`` (with the reason)."""

    kind: str
    call: str
    peer: str
    reason: str = ""


@dataclass
class PrivateCall:
    call: str
    peer: str
    caller: bool
    commencement: str = AUTOMATIC
    timers: CallTimers = field(default_factory=CallTimers)
    state: CallState = CallState.CALLING
    reason: str = ""
    relay: dict[str, object] | None = None
    _deadline: float | None = None
    _last_media: float = 0.0
    _out: list[CallMessage] = field(default_factory=list)
    _events: list[CallEvent] = field(default_factory=list)

    # -- starting ---------------------------------------------------------------------------------------------

    @classmethod
    def outgoing_call(
        cls,
        call: str,
        callee: str,
        imessage: bytes,
        now: float,
        *,
        manual: bool = False,
        timers: CallTimers | None = None,
    ) -> PrivateCall:
        """The caller's call: sends ``call_setup`` with the PCK I_MESSAGE."""
        machine = cls(call, callee, True, MANUAL if manual else AUTOMATIC, timers or CallTimers())
        machine._out.append(CallSetup(call, callee, machine.commencement, imessage))
        machine._deadline = now + machine.timers.answer
        return machine

    @classmethod
    def incoming_call(cls, offer: CallOffer, now: float, *, timers: CallTimers | None = None) -> PrivateCall:
        """The callee's call: the shell checks the offer's I_MESSAGE next (``key_accepted``/``key_refused``)."""
        machine = cls(offer.call, offer.caller, False, offer.commencement, timers or CallTimers(), CallState.OFFERED)
        machine._deadline = now + machine.timers.connect
        return machine

    # -- outputs ----------------------------------------------------------------------------------------------

    def outgoing(self) -> list[CallMessage]:
        drained, self._out = self._out, []
        return drained

    def events(self) -> list[CallEvent]:
        drained, self._events = self._events, []
        return drained

    def next_deadline(self) -> float | None:
        return None if self.state is CallState.ENDED else self._deadline

    @property
    def ended(self) -> bool:
        return self.state is CallState.ENDED

    # -- the callee's key check ---------------------------------------------------------------------------------

    def key_accepted(self, now: float) -> None:
        """The PCK I_MESSAGE verified: answer at once (automatic) or alert the user (manual)."""
        if self.state is not CallState.OFFERED:
            return
        self._events.append(CallEvent("incoming", self.call, self.peer, self.commencement))
        if self.commencement == AUTOMATIC:
            self._accept(now)
        else:
            self.state = CallState.RINGING
            self._out.append(CallRinging(self.call))
            self._deadline = now + self.timers.ringing

    def key_refused(self, now: float) -> None:
        """The PCK I_MESSAGE did not verify: the call is refused (the user never sees it)."""
        if self.state is CallState.OFFERED:
            self._out.append(CallReject(self.call, "refused"))
            self._end("refused", tell_user=False)

    # -- the user ---------------------------------------------------------------------------------------------

    def accept(self, now: float) -> bool:
        """The callee's user answers a ringing call."""
        if self.caller or self.state is not CallState.RINGING:
            return False
        self._accept(now)
        return True

    def reject(self, now: float) -> bool:
        """The callee's user refuses a ringing call."""
        if self.caller or self.state not in (CallState.RINGING, CallState.OFFERED):
            return False
        self._out.append(CallReject(self.call, "rejected"))
        self._end("rejected")
        return True

    def hang_up(self, now: float, reason: str = "ended") -> bool:
        """Either side ends the call (a caller before the answer: ``cancelled``)."""
        if self.state is CallState.ENDED:
            return False
        if self.caller and self.state in (CallState.CALLING, CallState.RINGING) and reason == "ended":
            reason = "cancelled"
        if not self.caller and self.state in (CallState.RINGING, CallState.OFFERED):
            self._out.append(CallReject(self.call, "rejected"))
        else:
            self._out.append(CallEnd(self.call, reason))
        self._end(reason)
        return True

    # -- the server -------------------------------------------------------------------------------------------

    def receive(self, message: CallMessage, now: float) -> None:
        if self.state is CallState.ENDED or message.call != self.call:
            return
        if isinstance(message, CallRinging) and self.caller and self.state is CallState.CALLING:
            self.state = CallState.RINGING
            self._events.append(CallEvent("ringing", self.call, self.peer))
        elif isinstance(message, CallConnected) and message.peer == self.peer:
            if self.state in (CallState.CALLING, CallState.RINGING, CallState.ACCEPTED):
                self.state = CallState.CONNECTED
                self.relay = dict(message.relay)
                self._last_media = now
                self._deadline = now + self.timers.inactivity
                self._events.append(CallEvent("connected", self.call, self.peer))
        elif isinstance(message, CallEnded):
            self._end(message.reason)

    def media_activity(self, now: float) -> None:
        """Media went out or came in (a burst in progress)."""
        if self.state is CallState.CONNECTED:
            self._last_media = now
            self._deadline = now + self.timers.inactivity

    def connection_lost(self) -> None:
        """The control channel is gone: the server ended the call for the other party (``peer-lost``)."""
        self._end("peer-lost")

    # -- timers -----------------------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        if self._deadline is None or now < self._deadline or self.state is CallState.ENDED:
            return
        if self.state is CallState.CONNECTED:
            self._out.append(CallEnd(self.call, "inactivity"))
            self._end("inactivity")
        elif self.state is CallState.RINGING and not self.caller:
            self._out.append(CallReject(self.call, "timeout"))
            self._end("timeout")
        elif self.caller:
            self._out.append(CallEnd(self.call, "cancelled"))
            self._end("timeout")
        else:  # OFFERED or ACCEPTED for too long: the server never connected it
            self._out.append(CallEnd(self.call, "timeout"))
            self._end("timeout")

    # -- internals --------------------------------------------------------------------------------------------

    def _accept(self, now: float) -> None:
        self.state = CallState.ACCEPTED
        self._out.append(CallAccept(self.call))
        self._deadline = now + self.timers.connect

    def _end(self, reason: str, *, tell_user: bool = True) -> None:
        if self.state is CallState.ENDED:
            return
        self.state = CallState.ENDED
        self.reason = reason
        self._deadline = None
        if tell_user:
            self._events.append(CallEvent("ended", self.call, self.peer, reason))
