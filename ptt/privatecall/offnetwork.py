"""Off-network private calls (TS 24.379 §11.2 behaviour, no server): two clients signal each other directly in the
ad-hoc groups' signed envelope (``ptt.adhoc.messages``, body ``CallSignal``) and the caller's PCK travels in its
I_MESSAGE straight to the callee. Pure: octets and ``now`` in, datagrams, events and media addresses out.

Each call runs the same :class:`ptt.privatecall.machine.PrivateCall` as on-network; this engine stands in for the
server: the caller's SETUP (with the I_MESSAGE and its media port) goes to the callee's signalling address and is
re-sent (0.5, 1, 2, 2 … s) until the callee answers (RINGING, ACCEPT or REJECT); the callee answers every copy
again (a lost answer costs one retransmission). An ACCEPT carries the callee's media port: each side is then
*connected* with the other's media address (the source address of its datagrams and the port it named), and SRTP
goes directly between them (``ptt.privatecall.media``). END is sent twice. Every datagram is signed by its sender
(ECCSI, key period of its time, ±300 s, replay cache), the SETUP's I_MESSAGE must be signed by that same sender
and addressed to us (``receive_pck_message``), and every later step must come from the call's peer: anything else
is refused (``refused`` lists why, for a rate-limited log line) and changes nothing.

Simplification: no floor control in an off-network private call (TS 24.380 §7 would run between the two); each
side sends while its user presses, as on a telephone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ptt.adhoc.bodies import CallSignal
from ptt.adhoc.fields import AdhocMessageError
from ptt.adhoc.messages import open_envelope, seal
from ptt.mikey.errors import MikeyError
from ptt.mikey.identity import IdentityKeys, KmsDomain
from ptt.mikey.replay import ReplayCache
from ptt.privatecall.machine import CallEvent, CallState, CallTimers, PrivateCall
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
from ptt.privatecall.pck import PrivateCallKey, build_pck_message, make_private_call_key, receive_pck_message

__all__ = ["REASON_CODES", "CallMedia", "OffNetworkCalls"]

Address = tuple[str, int]

SETUP, RINGING, ACCEPT, REJECT, END = 1, 2, 3, 4, 5
REASON_CODES: tuple[str, ...] = (
    "ended",
    "rejected",
    "timeout",
    "unreachable",
    "busy",
    "refused",
    "inactivity",
    "peer-lost",
    "cancelled",
)
LINGER = 10.0
"""Seconds a callee that rejected keeps answering the caller's SETUP copies with its REJECT."""
RETRY = (0.5, 1.0, 2.0)
"""Seconds between SETUP copies (the last repeats until the answer timer ends the call)."""


@dataclass(frozen=True, repr=False)
class CallMedia:
    """What the shell needs to carry a connected call's media."""

    call: str
    peer: str
    key: PrivateCallKey
    caller: bool
    peer_media: Address


@dataclass
class _Call:
    machine: PrivateCall
    peer_signal: Address
    key: PrivateCallKey | None = None
    peer_media_port: int = 0
    next_retry: float | None = None
    retries: int = 0
    answer: CallSignal | None = None  # the callee's last answer, sent again for each SETUP copy
    setup: CallSignal | None = None
    linger_until: float | None = None  # an ended callee's REJECT answers SETUP copies until then


@dataclass
class OffNetworkCalls:
    """The off-network private calls of one client."""

    uri: str
    keys_at: Callable[[float], IdentityKeys]
    held_keys: Callable[[], list[IdentityKeys]]
    trusted_kms: Mapping[str, KmsDomain]
    media_port: int
    timers: CallTimers = field(default_factory=CallTimers)
    speaks_for: Callable[[str, str], bool] = lambda kms, uri: True
    domain_for: Callable[[str], KmsDomain] | None = None  # the callee's KMS (a partner's user): default our own
    replay_cache: ReplayCache = field(default_factory=lambda: ReplayCache(4096))
    _calls: dict[str, _Call] = field(default_factory=dict)
    _datagrams: list[tuple[bytes, Address]] = field(default_factory=list)
    _events: list[CallEvent] = field(default_factory=list)
    _media: list[CallMedia] = field(default_factory=list)
    _refused: list[str] = field(default_factory=list)
    _pck_replay: ReplayCache = field(default_factory=lambda: ReplayCache(256))

    # -- outputs ----------------------------------------------------------------------------------------------

    def datagrams(self) -> list[tuple[bytes, Address]]:
        drained, self._datagrams = self._datagrams, []
        return drained

    def events(self) -> list[CallEvent]:
        drained, self._events = self._events, []
        return drained

    def connected(self) -> list[CallMedia]:
        """Calls connected since the last look: start their media."""
        drained, self._media = self._media, []
        return drained

    def refused(self) -> list[str]:
        drained, self._refused = self._refused, []
        return drained

    def next_deadline(self) -> float | None:
        times = [
            t
            for c in self._calls.values()
            for t in (c.machine.next_deadline(), c.next_retry, c.linger_until)
            if t is not None
        ]
        return min(times) if times else None

    def state(self, call: str) -> CallState | None:
        entry = self._calls.get(call)
        return entry.machine.state if entry is not None else None

    def current(self, *states: CallState) -> str | None:
        for call, entry in reversed(list(self._calls.items())):
            if (entry.machine.state in states) if states else not entry.machine.ended:
                return call
        return None

    # -- the user ---------------------------------------------------------------------------------------------

    def call(self, callee: str, address: Address, now: float, *, manual: bool = False) -> str:
        """Call ``callee`` at its signalling ``address``; returns the call ID."""
        if self.current() is not None:
            raise ValueError("already in a call")
        key = make_private_call_key()
        domain = self.domain_for(callee) if self.domain_for is not None else None
        imessage = build_pck_message(self.keys_at(now), callee, key, now=now, callee_domain=domain)
        call = "call:" + os.urandom(8).hex()
        machine = PrivateCall.outgoing_call(call, callee, imessage, now, manual=manual, timers=self.timers)
        self._calls[call] = _Call(machine, address, key, next_retry=now + RETRY[0])
        self._pump(call, now)
        return call

    def accept(self, now: float, call: str | None = None) -> bool:
        return self._user(call or self.current(CallState.RINGING), lambda m: m.accept(now), now)

    def reject(self, now: float, call: str | None = None) -> bool:
        return self._user(call or self.current(CallState.RINGING, CallState.OFFERED), lambda m: m.reject(now), now)

    def hang_up(self, now: float, call: str | None = None) -> bool:
        return self._user(call or self.current(), lambda m: m.hang_up(now), now)

    def media_activity(self, call: str, now: float) -> None:
        entry = self._calls.get(call)
        if entry is not None:
            entry.machine.media_activity(now)

    # -- the network ------------------------------------------------------------------------------------------

    def datagram(self, data: bytes, source: Address, now: float) -> None:
        """A datagram on the signalling socket. Never raises for bad input."""
        try:
            envelope = open_envelope(data, trusted_kms=self.trusted_kms, now=now, replay_cache=self.replay_cache)
        except AdhocMessageError as exc:
            self._refused.append(f"datagram from {source[0]}:{source[1]} refused: {exc}")
            return
        body = envelope.body
        if not isinstance(body, CallSignal):
            return
        if not self.speaks_for(envelope.sender_kms, envelope.sender) or body.to != self.uri:
            self._refused.append(f"call signal from {envelope.sender} refused: not for us or KMS not trusted for it")
            return
        self.signal(envelope.sender, body, source, now)

    def signal(self, sender: str, body: CallSignal, source: Address, now: float) -> None:
        """An authentic call signal from ``sender`` (the ad-hoc engine may hand them over too)."""
        call = "call:" + body.call_id.hex()
        entry = self._calls.get(call)
        if body.step == SETUP:
            self._on_setup(sender, call, body, source, now)
            return
        if entry is None or entry.machine.peer != sender:
            if entry is not None:
                self._refused.append(f"call signal for {call} from {sender}, not the call's peer: refused")
            return
        machine = entry.machine
        if body.step in (RINGING, ACCEPT, REJECT) and machine.caller:
            entry.next_retry = None  # answered: no more SETUP copies
        if body.step == RINGING and machine.caller:
            machine.receive(CallRinging(call), now)
        elif body.step == ACCEPT and machine.caller:
            entry.peer_media_port = body.media_port
            machine.receive(CallConnected(call, sender, {"host": source[0], "port": body.media_port}), now)
        elif body.step in (REJECT, END):
            reason = REASON_CODES[body.code] if body.code < len(REASON_CODES) else "ended"
            machine.receive(CallEnded(call, reason), now)
        self._pump(call, now)

    def tick(self, now: float) -> None:
        for call, entry in list(self._calls.items()):
            if entry.next_retry is not None and now >= entry.next_retry and entry.setup is not None:
                entry.retries += 1
                entry.next_retry = now + RETRY[min(entry.retries, len(RETRY) - 1)]
                self._send(entry.setup, entry.peer_signal, now)
            entry.machine.tick(now)
            self._pump(call, now)

    # -- internals --------------------------------------------------------------------------------------------

    def _on_setup(self, sender: str, call: str, body: CallSignal, source: Address, now: float) -> None:
        entry = self._calls.get(call)
        if entry is not None:
            if entry.machine.peer == sender and entry.answer is not None:
                self._send(entry.answer, entry.peer_signal, now)  # our answer was lost: again
            return
        if self.current() is not None:
            self._send(CallSignal(body.call_id, REJECT, REASON_CODES.index("busy"), sender), source, now)
            return
        try:
            received = receive_pck_message(
                body.imessage,
                callee=self.held_keys(),
                caller_uri=sender,
                trusted_kms=self.trusted_kms,
                now=now,
                replay_cache=self._pck_replay,
            )
        except MikeyError as exc:
            self._refused.append(f"call from {sender} refused: its PCK I_MESSAGE: {exc}")
            self._send(CallSignal(body.call_id, REJECT, REASON_CODES.index("refused"), sender), source, now)
            return
        commencement = MANUAL if body.code == 1 else AUTOMATIC
        offer = CallOffer(call, sender, commencement, body.imessage)
        machine = PrivateCall.incoming_call(offer, now, timers=self.timers)
        self._calls[call] = _Call(machine, source, received.key, peer_media_port=body.media_port)
        machine.key_accepted(now)
        self._pump(call, now)

    def _user(self, call: str | None, act: Callable[[PrivateCall], bool], now: float) -> bool:
        entry = self._calls.get(call) if call else None
        if entry is None or call is None or not act(entry.machine):
            return False
        self._pump(call, now)
        return True

    def _pump(self, call: str, now: float) -> None:
        entry = self._calls.get(call)
        if entry is None:
            return
        machine = entry.machine
        call_id = bytes.fromhex(call[len("call:") :])
        for message in machine.outgoing():
            signal = self._signal(call_id, machine, message)
            if signal is None:
                continue
            if signal.step == SETUP:
                entry.setup = signal
            elif signal.step in (RINGING, ACCEPT, REJECT) and not machine.caller:
                entry.answer = signal
            self._send(signal, entry.peer_signal, now)
            if signal.step == END:
                self._send(signal, entry.peer_signal, now)  # twice: no answer is awaited
            if signal.step == ACCEPT:  # the callee is connected as soon as it accepts: no server to wait for
                relay = {"host": entry.peer_signal[0], "port": entry.peer_media_port}
                machine.receive(CallConnected(call, machine.peer, relay), now)
        for event in machine.events():
            if event.kind == "connected" and entry.key is not None:
                media = (entry.peer_signal[0], entry.peer_media_port)
                self._media.append(CallMedia(call, machine.peer, entry.key, machine.caller, media))
            self._events.append(event)
        if machine.ended:
            if not machine.caller and entry.answer is not None and entry.answer.step == REJECT:
                if entry.linger_until is None:  # keep answering SETUP copies with the REJECT a while
                    entry.linger_until = now + LINGER
                if now < entry.linger_until:
                    return
            del self._calls[call]

    def _signal(self, call_id: bytes, machine: PrivateCall, message: CallMessage) -> CallSignal | None:
        peer = machine.peer
        if isinstance(message, CallSetup):
            code = 1 if message.commencement == MANUAL else 0
            return CallSignal(call_id, SETUP, code, peer, self.media_port, message.imessage)
        if isinstance(message, CallRinging):
            return CallSignal(call_id, RINGING, 0, peer)
        if isinstance(message, CallAccept):
            return CallSignal(call_id, ACCEPT, 0, peer, self.media_port)
        if isinstance(message, CallReject):
            return CallSignal(call_id, REJECT, _code(message.reason), peer)
        if isinstance(message, CallEnd):
            return CallSignal(call_id, END, _code(message.reason), peer)
        return None

    def _send(self, body: CallSignal, address: Address, now: float) -> None:
        self._datagrams.append((seal(self.keys_at(now), body, now), address))


def _code(reason: str) -> int:
    return REASON_CODES.index(reason) if reason in REASON_CODES else 0
