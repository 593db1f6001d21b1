"""Client audio benchmark: mouth-to-ear latency, burst start and CPU per client, on real (virtual) audio devices.

Run with ``.venv/bin/python -m bench.voice [--quick] [--repeats N]`` (N runs, default 3, of about 55 s each;
``--quick`` about 40 s each), then min / median / max of each headline figure over the runs. Each run starts a private
PulseAudio with a virtual mic and speaker per client (``tests/audio_harness.py``), a KMS and a group server on
127.0.0.1 (``bench/harness.py``) and three real ``ptt-client talk`` processes: Alice talks, Bob and Carol listen.
Alice's script is a few short bursts (``talk 1.5; wait 1``), then a long one. Her mic hears a 600 Hz tone during
the short bursts, speech at the start of the long one, then a train of 1 kHz beeps (20 ms each, 250-400 ms apart at
random, so that the train cannot be lined up one beep off).

Mouth to ear. Recorders (``--record``, internal), all the same code, capture Alice's mic source (what her capture
stream sees) and Bob's and Carol's speaker monitors (what their playback streams play). Each maps its samples to
CLOCK_MONOTONIC: a block's last sample had come in by the block's callback, so over the blocks around a sample the
smallest "callback time - duration recorded so far" dates the samples (plus the recorder's own latency, the same for
every recorder, so it cancels: two recorders on one signal, one on the remapped mic and one on its feed's monitor,
agree within 0.2 ms). Two ``parecord`` processes would not do: each recording starts at a PulseAudio chunk
boundary, so they are off from each other by whole chunks of ~13 ms. A beep's delay is its onset (Gaussian
band-pass around 1 kHz, first rise above 30 % of the peak) at a listener's speaker minus at Alice's mic: capture
block, Opus, SRTP, relay, jitter buffer, decoding and both streams' buffers on the virtual devices. Beeps are paired
by the lag that lines most of them up, then the next lag for the rest, so a latency that changes during the train
still counts.

Device round trip. While Alice's short bursts go on, a calibration process (``--loopback``, internal) runs the
client's own AudioEngine (960-sample blocks, mic latency 'low', speaker 0.1 s) on a fourth virtual client "cal"
and copies each captured frame to its speaker, with the fewest frames waiting (silent frames are dropped while more
than one waits, so queueing between the two callbacks does not count as device latency); the same beeps and
recorders measure it. A stream pair's latency depends on how its buffers filled when it started, so two engines are
started one after the other and their beeps pooled. The median is subtracted from the mouth-to-ear figures: what
remains is what the system adds to the devices' own latency. Raw, device and corrected values are all printed;
the device figure's spread (a copied frame waits 0 or 20 ms for the speaker, which pulls two frames every 40 ms,
and it differs from one stream pair to the next) is the uncertainty of the correction.

Burst start. The clients' reports give the time of each of Alice's PTT presses (``presses``) and of the first frame
of each burst Bob's and Carol's clients handed to their speakers (``burst_starts``), both ``time.time()``: press to
first played frame, for every burst and listener. For information, the tone's onset in their speaker recordings
after each short burst's press is printed too (that includes the virtual speaker's output buffer).

CPU. utime + stime of each client process (all threads) from /proc/PID/stat at the start and the end of a window
of the long burst while speech plays, over the wall time, as % of one core; the scheduler's nanosecond counts
(/proc/PID/task/*/schedstat) are printed beside them as a finer reading.

``--record OUT`` and ``--loopback`` are the internal entry points of the helper processes (their devices come from
the environment: PULSE_SOURCE / PULSE_SINK); both run until a line (or EOF) arrives on stdin.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.harness import GROUP, ROOT, System, start_system, stop_system
from bench.repeats import Figure, summarise
from tests.audio_harness import SAMPLE_RATE, VirtualAudio, read_wav, speech_wav, write_wav

Floats = npt.NDArray[np.float64]

TARGET_MOUTH_TO_EAR_P95_MS = 80.0
TARGET_BURST_START_MS = 150.0
TARGET_CPU_PERCENT = 5.0  # the talker
TARGET_LISTENER_CPU_PERCENT = 2.5
FIGURES = [
    Figure("CPU talker (alice)", "% of a core", TARGET_CPU_PERCENT),
    Figure("CPU listener (bob)", "% of a core", TARGET_LISTENER_CPU_PERCENT),
    Figure("CPU listener (carol)", "% of a core", TARGET_LISTENER_CPU_PERCENT),
    Figure("mouth to ear p50 (minus device round trip)", "ms"),
    Figure("mouth to ear p95 (minus device round trip)", "ms", TARGET_MOUTH_TO_EAR_P95_MS),
    Figure("burst start p50", "ms", TARGET_BURST_START_MS),
    Figure("burst start p95", "ms", TARGET_BURST_START_MS),
    Figure("other processes on the machine", "% of a core"),
]

RECORD_BLOCK = 480  # recorder blocks of 10 ms: finer time stamps than the client's 20 ms
CLOCK_WINDOW = 100  # blocks either side of a sample whose time stamps date it (1 s)
BEEP_HZ = 1000.0
BEEP_S = 0.02
BEEP_BAND = (BEEP_HZ, 200.0)  # band-pass centre and width (Hz)
BEEP_GAP = (0.25, 0.40)  # seconds between beep onsets, uniformly at random
TONE_HZ = 600.0
TONE_BAND = (TONE_HZ, 100.0)
SILENT = 328  # a frame whose samples all stay under 1 % of full scale is silence (the calibration may drop it)
ONSET_FRACTION = 0.3  # an onset: the band-passed signal first exceeds this fraction of its peak
HOLD_S = 0.15  # quiet for this long before an onset
MATCH_TOLERANCE_S = 0.015
MIN_SEGMENT = 3
MAX_DELAY_S = 1.5
LISTENERS = ("bob", "carol")
SHORT_TALK_S = 1.5
SHORT_WAIT_S = 1.0
SPEECH = (
    "Engine two, proceed to the north entrance and stand by. Ladder crew, hold position at the east stairwell "
    "until the smoke clears. Command, all units are in place and waiting for your signal."
)


# -- signals and analysis -----------------------------------------------------------------------------------------


def tone(frequency: float, seconds: float, level: float = 0.3, ramp_s: float = 0.002) -> Floats:
    """A sine of ``level`` (of full scale) with raised-cosine ramps at both ends."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    signal_ = level * np.sin(2 * np.pi * frequency * t)
    ramp = min(round(ramp_s * SAMPLE_RATE), len(t) // 2)
    if ramp:
        window = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
        signal_[:ramp] *= window
        signal_[-ramp:] *= window[::-1]
    result: Floats = signal_
    return result


def beep_train(count: int, rng: np.random.Generator) -> tuple[Floats, list[float]]:
    """``count`` beeps after 0.3 s of silence, 0.3 s of silence after the last: the signal and the onsets (s)."""
    starts = 0.3 + np.concatenate(([0.0], np.cumsum(rng.uniform(*BEEP_GAP, count - 1))))
    samples = np.zeros(round((starts[-1] + BEEP_S + 0.3) * SAMPLE_RATE))
    beep = tone(BEEP_HZ, BEEP_S, level=0.5)
    for start in starts:
        at = round(start * SAMPLE_RATE)
        samples[at : at + len(beep)] = beep
    return samples, [float(s) for s in starts]


def pcm16(samples: Floats) -> npt.NDArray[np.int16]:
    return np.asarray(np.clip(np.round(samples * 32767), -32768, 32767), dtype=np.int16)


def band_pass(samples: Floats, centre: float, width: float) -> Floats:
    """A zero-phase Gaussian band-pass (``width`` = the Gaussian's standard deviation in Hz, so its impulse response
    lasts about 1 / (2 pi width) s either side: onsets move by well under a millisecond, and alike in the two
    recordings compared). Zero-padded, so the end of the signal does not wrap around to its start."""
    size = 1 << (len(samples) + SAMPLE_RATE // 10).bit_length()
    spectrum = np.fft.rfft(samples, size)
    frequencies = np.fft.rfftfreq(size, 1 / SAMPLE_RATE)
    spectrum *= np.exp(-0.5 * ((frequencies - centre) / width) ** 2)
    result: Floats = np.fft.irfft(spectrum, size)[: len(samples)]
    return result


def onsets(samples: Floats, band: tuple[float, float], floor: float = 0.01) -> list[int]:
    """Sample indexes where the band-passed signal rises above ``ONSET_FRACTION`` of its peak after ``HOLD_S`` of
    staying below it (none if the peak is under ``floor`` of full scale: nothing was heard)."""
    if len(samples) == 0:
        return []
    magnitude = np.abs(band_pass(samples, *band))
    peak = float(magnitude.max())
    if peak < floor:
        return []
    above = np.flatnonzero(magnitude > ONSET_FRACTION * peak)
    if len(above) == 0:
        return []
    first = np.concatenate(([True], np.diff(above) > HOLD_S * SAMPLE_RATE))
    return [int(i) for i in above[first]]


def match_delays(mouth: list[float], ear: list[float], *, min_segment: int = MIN_SEGMENT) -> list[float]:
    """Per beep heard, its onset at the ear minus at the mouth (seconds). The lag that lines up the most beeps
    (within ``MATCH_TOLERANCE_S``; the irregular spacing makes a lag one beep off line up only a few) takes those
    beeps; then the best lag for the beeps left, and so on while a lag lines up at least ``min_segment`` of them.
    So the latency may change during the train (a jitter buffer that grew, playout that alternates between two
    positions) and every beep still counts. Each ear onset goes to one beep at most."""
    m = np.sort(np.asarray(mouth, dtype=np.float64))
    e = np.sort(np.asarray(ear, dtype=np.float64))
    if len(m) == 0 or len(e) == 0:
        return []
    differences = e[None, :] - m[:, None]
    free_mouth = np.ones(len(m), dtype=bool)
    free_ear = np.ones(len(e), dtype=bool)
    delays: dict[int, float] = {}
    while True:
        usable = free_mouth[:, None] & free_ear[None, :] & (differences >= 0) & (differences <= MAX_DELAY_S)
        candidates = np.unique(differences[usable])
        if len(candidates) == 0:
            break
        scores = [
            int((usable & (np.abs(differences - lag) < MATCH_TOLERANCE_S)).any(axis=1).sum()) for lag in candidates
        ]
        best = int(np.argmax(scores))
        if scores[best] < min_segment:
            break
        lag = float(candidates[best])
        near = usable & (np.abs(differences - lag) < MATCH_TOLERANCE_S)
        for i in np.flatnonzero(near.any(axis=1)):
            options = np.flatnonzero(near[i] & free_ear)
            if len(options) == 0:
                continue
            j = int(options[np.argmin(np.abs(differences[i, options] - lag))])
            delays[int(i)] = float(differences[i, j])
            free_mouth[i] = False
            free_ear[j] = False
    return [delays[i] for i in sorted(delays)]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


@dataclass
class Recording:
    """What a ``--record`` helper captured: samples (full scale 1.0) and per callback the samples so far and the
    CLOCK_MONOTONIC time."""

    samples: Floats
    ends: npt.NDArray[np.int64]
    times: Floats
    xruns: int
    offsets: Floats = field(init=False)

    def __post_init__(self) -> None:
        self.offsets = self.times - self.ends / SAMPLE_RATE

    @classmethod
    def load(cls, path: Path) -> Recording:
        with np.load(path) as data:
            return cls(
                data["samples"].astype(np.float64) / 32768.0,
                data["ends"].astype(np.int64),
                data["times"].astype(np.float64),
                int(data["xruns"]),
            )

    def _offset(self, index: float) -> float:
        k = int(np.searchsorted(self.ends, index))
        return float(self.offsets[max(0, k - CLOCK_WINDOW) : k + CLOCK_WINDOW + 1].min())

    def time_of(self, index: float) -> float:
        """CLOCK_MONOTONIC time at which sample ``index`` came in (plus the recorder's constant latency)."""
        return self._offset(index) + index / SAMPLE_RATE

    def index_of(self, at: float) -> int:
        index = (at - float(self.offsets.min())) * SAMPLE_RATE
        index = (at - self._offset(index)) * SAMPLE_RATE
        return int(min(max(0.0, index), len(self.samples)))

    def onset_times(self, start: float, end: float, band: tuple[float, float]) -> list[float]:
        lo, hi = self.index_of(start), self.index_of(end)
        return [self.time_of(lo + i) for i in onsets(self.samples[lo:hi], band)]


# -- helper processes ---------------------------------------------------------------------------------------------


def record_main(out: Path) -> int:
    """``--record OUT``: record the default input (PULSE_SOURCE) in 10 ms blocks until stdin has a line or EOF."""
    import sounddevice as sd

    blocks: list[bytes] = []
    ends: list[int] = []
    times: list[float] = []
    state = {"samples": 0, "xruns": 0}
    first = threading.Event()

    def callback(indata: Any, frames: int, time_info: Any, status: Any) -> None:
        now = time.monotonic()
        if status:
            state["xruns"] += 1
        blocks.append(bytes(indata))
        state["samples"] += frames
        ends.append(state["samples"])
        times.append(now)
        first.set()

    with sd.RawInputStream(
        samplerate=SAMPLE_RATE, channels=1, dtype="int16", blocksize=RECORD_BLOCK, latency="low", callback=callback
    ):
        if not first.wait(5.0):
            print("no audio from the input device", flush=True)
            return 1
        print("ready", flush=True)
        sys.stdin.readline()
    np.savez(
        out,
        samples=np.frombuffer(b"".join(blocks), dtype="<i2"),
        ends=np.asarray(ends, dtype=np.int64),
        times=np.asarray(times, dtype=np.float64),
        xruns=state["xruns"],
    )
    return 0


def loopback_main() -> int:
    """``--loopback``: the client's AudioEngine copying every captured frame to its speaker, until stdin has a line
    or EOF; then one JSON line with the engine's stats and the copy queue's depth."""
    from client.audio import AudioEngine

    engine = AudioEngine()  # the client's settings: 960-sample blocks, mic latency 'low', speaker 0.1 s
    queue: deque[bytes] = deque()
    depths: dict[int, int] = {}
    first = threading.Event()

    def captured(pcm: bytes, captured_at: float) -> None:
        queue.append(pcm)
        first.set()

    def pull() -> bytes | None:
        depths[len(queue)] = depths.get(len(queue), 0) + 1
        try:
            while len(queue) > 1 and int(np.abs(np.frombuffer(queue[0], dtype="<i2").astype(np.int32)).max()) < SILENT:
                queue.popleft()  # only the newest frame may wait: queueing here is not the devices' latency
            return queue.popleft()
        except IndexError:
            return None

    engine.on_capture = captured
    engine.pull_playback = pull
    engine.start()
    engine.start_capture()
    try:
        if not first.wait(5.0):
            print(f"no audio from the microphone ({engine.status})", flush=True)
            return 1
        print("ready", flush=True)
        sys.stdin.readline()
    finally:
        engine.stop()
    print(json.dumps({"stats": engine.stats, "depths": depths}), flush=True)
    return 0


# -- orchestration ------------------------------------------------------------------------------------------------


class Processes:
    """Every process this benchmark starts, stopped in ``stop_all`` (SIGTERM, then SIGKILL after 5 s)."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[str]] = []

    def start(self, argv: list[str], env: dict[str, str], *, stdin: bool = False) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.running.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.running.clear()


def wait_for_line(process: subprocess.Popen[str], text: str, timeout: float = 30.0) -> None:
    """Read the process's output until a line contains ``text`` (a reader thread, so the timeout holds)."""
    assert process.stdout is not None
    stdout = process.stdout
    seen: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in stdout:
            seen.append(line)
            if text in line:
                found.set()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found.is_set():
        raise RuntimeError(f"no {text!r} from {process.args!r}:\n" + "".join(seen))


def start_helper(processes: Processes, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """A ``--record`` or ``--loopback`` helper process; it prints "ready" once its audio runs."""
    return processes.start([sys.executable, "-m", "bench.voice", *args], env, stdin=True)


def recorder(processes: Processes, audio: VirtualAudio, source: str, out: Path) -> subprocess.Popen[str]:
    env = audio.env(None)
    env["PULSE_SOURCE"] = source
    return start_helper(processes, env, "--record", str(out))


def finish(process: subprocess.Popen[str], timeout: float = 20.0) -> str:
    """Tell a helper to stop (a line on stdin) and return the rest of its output."""
    out, _ = process.communicate("stop\n", timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"{process.args!r} exited with {process.returncode}: {out}")
    return out


def talk_client(
    processes: Processes, system: System, audio: VirtualAudio, user: str, script: str
) -> subprocess.Popen[str]:
    """A real `ptt-client talk` process for ``user`` on that client's virtual mic and speaker."""
    env = {k: v for k, v in audio.env(user).items() if not k.startswith("PTT_")}
    env["PTT_KEYSTORE_PASSPHRASE"] = (system.root / "ks.pw").read_text().strip()
    argv = [
        sys.executable, "-m", "client.cli", "--keystore", str(system.root / f"{user}.ks"), "talk",
        "--uri", f"sip:{user}@example.org", "--server-info", str(system.root / "server.json"), "--group", GROUP,
        "--script", script, "--report", str(system.root / f"{user}-talk.json"), "--quiet",
    ]  # fmt: skip
    return processes.start(argv, env)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (/proc/PID/stat fields 14 and 15, all its threads) in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def on_cpu_seconds(pid: int) -> float:
    """Time on a CPU of all a process's threads, from the scheduler's nanosecond counts (/proc/PID/task/*/schedstat),
    for a finer reading than the 10 ms ticks of utime + stime."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that has just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def machine_busy_seconds() -> float:
    """CPU time all cores spent busy since boot (/proc/stat: user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU time of this process and all its descendants: the live ones from /proc, the ended ones as far as they
    were waited for (cutime, cstime)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            parents[int(entry.name)] = int(fields[1])
            times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    me = os.getpid()
    total = 0.0
    for pid, cpu in times.items():
        ancestor = pid
        while ancestor not in (me, 0, 1) and ancestor in parents:
            ancestor = parents[ancestor]
        if ancestor == me:
            total += cpu
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return total + (int(fields[13]) + int(fields[14])) / tick  # + cutime + cstime


def sleep_until(at: float) -> None:
    delay = at - time.monotonic()
    if delay > 0:
        time.sleep(delay)


@dataclass
class Plan:
    bursts: int
    beeps: int
    cpu_window: float
    cal_beeps: int  # per calibration session
    cal_sessions: int


@dataclass
class Results:
    raw_ms: list[float] = field(default_factory=list)
    raw_by_listener: dict[str, list[float]] = field(default_factory=dict)
    cal_ms: list[float] = field(default_factory=list)
    beeps_sent: int = 0
    cal_beeps_sent: int = 0
    burst_ms: list[float] = field(default_factory=list)
    burst_acoustic_ms: list[float] = field(default_factory=list)
    presses: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    on_cpu: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    others_percent: float | None = None  # % of one core other processes on this machine used during the call
    call_seconds: float = 0.0


class Calibration(threading.Thread):
    """The devices' own round trip, measured in the background while Alice's short bursts go on: the client's
    AudioEngine copying mic to speaker on virtual client "cal", the same beeps and recorders as for the call. Each
    stream pair starts with its own buffer fill, so ``sessions`` engines are started one after the other and the
    beeps of all of them pooled."""

    def __init__(self, processes: Processes, audio: VirtualAudio, tmp: Path, beeps: int, sessions: int) -> None:
        super().__init__(name="calibration", daemon=True)
        self.processes = processes
        self.audio = audio
        self.tmp = tmp
        self.beeps = beeps
        self.sessions = sessions
        self.delays_ms: list[float] = []
        self.notes: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._measure()
        except BaseException as exc:
            self.error = exc

    def _measure(self) -> None:
        mouth = recorder(self.processes, self.audio, "miccal", self.tmp / "cal-mouth.npz")
        ear = recorder(self.processes, self.audio, "spkcal.monitor", self.tmp / "cal-ear.npz")
        for process in (mouth, ear):
            wait_for_line(process, "ready", timeout=15.0)
        stats: dict[str, int] = {}
        depths: dict[int, int] = {}
        start = time.monotonic()
        for session in range(self.sessions):
            train, _ = beep_train(self.beeps, np.random.default_rng(10 + session))
            wav = write_wav(self.tmp / f"cal-beeps-{session}.wav", pcm16(train))
            loop = start_helper(self.processes, self.audio.env("cal"), "--loopback")
            wait_for_line(loop, "ready", timeout=15.0)
            player = self.processes.start(
                ["paplay", "--device=miccal_feed", "--latency-msec=20", str(wav)], self.audio.env(None)
            )
            player.communicate(timeout=60)
            time.sleep(0.5)
            summary = json.loads(finish(loop).strip().splitlines()[-1])
            for key, value in summary["stats"].items():
                stats[key] = stats.get(key, 0) + int(value)
            for key, value in summary["depths"].items():
                depths[int(key)] = depths.get(int(key), 0) + int(value)
        end = time.monotonic()
        finish(mouth)
        finish(ear)
        mouth_rec = Recording.load(self.tmp / "cal-mouth.npz")
        ear_rec = Recording.load(self.tmp / "cal-ear.npz")
        delays = match_delays(mouth_rec.onset_times(start, end, BEEP_BAND), ear_rec.onset_times(start, end, BEEP_BAND))
        self.delays_ms = [d * 1e3 for d in delays]
        if stats["input_overflows"] or stats["output_underflows"] or mouth_rec.xruns or ear_rec.xruns:
            self.notes.append(
                f"calibration: {stats['input_overflows']} overflows, {stats['output_underflows']} underflows, "
                f"recorder xruns {mouth_rec.xruns}/{ear_rec.xruns}"
            )
        self.notes.append(
            "calibration copy: frames waiting at the speaker's pulls "
            + ", ".join(f"{k}: {depths[k]}x" for k in sorted(depths))
            + " (on these devices the speaker pulls two 20 ms frames every 40 ms)"
        )


def call(processes: Processes, system: System, audio: VirtualAudio, tmp: Path, plan: Plan, results: Results) -> None:
    """Alice talks (short bursts, then a long one with speech and beeps); Bob and Carol listen; the calibration runs
    during the short bursts."""
    train, _ = beep_train(plan.beeps, np.random.default_rng(1))
    results.beeps_sent = plan.beeps
    results.cal_beeps_sent = plan.cal_beeps * plan.cal_sessions
    short_s = plan.bursts * (SHORT_TALK_S + SHORT_WAIT_S)
    speech = read_wav(speech_wav(SPEECH, tmp / "speech.wav")).astype(np.float64) / 32768.0
    # What Alice's mic hears from 1.5 s after she connected (her first press is at 2.0 s): the tone over the short
    # bursts and the first second of the long one, speech over the CPU window, a pause, then the beeps.
    tone_s = 0.5 + short_s + 1.0
    speech_s = plan.cpu_window + 1.0
    train_s = len(train) / SAMPLE_RATE
    mouth_signal = np.concatenate(
        [
            tone(TONE_HZ, tone_s, level=0.25),
            np.resize(speech, round(speech_s * SAMPLE_RATE)),  # repeated if too short
            np.zeros(round(0.6 * SAMPLE_RATE)),
            train,
        ]
    )
    mouth_wav = write_wav(tmp / "alice-mouth.wav", pcm16(mouth_signal))
    beeps_at = tone_s + speech_s + 0.6  # where the train starts in that file
    long_talk = 1.0 + speech_s + 0.6 + train_s + 0.8
    alice_s = 2.0 + short_s + long_talk + 0.5
    script = (
        "wait 2; " + f"talk {SHORT_TALK_S}; wait {SHORT_WAIT_S}; " * plan.bursts + f"talk {long_talk:.2f}; wait 0.5"
    )

    mouth = recorder(processes, audio, "micalice", tmp / "mouth.npz")
    ears = {u: recorder(processes, audio, f"spk{u}.monitor", tmp / f"ear-{u}.npz") for u in LISTENERS}
    for process in (mouth, *ears.values()):
        wait_for_line(process, "ready", timeout=15.0)
    busy_start, own_start, wall_start_call = machine_busy_seconds(), own_cpu_seconds(), time.monotonic()
    # Alice first, then the listeners, whose script ends 2.5 s after Alice's would if they connected with her.
    alice = talk_client(processes, system, audio, "alice", script)
    listeners = {u: talk_client(processes, system, audio, u, f"wait {alice_s + 2.5:.1f}") for u in LISTENERS}
    wait_for_line(alice, "connected as")
    connected = time.monotonic()
    for user, process in listeners.items():
        wait_for_line(process, "connected as")
        if time.monotonic() > connected + 2.0:
            results.notes.append(f"{user} connected after Alice's first press")
    sleep_until(connected + 1.5)
    played_from = time.monotonic()
    mic = audio.play_into_mic("alice", mouth_wav)
    calibration = Calibration(processes, audio, tmp, plan.cal_beeps, plan.cal_sessions)
    calibration.start()
    try:
        pids = {"alice (talker)": alice.pid, **{f"{u} (listener)": p.pid for u, p in listeners.items()}}
        sleep_until(connected + 2.0 + short_s + 1.3)  # the long burst's press + 1.3 s: speech is playing
        cpu_start = {name: (cpu_seconds(pid), on_cpu_seconds(pid)) for name, pid in pids.items()}
        wall_start = time.monotonic()
        sleep_until(wall_start + plan.cpu_window)
        cpu_end = {name: (cpu_seconds(pid), on_cpu_seconds(pid)) for name, pid in pids.items()}
        wall = time.monotonic() - wall_start
        results.cpu = {name: 100.0 * (cpu_end[name][0] - cpu_start[name][0]) / wall for name in pids}
        results.on_cpu = {name: 100.0 * (cpu_end[name][1] - cpu_start[name][1]) / wall for name in pids}
        mic.wait(timeout=60)
        out, _ = alice.communicate(timeout=30)
        if alice.returncode != 0:
            raise RuntimeError(f"Alice's client failed: {out}")
        time.sleep(0.5)
        end = time.monotonic()
        for process in (mouth, *ears.values()):
            finish(process)
        for user, process in listeners.items():
            out, _ = process.communicate(timeout=30)
            if process.returncode != 0:
                raise RuntimeError(f"{user}'s client failed: {out}")
        others = (machine_busy_seconds() - busy_start) - (own_cpu_seconds() - own_start)
        results.call_seconds = time.monotonic() - wall_start_call
        results.others_percent = max(0.0, 100.0 * others / results.call_seconds)
    finally:
        calibration.join(timeout=60)
    if calibration.error is not None:
        raise calibration.error
    results.cal_ms = calibration.delays_ms
    results.notes.extend(calibration.notes)

    reports = {u: json.loads((system.root / f"{u}-talk.json").read_text()) for u in ("alice", "bob", "carol")}
    mouth_rec = Recording.load(tmp / "mouth.npz")
    ear_recs = {u: Recording.load(tmp / f"ear-{u}.npz") for u in LISTENERS}
    xruns = {"mouth": mouth_rec.xruns, **{u: r.xruns for u, r in ear_recs.items()}}
    if any(xruns.values()):
        results.notes.append(f"recorder xruns during the call: {xruns}")

    # mouth to ear: the beeps, from where the train starts in Alice's mic feed (paplay starts within tens of ms)
    window = (played_from + beeps_at - 0.2, end)
    spoken = mouth_rec.onset_times(*window, BEEP_BAND)
    for user, ear_rec in ear_recs.items():
        delays = match_delays(spoken, ear_rec.onset_times(*window, BEEP_BAND))
        results.raw_by_listener[user] = [d * 1e3 for d in delays]
        results.raw_ms += results.raw_by_listener[user]

    presses = [float(p) for p in reports["alice"]["presses"]]
    sent = int(reports["alice"]["frames"]["sent"])
    for user in listeners:
        missing = sent - int(reports[user]["stats"]["media_in"])
        concealed = int(reports[user]["frames"]["concealed"]) - 2 * len(presses)  # 2 at each burst's end
        if missing > 0 or concealed > 0:
            results.notes.append(f"{user}: {missing} of {sent} packets missing, {concealed} frames concealed in bursts")

    # burst start: each press of Alice's to the first frame of that burst played by Bob and by Carol
    results.presses = len(presses)
    granted = sum(1 for entry in reports["alice"]["floor"] if entry["subtype"] == "GRANTED")
    if granted < len(presses):
        results.notes.append(f"Alice got the floor {granted} times for {len(presses)} presses")
    for user in listeners:
        starts = [float(s) for s in reports[user]["burst_starts"]]
        for i, press in enumerate(presses):
            following = presses[i + 1] if i + 1 < len(presses) else float("inf")
            heard = [s for s in starts if press < s < following]
            if heard:
                results.burst_ms.append((heard[0] - press) * 1e3)
    # and, for information, the tone's onset in the listeners' speaker recordings after each short burst's press
    wall_to_monotonic = time.monotonic() - time.time()
    for ear_rec in ear_recs.values():
        for press in presses[: plan.bursts]:
            at = press + wall_to_monotonic
            heard = ear_rec.onset_times(at, at + SHORT_TALK_S - 0.2, TONE_BAND)
            if heard:
                results.burst_acoustic_ms.append((heard[0] - at) * 1e3)


def run(plan: Plan) -> Results:
    results = Results()
    processes = Processes()
    with tempfile.TemporaryDirectory(prefix="ptt-bench-voice-") as directory:
        tmp = Path(directory)
        with VirtualAudio(["alice", "bob", "carol", "cal"], tmp / "pulse") as audio:
            system: System | None = None
            try:
                system = start_system(tmp / "system")
                call(processes, system, audio, tmp, plan, results)
            finally:
                processes.stop_all()
                if system is not None:
                    stop_system(system)
    return results


# -- output -------------------------------------------------------------------------------------------------------


def row(name: str, value: float | None, target: float | None, unit: str, why: str = "") -> str:
    if value is None:
        return f"{name:<44} {'n/a':>9}        not measured reliably{': ' + why if why else ''}"
    text = f"{name:<44} {value:9.1f} {unit:<4}"
    if target is None:
        return text
    ratio = target / value if value > 0 else float("inf")
    return f"{text}   target <= {target:g} {unit}   ratio {ratio:5.2f}  {'ok' if value <= target else 'MISSED'}"


def report(plan: Plan, results: Results, figures: dict[str, float | None]) -> list[str]:
    """The run's report; its headline figures go into ``figures`` (named as in FIGURES)."""
    lines: list[str] = []
    summary: list[str] = []
    raw, cal = results.raw_ms, results.cal_ms
    enough_raw = len(raw) >= max(5, results.beeps_sent * len(LISTENERS) // 2)
    enough_cal = len(cal) >= max(5, results.cal_beeps_sent // 2)
    lines.append("mouth to ear (Alice's mic source -> Bob's and Carol's speaker monitors, through the relay):")
    if raw:
        matched = ", ".join(f"{u} {len(d)}/{results.beeps_sent}" for u, d in results.raw_by_listener.items())
        lines.append(
            f"  raw         p50 {percentile(raw, 50):6.1f} ms   p95 {percentile(raw, 95):6.1f} ms   "
            f"min {min(raw):6.1f}   max {max(raw):6.1f}   (beeps matched: {matched})"
        )
        if max(raw) - min(raw) > 40:
            lines.append(f"  the latency changed by {max(raw) - min(raw):.0f} ms during the train (all beeps count)")
    else:
        lines.append(f"  raw         no beeps matched (of {results.beeps_sent} per listener)")
    if cal:
        lines.append(
            f"  device round trip (AudioEngine mic -> speaker copy on the virtual devices): median "
            f"{percentile(cal, 50):6.1f} ms   p5 {percentile(cal, 5):6.1f}   p95 {percentile(cal, 95):6.1f}   "
            f"mean {float(np.mean(cal)):6.1f}   ({len(cal)}/{results.cal_beeps_sent} beeps matched)"
        )
        spread = percentile(cal, 95) - percentile(cal, 5)
        if spread >= 10:
            lines.append(
                f"  (the device round trip spreads over {spread:.0f} ms: a copied frame waits for the next of the "
                f"speaker's pulls, so the corrected figures are uncertain by about +-{spread / 2:.0f} ms)"
            )
    else:
        lines.append(f"  device round trip: no beeps matched (0/{results.cal_beeps_sent})")
    corrected_p50 = corrected_p95 = None
    why = ""
    if enough_raw and enough_cal:
        device = percentile(cal, 50)
        corrected_p50 = percentile(raw, 50) - device
        corrected_p95 = percentile(raw, 95) - device
        lines.append(
            f"  corrected   p50 {corrected_p50:6.1f} ms   p95 {corrected_p95:6.1f} ms   (raw minus the device median)"
        )
    else:
        why = "too few beeps matched" + ("" if enough_cal else " in the calibration")
        lines.append(f"  corrected   not measured reliably: {why}")
    summary.append(row("mouth to ear p50 (minus device round trip)", corrected_p50, None, "ms", why))
    summary.append(
        row("mouth to ear p95 (minus device round trip)", corrected_p95, TARGET_MOUTH_TO_EAR_P95_MS, "ms", why)
    )
    summary.append(row("mouth to ear p95 raw (for information)", percentile(raw, 95) if raw else None, None, "ms"))
    summary.append(row("device round trip median (subtracted)", percentile(cal, 50) if cal else None, None, "ms"))

    burst = results.burst_ms
    lines.append(
        f"burst start (Alice's PTT press -> first frame of the burst played by Bob / Carol), "
        f"{results.presses} presses, {len(burst)} bursts heard:"
    )
    burst_p50 = burst_p95 = None
    if len(burst) >= 3:
        burst_p50, burst_p95 = percentile(burst, 50), percentile(burst, 95)
        lines.append(f"  p50 {burst_p50:6.1f} ms   p95 {burst_p95:6.1f} ms   max {max(burst):6.1f} ms")
    else:
        lines.append("  not measured reliably: fewer than 3 bursts heard")
    acoustic = results.burst_acoustic_ms
    if acoustic:
        lines.append(
            f"  for information, the tone's onset in their speaker monitors (adds the virtual speaker's buffer): "
            f"p50 {percentile(acoustic, 50):6.1f} ms   max {max(acoustic):6.1f} ms ({len(acoustic)} bursts)"
        )
    figures["mouth to ear p50 (minus device round trip)"] = corrected_p50
    figures["mouth to ear p95 (minus device round trip)"] = corrected_p95
    figures["burst start p50"], figures["burst start p95"] = burst_p50, burst_p95
    summary.append(row("burst start p50", burst_p50, TARGET_BURST_START_MS, "ms", "fewer than 3 bursts heard"))
    summary.append(row("burst start p95", burst_p95, TARGET_BURST_START_MS, "ms", "fewer than 3 bursts heard"))

    lines.append(f"CPU per client process while Alice talks (speech), over {plan.cpu_window:.0f} s, % of one core:")
    resolution = 100.0 / (os.sysconf("SC_CLK_TCK") * plan.cpu_window)
    lines.append(
        "  utime+stime  "
        + "   ".join(f"{name} {value:5.2f} %" for name, value in results.cpu.items())
        + f"   (+-{resolution:.2f} % from 10 ms ticks)"
    )
    lines.append("  schedstat    " + "   ".join(f"{name} {value:5.2f} %" for name, value in results.on_cpu.items()))
    for name, value in results.cpu.items():
        user, role = name.split(" ", 1)
        target = TARGET_CPU_PERCENT if role == "(talker)" else TARGET_LISTENER_CPU_PERCENT
        summary.append(row(f"CPU {name}", value, target, "%"))
        figures[f"CPU {role.strip('()')} ({user})"] = value
    figures["other processes on the machine"] = results.others_percent
    for note in results.notes:
        lines.append(f"note: {note}")
    if results.others_percent is not None:
        load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
        lines.append(
            f"machine: other processes (not this benchmark's) used {results.others_percent:.0f} % of a core during "
            f"the {results.call_seconds:.0f} s call, on {os.cpu_count()} cores (load average now {load})"
        )
        if results.others_percent > 10:
            lines.append(
                "  WARNING: the machine was busy with other work: late packets grow the jitter buffer, so the "
                "latencies above may be worse than on an idle machine; run again when it is quiet"
            )
    lines.append("")
    lines.append("summary:")
    lines.extend(summary)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer bursts and beeps (about 40 s)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the whole call (default 3)")
    parser.add_argument("--record", metavar="OUT", help=argparse.SUPPRESS)
    parser.add_argument("--loopback", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.record:
        return record_main(Path(args.record))
    if args.loopback:
        return loopback_main()
    plan = Plan(3, 15, 3.0, 5, 2) if args.quick else Plan(6, 30, 5.0, 15, 2)
    print(
        f"ptt client audio benchmark: {os.cpu_count()} cores, python {sys.version.split()[0]}, "
        f"virtual devices on a private PulseAudio, 3 clients + relay on 127.0.0.1"
    )
    runs: list[dict[str, float | None]] = []
    for number in range(1, args.repeats + 1):
        started = time.monotonic()
        print(f"\n-- run {number} of {args.repeats}", flush=True)
        runs.append({})
        for line in report(plan, run(plan), runs[-1]):
            print(line)
        print(f"(run took {time.monotonic() - started:.0f} s)", flush=True)
    print()
    for line in summarise(FIGURES, runs):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
