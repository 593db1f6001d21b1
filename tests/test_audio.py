"""The audio engine on real (virtual) devices: a private PulseAudio per test module (``tests/audio_harness.py``),
an engine in a client process whose default devices are that client's virtual mic and speaker.

Capture: speech played into the mic comes out of ``on_capture`` intact (raw waveform correlation); playback:
frames given to ``pull_playback`` come out of the speaker intact; reopen: the mic is unplugged (its PulseAudio
module unloaded) while capturing and plugged back in, and the engine reports it and recovers by itself; the level
meter follows the input. Plus the engine's logic with a fake PortAudio (re-blocking, callback errors, stalls).
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client import audio
from client.audio import AudioEngine, rms_dbfs
from tests.audio_harness import VirtualAudio, normalised_xcorr, read_wav, speech_wav

ROOT = Path(__file__).resolve().parent.parent
SPEECH = "Alpha team, move to the north entrance. Over."

# The client process: an AudioEngine driven by commands on stdin, reporting JSON lines on stdout.
DRIVER = textwrap.dedent(
    """
    import json, sys, threading, time, wave
    from client.audio import AudioEngine, list_devices

    config = json.loads(sys.argv[1])
    lock = threading.Lock()
    def emit(event, **fields):
        with lock:
            print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)

    engine = AudioEngine(input_device=config.get("input_device"), blocksize=config.get("blocksize", 960),
                         keep_input_open=config.get("keep_input_open", False))
    captured, times, playback = [], [], []
    def on_capture(pcm, at):
        if not captured:
            emit("first_frame", at=at)
        captured.append(pcm)
        times.append(at)
    def pull():
        if playback:
            frame = playback.pop(0)
            if not playback:
                emit("played_all")
            return frame
        return None
    engine.on_capture = on_capture
    engine.pull_playback = pull
    engine.on_status = lambda status: emit("status", status=status)
    stop = threading.Event()
    def meter():
        while not stop.wait(0.05):
            emit("level", level=engine.level)
    threading.Thread(target=meter, daemon=True).start()
    emit("devices", devices=[d["name"] for d in list_devices()])
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "start":
            engine.start()
        elif command == "capture":
            engine.start_capture() if argument == "on" else engine.stop_capture()
        elif command == "play":
            with wave.open(argument, "rb") as wav:
                pcm = wav.readframes(wav.getnframes())
            frames = [pcm[i:i + 1920].ljust(1920, b"\\0") for i in range(0, len(pcm), 1920)]
            playback.extend(frames)
        elif command == "quit":
            break
        emit("ack", command=command, status=engine.status)
    engine.stop()
    stop.set()
    with open(config["capture_out"], "wb") as out:
        out.write(b"".join(captured))
    emit("done", status=engine.status, frames=len(captured), times=times, stats=engine.stats)
    """
)

# real-time audio on 2 cores: these run one after another on one worker, never beside each other
pytestmark = pytest.mark.xdist_group("audio")


class Driver:
    """A client process running the engine; events are collected by a reader thread."""

    def __init__(self, va: VirtualAudio, client: str, directory: Path, **config: Any) -> None:
        self.capture_out = directory / f"captured-{client}-{time.monotonic_ns()}.raw"
        config["capture_out"] = str(self.capture_out)
        self.process = subprocess.Popen(
            [sys.executable, "-c", DRIVER, json.dumps(config)],
            cwd=ROOT,
            env=va.env(client),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            event = json.loads(line)
            self.events.append(event)
            self._queue.put(event)
        self._queue.put(None)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        self._stderr.extend(self.process.stderr)

    def send(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.wait_for(lambda e: e["event"] == "ack" and e["command"] == command.split()[0])

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"timed out; events: {self._summary()}; stderr: {self.stderr()}") from None
            if event is None:
                raise AssertionError(f"driver exited ({self.process.wait()}); stderr: {self.stderr()}")
            if predicate(event):
                return event

    def quit(self) -> tuple[dict[str, Any], np.ndarray[Any, np.dtype[np.int16]]]:
        assert self.process.stdin is not None
        self.process.stdin.write("quit\n")
        self.process.stdin.flush()
        done = self.wait_for(lambda e: e["event"] == "done")
        assert self.process.wait(timeout=10) == 0, self.stderr()
        return done, np.frombuffer(self.capture_out.read_bytes(), dtype=np.int16)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stderr(self) -> str:
        return "".join(line for line in self._stderr if not line.startswith("ALSA lib"))[-3000:]

    def _summary(self) -> list[Any]:
        return [e if e["event"] != "level" else round(e["level"]) for e in self.events[-40:]]

    def statuses(self) -> list[str]:
        return [e["status"] for e in self.events if e["event"] == "status"]


@pytest.fixture(scope="module")
def va(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualAudio]:
    with VirtualAudio(["A", "B"], tmp_path_factory.mktemp("pulse")) as server:
        yield server


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speech_wav(SPEECH, tmp_path_factory.mktemp("speech") / "speech.wav")


@pytest.fixture
def driver_factory(va: VirtualAudio, tmp_path: Path) -> Iterator[Callable[..., Driver]]:
    drivers: list[Driver] = []

    def make(client: str = "A", **config: Any) -> Driver:
        driver = Driver(va, client, tmp_path, **config)
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        driver.kill()


def client_streams(va: VirtualAudio, kind: str) -> list[str]:
    """The client (protocol-native) streams of the server: kind "source-outputs" or "sink-inputs"."""
    return [line for line in va.pactl("list", "short", kind).splitlines() if "protocol-native" in line]


def test_capture_matches_speech_and_level_follows(
    va: VirtualAudio, speech: Path, driver_factory: Callable[..., Driver]
) -> None:
    reference = read_wav(speech)
    driver = driver_factory("A")
    devices = driver.wait_for(lambda e: e["event"] == "devices")["devices"]
    assert "default" in devices
    assert driver.send("start")["status"] == "running"
    assert client_streams(va, "source-outputs") == []  # the mic is opened only while capturing
    pressed = driver.send("capture on")["t"]
    first = driver.wait_for(lambda e: e["event"] == "first_frame", timeout=5)["t"]
    print(f"capture: first frame {(first - pressed) * 1000:.0f} ms after start_capture (mic opened on demand)")
    assert len(client_streams(va, "source-outputs")) == 1
    time.sleep(0.3)
    silence_until = time.monotonic()
    player = va.play_into_mic("A", speech)
    assert player.wait(timeout=20) == 0
    speech_end = time.monotonic()
    time.sleep(0.3)
    driver.send("capture off")
    time.sleep(0.3)
    assert client_streams(va, "source-outputs") == []
    done, captured = driver.quit()

    correlation, lag = normalised_xcorr(reference, captured)
    print(f"capture: correlation {correlation:.4f} at lag {lag * 1000:.0f} ms, {done['frames']} frames")
    assert correlation >= 0.9
    times = np.diff(done["times"])
    assert abs(float(np.median(times)) - 0.02) < 0.002  # 20 ms frames, timestamped on the capture clock
    assert done["frames"] * 960 == len(captured)
    assert done["stats"]["callback_errors"] == 0

    levels = [(e["t"], e["level"]) for e in driver.events if e["event"] == "level"]
    quiet = [level for t, level in levels if driver.events[0]["t"] < t < silence_until and level > -100]
    loud = [level for t, level in levels if silence_until + 0.2 < t < speech_end - 0.2]
    expected = rms_dbfs(reference.tobytes())
    print(f"level: quiet {quiet[-3:]}, speech max {max(loud):.1f} dBFS, speech RMS {expected:.1f} dBFS")
    assert not quiet  # digital silence reads as the floor
    assert max(loud) > expected - 3  # the meter follows the speech
    assert min(level for t, level in levels if t > speech_end + 0.25) == audio.SILENCE_DBFS  # closed: floor


def test_playback_reaches_the_speaker(
    va: VirtualAudio, speech: Path, driver_factory: Callable[..., Driver], tmp_path: Path
) -> None:
    reference = read_wav(speech)
    driver = driver_factory("A")
    assert driver.send("start")["status"] == "running"
    assert len(client_streams(va, "sink-inputs")) == 1
    recording = tmp_path / "speaker.wav"
    recorder = va.record_speaker("A", recording, seconds=len(reference) / 48000 + 1.2)
    time.sleep(0.3)
    driver.send(f"play {speech}")
    driver.wait_for(lambda e: e["event"] == "played_all", timeout=10)
    assert recorder.wait(timeout=15) == 0
    done, _ = driver.quit()
    heard = read_wav(recording)
    correlation, lag = normalised_xcorr(reference, heard)
    print(f"playback: correlation {correlation:.4f} at lag {lag * 1000:.0f} ms, {done['stats']}")
    assert correlation >= 0.9
    assert done["stats"]["frames_played"] == -(-len(reference) // 960)


def test_mic_unplugged_and_replugged_while_capturing(
    va: VirtualAudio, speech: Path, driver_factory: Callable[..., Driver]
) -> None:
    reference = read_wav(speech)
    driver = driver_factory("B")
    assert driver.send("start")["status"] == "running"
    driver.send("capture on")
    driver.wait_for(lambda e: e["event"] == "first_frame", timeout=5)
    va.remove_mic("B")
    unplugged = time.monotonic()
    event = driver.wait_for(lambda e: e["event"] == "status", timeout=5)
    assert event["status"] == "reopening"
    print(f"reopen: failure reported after {(event['t'] - unplugged) * 1000:.0f} ms")
    time.sleep(1.5)  # a couple of failed attempts while the mic is away
    assert driver.process.poll() is None
    assert driver.statuses()[-1] == "reopening"
    va.restore_mic("B")
    replugged = time.monotonic()
    event = driver.wait_for(lambda e: e["event"] == "status", timeout=5)
    assert event["status"] == "running"
    print(f"reopen: running again {(event['t'] - replugged) * 1000:.0f} ms after the mic came back")
    resumed = len([e for e in driver.events if e["event"] == "level"])
    time.sleep(0.3)
    player = va.play_into_mic("B", speech)
    assert player.wait(timeout=20) == 0
    time.sleep(0.3)
    done, captured = driver.quit()
    assert done["stats"]["stream_failures"] >= 1
    assert max(e["level"] for e in driver.events[resumed:] if e["event"] == "level") > -40
    # The speech after the replug is all there (the frames from before the unplug only add silence).
    correlation, _ = normalised_xcorr(reference, captured, max_lag_s=len(captured) / 48000)
    print(f"reopen: speech after replug correlates {correlation:.4f}; statuses {driver.statuses()}")
    assert correlation >= 0.9
    assert driver.statuses() == ["running", "reopening", "running", "stopped"]


def test_speaker_unplugged_and_replugged_while_capturing_goes_on(
    va: VirtualAudio, driver_factory: Callable[..., Driver]
) -> None:
    driver = driver_factory("B")
    assert driver.send("start")["status"] == "running"
    driver.send("capture on")
    driver.wait_for(lambda e: e["event"] == "first_frame", timeout=5)
    va.remove_speaker("B")
    assert driver.wait_for(lambda e: e["event"] == "status", timeout=5)["status"] == "reopening"
    time.sleep(1.2)
    va.restore_speaker("B")
    assert driver.wait_for(lambda e: e["event"] == "status", timeout=5)["status"] == "running"
    assert len(client_streams(va, "sink-inputs")) == 1
    done, _ = driver.quit()
    duration = done["times"][-1] - done["times"][0]
    print(f"speaker reopen: {done['frames']} frames captured over {duration:.2f} s meanwhile")
    assert done["frames"] >= 0.8 * duration / 0.02  # the microphone kept going (but for a re-enumeration)


def test_missing_named_device_is_reported_not_raised(driver_factory: Callable[..., Driver]) -> None:
    driver = driver_factory("A", input_device="no such headset", keep_input_open=True)
    assert driver.send("start")["status"] == "no device"
    time.sleep(1.2)
    _, captured = driver.quit()
    assert driver.statuses() == ["no device", "stopped"]
    assert len(captured) == 0


# -- the engine's logic with a fake PortAudio ----------------------------------------------------------------------


class FakeStream:
    def __init__(self, fake: FakeSoundDevice, kind: str, **settings: Any) -> None:
        self.fake = fake
        self.kind = kind
        self.settings = settings
        self.callback = settings["callback"]
        self.active = False
        self.closed = False

    def start(self) -> None:
        self.active = True

    def abort(self, ignore_errors: bool = True) -> None:
        self.active = False

    def close(self, ignore_errors: bool = True) -> None:
        self.closed = True


class FakeSoundDevice:
    """Enough of sounddevice for the engine: devices, streams, (re)initialisation."""

    class PortAudioError(Exception):
        pass

    def __init__(self) -> None:
        self.devices: list[dict[str, Any]] = [
            {"name": "Built-in Microphone", "index": 0, "max_input_channels": 2, "max_output_channels": 0},
            {"name": "Built-in Output", "index": 1, "max_input_channels": 0, "max_output_channels": 2},
        ]
        for device in self.devices:
            device.update(hostapi=0, default_samplerate=48000.0)
        self.hostapis = [{"name": "ALSA"}]
        self.streams: list[FakeStream] = []
        self.initialisations = 0
        self.fail_open: set[str] = set()

    def query_devices(self, kind: str | None = None) -> Any:
        if kind is None:
            return list(self.devices)
        channels = f"max_{kind}_channels"
        for device in self.devices:
            if device[channels] > 0:
                return device
        raise self.PortAudioError(f"no default {kind} device")

    def query_hostapis(self) -> list[dict[str, Any]]:
        return self.hostapis

    def _terminate(self) -> None:
        for stream in self.streams:
            stream.active = False

    def _initialize(self) -> None:
        self.initialisations += 1

    def _stream(self, kind: str, **settings: Any) -> FakeStream:
        if kind in self.fail_open:
            raise self.PortAudioError("Device unavailable")
        stream = FakeStream(self, kind, **settings)
        self.streams.append(stream)
        return stream

    def RawInputStream(self, **settings: Any) -> FakeStream:  # sounddevice's names
        return self._stream("input", **settings)

    def RawOutputStream(self, **settings: Any) -> FakeStream:
        return self._stream("output", **settings)

    def live(self, kind: str) -> FakeStream:
        streams = [s for s in self.streams if s.kind == kind and s.active and not s.closed]
        assert len(streams) == 1, streams
        return streams[0]


class FakeTime:
    inputBufferAdcTime = 10.0  # PortAudio's names
    currentTime = 10.005


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def fake_sd(monkeypatch: pytest.MonkeyPatch) -> FakeSoundDevice:
    fake = FakeSoundDevice()
    monkeypatch.setattr(audio, "_sounddevice", lambda: fake)
    return fake


def test_reblocks_to_20_ms_frames_and_survives_callback_errors(fake_sd: FakeSoundDevice) -> None:
    ticks = iter(range(1000))
    engine = AudioEngine(
        input_device="microphone", blocksize=480, keep_input_open=True, clock=lambda: 100.0 + next(ticks) / 100
    )
    frames: list[tuple[bytes, float]] = []
    engine.on_capture = lambda pcm, at: frames.append((pcm, at))
    engine.start()
    try:
        assert engine.status == "running"
        microphone = fake_sd.live("input")
        assert microphone.settings["device"] == 0 and microphone.settings["latency"] == "low"
        speaker = fake_sd.live("output")
        assert speaker.settings["device"] is None and speaker.settings["latency"] == 0.1
        block = np.arange(480, dtype=np.int16).tobytes()
        microphone.callback(block, 480, FakeTime(), 0)  # not capturing: level only
        assert frames == [] and engine.level == pytest.approx(rms_dbfs(block)) and -42 < engine.level < -41
        engine.start_capture()
        for _ in range(4):
            microphone.callback(block, 480, FakeTime(), 0)
        assert [len(pcm) for pcm, _ in frames] == [1920, 1920]
        # Each frame is timed by its first block (clock at that callback minus PortAudio's input delay, 5 ms).
        assert [at for _, at in frames] == pytest.approx([100.01 - 0.005, 100.03 - 0.005])

        def broken(pcm: bytes, at: float) -> None:
            raise RuntimeError("app bug")

        engine.on_capture = broken
        microphone.callback(block, 480, FakeTime(), 0)
        microphone.callback(block, 480, FakeTime(), 0)
        assert engine.stats["callback_errors"] == 1

        played = [np.full(960, 7, dtype=np.int16).tobytes(), b"\x01\x00" * 10]
        engine.pull_playback = lambda: played.pop(0) if played else None
        out = bytearray(960)
        for expected in ([7] * 480, [7] * 480, [1] * 10 + [0] * 470, [0] * 480):
            speaker.callback(out, 480, FakeTime(), 0)
            assert list(np.frombuffer(bytes(out), dtype=np.int16)) == expected
        assert engine.stats["frames_played"] == 2
    finally:
        engine.stop()
    assert engine.status == "stopped"
    assert all(stream.closed for stream in fake_sd.streams)


def test_stalled_stream_is_reopened_and_missing_device_waited_for(
    fake_sd: FakeSoundDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audio, "STALL_TIMEOUT", 0.3)
    statuses: list[str] = []
    engine = AudioEngine(retry_interval=0.2)
    engine.on_status = statuses.append
    engine.start()
    try:
        first = fake_sd.live("output")
        first.callback(bytearray(1920), 960, FakeTime(), 0)
        # The speaker stops calling back (a wedged device): reopened after STALL_TIMEOUT.
        wait_until(lambda: first.closed and fake_sd.live("output") is not first)
        wait_until(lambda: engine.status == "running")
        assert statuses[:3] == ["running", "reopening", "running"]
        # The microphone is unplugged: no input device at all until it comes back.
        microphone = fake_sd.devices.pop(0)
        engine.start_capture()
        wait_until(lambda: engine.status == "no device")
        assert engine.last_error is not None and "no default input device" in engine.last_error
        fake_sd.devices.insert(0, microphone)
        wait_until(lambda: engine.status == "running")
        assert fake_sd.initialisations >= 1  # devices were looked up afresh
        fake_sd.live("input")
        engine.stop_capture()
        wait_until(lambda: not [s for s in fake_sd.streams if s.kind == "input" and not s.closed])
    finally:
        engine.stop()


def test_stream_that_stops_or_cannot_open_is_retried(fake_sd: FakeSoundDevice) -> None:
    engine = AudioEngine(retry_interval=0.1)
    engine.start()
    try:
        speaker = fake_sd.live("output")
        fake_sd.fail_open.add("output")
        speaker.active = False  # PortAudio ended it (host error, CallbackAbort)
        wait_until(lambda: engine.status == "reopening")
        time.sleep(0.35)
        assert engine.status == "reopening" and "Device unavailable" in (engine.last_error or "")
        fake_sd.fail_open.clear()
        wait_until(lambda: engine.status == "running")
        assert fake_sd.live("output") is not speaker
    finally:
        engine.stop()


def test_list_devices_and_name_lookup(fake_sd: FakeSoundDevice) -> None:
    names = [(d["name"], d["default_input"], d["default_output"]) for d in audio.list_devices()]
    assert names == [("Built-in Microphone", True, False), ("Built-in Output", False, True)]
    assert audio.find_device("built-in output", "output", fake_sd) == 1
    assert audio.find_device("Built-in", "input", fake_sd) == 0
    with pytest.raises(audio._NoDevice):
        audio.find_device("Built-in Output", "input", fake_sd)
