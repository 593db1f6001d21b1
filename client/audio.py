"""The client's audio engine: microphone and speaker through PortAudio (sounddevice) callback streams.

48 kHz mono int16 in 20 ms frames (960 samples), the Opus frame (``client.codec``). The same code runs on a laptop
and, in the tests, on a private PulseAudio with virtual devices (``tests/audio_harness.py``).

Threads: PortAudio calls ``on_capture`` and ``pull_playback`` from its own audio threads, so they must be quick and
must not block (the app encodes and sends each captured frame there, a fraction of a millisecond, never waiting on
the reactor, and lets the output callback pull from a jitter buffer: ``client.voice``). One background thread (the
*keeper*) owns every stream: it opens and closes them, watches them, and when one fails (a PortAudio error, a stream
that stops by itself or stops calling back, a callback that reports errors for a whole second, a device unplugged)
it reopens it every second, looking devices up again by name so a USB headset that comes back is found, and reports
``status``. Nothing in here raises into the app once ``start()`` has returned.

Stream settings (see /work/shared/AUDIO_TESTING.md): callback streams at 960-sample blocks, ``latency='low'`` for
the microphone and at least 0.1 s for the speaker (lower output latency let silence creep in on PulseAudio).
"""

from __future__ import annotations

import logging
import threading
import time
from types import ModuleType
from typing import Any

from client.audiostreams import (
    ERROR_RUN,
    NO_DEVICE,
    REOPENING,
    RETRY_INTERVAL,
    RUNNING,
    SILENCE_DBFS,
    STOPPED,
    AudioStreams,
    StreamDirection,
    rms_dbfs,
)
from client.codec import CHANNELS, SAMPLE_RATE

log = logging.getLogger("ptt.client.audio")

__all__ = [
    "ERROR_RUN",
    "NO_DEVICE",
    "REOPENING",
    "RETRY_INTERVAL",
    "RUNNING",
    "SILENCE_DBFS",
    "STALL_TIMEOUT",
    "STOPPED",
    "AudioEngine",
    "AudioError",
    "find_device",
    "list_devices",
    "rms_dbfs",
]

REQUERY_INTERVAL_BUSY = 5.0  # re-enumerate devices at most this often while another stream is still healthy
STALL_TIMEOUT = 2.0  # an active stream that has not called back for this long is dead
WATCH_INTERVAL = 0.25  # seconds between the keeper's health checks (start/stop capture wake it at once)
START_TIMEOUT = 5.0


class AudioError(Exception):
    """PortAudio is missing or cannot be used at all (device trouble is reported through ``status`` instead)."""


class _NoDevice(Exception):
    """The named (or a default) device is not there."""


def _sounddevice() -> ModuleType:
    """Import sounddevice on first use: it loads and initialises PortAudio, which reads the environment (e.g.
    ``PULSE_SERVER``) once, and it fails without libportaudio."""
    try:
        import sounddevice
    except OSError as exc:  # libportaudio2 missing
        raise AudioError(f"PortAudio is not available: {exc}") from exc
    module: ModuleType = sounddevice
    return module


def list_devices() -> list[dict[str, Any]]:
    """PortAudio's devices: name, index, max input and output channels, default sample rate, host API, defaults."""
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
        default_in, default_out = _default_indexes(sd)
    except sd.PortAudioError as exc:
        raise AudioError(f"cannot list audio devices: {exc}") from exc
    return [
        {
            "name": device["name"],
            "index": device["index"],
            "max_input_channels": device["max_input_channels"],
            "max_output_channels": device["max_output_channels"],
            "default_samplerate": device["default_samplerate"],
            "hostapi": hostapis[device["hostapi"]]["name"],
            "default_input": device["index"] == default_in,
            "default_output": device["index"] == default_out,
        }
        for device in devices
    ]


def _default_indexes(sd: Any) -> tuple[int, int]:
    indexes = []
    for kind in ("input", "output"):
        try:
            indexes.append(int(sd.query_devices(kind=kind)["index"]))
        except sd.PortAudioError:
            indexes.append(-1)
    return indexes[0], indexes[1]


def find_device(name: str | None, kind: str, sd: Any = None) -> int | None:
    """The index of the device called ``name`` that has ``kind`` ("input"/"output") channels: an exact name first,
    else the first whose name contains ``name`` (case-insensitive). ``None`` = the default device (``None`` back,
    after checking there is one). Raises ``_NoDevice``."""
    sd = sd or _sounddevice()
    channels = "max_input_channels" if kind == "input" else "max_output_channels"
    if name is None:
        try:
            sd.query_devices(kind=kind)
        except sd.PortAudioError as exc:
            raise _NoDevice(f"no default {kind} device") from exc
        return None
    devices = [device for device in sd.query_devices() if device[channels] > 0]
    wanted = name.casefold()
    for device in devices:
        if device["name"].casefold() == wanted:
            return int(device["index"])
    for device in devices:
        if wanted in device["name"].casefold():
            return int(device["index"])
    raise _NoDevice(f"no {kind} device named {name!r}")


class AudioEngine(AudioStreams):
    """Microphone and speaker with automatic reopening; see the module docstring for threads and robustness.

    ``on_capture(pcm, captured_at)`` gets every 20 ms frame (960 int16 samples) while capturing, with the time its
    first sample was captured on ``clock``; ``pull_playback()`` is asked for the next 960-sample frame to play
    (``None``: silence). ``level`` is the RMS dBFS of the last microphone block (updated whenever the microphone is
    open). ``status`` is "running", "reopening" (a stream failed; retrying every second), "no device" (a wanted
    device is not there; retrying) or "stopped"; ``on_status`` is called (from the keeper thread) when it changes.

    The microphone is opened only while capturing (``start_capture`` .. ``stop_capture``), unless
    ``keep_input_open``: then it stays open from ``start`` (push-to-talk starts without the device's open time and the
    level meter always runs) and capture only gates the frames.
    """

    # -- the app's side ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the speaker (and the microphone if ``keep_input_open``) and start the keeper thread. Returns once
        the first attempt is done; device trouble shows in ``status``, never as an exception (``AudioError`` only
        if PortAudio itself is missing)."""
        if self._thread is not None:
            return
        self._sd = _sounddevice()
        self._quit = False
        self._first_pass.clear()
        self._thread = threading.Thread(target=self._keeper, name="audio-keeper", daemon=True)
        self._thread.start()
        self._first_pass.wait(START_TIMEOUT)

    def stop(self) -> None:
        """Close every stream and end the keeper thread."""
        thread = self._thread
        if thread is None:
            return
        self._quit = True
        self._capturing = False
        self._wake.set()
        thread.join()
        self._thread = None

    def start_capture(self) -> None:
        """Deliver microphone frames to ``on_capture`` (PTT pressed); opens the microphone if it is closed."""
        self._capturing = True
        self._wake.set()

    def stop_capture(self) -> None:
        """Stop delivering frames (PTT released) and close the microphone unless ``keep_input_open``."""
        self._capturing = False
        self._wake.set()

    @property
    def capturing(self) -> bool:
        return self._capturing

    # -- the keeper thread ---------------------------------------------------------------------------------------

    def _keeper(self) -> None:
        try:
            while not self._quit:
                try:
                    self._pass()
                except Exception:  # the keeper must survive anything PortAudio throws at it
                    log.exception("audio keeper")
                self._first_pass.set()
                self._wake.wait(WATCH_INTERVAL)
                self._wake.clear()
        finally:
            for direction in (self._input, self._output):
                self._close(direction)
            self._first_pass.set()
            self._set_status(STOPPED)

    def _wanted(self, direction: StreamDirection) -> bool:
        if direction is self._output:
            return True
        return self.keep_input_open or self._capturing

    def _pass(self) -> None:
        now = time.monotonic()
        for direction in (self._input, self._output):
            self._watch(direction, now)
        for direction in (self._input, self._output):
            if not self._wanted(direction):
                direction.failed = None
                direction.missing = False
                direction.failed_attempts = 0
                self._close(direction)
            elif direction.stream is None and now >= direction.next_attempt:
                self._open(direction, now)
        self._update_status()

    def _watch(self, direction: StreamDirection, now: float) -> None:
        stream = direction.stream
        if stream is None:
            return
        reason = direction.failed
        if reason is None:
            try:
                active = bool(stream.active)
            except Exception as exc:
                active, reason = False, f"{direction.kind} stream unusable: {exc}"
            if reason is None and not active:
                reason = f"{direction.kind} stream stopped"
            elif reason is None and now - direction.last_callback > STALL_TIMEOUT:
                reason = f"{direction.kind} stream stalled (no callback for {now - direction.last_callback:.1f} s)"
        if reason is not None:
            log.warning("%s; reopening", reason)
            self.last_error = reason
            self._close(direction)
            direction.failed = reason
            direction.next_attempt = now  # first retry at once, then every retry_interval
            self.stats["stream_failures"] += 1
            self._set_status(REOPENING)  # even if the first retry below succeeds at once

    def _open(self, direction: StreamDirection, now: float) -> None:
        sd = self._sd
        other = self._output if direction is self._input else self._input
        retrying = direction.failed is not None or direction.missing
        if direction.missing or direction.failed_attempts > 0:
            self._requery(busy=other.stream is not None, now=now)
        try:
            index = find_device(direction.device, direction.kind, sd)
            if direction.kind == "input":
                stream = sd.RawInputStream(
                    samplerate=SAMPLE_RATE,
                    blocksize=self.blocksize,
                    device=index,
                    channels=CHANNELS,
                    dtype="int16",
                    latency="low",
                    callback=self._input_callback,
                )
            else:
                stream = sd.RawOutputStream(
                    samplerate=SAMPLE_RATE,
                    blocksize=self.blocksize,
                    device=index,
                    channels=CHANNELS,
                    dtype="int16",
                    latency=max(self.output_latency, 0.0),
                    callback=self._output_callback,
                )
            direction.last_callback = time.monotonic()
            direction.error_run = 0
            if direction.kind == "output":
                self._playback_buffer.clear()
            else:
                self._capture_buffer.clear()
            direction.stream = stream
            stream.start()
        except _NoDevice as exc:
            self._attempt_failed(direction, now, str(exc), missing=True)
        except Exception as exc:  # sd.PortAudioError, or anything else from the host API
            self._close(direction)
            self._attempt_failed(direction, now, f"cannot open the {direction.kind} device: {exc}", missing=False)
        else:
            if retrying:
                log.info("%s device reopened", direction.kind)
            direction.failed = None
            direction.missing = False
            direction.failed_attempts = 0

    def _attempt_failed(self, direction: StreamDirection, now: float, reason: str, *, missing: bool) -> None:
        if reason != self.last_error:
            log.warning("%s", reason)
        self.last_error = reason
        direction.missing = missing
        direction.failed = direction.failed or reason
        direction.failed_attempts += 1
        direction.next_attempt = now + self.retry_interval

    def _requery(self, *, busy: bool, now: float) -> None:
        """Re-enumerate devices (PortAudio lists them only when initialised: a re-plugged USB headset needs a fresh
        initialisation). Done from the second attempt on (or when the device was not listed), since the first retry
        of a stream that merely failed usually works. It closes every stream, so while the other direction still
        works it is done only every ``REQUERY_INTERVAL_BUSY`` seconds (that stream is reopened at once)."""
        if busy and now - self._last_requery < REQUERY_INTERVAL_BUSY:
            return
        self._last_requery = now
        sd = self._sd
        for direction in (self._input, self._output):
            self._close(direction)
        try:
            sd._terminate()
        except Exception as exc:
            log.debug("PortAudio terminate: %s", exc)
        try:
            sd._initialize()
        except Exception as exc:
            log.warning("PortAudio initialisation failed: %s", exc)
        # The other direction was healthy: reopen it in this same pass.
        for direction in (self._input, self._output):
            if direction.failed is None and not direction.missing:
                direction.next_attempt = 0.0

    def _close(self, direction: StreamDirection) -> None:
        stream, direction.stream = direction.stream, None
        if stream is None:
            return
        if direction is self._input:
            self.level = SILENCE_DBFS
        try:
            stream.abort(ignore_errors=True)
        except Exception as exc:
            log.debug("abort %s stream: %s", direction.kind, exc)
        try:
            stream.close(ignore_errors=True)
        except Exception as exc:
            log.debug("close %s stream: %s", direction.kind, exc)

    def _update_status(self) -> None:
        wanted = [direction for direction in (self._input, self._output) if self._wanted(direction)]
        if any(direction.missing for direction in wanted):
            status = NO_DEVICE
        elif any(direction.stream is None or direction.failed for direction in wanted):
            status = REOPENING
        else:
            status = RUNNING
            self.last_error = None
        self._set_status(status)

    def _set_status(self, status: str) -> None:
        if status == self.status:
            return
        self.status = status
        log.info("audio %s%s", status, f" ({self.last_error})" if status in (REOPENING, NO_DEVICE) else "")
        if self.on_status is not None:
            try:
                self.on_status(status)
            except Exception:
                log.exception("on_status failed")
