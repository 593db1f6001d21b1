"""The talk screen on a terminal (curses): ``client.screen`` lays it out, this draws it, reads keys and follows
resizes.

While the screen is up nothing else may write to the terminal: Python's logging goes to the log file, and so does
file descriptor 2 (PortAudio and ALSA print underruns there from C), restored when the screen closes. Keys are
read on the reactor (the terminal's file descriptor is watched; curses decodes them); a resize shows as
``KEY_RESIZE`` or as a changed size at the next redraw (five times a second).
"""

from __future__ import annotations

import contextlib
import curses
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from client import app_emergency
from client.screen import GroupRow, ScreenView, layout
from ptt.ts33180 import period_bounds

log = logging.getLogger("ptt.client.tui")

KEYS_WARN_AHEAD = 7 * 86400.0
"""Keys that run out sooner than this (or than one key period, if shorter) are warned of in the header."""


def default_log_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ptt" / "client.log"


class LogToFile:
    """Logging and file descriptor 2 into ``path`` until ``restore``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 - closed in restore()
        sys.stderr.flush()
        self._saved_fd = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        root = logging.getLogger()
        self._saved_handlers = root.handlers[:]
        self._saved_level = root.level
        handler = logging.StreamHandler(self._file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        root.handlers = [handler]
        root.setLevel(min(root.level, logging.INFO) if root.level else logging.INFO)

    def restore(self) -> None:
        root = logging.getLogger()
        root.handlers = self._saved_handlers
        root.setLevel(self._saved_level)
        sys.stderr.flush()
        os.dup2(self._saved_fd, 2)
        os.close(self._saved_fd)
        self._file.close()


def keys_text(client: Any, now: float) -> tuple[str, str]:
    """(until when the keys last, a warning or ""): the end of the last key period held for us."""
    keystore, uri = client.session.keystore, client.session.uri
    periods = keystore.periods(uri)
    if keystore.enrolment is None or not periods:
        return "NONE", "no keys: run 'ptt-client provision'"
    domain = keystore.enrolment.certificate.domain()
    _, end = period_bounds(periods[-1], domain.key_period, domain.key_period_offset)
    left = end - now
    until = datetime.fromtimestamp(end).strftime("%Y-%m-%d %H:%M")
    if left <= 0:
        return f"EXPIRED {until}", "the keys have expired: run 'ptt-client provision'"
    if left < min(KEYS_WARN_AHEAD, domain.key_period):
        return f"to {until}", f"keys run out in {_duration(left)}: run 'ptt-client provision' (or --watch)"
    return f"to {until}", ""


def _duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.0f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.0f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def _who(talker: str | None, me: str) -> str:
    """Who talks, briefly: "you", a user of our own domain by name, anyone else by URI."""
    if not talker:
        return ""
    if talker == me:
        return "you"
    name, _, domain = talker.partition(":")[2].partition("@")
    return name if domain and domain == me.partition("@")[2] else talker


def snapshot(client: Any, ptt_label: str, help_shown: bool) -> ScreenView:
    """What the screen shows, read from the running client."""
    session, now = client.session, time.time()
    rows = []
    shown = list(client.groups)
    if client.selected and client.selected not in shown:
        shown.append(client.selected)  # a private call in progress
    for index, group in enumerate(shown, 1):
        state = session.groups.get(group)
        rows.append(
            GroupRow(
                number=index if group in client.groups and index <= 9 else 0,
                name=client.group_label(group) if group in client.groups else "private call",
                selected=group == client.selected,
                floor=state.floor if state is not None else "-",
                talker=_who(state.talker if state is not None else None, session.uri),
                alert=app_emergency.status_text(session, group),
                talking=group == client.selected and client.want_talk and client.voice.talking,
            )
        )
    keys, warning = keys_text(client, now)
    engine = client.voice.engine
    devices = f"in: {engine.input_device or 'default'} · out: {engine.output_device or 'default'}"
    extra = [client.call_ui.status()] if client.call_ui is not None and client.call_ui.status() else []
    return ScreenView(
        identity=session.uri,
        connected=session.connected,
        keys=keys,
        keys_warning=warning,
        clock=datetime.fromtimestamp(now, UTC).astimezone().strftime("%H:%M:%S"),
        groups=rows,
        mic_level_db=float(engine.level),
        audio=str(engine.status),
        devices=devices,
        ptt_key=ptt_label,
        message=client.message,
        events=list(client.events),
        help=help_shown,
        extra=extra,
    )


STYLES = {"header": 1, "warn": 2, "alert": 3, "selected": 4, "talking": 5, "dim": 6, "rule": 6}


class Tui:
    """The curses screen of one running client."""

    def __init__(self, reactor: Any, client: Any, keys: Any, log_file: str | None) -> None:
        self.reactor = reactor
        self.client = client
        self.keys = keys
        self.log_path = Path(log_file).expanduser() if log_file else default_log_file()
        self.help = False
        self._screen: Any = None
        self._logs: LogToFile | None = None
        self._size = (0, 0)
        self._attrs: dict[str, int] = {}

    # --- start and stop ------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._logs = LogToFile(self.log_path)
        self._screen = curses.initscr()
        curses.noecho()
        curses.cbreak()
        self._screen.keypad(True)
        self._screen.nodelay(True)
        with contextlib.suppress(curses.error):
            curses.curs_set(0)
        self._colours()
        self._size = self._screen.getmaxyx()
        self.reactor.addReader(self)
        self.client.on_tick = self.draw
        self.client.note(f"logs go to {self.log_path}")

    def stop(self) -> None:
        if self._screen is None:
            return
        self.reactor.removeReader(self)
        self.client.on_tick = None
        self._screen.keypad(False)
        curses.nocbreak()
        curses.echo()
        curses.endwin()
        self._screen = None
        if self._logs is not None:
            self._logs.restore()
            self._logs = None

    def _colours(self) -> None:
        self._attrs = {name: curses.A_NORMAL for name in STYLES}
        self._attrs["header"] = curses.A_REVERSE
        self._attrs["warn"] = self._attrs["alert"] = curses.A_BOLD
        self._attrs["selected"] = curses.A_BOLD
        self._attrs["talking"] = curses.A_BOLD | curses.A_REVERSE
        self._attrs["dim"] = self._attrs["rule"] = curses.A_DIM
        if not curses.has_colors():
            return
        curses.start_color()
        with_default = 0
        try:
            curses.use_default_colors()
            with_default = -1
        except curses.error:
            pass
        pairs = {"warn": curses.COLOR_YELLOW, "alert": curses.COLOR_RED, "talking": curses.COLOR_GREEN}
        for name, colour in pairs.items():
            curses.init_pair(STYLES[name], colour, with_default)
            self._attrs[name] |= curses.color_pair(STYLES[name])

    # --- the reactor's reader (IReadDescriptor) ------------------------------------------------------------------

    def fileno(self) -> int:
        return sys.stdin.fileno()

    def logPrefix(self) -> str:
        return "tui"

    def connectionLost(self, reason: Any) -> None:
        pass

    def doRead(self) -> None:
        self._read_keys()

    # --- keys and drawing -----------------------------------------------------------------------------------------

    def _read_keys(self) -> None:
        if self._screen is None:
            return
        while True:
            try:
                code = self._screen.getch()
            except curses.error:
                return
            if code == -1:
                return
            if code == curses.KEY_RESIZE:
                self._resize()
            elif 0 <= code < 256:
                self._key(chr(code))

    def _key(self, key: str) -> None:
        if self.help:  # any key closes the help
            self.help = False
        elif key == "?":
            self.help = True
        else:
            self.keys.key(key)
        self.draw()

    def _resize(self, *, tell_curses: bool = False) -> None:
        """Take the terminal's new size: curses has taken it already when it returned KEY_RESIZE; when we saw it
        first, ``tell_curses`` (resizeterm queues a KEY_RESIZE of its own, handled without another resizeterm)."""
        if self._screen is None:
            return
        if tell_curses:
            rows, columns = os.get_terminal_size(sys.stdout.fileno())
            curses.resizeterm(rows, columns)
        self._size = self._screen.getmaxyx()
        self._screen.clear()

    def draw(self) -> None:
        if self._screen is None:
            return
        self._read_keys()  # a resize waits in curses' queue until getch: pick it up now
        try:
            actual = os.get_terminal_size(sys.stdout.fileno())
        except OSError:
            actual = None
        if actual is not None and (actual.lines, actual.columns) != self._size:
            self._resize(tell_curses=True)
        height, width = self._size
        view = snapshot(self.client, self.client.ptt_label, self.help)
        for row, (text, style) in enumerate(layout(view, width, height)):
            # the bottom-right cell cannot be written without scrolling: curses raises after writing it
            with contextlib.suppress(curses.error):
                self._screen.addstr(row, 0, text, self._attrs.get(style, curses.A_NORMAL))
        self._screen.refresh()
