"""``ptt-client talk --script``: the terminal client driven by steps instead of keys (tests, automation, the KPI
benchmark ``bench/kpi.py``), a part of ``client.app``. Every step goes through the same code as a key would.

  ``wait S``             wait S seconds
  ``select GROUP``       talk in GROUP (keys 1-9)
  ``talk S``             PTT press, S seconds, release (SPACE)
  ``emergency-talk S``   raise an emergency alert with a call (key ``e``: the floor is asked for at once with
                         emergency priority), talk S seconds, release, cancel the alert (``e`` again)
  ``leave`` / ``join``   leave or join the selected group again (a user who stops and starts monitoring it)
  ``wait-talking S``     until someone else talks in the selected group (at most S seconds)
  ``call URI``           a private call to URI: place it and wait (at most 15 s) until it is connected and its
                         floor is joined; it is then the selected "group" (``talk`` talks in it)
  ``hangup``             end the current private call (key ``e`` of a call), wait until it has ended
  ``wait-file PATH``     until PATH exists (at most 10 minutes): another process says when to go on
  ``quit``               stop here

The time of each ``join``, ``call`` and ``hangup`` step goes into the report's ``marks`` (``time.time()``), as PTT
presses go into ``presses``: a benchmark pairs them with what the other clients heard.
"""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.internet import defer, task

from client import app_emergency

POLL = 0.01
CALL_LIMIT = 15.0
WAIT_FILE_LIMIT = 600.0


def _sleep(reactor: Any, seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def _until(reactor: Any, done: Any, seconds: float, poll: float = POLL) -> Any:
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        yield _sleep(reactor, poll)


def _call_joined(client: Any, call: str) -> bool:
    state = client.session.groups.get(call)
    return state is not None and state.participant is not None and state.relay is not None


@defer.inlineCallbacks
def run_script(reactor: Any, client: Any, script: str) -> Any:
    session = client.session
    for step in [s.strip() for s in script.split(";") if s.strip()]:
        word, _, arg = step.partition(" ")
        arg = arg.strip()
        if word == "wait":
            yield _sleep(reactor, float(arg))
        elif word == "select":
            client.selected = arg
        elif word == "talk":
            client.press()
            yield _sleep(reactor, float(arg))
            client.release()
        elif word == "emergency-talk":
            app_emergency.key(client, "e")  # raise with a call: the floor is requested once the server says ok
            yield _sleep(reactor, float(arg))
            client.release()
            if session.own_level(client.selected) is not None:
                app_emergency.key(client, "e")  # again: cancel
        elif word == "leave":
            session.leave(client.selected)
        elif word == "join":
            client.mark("join")
            yield session.join_when_possible(client.selected)
        elif word == "wait-talking":
            yield _until(reactor, lambda: _someone_else_talks(client), float(arg or "30"))
        elif word == "call":
            client.mark("call")
            call = yield session.calls.call(arg)
            yield _until(reactor, lambda c=call: _call_joined(client, c) or c not in session.calls.calls, CALL_LIMIT)
        elif word == "hangup":
            call = session.calls.current()
            client.mark("hangup")
            if call is not None and session.calls.hang_up(call):
                yield _until(reactor, lambda c=call: c not in session.calls.calls, CALL_LIMIT)
        elif word == "wait-file":
            yield _until(reactor, lambda path=arg: os.path.exists(path), WAIT_FILE_LIMIT, 0.05)
        elif word == "quit":
            break
        else:
            raise ValueError(f"unknown script step {step!r}")


def _someone_else_talks(client: Any) -> bool:
    state = client.session.groups.get(client.selected)
    talker = state.talker if state is not None else None
    return talker is not None and talker != client.session.uri
