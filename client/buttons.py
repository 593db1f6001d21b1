"""Hardware PTT buttons: a key of a Linux input device (a USB foot switch, a headset's or a speaker-microphone's
button, a keyboard key) read on the reactor, with real press and release, no focused terminal needed.

``--ptt-key DEVICE:KEY``: DEVICE is a path (``/dev/input/event5``, ``/dev/input/by-id/…-event-kbd``, or any file
that yields ``input_event`` records, e.g. a FIFO) or a part of the device's name as ``/proc/bus/input/devices``
lists it; KEY a name (``KEY_F13``, ``BTN_0``) or a number. ``ButtonWatch`` reads any file descriptor through
``ptt.inputevents.PttButton``; a device that goes away (unplugged) releases the button and is reopened every two
seconds. ``ptt-client buttons`` lists the devices and shows a device's presses, to find one's button. Reading
``/dev/input`` needs the ``input`` group (``sudo adduser $USER input``).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.errors import Exit, UserError
from ptt.inputevents import EV_KEY, PRESS, RELEASE, InputEventReader, PttButton, key_code, key_name

log = logging.getLogger("ptt.client.buttons")

DEVICES = Path("/proc/bus/input/devices")
REOPEN_INTERVAL = 2.0


@dataclass(frozen=True)
class InputDevice:
    name: str
    path: str  # /dev/input/eventN ("" if it has no event handler)
    has_keys: bool


def parse_devices(text: str) -> list[InputDevice]:
    """The devices of a ``/proc/bus/input/devices`` listing (blocks of ``N: Name=…``, ``H: Handlers=…``)."""
    devices = []
    for block in re.split(r"\n\s*\n", text):
        name = re.search(r'^N: Name="(.*)"$', block, re.M)
        handlers = re.search(r"^H: Handlers=(.*)$", block, re.M)
        keys = re.search(r"^B: KEY=(.*)$", block, re.M)
        if name is None:
            continue
        event = next((h for h in (handlers.group(1).split() if handlers else []) if h.startswith("event")), "")
        has_keys = keys is not None and keys.group(1).strip("0 ") != ""
        devices.append(InputDevice(name.group(1), f"/dev/input/{event}" if event else "", has_keys))
    return devices


def list_devices() -> list[InputDevice]:
    try:
        return parse_devices(DEVICES.read_text())
    except OSError:
        return []


def parse_key_spec(spec: str) -> tuple[str, int]:
    """``DEVICE:KEY`` → (device path, key code); a device named by a part of its name is looked up."""
    device, sep, key = spec.rpartition(":")
    if not sep or not device or not key:
        raise UserError(f"--ptt-key {spec!r}: give DEVICE:KEY, e.g. /dev/input/event5:KEY_F13, or 'space'", Exit.USAGE)
    try:
        code = key_code(key)
    except ValueError as exc:
        raise UserError(f"--ptt-key {spec!r}: {exc}", Exit.USAGE) from None
    return resolve_device(device), code


def resolve_device(device: str) -> str:
    if "/" in device:
        return device
    matches = [d for d in list_devices() if device.lower() in d.name.lower() and d.path]
    if len(matches) != 1:
        found = ", ".join(f"{d.name} ({d.path})" for d in matches) or "none"
        raise UserError(
            f"input device {device!r}: {len(matches)} devices match ({found}); 'ptt-client buttons' lists them",
            Exit.USAGE,
        )
    return matches[0].path


class ButtonWatch:
    """One key of one input device as a PTT button on the reactor (an IReadDescriptor)."""

    def __init__(
        self,
        reactor: Any,
        device: str,
        code: int,
        *,
        on_press: Callable[[], None],
        on_release: Callable[[], None],
    ) -> None:
        self.reactor = reactor
        self.device = device
        self.button = PttButton(code)
        self.on_press, self.on_release = on_press, on_release
        self.presses = 0
        self._fd: int | None = None
        self._retry: Any = None
        self._running = False

    def start(self) -> None:
        """Open the device now: a missing one or one we may not read is a clear error at start."""
        self._running = True
        try:
            self._open()
        except OSError as exc:
            self._running = False
            hint = " (reading input devices needs the 'input' group)" if exc.errno == errno.EACCES else ""
            raise UserError(f"PTT button {self.device}: {exc.strerror}{hint}", Exit.USAGE) from None

    def stop(self) -> None:
        self._running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._close()

    def _open(self) -> None:
        self._fd = os.open(self.device, os.O_RDONLY | os.O_NONBLOCK)
        self.reactor.addReader(self)
        log.info("PTT button: %s, %s", self.device, key_name(self.button.code))

    def _close(self) -> None:
        if self._fd is not None:
            self.reactor.removeReader(self)
            os.close(self._fd)
            self._fd = None

    def _reopen(self) -> None:
        if not self._running:
            return
        try:
            self._open()
        except OSError:
            self._retry = self.reactor.callLater(REOPEN_INTERVAL, self._reopen)

    def fileno(self) -> int:
        return -1 if self._fd is None else self._fd

    def logPrefix(self) -> str:
        return "ptt-button"

    def connectionLost(self, reason: Any) -> None:
        pass

    def doRead(self) -> None:
        try:
            data = os.read(self.fileno(), 4096)
        except BlockingIOError:
            return
        except OSError as exc:  # ENODEV: unplugged
            log.warning("PTT button %s: %s; reopening", self.device, exc.strerror)
            data = b""
        if not data:
            self._edges(self.button.lost())
            self._close()
            self._retry = self.reactor.callLater(REOPEN_INTERVAL, self._reopen)
            return
        self._edges(self.button.feed(data))

    def _edges(self, edges: list[bool]) -> None:
        for down in edges:
            if down:
                self.presses += 1
                self.on_press()
            else:
                self.on_release()


def main(args: Any) -> int:
    """``ptt-client buttons [DEVICE]``: the input devices, or one device's key presses until Ctrl-C."""
    if not args.device:
        devices = [d for d in list_devices() if d.path]
        if not devices:
            print(f"no input devices listed in {DEVICES}")
        for device in devices:
            readable = "readable" if os.access(device.path, os.R_OK) else "not readable (join the 'input' group)"
            keys = "keys" if device.has_keys else "no keys"
            print(f"{device.path:<20} {device.name}  ({keys}, {readable})")
        print("watch one: ptt-client buttons /dev/input/eventN, then press the button")
        return 0
    path = resolve_device(args.device)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror}", Exit.USAGE) from None
    print(f"{path}: press the button (Ctrl-C to stop); use the key shown as --ptt-key {path}:KEY", flush=True)
    reader = InputEventReader()
    try:
        while data := os.read(fd, 4096):
            for event in reader.feed(data):
                if event.type == EV_KEY and event.value in (PRESS, RELEASE):
                    state = "pressed" if event.value == PRESS else "released"
                    print(f"{key_name(event.code)} ({event.code}) {state}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        os.close(fd)
    sys.stdout.flush()
    return 0
