"""Linux input events (``struct input_event``, linux/input.h) as a PTT button, pure: bytes in, presses out.

A record is ``struct timeval`` (two C longs) + ``__u16 type`` + ``__u16 code`` + ``__s32 value``: 24 octets on
64-bit Linux, 16 on 32-bit, in the machine's byte order. A key reports ``EV_KEY`` with value 1 (press), 0 (release)
or 2 (auto-repeat while held). ``InputEventReader`` cuts a byte stream into records (a read may end inside one);
``PttButton`` turns one key's records into edges: pressed, released, once each (repeats and a second press without
a release in between change nothing).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

EVENT_FORMAT = "@llHHi"
EVENT_SIZE = struct.calcsize(EVENT_FORMAT)
EV_KEY = 1
RELEASE, PRESS, REPEAT = 0, 1, 2
MAX_BUFFER = 64 * EVENT_SIZE

# The key codes PTT buttons send (linux/input-event-codes.h): keyboard keys, media and headset keys, buttons.
KEY_CODES: dict[str, int] = {
    "KEY_ESC": 1, "KEY_TAB": 15, "KEY_ENTER": 28, "KEY_LEFTCTRL": 29, "KEY_LEFTSHIFT": 42, "KEY_RIGHTSHIFT": 54,
    "KEY_LEFTALT": 56, "KEY_SPACE": 57, "KEY_CAPSLOCK": 58, "KEY_SCROLLLOCK": 70, "KEY_F11": 87, "KEY_F12": 88,
    "KEY_RIGHTCTRL": 97, "KEY_RIGHTALT": 100, "KEY_HOME": 102, "KEY_UP": 103, "KEY_PAGEUP": 104, "KEY_LEFT": 105,
    "KEY_RIGHT": 106, "KEY_END": 107, "KEY_DOWN": 108, "KEY_PAGEDOWN": 109, "KEY_INSERT": 110, "KEY_DELETE": 111,
    "KEY_MUTE": 113, "KEY_VOLUMEDOWN": 114, "KEY_VOLUMEUP": 115, "KEY_PAUSE": 119, "KEY_LEFTMETA": 125,
    "KEY_RIGHTMETA": 126, "KEY_MENU": 139, "KEY_NEXTSONG": 163, "KEY_PLAYPAUSE": 164, "KEY_PREVIOUSSONG": 165,
    "KEY_STOPCD": 166, "KEY_RECORD": 167, "KEY_PHONE": 169, "KEY_MEDIA": 226, "KEY_MICMUTE": 248,
    "BTN_LEFT": 0x110, "BTN_RIGHT": 0x111, "BTN_MIDDLE": 0x112, "BTN_SIDE": 0x113, "BTN_EXTRA": 0x114,
    "BTN_TRIGGER": 0x120, "BTN_THUMB": 0x121, "BTN_A": 0x130, "BTN_B": 0x131,
}  # fmt: skip
KEY_CODES.update({f"KEY_{n}": c for n, c in zip("1234567890", range(2, 12), strict=True)})
KEY_CODES.update({f"KEY_{n}": c for n, c in zip("QWERTYUIOP", range(16, 26), strict=True)})
KEY_CODES.update({f"KEY_{n}": c for n, c in zip("ASDFGHJKL", range(30, 39), strict=True)})
KEY_CODES.update({f"KEY_{n}": c for n, c in zip("ZXCVBNM", range(44, 51), strict=True)})
KEY_CODES.update({f"KEY_F{n}": 58 + n for n in range(1, 11)})
KEY_CODES.update({f"KEY_F{n}": 170 + n for n in range(13, 25)})
KEY_CODES.update({f"BTN_{n}": 0x100 + n for n in range(10)})
KEY_NAMES = {code: name for name, code in KEY_CODES.items()}
MAX_CODE = 0x2FF  # KEY_MAX


def key_code(name: str) -> int:
    """A key's code from its name (``KEY_F13``, ``f13``, ``BTN_0``) or number (``183``, ``0x100``)."""
    text = name.strip()
    upper = text.upper()
    for candidate in (upper, f"KEY_{upper}"):
        if candidate in KEY_CODES:
            return KEY_CODES[candidate]
    try:
        code = int(text, 0)
    except ValueError:
        raise ValueError(f"unknown key {name!r} (a name like KEY_F13 or BTN_0, or its number)") from None
    if not 0 < code <= MAX_CODE:
        raise ValueError(f"key code {code} out of range (1-{MAX_CODE})")
    return code


def key_name(code: int) -> str:
    return KEY_NAMES.get(code, f"key {code}")


@dataclass(frozen=True)
class InputEvent:
    time: float  # the kernel's timestamp
    type: int
    code: int
    value: int


class InputEventReader:
    """Cuts a stream of octets into ``InputEvent`` records."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[InputEvent]:
        self._buffer += data
        whole = len(self._buffer) - len(self._buffer) % EVENT_SIZE
        events = []
        for offset in range(0, whole, EVENT_SIZE):
            seconds, micros, kind, code, value = struct.unpack_from(EVENT_FORMAT, self._buffer, offset)
            events.append(InputEvent(seconds + micros / 1e6, kind, code, value))
        self._buffer = self._buffer[whole:][-MAX_BUFFER:]
        return events


def encode(event: InputEvent) -> bytes:
    """One record as the kernel writes it (tests feed these through a pipe)."""
    seconds = int(event.time)
    return struct.pack(EVENT_FORMAT, seconds, int((event.time - seconds) * 1e6), event.type, event.code, event.value)


class PttButton:
    """One key of an input device as a PTT button: ``feed`` octets, get ``True`` (pressed) / ``False`` (released)
    for each edge, in order."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.pressed = False
        self._reader = InputEventReader()

    def feed(self, data: bytes) -> list[bool]:
        edges = []
        for event in self._reader.feed(data):
            if event.type != EV_KEY or event.code != self.code or event.value == REPEAT:
                continue
            down = event.value == PRESS
            if event.value in (PRESS, RELEASE) and down != self.pressed:
                self.pressed = down
                edges.append(down)
        return edges

    def lost(self) -> list[bool]:
        """The device went away: a button held then counts as released (no burst left open)."""
        if self.pressed:
            self.pressed = False
            return [False]
        return []
