"""``ptt-headless`` script steps for emergency alerts and broadcast calls (issue 16), a part of
``client.headless.Runner``:

  ``emergency [emergency|imminent-peril] [call]``   raise this user's alert in the joined group (``call``: and
                                                    ask for the floor at once, with the alert's urgency)
  ``cancel-emergency [URI]``                        cancel this user's alert (a dispatcher member: ``URI``'s)
  ``broadcast-press``                               ask for the floor with the BROADCAST indicator
  ``broadcast-talk SECONDS``                        a broadcast group call: broadcast-press, talk, release
  ``wait-alert URI [SECONDS]``                      until an alert of ``URI`` is raised (at most SECONDS, 30)

Every alert pushed by the server is logged (a terminal bell on a raise) and listed in the report's ``alerts``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from twisted.internet import defer, task

from ptt.emergency import Alert, Level

STEPS = frozenset({"emergency", "cancel-emergency", "broadcast-press", "broadcast-talk", "wait-alert"})


def announce(runner: Any, group: str, alert: Alert) -> None:
    """An alert from the server: into the report, and announced on stderr (with a bell when raised)."""
    entry = {"group": group, "t": round(time.time(), 3), **alert.to_json(), "active": alert.active}
    if alert.acknowledged:
        entry |= {"acked_by": alert.acked_by, "acked_at": alert.acked_at}
    runner.alerts.append(entry)
    if alert.active and alert.acknowledged:
        print(f"ALERT acknowledged: {alert.uri} in {group} by {alert.acked_by}", file=sys.stderr)
    elif alert.active:
        print(f"\aALERT {alert.level.label} {alert.uri} in {group} since {alert.since:.0f}", file=sys.stderr)
    else:
        print(f"ALERT cancelled: {alert.uri} in {group} by {alert.cancelled_by}", file=sys.stderr)


@defer.inlineCallbacks
def run_step(runner: Any, word: str, arg: str) -> Any:
    session = runner.session
    group = runner.group
    if word == "wait-alert":
        uri, _, limit = arg.partition(" ")
        deadline = time.monotonic() + float(limit or 30)
        while time.monotonic() < deadline:
            if any(a["uri"] == uri and a["active"] for a in runner.alerts):
                return
            yield task.deferLater(runner.reactor, 0.02, lambda: None)
        raise TimeoutError(f"no alert of {uri} within {limit or 30} s")
    assert group is not None, "join a group first"
    if word == "emergency":
        words = arg.split()
        level = Level.parse(words[0]) if words and words[0] != "call" else Level.EMERGENCY
        runner.marks.append({"step": "emergency", "t": round(time.time(), 3)})
        yield session.raise_emergency(group, level, call="call" in words)
    elif word == "cancel-emergency":
        yield session.cancel_emergency(group, arg or None)
    elif word == "broadcast-press":
        session.request_broadcast(group)
    elif word == "broadcast-talk":
        yield runner.talk_with(float(arg), lambda: session.request_broadcast(group))
