"""The dispatcher console's voice: the groups it monitors (SRTP → jitter buffer → Opus → 20 ms PCM frames for the
browser, one stream per group: the page mixes them with its own volume per group), its talking (the browser's
microphone as PCM frames → Opus → SRTP into the selected group while the floor is granted) and the patch of two
groups (``ptt.consolepatch``: voice heard in one is encoded again into the other).

The playout clock is a 20 ms timer on the reactor: each tick takes one frame from every monitored group's jitter
buffer (``ptt.jitter``, as the audio client does) and hands the decoded ones to ``on_frame(group, pcm)``. Opus
work is ~0.1 ms a frame: it stays on the reactor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import task

from client.codec import FRAME_SAMPLES, OpusEncoder
from client.voice import Listener
from ptt.consolepatch import Patch
from ptt.floor.events import FloorEvent, FloorEventKind
from ptt.rtp import RtpError, RtpPacket

__all__ = ["ConsoleMedia"]

log = logging.getLogger("ptt.console")

FRAME = 0.02
PCM_OCTETS = 2 * FRAME_SAMPLES


class ConsoleMedia:
    def __init__(self, reactor: Any, session: Any, on_frame: Callable[[str, bytes], None]) -> None:
        self.reactor, self.session, self.on_frame = reactor, session, on_frame
        self.listeners: dict[str, Listener] = {}
        self.talk_group: str | None = None
        self.pressed = False
        self.floor: dict[str, str] = {}  # group -> our floor state: requested, granted, queued, denied, idle, taken
        self.patch: Patch | None = None
        self._encoders: dict[str, OpusEncoder] = {}
        self._first: dict[str, bool] = {}
        self.frames = {"sent": 0, "played": 0, "patched": 0}
        self.on_floor: Callable[[str, FloorEvent], None] = lambda group, event: None
        session.media_listener = self._media
        session.floor_listener = self._floor
        self._clock = task.LoopingCall(self._tick)
        self._clock.clock = reactor

    def start(self) -> None:
        self._clock.start(FRAME, now=False)

    def stop(self) -> None:
        if self._clock.running:
            self._clock.stop()

    # --- monitoring -------------------------------------------------------------------------------------------

    def monitor(self, group: str) -> None:
        self.listeners.setdefault(group, Listener(group, 0))

    def unmonitor(self, group: str) -> None:
        self.listeners.pop(group, None)

    def _media(self, group: str, mki: bytes, rtp: bytes) -> None:
        listener = self.listeners.get(group)
        if listener is None:
            return
        try:
            listener.jitter.put(RtpPacket.parse(rtp), time.monotonic())
        except RtpError as exc:
            log.debug("bad RTP in %s: %s", group, exc)

    def _tick(self) -> None:
        now = time.monotonic()
        for group, listener in list(self.listeners.items()):
            frame = listener.jitter.get(now)
            if frame is None or frame.kind == "silence":
                continue
            pcm = self._decode(listener, frame)
            self.frames["played"] += 1
            self.on_frame(group, pcm)
            if self.patch is not None:
                self._run(self.patch.voice(group, now))
                target = self.patch.target_of(group)
                if target is not None and self.floor.get(target) == "granted":
                    self._send(target, pcm)
                    self.frames["patched"] += 1
        if self.patch is not None:
            self._run(self.patch.tick(now))

    @staticmethod
    def _decode(listener: Listener, frame: Any) -> bytes:
        try:
            if frame.kind == "audio":
                return bytes(listener.decoder.decode(frame.payload))
            if frame.fec_from:
                return bytes(listener.decoder.decode_fec(frame.fec_from))
            return bytes(listener.decoder.conceal())
        except Exception as exc:  # a corrupt Opus packet must not stop playout
            log.debug("decode failed: %s", exc)
            return bytes(PCM_OCTETS)

    # --- talking ----------------------------------------------------------------------------------------------

    def press(self) -> None:
        """The dispatcher holds the talk button: the floor of the selected group is asked for."""
        group = self.talk_group
        if group is None or self.pressed:
            return
        self.pressed = True
        self._request(group)

    def release(self) -> None:
        group = self.talk_group
        if not self.pressed or group is None:
            return
        self.pressed = False
        self._release(group)

    def captured(self, pcm: bytes) -> None:
        """A 20 ms frame of the browser's microphone (16-bit little-endian, 48 kHz mono)."""
        group = self.talk_group
        if len(pcm) != PCM_OCTETS or not self.pressed or group is None or self.floor.get(group) != "granted":
            return
        self._send(group, pcm)
        self.frames["sent"] += 1

    def _send(self, group: str, pcm: bytes) -> None:
        encoder = self._encoders.get(group)
        if encoder is None:
            encoder = self._encoders[group] = OpusEncoder()
        try:
            payload = encoder.encode(pcm)
            self.session.send_media(group, payload, marker=self._first.get(group, True), samples=FRAME_SAMPLES)
            self._first[group] = False
        except Exception as exc:  # no key yet, not joined: the frame is dropped, the console goes on
            log.debug("frame for %s not sent: %s", group, exc)

    def _request(self, group: str) -> None:
        try:
            self.session.request_floor(group)
            self.floor[group] = "requested"
            self._first[group] = True
        except (KeyError, RuntimeError) as exc:
            log.warning("floor of %s not requested: %s", group, exc)
            self.floor[group] = "unavailable"

    def _release(self, group: str) -> None:
        self.session.release_floor(group)

    # --- patch ------------------------------------------------------------------------------------------------

    def set_patch(self, a: str | None, b: str | None) -> None:
        if self.patch is not None:
            self._run(self.patch.end())
            self.patch = None
        if a is not None and b is not None:
            self.monitor(a)
            self.monitor(b)
            self.patch = Patch(a, b)

    def _run(self, actions: list[tuple[str, str]]) -> None:
        for verb, group in actions:
            if verb == "request":
                self._request(group)
            elif not (self.pressed and group == self.talk_group):  # the dispatcher talks there: keep the floor
                self._release(group)

    # --- floor ------------------------------------------------------------------------------------------------

    def _floor(self, group: str, event: FloorEvent) -> None:
        kind = event.kind
        if kind is FloorEventKind.GRANTED:
            self.floor[group] = "granted"
            self._first[group] = True
        elif kind in (FloorEventKind.QUEUED, FloorEventKind.QUEUE_POSITION):
            self.floor[group] = "queued"
        elif kind is FloorEventKind.DENIED:
            self.floor[group] = "denied"
        elif kind in (FloorEventKind.REVOKED, FloorEventKind.STOP_TALKING):
            self.floor[group] = "revoked"
        elif kind is FloorEventKind.IDLE:
            self.floor[group] = "idle"
        elif kind is FloorEventKind.TAKEN:
            self.floor[group] = "taken"
        self.on_floor(group, event)
