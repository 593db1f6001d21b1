"""The talk screen's layout, pure: a ``ScreenView`` (what the client knows) and a terminal size in, the lines to draw
out, each with a style. ``client.tui`` draws them with curses; tests check them without a terminal.

  ┌ header: identity, connection, keys (warned ahead of expiry), clock
  │ one line per group: selected, key number, name, floor, who talks, alerts
  │ the microphone level and the audio devices' state; the PTT key
  │ the last message (floor, calls, alerts)
  │ the event log, newest last, as many lines as fit (or the key help after '?')
  └ key hints

Every line is cut to the width; with fewer rows than needed the event log shrinks first, then the group list
(the selected group stays visible).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

MIN_WIDTH = 80
"""The narrowest terminal whose lines are all laid out as intended (narrower ones are cut)."""

HELP = (
    "SPACE      talk: hold, or tap to start and tap again to stop",
    "1-9        select the group to talk in (every listed group is heard)",
    "e          emergency in the selected group (again: cancel)",
    "p          imminent peril (again: cancel)",
    "b          broadcast call (again: stop)",
    "a / r      accept / reject an incoming private call",
    "e          end the private call in progress",
    "m          play the oldest voice message waiting",
    "?          this help (any key closes it)",
    "q          quit",
)
HINTS = "SPACE talk · 1-9 group · e emergency · p peril · b broadcast · ? help · q quit"


@dataclass(frozen=True)
class GroupRow:
    number: int  # its 1-9 key (0: none, e.g. a private call)
    name: str
    selected: bool
    floor: str  # idle / requested / granted / taken / queued …
    talker: str  # "" when nobody talks
    alert: str  # "" when none (e.g. "EMERGENCY alice since 12:03:04")
    talking: bool = False  # we hold the floor and send


@dataclass(frozen=True)
class ScreenView:
    identity: str
    connected: bool
    keys: str  # "to 2025-07-01 14:00"
    keys_warning: str  # "" or why and when the keys run out
    clock: str
    groups: Sequence[GroupRow]
    mic_level_db: float
    audio: str  # the audio engine's state
    devices: str  # "in: default · out: USB headset"
    ptt_key: str
    message: str
    events: Sequence[str]
    help: bool = False
    extra: Sequence[str] = field(default_factory=tuple)  # e.g. the private call's state


Line = tuple[str, str]  # (text, style): normal, header, warn, alert, selected, talking, dim, rule


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _fit(text: str, width: int) -> str:
    return _cut(text, width).ljust(width)


def short_uri(uri: str) -> str:
    """``sip:alice@example.org`` → ``alice@example.org`` (the scheme says nothing to a field user)."""
    return uri.partition(":")[2] if uri.startswith(("sip:", "tel:")) else uri


def meter(level_db: float, cells: int) -> str:
    filled = max(0, min(cells, round((level_db + 60) / 60 * cells)))
    return "#" * filled + "." * (cells - filled)


def header(view: ScreenView, width: int) -> Line:
    state = "connected" if view.connected else "RECONNECTING"
    left = f" PTT  {short_uri(view.identity)}  [{state}]  keys {view.keys}"
    right = f"{view.clock} "
    return _fit(left, width - len(right)) + right, "header"


def group_lines(view: ScreenView, width: int) -> list[Line]:
    name_width = max(14, min(40, width - 64))
    talker_width = max(12, min(30, width - name_width - 48))  # 80 columns leave 31 for "EMERGENCY bob since …"
    lines: list[Line] = [
        (_fit(f"    {'group':<{name_width}} {'floor':<10} {'talking':<{talker_width}} alert", width), "dim")
    ]
    if not view.groups:
        lines.append((_fit("    (no group yet)", width), "normal"))
    for row in view.groups:
        mark = ">" if row.selected else " "
        number = str(row.number) if row.number else "-"
        floor = "TALKING" if row.talking else row.floor
        text = (
            f"{mark}{number}  {_fit(row.name, name_width)} {_fit(floor, 10)} "
            f"{_fit(short_uri(row.talker) or '-', talker_width)} {row.alert}"
        )
        style = "alert" if row.alert else ("talking" if row.talking else ("selected" if row.selected else "normal"))
        lines.append((_fit(text, width), style))
    return lines


def audio_line(view: ScreenView, width: int) -> Line:
    text = (
        f" mic [{meter(view.mic_level_db, 10 if width < 100 else 20)}] {max(-99, view.mic_level_db):3.0f} dB  "
        f"audio {view.audio}  PTT {view.ptt_key}"
        f"  {view.devices}"
    )
    return _fit(text, width), "warn" if view.audio not in ("running", "ok") else "normal"


def layout(view: ScreenView, width: int, height: int) -> list[Line]:
    """Exactly ``height`` lines of exactly ``width`` characters."""
    width = max(1, width)
    rule: Line = ("─" * width, "rule")
    top: list[Line] = [header(view, width)]
    if view.keys_warning:
        top.append((_fit(f" !! {view.keys_warning}", width), "warn"))
    groups = group_lines(view, width)
    middle: list[Line] = [rule, audio_line(view, width)]
    middle += [(_fit(f" {line}", width), "alert") for line in view.extra]
    middle.append((_fit(f" {view.message}", width), "warn" if view.message else "normal"))
    bottom: list[Line] = [(_fit(f" {HINTS}", width), "dim")]
    fixed = len(top) + len(middle) + 1 + len(bottom)  # +1: the rule above the log
    room = height - fixed
    if room < len(groups):  # too few rows: keep the heading and the selected group in view
        keep = max(1, room)
        selected = next((i for i, r in enumerate(view.groups) if r.selected), 0) + 1
        start = max(1, min(selected - keep + 2, len(groups) - keep + 1))
        groups = [groups[0], *groups[start : start + keep - 1]][:keep]
    body = room - len(groups)
    title = " keys " if view.help else " events "
    log_rule: Line = ("─" * 2 + title + "─" * max(0, width - 2 - len(title)), "rule")
    if view.help:
        shown = [(_fit(f"  {line}", width), "normal") for line in HELP]
    else:
        shown = [(_fit(f" {line}", width), "normal") for line in view.events]
    shown = shown[:body] if view.help else shown[max(0, len(shown) - body) :]
    shown += [(" " * width, "normal")] * max(0, body - len(shown))
    lines = [*top, *groups, *middle, log_rule, *shown, *bottom]
    return [(text[:width], style) for text, style in lines[:height]] + [(" " * width, "normal")] * max(
        0, height - len(lines)
    )
