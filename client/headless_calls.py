"""``ptt-headless`` script steps for private calls (issue 16):

``call URI [manual]`` (call, wait until connected or ended; connected: the call is the runner's "group", so
``talk``/``send``/``request``/``release`` work on it), ``wait-call [SECONDS]`` (until a call comes in; an
automatic one until it is connected, then it is the runner's group), ``answer`` (accept the ringing call, wait
until connected), ``reject``, ``hangup``, ``wait-ended [SECONDS]`` (until the current call is over). The report's
``calls`` lists every call event (incoming, ringing, connected, ended with its reason) and ``call_capture`` the
first raw SRTP datagrams of each call and its PCK I_MESSAGE (hex), for tests that try to decrypt them.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer, task

from ptt.privatecall.machine import CallEvent, CallState

CALL_STEPS = frozenset({"call", "wait-call", "answer", "reject", "hangup", "wait-ended"})
WAIT_LIMIT = 45.0


class CallSteps:
    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.session = runner.session
        self.events: list[dict[str, Any]] = []
        self.capture: dict[str, dict[str, Any]] = {}
        self.session.calls.listener = self._event

    def _event(self, event: CallEvent) -> None:
        self.events.append({"kind": event.kind, "call": event.call, "peer": event.peer, "reason": event.reason})
        calls = self.session.calls
        if event.kind == "ended":
            entry = self.capture.setdefault(event.call, {})
            entry["offer"] = calls.offers.get(event.call, b"").hex()
        elif event.kind == "connected":
            self.capture.setdefault(event.call, {})

    def _keep_capture(self) -> None:
        calls = self.session.calls
        for call in list(calls.calls):
            packets = calls.captured(call)
            if packets:
                entry = self.capture.setdefault(call, {})
                entry["packets"] = [p.hex() for p in packets]
                entry["offer"] = calls.offers.get(call, b"").hex()

    @defer.inlineCallbacks
    def _until(self, done: Any, seconds: float = WAIT_LIMIT) -> Any:
        deadline = time.monotonic() + seconds
        while not done() and time.monotonic() < deadline:
            self._keep_capture()
            yield task.deferLater(self.runner.reactor, 0.05, lambda: None)
        self._keep_capture()

    def _kinds(self, call: str | None) -> list[str]:
        return [e["kind"] for e in self.events if e["call"] == call]

    @defer.inlineCallbacks
    def run(self, word: str, arg: str) -> Any:
        calls = self.session.calls
        if word == "call":
            uri, _, mode = arg.partition(" ")
            call = yield calls.call(uri.strip(), manual=mode.strip() == "manual")
            yield self._until(lambda: {"connected", "ended"} & set(self._kinds(call)))
            if "connected" in self._kinds(call):
                self.runner.group = call
                yield self._until(lambda: self._joined(call), 10.0)
        elif word == "wait-call":
            seconds = float(arg) if arg else WAIT_LIMIT
            yield self._until(lambda: any(e["kind"] == "incoming" for e in self.events), seconds)
            incoming = [e for e in self.events if e["kind"] == "incoming"]
            if incoming and incoming[-1]["reason"] == "automatic":
                call = incoming[-1]["call"]
                yield self._until(lambda: {"connected", "ended"} & set(self._kinds(call)), 15.0)
                if "connected" in self._kinds(call):
                    self.runner.group = call
                    yield self._until(lambda: self._joined(call), 10.0)
        elif word == "answer":
            call = calls.current(CallState.RINGING)
            if call is not None and calls.accept(call):
                yield self._until(lambda: {"connected", "ended"} & set(self._kinds(call)), 15.0)
                if "connected" in self._kinds(call):
                    self.runner.group = call
                    yield self._until(lambda: self._joined(call), 10.0)
        elif word == "reject":
            calls.reject()
        elif word == "hangup":
            self._keep_capture()
            calls.hang_up()
        elif word == "wait-ended":
            call = calls.current()
            seconds = float(arg) if arg else WAIT_LIMIT
            if call is not None:
                yield self._until(lambda: "ended" in self._kinds(call), seconds)

    def _joined(self, call: str) -> bool:
        state = self.session.groups.get(call)
        return state is not None and state.participant is not None and state.relay is not None

    def report(self) -> dict[str, Any]:
        self._keep_capture()
        return {"calls": self.events, "call_capture": self.capture}
