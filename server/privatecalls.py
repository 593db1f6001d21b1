"""The Twisted shell of the server's private calls: :class:`ptt.privatecall.router.PrivateCallRouter` wired to the
control channel (pushes to the parties), its one timer (the answer timeout) and the call shell's flush (the
two-party call's floor messages and events). Refusals are logged about once a second per user."""

from __future__ import annotations

import logging
from typing import Any

from ptt.privatecall.router import PrivateCallRouter

log = logging.getLogger("ptt.server.privatecalls")


class PrivateCallService:
    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.router = PrivateCallRouter(shell.call, shell.domain(), self._online)
        self._timer: Any = None

    def _online(self, uri: str) -> bool:
        control = self.shell.control
        return control is not None and bool(control.online(uri))

    def handle(self, uri: str, message: dict[str, Any], now: float) -> None:
        self.router.handle(uri, message, now)
        refused = self.router.refused()
        for who, why in refused:
            self.shell._log(who, "private call message from %s refused: %s", who, why)
        if message["type"] == "call_setup" and not refused:
            log.info("private call %s: %s calls %s", message.get("call"), uri, message.get("to"))
        self.flush()

    def disconnected(self, uri: str, now: float) -> None:
        self.router.disconnected(uri, now)
        self.flush()

    def flush(self) -> None:
        control = self.shell.control
        for uri, message in self.router.pushes():
            if message["type"] == "call_ended":
                log.info("private call %s ended for %s: %s", message["call"], uri, message["reason"])
            if control is not None:
                control.push(uri, message)
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
