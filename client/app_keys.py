"""The talk client's keys (a part of ``client.app``): SPACE as the PTT key of a terminal, and the single-key commands.

Keys: SPACE talk, 1-9 select the group, q quit, s the whole status (``--plain``), e/p/b emergency, imminent peril
and broadcast (``client.app_emergency``), a/r/e private calls (``client.call_app``; e ends a call in progress).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.protocols.basic import LineReceiver

from client import app_emergency

if TYPE_CHECKING:
    from client.app import Client

__all__ = ["Keys", "PttKey"]


class PttKey:
    """SPACE as the PTT key of a terminal, which reports presses and auto-repeats but never a key release.

    Tap: talk until the next tap. Hold: a held key auto-repeats (the first repeat 0.25-1 s after the press, then
    every 30-100 ms), so a SPACE within ``repeat_gap`` of the previous one marks a hold, and the burst ends
    ``release_after`` seconds after the last repeat: when the key is let go, as on a radio. (A second tap within
    ``repeat_gap`` counts as a short hold: it stops the burst too, a quarter second later.)
    """

    repeat_gap = 1.0
    release_after = 0.25

    def __init__(self, clock: Any, client: Client) -> None:
        self.clock = clock
        self.client = client
        self._last: float | None = None
        self._timer: Any = None

    @property
    def held(self) -> bool:
        return self._timer is not None and self._timer.active()

    def space(self) -> None:
        now = self.clock.seconds()
        repeat = self._last is not None and now - self._last <= self.repeat_gap
        self._last = now
        if not repeat:
            self.client.press()  # a tap: start, or stop what a tap started
        elif self.held:
            self._timer.reset(self.release_after)
        else:
            self._timer = self.clock.callLater(self.release_after, self._let_go)

    def _let_go(self) -> None:
        self._timer = None
        self._last = None
        if self.client.want_talk:  # not if the floor was denied or revoked meanwhile
            self.client.release()


class Keys(LineReceiver):
    """Single key presses from a terminal in cbreak mode (``--plain``; the terminal UI calls ``key`` itself)."""

    delimiter = b"\x00never"

    def __init__(self, client: Client, quit: Any) -> None:
        self.client = client
        self.quit = quit
        self.ptt = PttKey(client.reactor, client)

    def dataReceived(self, data: bytes) -> None:
        for key in data.decode("utf-8", "ignore"):
            self.key(key)

    def key(self, key: str) -> None:
        if key == " ":
            self.ptt.space()
        elif key in "123456789" and int(key) <= len(self.client.groups):
            self.client.selected = self.client.groups[int(key) - 1]
            self.client.note(f"talking in {self.client.group_label(self.client.selected)}")
        elif key in "qQ":
            self.quit()
        elif key in "sS" and self.client.on_note is not None:  # --plain: the whole status on demand
            self.client.on_note(self.client.status_line())
        elif key in "mM" and getattr(self.client, "message_ui", None) is not None:
            self.client.message_ui.key(key)  # play the oldest voice message waiting (client.message_ui)
        elif self.client.call_ui is not None and self.client.call_ui.in_call and key in "eE":
            self.client.call_ui.key(key)  # e ends the call in progress (not an emergency in it)
        elif key in app_emergency.KEYS:
            app_emergency.key(self.client, key)
        elif self.client.call_ui is not None:
            self.client.call_ui.key(key)
