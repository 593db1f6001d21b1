"""The talk UI's emergency and broadcast keys (issue 16), a part of ``client.app``:

  e   raise an emergency alert in the selected group (with a call: the floor is asked for at once, with emergency
      priority); again: cancel it
  p   raise imminent peril the same way; again: cancel it
  b   start a broadcast group call (the floor with the BROADCAST indicator; the server checks the right); again: stop

The status line shows the selected group's alerts (``EMERGENCY alice since 12:03:04``); an incoming alert rings
the terminal bell, plays an alert tone on the speaker and is written to the message field. Sessions without
alerts (ad-hoc groups) ignore the keys.
"""

from __future__ import annotations

import math
import struct
import sys
import time
from datetime import UTC, datetime
from typing import Any

from client.codec import FRAME_SAMPLES, SAMPLE_RATE
from ptt.emergency import Alert, Level

KEYS = "epb"


def _clock(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%H:%M:%S")


def status_text(session: Any, group: str) -> str:
    """The selected group's active alerts, most urgent first ("" when none)."""
    alerts: dict[str, Alert] = getattr(session, "alerts", {}).get(group, {})
    parts = []
    for alert in sorted(alerts.values(), key=lambda a: (-a.level, a.since)):
        who = alert.uri.partition(":")[2].partition("@")[0] or alert.uri
        parts.append(f"{alert.level.label.upper()} {who} since {_clock(alert.since)}")
    return " | ".join(parts)


def alert_tone(level: Level) -> list[bytes]:
    """An alert tone as 20 ms PCM frames (48 kHz, int16): emergency three high-low pairs, imminent peril two."""
    pairs = 3 if level is Level.EMERGENCY else 2
    frames: list[bytes] = []
    for _ in range(pairs):
        for frequency in (1320.0, 880.0):
            for _ in range(8):  # 160 ms per note
                samples = (
                    int(8000 * math.sin(2 * math.pi * frequency * (len(frames) * FRAME_SAMPLES + i) / SAMPLE_RATE))
                    for i in range(FRAME_SAMPLES)
                )
                frames.append(struct.pack(f"<{FRAME_SAMPLES}h", *samples))
        frames += [bytes(2 * FRAME_SAMPLES)] * 4  # 80 ms apart
    return frames


def announce(client: Any, group: str, alert: Alert) -> None:
    """An alert from the server: bell, tone (on the speaker, when no voice plays) and message."""
    who = alert.uri
    if alert.active and alert.acknowledged:  # no tone: the alert is already sounding and a dispatcher has it
        whose = "your" if who == getattr(client.session, "uri", None) else f"{who}'s"
        client.message = f"{whose} {alert.level.label} alert in {group} acknowledged by dispatcher {alert.acked_by}"
    elif alert.active:
        client.message = f"ALERT {alert.level.label} from {who} in {group}"
        cue = getattr(getattr(client, "voice", None), "cue", None)
        if cue is not None:
            cue(alert_tone(alert.level))
        if not client.quiet:
            sys.stdout.write("\a")
    else:
        client.message = f"alert of {who} in {group} cancelled by {alert.cancelled_by or '-'}"


def key(client: Any, pressed: str) -> bool:
    """Handle an emergency/broadcast key; False if ``pressed`` is not one (or the session has no alerts)."""
    session = client.session
    if pressed not in KEYS or not hasattr(session, "raise_emergency") or not client.selected:
        return False
    group = client.selected
    if pressed == "b":
        if client.want_talk:
            client.release()
        else:
            client.want_talk = True
            client.message = "broadcast: requesting the floor…"
            session.request_broadcast(group)
        return True
    level = Level.EMERGENCY if pressed == "e" else Level.IMMINENT_PERIL
    own = session.own_level(group)
    if own is not None and own == level:
        d = session.cancel_emergency(group)
        client.message = f"cancelling {level.label}…"
    else:
        client.want_talk = True  # with a call: talk as soon as the floor is granted
        presses = getattr(client, "presses", None)
        if presses is not None:
            presses.append(time.time())  # a PTT press too: the floor is asked for with the alert
        d = session.raise_emergency(group, level, call=True)
        client.message = f"{level.label.upper()} raised"
    d.addErrback(lambda failure: setattr(client, "message", f"{level.label}: {failure.getErrorMessage()}"))
    return True
