"""The audio engine's streams (``client.audio``): its state, and the PortAudio callbacks that capture and play 20 ms
frames on PortAudio's own threads (quick, never blocking, never raising into the stream), with the level meter.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from client.codec import CHANNELS, FRAME_BYTES, FRAME_SAMPLES, SAMPLE_RATE

log = logging.getLogger("ptt.client.audio")

SILENCE_DBFS = -100.0  # the level meter's floor (digital silence)
RETRY_INTERVAL = 1.0  # seconds between attempts to reopen a failed stream
ERROR_RUN = 50  # this many consecutive callbacks (1 s) flagging xruns: the stream is broken

RUNNING = "running"
REOPENING = "reopening"
NO_DEVICE = "no device"
STOPPED = "stopped"

SILENT_FRAME = bytes(FRAME_BYTES)


def rms_dbfs(pcm: bytes) -> float:
    """The RMS level of int16 PCM in dB relative to full scale (a full-scale square wave is 0 dBFS, a full-scale
    sine -3 dBFS), floored at ``SILENCE_DBFS``."""
    samples = np.frombuffer(pcm, dtype=np.int16)
    if len(samples) == 0:
        return SILENCE_DBFS
    mean_square = float(np.dot(samples.astype(np.float64), samples)) / len(samples)
    if mean_square <= 0.0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 10.0 * math.log10(mean_square / (32768.0 * 32768.0)))


def ignore_capture(pcm: bytes, captured_at: float) -> None:
    pass


def no_playback() -> bytes | None:
    return None


class StreamDirection:
    """One stream (input or output) and what the keeper knows about it."""

    def __init__(self, kind: str, device: str | None) -> None:
        self.kind = kind
        self.device = device
        self.stream: Any = None
        self.last_callback = 0.0
        self.error_run = 0  # consecutive callbacks with status flags
        self.failed: str | None = None  # why the stream must be reopened
        self.missing = False  # the device was not found at the last attempt
        self.failed_attempts = 0  # attempts to reopen since the failure
        self.next_attempt = 0.0


class AudioStreams:
    """What an audio engine keeps, and its microphone and speaker callbacks (see ``client.audio.AudioEngine``)."""

    def __init__(
        self,
        *,
        input_device: str | None = None,
        output_device: str | None = None,
        blocksize: int = 960,
        output_latency: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        keep_input_open: bool = False,
        retry_interval: float = RETRY_INTERVAL,
    ) -> None:
        if blocksize <= 0:
            raise ValueError("blocksize must be a positive number of samples")
        if output_latency < 0:
            raise ValueError("output latency must not be negative")
        self.input_device = input_device
        self.output_device = output_device
        self.blocksize = blocksize
        self.output_latency = output_latency
        self.clock = clock
        self.keep_input_open = keep_input_open
        self.retry_interval = retry_interval
        self.on_capture: Callable[[bytes, float], None] = ignore_capture
        self.pull_playback: Callable[[], bytes | None] = no_playback
        self.on_status: Callable[[str], None] | None = None
        # The microphone's last block; ``level`` works its RMS out when asked (the UI, a few times a second), not
        # in the callback 50 times a second.
        self._level_block = b""
        self._level_of: tuple[bytes, float] = (b"", SILENCE_DBFS)
        self.status = STOPPED
        self.last_error: str | None = None
        self.stats = {
            "frames_captured": 0,
            "frames_played": 0,
            "input_overflows": 0,
            "output_underflows": 0,
            "callback_errors": 0,
            "stream_failures": 0,
        }
        self._input = StreamDirection("input", input_device)
        self._output = StreamDirection("output", output_device)
        self._capturing = False
        self._capture_buffer = bytearray()
        self._capture_buffer_time = 0.0
        self._playback_buffer = bytearray()
        self._sd: Any = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._quit = False
        self._first_pass = threading.Event()
        self._last_requery = 0.0

    @property
    def level(self) -> float:
        """The RMS level (dBFS) of the microphone's last block; ``SILENCE_DBFS`` while it is closed."""
        block = self._level_block
        measured, value = self._level_of
        if block is not measured:
            value = rms_dbfs(block)
            self._level_of = (block, value)
        return value

    @level.setter
    def level(self, value: float) -> None:
        self._level_block = b""
        self._level_of = (b"", value)

    # -- audio threads -------------------------------------------------------------------------------------------

    def _input_callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        try:
            now = self.clock()
            self._input.last_callback = time.monotonic()
            self._note_status(self._input, status)
            data = bytes(indata)
            self._level_block = data
            if not self._capturing:
                self._capture_buffer.clear()
                return
            captured_at = now - self._input_delay(time_info)
            if frames == FRAME_SAMPLES and not self._capture_buffer:
                self._deliver(data, captured_at)
                return
            if not self._capture_buffer:
                self._capture_buffer_time = captured_at
            self._capture_buffer += data
            while len(self._capture_buffer) >= FRAME_BYTES:
                frame = bytes(self._capture_buffer[:FRAME_BYTES])
                del self._capture_buffer[:FRAME_BYTES]
                self._deliver(frame, self._capture_buffer_time)
                self._capture_buffer_time += FRAME_SAMPLES / SAMPLE_RATE
        except Exception:  # never let an exception abort the stream
            self.stats["callback_errors"] += 1
            log.exception("error in the microphone callback")

    def _deliver(self, frame: bytes, captured_at: float) -> None:
        self.stats["frames_captured"] += 1
        try:
            self.on_capture(frame, captured_at)
        except Exception:
            self.stats["callback_errors"] += 1
            log.exception("on_capture failed")

    @staticmethod
    def _input_delay(time_info: Any) -> float:
        """How long ago the block's first sample was captured, from PortAudio's stream times (if sane)."""
        try:
            delay = float(time_info.currentTime) - float(time_info.inputBufferAdcTime)
        except (AttributeError, TypeError, ValueError):
            return 0.0
        if time_info.inputBufferAdcTime and 0.0 <= delay < 1.0:
            return delay
        return 0.0

    def _output_callback(self, outdata: Any, frames: int, time_info: Any, status: Any) -> None:
        wanted = frames * CHANNELS * 2
        try:
            self._output.last_callback = time.monotonic()
            self._note_status(self._output, status)
            if frames == FRAME_SAMPLES and not self._playback_buffer:
                outdata[:] = self._next_frame()
                return
            while len(self._playback_buffer) < wanted:
                self._playback_buffer += self._next_frame()
            outdata[:] = bytes(self._playback_buffer[:wanted])
            del self._playback_buffer[:wanted]
        except Exception:
            self.stats["callback_errors"] += 1
            log.exception("error in the speaker callback")
            outdata[:] = bytes(wanted)

    def _next_frame(self) -> bytes:
        try:
            frame = self.pull_playback()
        except Exception:
            self.stats["callback_errors"] += 1
            log.exception("pull_playback failed")
            frame = None
        if frame is None:
            return SILENT_FRAME
        self.stats["frames_played"] += 1
        if len(frame) != FRAME_BYTES:
            frame = bytes(frame[:FRAME_BYTES]).ljust(FRAME_BYTES, b"\0")
        return bytes(frame)

    def _note_status(self, direction: StreamDirection, status: Any) -> None:
        if not status:
            direction.error_run = 0
            return
        direction.error_run += 1
        if getattr(status, "input_overflow", False):
            self.stats["input_overflows"] += 1
        if getattr(status, "output_underflow", False):
            self.stats["output_underflows"] += 1
        if direction.error_run == ERROR_RUN and direction.failed is None:
            direction.failed = f"{direction.kind} callbacks report {status} for {ERROR_RUN} blocks in a row"
            self._wake.set()
