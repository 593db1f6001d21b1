"""The console page's WebSocket: the dispatcher's live events and the console's own state out, the page's
commands and microphone in, the voice of the monitored groups out.

Text messages are JSON. Page → console: ``{op: monitor, group, on}``, ``{op: talkgroup, group}``, ``{op: press}``,
``{op: release}``, ``{op: revoke}`` (take the floor of the talk group at the dispatcher's pre-emptive priority and
give it back at once), ``{op: patch, a, b}`` and ``{op: unpatch}``. Console → page: the dispatcher API's events
as they come (``ptt.dispatchfeed``: snapshot, group, member, presence, talker, queue, alert), ``{type: console,
...}`` (who the console is, its groups, what it monitors, the talk group, the floor, the patch, the audio slots)
whenever it changes, and ``{type: upstream, connected}``.

Binary messages: page → console, one 20 ms frame of the microphone (960 samples, 16-bit little-endian, 48 kHz
mono); console → page, one slot octet (the group's number in ``slots``) and such a frame of that group's voice.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from twisted.python.failure import Failure

from client.console.media import ConsoleMedia
from ptt.floor.events import FloorEvent

__all__ = ["Bridge", "ConsoleState"]

log = logging.getLogger("ptt.console")

MAX_TEXT = 4096
MAX_REPLAYED = 10_000
"""Events kept since the last snapshot for pages that open later; beyond this the stream is opened again (a new
snapshot) rather than keep more."""


class ConsoleState:
    """What the console is doing, shared by every open page (usually one)."""

    def __init__(self, reactor: Any, session: Any, upstream: Any) -> None:
        self.reactor, self.session, self.upstream = reactor, session, upstream
        self.media = ConsoleMedia(reactor, session, self._frame)
        self.media.on_floor = self._floor
        self.pages: set[Bridge] = set()
        self.slots: dict[str, int] = {}
        self.upstream_connected = False
        self._last_snapshot: dict[str, Any] | None = None
        self._events: list[dict[str, Any]] = []  # since the last snapshot: replayed to a page that opens later

    # --- to the pages -----------------------------------------------------------------------------------------

    def event(self, event: dict[str, Any]) -> None:
        """From the dispatcher API's stream; ``at``: when it came (a page opened later logs it at its time)."""
        event["at"] = time.time()
        if event.get("type") == "snapshot":
            self._last_snapshot, self._events = event, []
        elif len(self._events) < MAX_REPLAYED:
            self._events.append(event)
        else:
            self.upstream.restart_events()
        text = json.dumps(event)
        for page in list(self.pages):
            page.send_text(text)

    def upstream_state(self, connected: bool) -> None:
        self.upstream_connected = connected
        self._broadcast({"type": "upstream", "connected": connected})

    def describe(self) -> dict[str, Any]:
        member_of = sorted(g for g in self.session.groups if not g.startswith("call:"))
        return {
            "type": "console",
            "uri": self.session.uri,
            "member_of": member_of,
            "monitored": sorted(self.media.listeners),
            "talkgroup": self.media.talk_group,
            "pressed": self.media.pressed,
            "floor": dict(self.media.floor),
            "patch": [self.media.patch.a, self.media.patch.b] if self.media.patch is not None else None,
            "slots": self.slots,
            "frames": dict(self.media.frames),
        }

    def changed(self) -> None:
        self._broadcast(self.describe())

    def _broadcast(self, message: dict[str, Any]) -> None:
        text = json.dumps(message)
        for page in list(self.pages):
            page.send_text(text)

    def _frame(self, group: str, pcm: bytes) -> None:
        slot = self.slots.get(group)
        if slot is None:
            return
        data = bytes([slot]) + pcm
        for page in list(self.pages):
            page.send_bytes(data)

    def _floor(self, group: str, event: FloorEvent) -> None:
        self.changed()

    def opened(self, page: Bridge) -> None:
        self.pages.add(page)
        page.send_text(json.dumps(self.describe()))
        page.send_text(json.dumps({"type": "upstream", "connected": self.upstream_connected}))
        if self._last_snapshot is not None:
            page.send_text(json.dumps(self._last_snapshot))
        for event in self._events:
            page.send_text(json.dumps(event))

    # --- from a page ------------------------------------------------------------------------------------------

    def command(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        group = message.get("group")
        media = self.media
        if op == "monitor" and isinstance(group, str):
            self._monitor(group, bool(message.get("on")))
        elif op == "talkgroup" and (group is None or isinstance(group, str)):
            if media.pressed:
                media.release()
            media.talk_group = group
            if group is not None:
                self._monitor(group, True)
        elif op == "press":
            media.press()
        elif op == "release":
            media.release()
        elif op == "revoke":
            self._revoke()
        elif op == "patch" and isinstance(message.get("a"), str) and isinstance(message.get("b"), str):
            a, b = message["a"], message["b"]
            if a != b and a in self.session.groups and b in self.session.groups:
                self._monitor(a, True)
                self._monitor(b, True)
                media.set_patch(a, b)
        elif op == "unpatch":
            media.set_patch(None, None)
        else:
            raise ValueError(f"unknown command {str(op)[:40]!r}")
        self.changed()

    def _monitor(self, group: str, on: bool) -> None:
        if group not in self.session.groups:
            raise ValueError(f"the console's identity is not a member of {group[:200]}")
        state = self.session.groups[group]
        if on:
            if group not in self.slots:
                self.slots[group] = next(n for n in range(256) if n not in self.slots.values())
            self.media.monitor(group)
            if not state.joined:
                d = self.session.join_when_possible(group)
                d.addCallback(lambda _: self.changed())
                d.addErrback(lambda failure: log.warning("join %s: %s", group, failure.getErrorMessage()))
        else:
            if self.media.talk_group == group:
                self.media.release()
                self.media.talk_group = None
            if self.media.patch is not None and group in (self.media.patch.a, self.media.patch.b):
                self.media.set_patch(None, None)
            self.media.unmonitor(group)
            self.slots.pop(group, None)
            if state.joined:
                self.session.leave(group)

    def _revoke(self) -> None:
        """Pre-empt the talker of the talk group (our dispatcher role's priority), then release at once."""
        media = self.media
        group = media.talk_group
        if group is None or media.pressed:
            return
        media.press()

        def give_back() -> None:
            if media.pressed and media.talk_group == group:
                if media.floor.get(group) != "granted":  # queued or denied: said, not silently dropped
                    self._tell_pages(
                        f"revoke in {group}: the floor was not granted ({media.floor.get(group) or 'no answer'}); "
                        "pre-empting a talker needs the dispatcher role and a higher priority than the talker's "
                        "in the group"
                    )
                media.release()
                self.changed()

        self.reactor.callLater(0.5, give_back)

    def _tell_pages(self, text: str) -> None:
        for page in list(self.pages):
            page.send_text(json.dumps({"type": "error", "error": text}))


class Bridge:
    """One page's WebSocket (twisted.web.websocket's protocol)."""

    def __init__(self, state: ConsoleState) -> None:
        self.state = state
        self.transport: Any = None

    def negotiationStarted(self, transport: Any) -> None:
        self.transport = transport

    def negotiationFinished(self) -> None:
        self.state.opened(self)

    def send_text(self, text: str) -> None:
        if self.transport is not None:
            self.transport.sendTextMessage(text)

    def send_bytes(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.sendBytesMessage(data)

    def textMessageReceived(self, message: str) -> None:
        try:
            if len(message) > MAX_TEXT:
                raise ValueError("command too long")
            command = json.loads(message)
            if not isinstance(command, dict):
                raise ValueError("a command is a JSON object")
            self.state.command(command)
        except (ValueError, KeyError) as exc:
            self.send_text(json.dumps({"type": "error", "error": str(exc)}))

    def bytesMessageReceived(self, data: bytes | bytearray) -> None:
        self.state.media.captured(bytes(data))

    def pongReceived(self, payload: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        self.state.pages.discard(self)
        self.transport = None
        if not self.state.pages:
            self.state.media.release()  # no page holds the button any more


class BridgeFactory:
    def __init__(self, state: ConsoleState) -> None:
        self.state = state

    def buildProtocol(self, request: Any) -> Bridge:
        return Bridge(self.state)
