"""The Twisted shell of the server's private calls: :class:`ptt.privatecall.router.PrivateCallRouter` wired to the
control channel (pushes to the parties), its one timer (the answer timeout) and the call shell's flush (the
two-party call's floor messages and events). Refusals are logged about once a second per user.

With several nodes a call lives at its **home node**, the one the caller is connected to: the router, the
two-party call and the relay binding of both parties are there. A callee connected to another node is found in
the shared presence at set-up; the home node's messages for it go out as a ``UserPush`` (sent by the node it is
connected to), and that node keeps the call's home (:attr:`PrivateCallService.remote_calls`) to forward the
callee's answers there (``CallForward``) and its ``join`` of the call (as a join of a group served elsewhere)."""

from __future__ import annotations

import logging
from typing import Any

from ptt.privatecall.messages import is_call_id
from ptt.privatecall.router import MAX_CALLS, SETUP_BURST, SETUP_RATE, PrivateCallRouter
from ptt.ratelimit import BucketTable

log = logging.getLogger("ptt.server.privatecalls")

_FROM_HOME = frozenset({"call_offer", "call_connected", "call_ended"})
_TO_HOME = frozenset({"call_ringing", "call_accept", "call_reject", "call_end"})


class PrivateCallService:
    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.router = PrivateCallRouter(shell.call, shell.domain(), self._reachable)
        self._timer: Any = None
        self._present_elsewhere: frozenset[str] = frozenset()  # during one set-up: the callee, online at a node
        self._lookups: BucketTable[str] = BucketTable(SETUP_RATE, SETUP_BURST)  # presence reads per caller
        self.remote_calls: dict[str, tuple[str, str]] = {}
        """Call ID -> (home node, callee connected here): calls set up at another node for a user here."""

    def _online(self, uri: str) -> bool:
        control = self.shell.control
        return control is not None and bool(control.online(uri))

    def _reachable(self, uri: str) -> bool:
        return self._online(uri) or uri in self._present_elsewhere

    def home_of(self, call: str, uri: str) -> str | None:
        """The node serving ``call`` if it is another node's call of ``uri`` (connected here)."""
        home = self.remote_calls.get(call)
        return home[0] if home is not None and home[1] == uri else None

    def handle(self, uri: str, message: dict[str, Any], now: float) -> None:
        call, kind = message.get("call"), message.get("type")
        home = self.home_of(call, uri) if isinstance(call, str) else None
        if home is not None and kind in _TO_HOME:
            self.shell.cluster.forward_call_message(home, uri, message)
            if kind in ("call_reject", "call_end"):
                del self.remote_calls[str(call)]
                self.shell.cluster.leave(uri, call, now)
            return
        callee = message.get("to")
        cluster = self.shell.cluster
        if kind == "call_setup" and cluster is not None and isinstance(callee, str) and not self._online(callee):
            if not self._lookups.take(uri, now):
                self._handle(uri, message, now)  # the router's own rate limit answers it
                return
            d = cluster.link.present([callee])
            d.addCallback(lambda present: self._set_up(uri, message, frozenset(present) & {callee}))
            d.addErrback(lambda failure: log.error("private call set-up failed: %s", failure.getErrorMessage()))
            return
        self._handle(uri, message, now)

    def _set_up(self, uri: str, message: dict[str, Any], present: frozenset[str]) -> None:
        self._present_elsewhere = present
        try:
            self._handle(uri, message, self.shell.reactor.seconds())
        finally:
            self._present_elsewhere = frozenset()

    def _handle(self, uri: str, message: dict[str, Any], now: float) -> None:
        self.router.handle(uri, message, now)
        refused = self.router.refused()
        for who, why in refused:
            self.shell._log(who, "private call message from %s refused: %s", who, why)
        if message["type"] == "call_setup" and not refused:
            log.info("private call %s: %s calls %s", message.get("call"), uri, message.get("to"))
        self.flush()

    def forwarded(self, node: str, member: str, message: dict[str, Any], now: float) -> None:
        """A callee's answer forwarded by the node it is connected to (this node is the call's home)."""
        call = message.get("call")
        if message.get("type") not in _TO_HOME or not isinstance(call, str) or not self.router.is_call(call):
            log.warning("a private call message of %s forwarded by %s dropped", member, node)
            return
        self._handle(member, message, now)

    def pushed_from_node(self, node: str, member: str, message: dict[str, Any]) -> None:
        """The home node's message for a callee connected here: sent to its sessions; the call's home kept."""
        call, kind = message.get("call"), message.get("type")
        if kind not in _FROM_HOME or not isinstance(call, str) or not is_call_id(call):
            log.warning("a pushed private call message for %s from %s dropped: malformed", member, node)
            return
        if kind == "call_offer":
            if not self._online(member) or (call not in self.remote_calls and len(self.remote_calls) >= MAX_CALLS):
                return  # not connected here (the push went to every node), or too many
            self.remote_calls[call] = (node, member)
        elif self.remote_calls.get(call) != (node, member):
            return
        if kind == "call_ended":
            del self.remote_calls[call]
            self.shell.cluster.leave(member, call, self.shell.reactor.seconds())
        control = self.shell.control
        if control is not None:
            control.push(member, message)

    def disconnected(self, uri: str, now: float) -> None:
        self.router.disconnected(uri, now)
        for call, (home, member) in list(self.remote_calls.items()):
            if member == uri:
                del self.remote_calls[call]
                ended = {"type": "call_end", "call": call, "reason": "peer-lost"}
                self.shell.cluster.forward_call_message(home, uri, ended)
        self.flush()

    def flush(self) -> None:
        control, cluster = self.shell.control, self.shell.cluster
        for uri, message in self.router.pushes():
            if message["type"] == "call_ended":
                log.info("private call %s ended for %s: %s", message["call"], uri, message["reason"])
            if control is not None and not control.push(uri, message) and cluster is not None:
                cluster.push_elsewhere(uri, message)  # a callee connected to another node
        self.shell.flush()
        self._arm()

    def _arm(self) -> None:
        reactor = self.shell.reactor
        deadline = self.router.next_deadline()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if deadline is not None:
            self._timer = reactor.callLater(max(0.0, deadline - reactor.seconds()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.router.tick(self.shell.reactor.seconds())
        self.flush()
