"""``ptt-client talk``: the field user's terminal client with real audio devices.

Keys: SPACE held to talk (terminals report no key-up: the end of the key's auto-repeat is taken as the release),
or tapped to start and tapped again to stop; 1-9 select the group to talk in, q quit; e emergency, p imminent
peril (again: cancel), b broadcast (``client.app_emergency``). The status line shows the
connection, the selected group, the floor state, who is talking, the key period and when keys expire, and the
microphone level. ``--script`` drives the same client without a keyboard (tests, automation, benchmarks): steps
``wait S``, ``talk S``, ``select GROUP``, ``emergency-talk S``, ``call URI``, ``quit``… (``client.app_script``).
"""

from __future__ import annotations

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
from twisted.protocols.basic import LineReceiver

from client import app_emergency
from client.app_script import run_script
from client.audio import AudioEngine
from client.keystore import Keystore
from client.session import PttSession, ServerInfo
from client.voice import Voice
from ptt.floor.events import FloorEvent, FloorEventKind
from ptt.ts33180 import period_bounds

log = logging.getLogger("ptt.client.app")


class TalkSession(Protocol):
    """What the terminal client needs of a session: on-network (``PttSession``) or ad-hoc (``AdhocSession``)."""

    uri: str
    keystore: Keystore
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
        self.message = ""
        self.call_ui: Any = None  # private calls (client.call_app.CallUi), on-network only
        session.floor_listener = self._floor
        session.event_listener = self._event
        if hasattr(session, "alert_listener"):  # emergency alerts (client.app_emergency)
            session.alert_listener = lambda group, alert: app_emergency.announce(self, group, alert)
        self._status = task.LoopingCall(self.render)
        self._status.clock = reactor

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

    def release(self) -> None:
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

    def _event(self, message: dict[str, Any]) -> None:
        if message.get("kind") == "dead":
            self.message = f"{message.get('uri')} lost"

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
        if not self.quiet:
            self._status.start(0.2)

    def report(self) -> dict[str, Any]:
        return {
            "uri": self.session.uri,
            "heard": self.voice.heard,
            "frames": self.voice.frames,
            "floor": self.floor_log,
            "presses": list(self.presses),
            "marks": list(self.marks),
            "burst_starts": list(self.voice.burst_starts),
            "stats": self.session.stats,
            "keys": {g: [k.gmk_id.hex() for k in s.keys] for g, s in self.session.groups.items()},
        }


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
    """Single key presses from a terminal in cbreak mode."""

    delimiter = b"\x00never"

    def __init__(self, client: Client, quit: Any) -> None:
        self.client = client
        self.quit = quit
        self.ptt = PttKey(client.reactor, client)

    def dataReceived(self, data: bytes) -> None:
        for key in data.decode("utf-8", "ignore"):
            if key == " ":
                self.ptt.space()
            elif key in "123456789" and int(key) <= len(self.client.groups):
                self.client.selected = self.client.groups[int(key) - 1]
            elif key in "qQ":
                self.quit()
            elif key in app_emergency.KEYS:
                app_emergency.key(self.client, key)
            elif self.client.call_ui is not None:
                self.client.call_ui.key(key)


def main(args: Any) -> int:
    """Entry from ``ptt-client talk`` (args: keystore, passphrase, uri, server_info, group, monitor, devices…)."""
    keystore = Keystore.open(Path(args.keystore), args.passphrase)
    server = ServerInfo.from_json(Path(args.server_info).read_text())
    groups = [args.group, *(args.monitor or [])]
    outcome: dict[str, Any] = {"code": 0}
    interactive = not args.script and sys.stdin.isatty()

    def run(reactor: Any) -> Any:
        session = PttSession(reactor, keystore, args.uri, server)
        engine = AudioEngine(input_device=args.input_device, output_device=args.output_device)
        voice = Voice(reactor, session, engine)
        for priority, group in enumerate(reversed(groups)):
            voice.monitor(group, priority)  # the first group listed has the highest priority
        client = Client(reactor, session, voice, groups, quiet=args.quiet or not interactive)
        from client.call_app import CallUi

        client.call_ui = CallUi(client)  # incoming private calls: announced, a/r/e
        done: defer.Deferred[None] = defer.Deferred()

        @defer.inlineCallbacks
        def go() -> Any:
            old_tty = None
            try:
                yield session.start()
                for group in groups:
                    yield session.join_when_possible(group)
                engine.start()
                print(f"connected as {args.uri}; groups: {', '.join(groups)}", flush=True)
                if interactive:
                    print(
                        "SPACE hold to talk (or tap to start/stop) · 1-9 select group · a/r/e call · q quit", flush=True
                    )
                client.start_display()  # after the last full line: the status line rewrites itself in place
                if args.script:
                    yield run_script(reactor, client, args.script)
                elif interactive:
                    old_tty = termios.tcgetattr(sys.stdin.fileno())
                    tty.setcbreak(sys.stdin.fileno())
                    stdio.StandardIO(Keys(client, lambda: done.callback(None) if not done.called else None))
                    yield done
                else:
                    yield done  # run until killed
            except Exception as exc:
                print(f"ptt-client: {exc}", file=sys.stderr, flush=True)
                outcome["code"] = 2
            finally:
                if old_tty is not None:
                    termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, old_tty)
                if args.report:
                    Path(args.report).write_text(json.dumps(client.report(), indent=1))
                engine.stop()
                session.stop()
                print(flush=True)

        return go()

    import contextlib

    with contextlib.suppress(SystemExit):
        task.react(run, [])
    return int(outcome["code"])
