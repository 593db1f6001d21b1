"""``ptt-client talk``: the field user's terminal client with real audio devices.

Keys: SPACE held to talk (terminals report no key-up: the end of the key's auto-repeat is taken as the release),
or tapped to start and tapped again to stop; 1-9 select the group to talk in, q quit; e emergency, p imminent
peril (again: cancel), b broadcast (``client.app_emergency``). The status line shows the
connection, the selected group, the floor state, who is talking, the key period and when keys expire, and the
microphone level. ``--script`` drives the same client without a keyboard (tests, automation, benchmarks): steps
``wait S``, ``talk S``, ``select GROUP``, ``emergency-talk S``, ``call URI``, ``quit``… (``client.app_script``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import termios
import time
import tty
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from twisted.internet import defer, stdio, task

from client import app_emergency
from client.app_keys import Keys
from client.app_script import run_script
from client.audio import AudioEngine
from client.errors import Exit, UserError, explain
from client.keystore import Keystore
from client.keystore_watch import KeyUse, watch_session
from client.session import PttSession, ServerInfo
from client.voice import Voice
from ptt.floor.events import FloorEvent, FloorEventKind
from ptt.ts33180 import period_bounds

log = logging.getLogger("ptt.client.app")

EVENT_LOG_LINES = 200


class TalkSession(Protocol):
    """What the terminal client needs of a session: on-network (``PttSession``) or ad-hoc (``AdhocSession``)."""

    uri: str
    keystore: Keystore
    key_use: KeyUse
    floor_listener: Callable[[str, FloorEvent], None]
    event_listener: Callable[[dict[str, Any]], None]

    @property
    def groups(self) -> Mapping[str, Any]: ...  # each with .name, .talker, .floor (a word), .talk_limit and .keys

    @property
    def connected(self) -> bool: ...

    @property
    def stats(self) -> Mapping[str, int]: ...

    def request_floor(self, group: str, *, priority: int | None = None, indicator: int | None = None) -> None: ...

    def release_floor(self, group: str) -> None: ...


class Client:
    def __init__(self, reactor: Any, session: TalkSession, voice: Voice, groups: list[str], *, quiet: bool) -> None:
        self.reactor = reactor
        self.session = session
        self.voice = voice
        self.groups = groups
        self.selected = groups[0] if groups else ""  # ad-hoc: groups appear when keyed
        self.quiet = quiet
        self.want_talk = False
        self.floor_log: list[dict[str, Any]] = []
        self.presses: deque[float] = deque(maxlen=1000)  # time.time() of the last PTT presses asking for the floor
        self.marks: deque[dict[str, Any]] = deque(maxlen=1000)  # times of some script steps (client.app_script)
        self.releases: deque[float] = deque(maxlen=1000)  # and of the releases
        self.events: deque[str] = deque(maxlen=EVENT_LOG_LINES)  # the event log, newest last ("HH:MM:SS text")
        self.on_note: Callable[[str], None] | None = None  # --plain: each event as a line
        self.on_tick: Callable[[], None] | None = None  # the terminal UI redraws
        self._message = ""
        self._connected = False
        self.ptt_label = "SPACE"
        self.call_ui: Any = None  # private calls (client.call_app.CallUi), on-network only
        self.message_ui: Any = None  # voice messages (client.message_ui.MessageUi), on-network only
        session.floor_listener = self._floor
        session.event_listener = self._event
        if hasattr(session, "alert_listener"):  # emergency alerts (client.app_emergency)
            session.alert_listener = lambda group, alert: app_emergency.announce(self, group, alert)
        self._status = task.LoopingCall(self.tick)
        self._status.clock = reactor

    # --- the event log ---------------------------------------------------------------------------------------------

    @property
    def message(self) -> str:
        """The latest message (floor, alerts, calls); every new one also enters the event log."""
        return self._message

    @message.setter
    def message(self, text: str) -> None:
        if text and text != self._message:
            self.note(text)
        self._message = text

    def note(self, text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        self.events.append(line)
        log.info("%s", text)
        if self.on_note is not None:
            self.on_note(line)

    def group_label(self, group: str) -> str:
        state = self.session.groups.get(group)
        return (state.name if state is not None and state.name else "") or group

    # --- floor ---------------------------------------------------------------------------------------------------

    def press(self) -> None:
        """PTT: request the floor of the selected group (toggle: a second press releases)."""
        if self.want_talk:
            self.release()
            return
        if self.selected not in self.session.groups:
            self.message = "no group to talk in yet"
            return
        self.want_talk = True
        self.presses.append(time.time())
        self.session.request_floor(self.selected)
        self.message = "requesting the floor…"

    def mark(self, step: str) -> None:
        """Note when a step happened (``time.time()``), for the report's ``marks``."""
        self.marks.append({"step": step, "t": round(time.time(), 4)})

    def press_down(self) -> None:
        """A PTT button pressed (it reports the release too: no toggling)."""
        if not self.want_talk:
            self.press()

    def press_up(self) -> None:
        if self.want_talk:
            self.release()

    def release(self) -> None:
        if self.want_talk:
            self.releases.append(time.time())
        self.want_talk = False
        self.voice.stop_talking()
        if self.selected in self.session.groups:
            self.session.release_floor(self.selected)
        self.message = ""

    def _floor(self, group: str, event: FloorEvent) -> None:
        # "subtype" is the older name of "kind" in the report (benchmarks read it); GRANTED and TAKEN are the same
        kind = event.kind.name
        entry = {"group": group, "kind": kind, "subtype": kind, "party": event.talker, "t": round(time.time(), 4)}
        self.floor_log.append(entry)
        self._note_floor(group, event)
        if group != self.selected:
            return
        if event.kind == FloorEventKind.GRANTED and self.want_talk:
            self.voice.start_talking(group)
            state = self.session.groups.get(group)
            limit = state.talk_limit if state is not None else None
            self.message = f"TALKING (max {limit or '?'} s)"
        elif event.kind == FloorEventKind.DENIED:
            self.want_talk = False
            self.message = f"floor denied {event.text}".strip()
        elif event.kind in (FloorEventKind.REVOKED, FloorEventKind.STOP_TALKING):
            # the floor machine has released the floor already: only the microphone must stop
            self.want_talk = False
            self.voice.stop_talking()
            self.message = f"floor revoked {event.text}".strip()
        elif event.kind in (FloorEventKind.QUEUED, FloorEventKind.QUEUE_POSITION) and event.position is not None:
            self.message = f"queued (position {event.position})"
        elif event.kind == FloorEventKind.QUEUE_CANCELLED and self.want_talk:
            self.message = "requesting the floor…"
        elif event.kind == FloorEventKind.STOP_WARNING:
            self.message = event.text or "stop talking soon"

    def _note_floor(self, group: str, event: FloorEvent) -> None:
        """Floor changes of every group in the event log (the selected group's also in the message)."""
        label = self.group_label(group)
        who = (event.talker or "").partition(":")[2] or event.talker or "someone"
        if event.kind == FloorEventKind.TAKEN and event.talker != self.session.uri:
            self.note(f"{label}: {who} talks")
        elif event.kind == FloorEventKind.IDLE:
            self.note(f"{label}: floor idle")
        elif event.kind == FloorEventKind.GRANTED and group != self.selected:
            self.note(f"{label}: floor granted")

    def _event(self, message: dict[str, Any]) -> None:
        if message.get("kind") == "dead":
            self.message = f"{message.get('uri')} lost"

    def tick(self) -> None:
        """Five times a second: connection changes into the event log, then the display."""
        if self.session.connected != self._connected:
            self._connected = self.session.connected
            self.note("connected" if self._connected else "connection lost: reconnecting…")
        if self.on_tick is not None:
            try:
                self.on_tick()
            except Exception:  # a drawing bug must not stop the ticks (nor the connection's notes)
                log.exception("the screen could not be drawn")
        elif not self.quiet and self.on_note is None:
            self.render()

    # --- display -------------------------------------------------------------------------------------------------

    def status_line(self) -> str:
        session = self.session
        state = session.groups.get(self.selected)
        connection = "connected" if session.connected else "reconnecting"
        label = f"{state.name} ({self.selected})" if state is not None and state.name else self.selected
        talker = (state.talker if state else None) or "-"
        floor = state.floor if state else "-"
        keys = session.keystore.current_keys(session.uri, self.reactor.seconds())
        if keys is not None:
            domain = keys.domain
            _, end = period_bounds(keys.period_no, domain.key_period, domain.key_period_offset)
            expiry = datetime.fromtimestamp(end, UTC).strftime("%Y-%m-%d")
            key_text = f"keys p{keys.period_no} until {expiry}"
        else:
            key_text = "NO KEYS"
        level = max(0, min(20, int((self.voice.engine.level + 60) / 3)))
        meter = "#" * level + "." * (20 - level)
        alerts = app_emergency.status_text(session, self.selected)
        return (
            (f"!! {alerts} !! " if alerts else "")
            + f"[{connection}] {label} floor:{floor} talking:{talker} | {key_text} | mic {meter} "
            f"| audio {self.voice.engine.status} | {self.message}"
            + (f" | {self.call_ui.status()}" if self.call_ui is not None and self.call_ui.status() else "")
        )

    def render(self) -> None:
        if not self.quiet:
            sys.stdout.write("\r\x1b[2K" + self.status_line()[:200])
            sys.stdout.flush()

    def start_display(self) -> None:
        if not self._status.running:
            self._status.start(0.2)

    def report(self) -> dict[str, Any]:
        return {
            "uri": self.session.uri,
            "heard": self.voice.heard,
            "frames": self.voice.frames,
            "floor": self.floor_log,
            "presses": list(self.presses),
            "marks": list(self.marks),
            "releases": list(self.releases),
            "burst_starts": list(self.voice.burst_starts),
            "stats": self.session.stats,
            "keys": {g: [k.gmk_id.hex() for k in s.keys] for g, s in self.session.groups.items()},
            **self.session.key_use.report(),
        }


def main(args: Any, keystore: Keystore, server: ServerInfo) -> int:
    """Entry from ``ptt-client talk`` (the keystore opened and the identity ``args.uri`` checked by ``client.cli``).

    The terminal UI (``client.tui``) when both ends are a terminal and neither ``--plain`` nor ``--script`` is
    given; otherwise lines: the events as they happen (``--plain``), or nothing but the start and errors."""
    wanted = [args.group, *(args.monitor or [])] if args.group else list(args.monitor or [])
    outcome: dict[str, Any] = {"code": 0}
    terminal = not args.script and sys.stdin.isatty()
    use_tui = terminal and not args.plain and sys.stdout.isatty()

    def run(reactor: Any) -> Any:
        session = PttSession(reactor, keystore, args.uri, server)
        engine = AudioEngine(input_device=args.input_device, output_device=args.output_device)
        voice = Voice(reactor, session, engine)
        client = Client(reactor, session, voice, list(wanted), quiet=args.quiet or not terminal)
        from client.call_app import CallUi

        client.call_ui = CallUi(client)  # incoming private calls: announced, a/r/e
        from client.message_ui import MessageUi

        client.message_ui = MessageUi(client)  # voice messages: announced, m plays
        done: defer.Deferred[None] = defer.Deferred()
        quit_ = lambda: done.callback(None) if not done.called else None  # noqa: E731
        button = ptt_button(reactor, client, args.ptt_key)

        @defer.inlineCallbacks
        def go() -> Any:
            old_tty = None
            screen = None
            watch = None
            try:
                if use_tui:
                    from client.tui import Tui

                    screen = Tui(reactor, client, Keys(client, quit_), args.log_file)
                    screen.start()
                elif terminal and not args.quiet:
                    client.on_note = lambda line: print(line, flush=True)
                client.start_display()
                client.note(f"connecting to {server.host}:{server.control_port} as {args.uri}…")
                yield session.start()
                watch = watch_session(session)  # renewed keys are picked up (issue 18)
                listed = [str(g["uri"]) for g in session.control.groups] if session.control is not None else []
                groups = client.groups or listed
                if not groups:
                    raise UserError(f"{args.uri} is in no group on this server", Exit.REFUSED)
                client.groups[:] = groups
                client.selected = client.selected or groups[0]
                for priority, group in enumerate(reversed(groups)):
                    voice.monitor(group, priority)  # the first group listed has the highest priority
                for group in groups:
                    yield session.join_when_possible(group)
                engine.start()
                if screen is None:
                    print(f"connected as {args.uri}; groups: {', '.join(groups)}", flush=True)
                client.note(f"joined {', '.join(client.group_label(g) for g in groups)}")
                if button is not None:
                    button.start()
                if terminal and screen is None:
                    print(f"{client.ptt_label} talk (hold, or tap to start/stop) · 1-9 select group · "
                          "e/p/b emergency/peril/broadcast · a/r/e call · m message · s status · q quit",
                          flush=True)  # fmt: skip
                if args.script:
                    yield run_script(reactor, client, args.script)
                elif screen is not None:
                    yield done
                elif terminal:
                    old_tty = termios.tcgetattr(sys.stdin.fileno())
                    tty.setcbreak(sys.stdin.fileno())
                    stdio.StandardIO(Keys(client, quit_))
                    yield done
                else:
                    yield done  # run until killed
            except Exception as exc:
                error = explain(exc)
                if screen is not None:
                    screen.stop()
                    screen = None
                print(f"ptt-client: {error}", file=sys.stderr, flush=True)
                outcome["code"] = int(error.code)
            finally:
                if screen is not None:
                    screen.stop()
                if old_tty is not None:
                    termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, old_tty)
                if button is not None:
                    button.stop()
                if args.report:
                    Path(args.report).write_text(json.dumps(client.report(), indent=1))
                engine.stop()
                if watch is not None:
                    watch.stop()
                session.stop()

        return go()

    with contextlib.suppress(SystemExit):
        task.react(run, [])
    return int(outcome["code"])


def ptt_button(reactor: Any, client: Client, spec: str | None) -> Any:
    """The PTT button of ``--ptt-key``: None for the terminal's SPACE, else a Linux input device's key."""
    if spec is None or spec.lower() in ("space", "terminal"):
        return None
    from client.buttons import ButtonWatch, parse_key_spec

    device, code = parse_key_spec(spec)
    client.ptt_label = spec
    return ButtonWatch(reactor, device, code, on_press=client.press_down, on_release=client.press_up)
