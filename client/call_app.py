"""Private calls in the terminal client (issue 16): ``ptt-client call sip:bob@example.org`` and incoming calls in
``ptt-client talk``.

``CallUi`` attaches to a running :class:`client.app.Client`: an incoming call is announced (a log line, the
terminal bell, the status line says who calls), ``a`` accepts and ``r`` rejects a manual-commencement call, ``e``
ends the current call; while a call is connected it is the selected "group" (SPACE talks in it, heard with the
highest priority) and the previous selection comes back when it ends. ``ptt-client call`` places one call and
quits when it is over (``--manual`` asks the callee to accept it; ``--script`` steps: ``wait S``, ``talk S``,
``hangup``, ``quit``). A callee who is not connected (``unreachable``) can be left a voice message instead
(deferred delivery): ``v`` records from the microphone, ``v`` again leaves it; ``--message-wav FILE`` leaves that
file without asking.
"""

from __future__ import annotations

import json
import logging
import sys
import termios
import tty
from pathlib import Path
from typing import Any

from twisted.internet import defer, stdio, task

from ptt.privatecall.machine import CallEvent

log = logging.getLogger("ptt.client.calls")

CALL_PRIORITY = 1000
"""A connected call is heard before any group."""


class CallUi:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.session = client.session
        self.voice = client.voice
        self.text = ""
        self.events: list[dict[str, str]] = []
        self._previous: str | None = None
        self.in_call = False  # a call is connected: e ends it
        self.ended: defer.Deferred[str] = defer.Deferred()
        self.session.calls.listener = self.on_event
        # the callee is not connected: v records a voice message instead, v again leaves it (client.message_ui)
        self.recorder: Any = None
        self.offline: str | None = None  # the callee who was not connected
        self.message_done: defer.Deferred[None] = defer.Deferred()

    def on_event(self, event: CallEvent) -> None:
        self._on_event(event)
        if self.text:
            self.client.note(self.text)

    def _on_event(self, event: CallEvent) -> None:
        self.events.append({"kind": event.kind, "call": event.call, "peer": event.peer, "reason": event.reason})
        if event.kind == "incoming":
            manual = event.reason == "manual"
            self.text = f"INCOMING CALL from {event.peer}" + (" — a: accept, r: reject" if manual else "")
            log.warning("incoming private call from %s (%s commencement)", event.peer, event.reason)
            self._bell()
        elif event.kind == "ringing":
            self.text = f"ringing {event.peer}…"
        elif event.kind == "connected":
            self.text = f"IN CALL with {event.peer} — SPACE talk, e end"
            self.voice.monitor(event.call, CALL_PRIORITY)
            self.in_call = True
            self._previous = self.client.selected
            self.client.selected = event.call
        elif event.kind == "ended" and event.reason == "unreachable":
            self.text = f"{event.peer} is not connected — v: record a voice message (v again: leave it), q: quit"
            self.offline = event.peer
            if not self.ended.called:
                self.ended.callback(event.reason)
        elif event.kind == "ended":
            self.text = f"call with {event.peer} ended: {event.reason}"
            log.warning("private call with %s ended: %s", event.peer, event.reason)
            self.in_call = False
            if self.client.selected == event.call:
                if self.client.want_talk:
                    self.client.release()
                self.client.selected = self._previous or ""
            self.voice.unmonitor(event.call)
            self._bell()
            if not self.ended.called:
                self.ended.callback(event.reason)

    def key(self, key: str) -> bool:
        """A key press for calls: True if it was one."""
        calls = self.session.calls
        if key in "aA":
            calls.accept()
        elif key in "rR":
            calls.reject()
        elif key in "eE":
            calls.hang_up()
        elif key in "vV" and self.offline is not None:
            self.record_message()
        else:
            return False
        return True

    def record_message(self) -> None:
        """v: start recording a voice message for the callee who was not connected; v again: leave it."""
        from client.message_ui import MicMessage

        if self.recorder is None:
            self.recorder = MicMessage(self.voice.engine)
            self.recorder.start()
            self.text = f"recording a voice message for {self.offline} — v: stop and leave it"
            self.client.note(self.text)
            return
        frames = self.recorder.stop()
        self.recorder = None
        self.leave_message(frames)

    @defer.inlineCallbacks
    def leave_message(self, pcm_frames: list[bytes]) -> Any:
        from client.message_ui import encode

        assert self.offline is not None
        try:
            if not pcm_frames:
                raise ValueError("nothing recorded")
            number, _, _ = yield self.session.messages.send(self.offline, encode(pcm_frames))
            self.text = f"voice message #{number} left for {self.offline}: delivered when they connect"
        except Exception as exc:  # refused, not connected: say so
            self.text = f"voice message not left: {exc}"
        self.client.note(self.text)
        if not self.message_done.called:
            self.message_done.callback(None)

    def status(self) -> str:
        return self.text

    def _bell(self) -> None:
        if not self.client.quiet:
            sys.stdout.write("\a")
            sys.stdout.flush()


def main(args: Any, keystore: Any, server: Any) -> int:
    """``ptt-client call URI``: args as ``talk``'s plus ``callee`` and ``manual`` (keystore and server info
    checked by ``client.cli``)."""
    from client.app import Client
    from client.app_keys import Keys
    from client.audio import AudioEngine
    from client.errors import explain
    from client.keystore_watch import watch_session
    from client.session import PttSession
    from client.voice import Voice

    outcome: dict[str, Any] = {"code": 0}
    interactive = not args.script and sys.stdin.isatty()

    def run(reactor: Any) -> Any:
        session = PttSession(reactor, keystore, args.uri, server)
        engine = AudioEngine(input_device=args.input_device, output_device=args.output_device)
        voice = Voice(reactor, session, engine)
        client = Client(reactor, session, voice, [], quiet=args.quiet or not interactive)
        ui = CallUi(client)
        client.call_ui = ui

        @defer.inlineCallbacks
        def go() -> Any:
            old_tty = None
            watch = None
            try:
                yield session.start()
                watch = watch_session(session)  # renewed keys are picked up (issue 18)
                engine.start()
                yield session.calls.call(args.callee, manual=args.manual)
                print(f"calling {args.callee} as {args.uri}", flush=True)
                if interactive:
                    print("SPACE talk (tap to start/stop) · e end the call · q quit", flush=True)
                client.start_display()
                if args.script:
                    yield _script(reactor, client, args.script, ui)
                elif interactive:
                    old_tty = termios.tcgetattr(sys.stdin.fileno())
                    tty.setcbreak(sys.stdin.fileno())
                    stdio.StandardIO(Keys(client, lambda: _quit(ui, session)))
                    yield ui.ended
                    if ui.offline is not None:
                        print(f"\n{ui.text}", flush=True)
                        yield ui.message_done
                else:
                    yield ui.ended
                    if ui.offline is not None and args.message_wav:  # leave this file as the message
                        from client.headless_history import read_frames

                        yield ui.leave_message(read_frames(Path(args.message_wav)))
                        print(f"\n{ui.text}", flush=True)
                told = ("ended", "cancelled", "unreachable")
                if ui.ended.called and ui.events and ui.events[-1]["reason"] not in told:
                    print(f"\nthe call ended: {ui.events[-1]['reason']}", flush=True)
            except Exception as exc:
                error = explain(exc)
                print(f"ptt-client: {error}", file=sys.stderr, flush=True)
                outcome["code"] = int(error.code)
            finally:
                if old_tty is not None:
                    termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, old_tty)
                if args.report:
                    Path(args.report).write_text(json.dumps({**client.report(), "calls": ui.events}, indent=1))
                if watch is not None:
                    watch.stop()
                engine.stop()
                session.stop()
                print(flush=True)

        return go()

    import contextlib

    with contextlib.suppress(SystemExit):
        task.react(run, [])
    return int(outcome["code"])


def _quit(ui: CallUi, session: Any) -> None:
    """q: hang up; after an unreachable callee, quit without leaving a message."""
    session.calls.hang_up()
    if ui.offline is not None and ui.recorder is None and not ui.message_done.called:
        ui.message_done.callback(None)


@defer.inlineCallbacks
def _script(reactor: Any, client: Any, script: str, ui: CallUi) -> Any:
    for step in [s.strip() for s in script.split(";") if s.strip()]:
        word, _, arg = step.partition(" ")
        if word == "wait":
            yield task.deferLater(reactor, float(arg), lambda: None)
        elif word == "wait-connected":
            for _ in range(int(float(arg or "30") / 0.05)):
                if any(e["kind"] in ("connected", "ended") for e in ui.events):
                    break
                yield task.deferLater(reactor, 0.05, lambda: None)
        elif word == "talk":
            client.press()
            yield task.deferLater(reactor, float(arg), lambda: None)
            client.release()
        elif word == "hangup":
            client.session.calls.hang_up()
        elif word == "echo":  # a line on stdout, for whatever drives the script to synchronise with
            print(arg, flush=True)
        elif word == "quit":
            break
        else:
            raise ValueError(f"unknown script step {step!r}")
