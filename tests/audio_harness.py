"""Real audio devices on a machine with no sound card: a private PulseAudio with one virtual mic and one virtual
speaker per client (the recipe and its pitfalls are in /work/shared/AUDIO_TESTING.md).

For client ``X`` the server has:

- ``spkX``: a null sink, X's speaker; what X plays is read back from ``spkX.monitor``;
- ``micX_feed``: a null sink the test writes the "voice" into, and ``micX``: a remap source on
  ``micX_feed.monitor``, X's microphone;
- two keepalive loopbacks into the ``void`` sink, so the sinks and the source keep running (without them the first
  capture callback came up to 1.75 s after a stream started);
- ``norewinds=1`` on every null sink (without it speech through the remapped mic correlated only 0.51-0.92).

A client process gets ``env(X)``: PortAudio's default devices are then X's mic and speaker, so the client's ordinary
sounddevice code runs unchanged. ``speech_wav`` makes speech with espeak-ng and ``normalised_xcorr`` compares what was
sent with what was heard.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 48000
STARTUP_TIMEOUT = 10.0
STOP_GRACE = 5.0
SOCKET_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux

# The daemon's own configuration (read from $PULSE_CONFIG instead of /etc/pulse/daemon.conf). rescue-streams=no:
# when a device disappears its streams are killed, as when a USB headset is unplugged from a plain ALSA machine, so
# the client sees the failure. With the default (yes) PulseAudio silently moves a capture stream to the default
# source, and PortAudio notices nothing (the stream keeps running on another device).
DAEMON_CONF = """\
rescue-streams = no
default-sample-format = s16le
default-sample-rate = 48000
default-sample-channels = 1
"""

# Variables from the caller's environment that would point a client elsewhere.
_INHERITED_AUDIO_VARIABLES = ("PULSE_SINK", "PULSE_SOURCE", "PULSE_COOKIE", "PULSE_CONFIG", "PULSE_CLIENTCONFIG")
_CLIENT_NAME = re.compile(r"[A-Za-z0-9]+\Z")


class VirtualAudio:
    """A private PulseAudio server in ``directory`` with a mic and a speaker per client (a context manager)."""

    def __init__(self, clients: list[str], directory: Path) -> None:
        for name in clients:
            if not _CLIENT_NAME.match(name):
                raise ValueError(f"client names are letters and digits: {name!r}")
        if len(set(clients)) != len(clients):
            raise ValueError("duplicate client names")
        self.clients = list(clients)
        self.directory = Path(directory).resolve()
        self.socket = self.directory / "native"
        self._socket_directory: Path | None = None
        if len(str(self.socket)) > SOCKET_PATH_MAX:  # a deep pytest tmp_path: put the socket somewhere short
            self._socket_directory = Path(tempfile.mkdtemp(prefix="vaudio-"))
            self.socket = self._socket_directory / "native"
        self.process: subprocess.Popen[bytes] | None = None
        self._children: list[subprocess.Popen[bytes]] = []

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def __enter__(self) -> VirtualAudio:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        for tool in ("pulseaudio", "pactl", "paplay", "parecord"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is not installed (run scripts/setup)")
        self.directory.mkdir(parents=True, exist_ok=True)
        for sub in ("run", "state"):
            (self.directory / sub).mkdir(mode=0o700, exist_ok=True)
            (self.directory / sub).chmod(0o700)
        script = self.directory / "vaudio.pa"
        script.write_text(self._script())
        config = self.directory / "daemon.conf"
        config.write_text(DAEMON_CONF)
        log = self.directory / "pulse.log"
        self.process = subprocess.Popen(
            [
                "pulseaudio", "-n", "-F", str(script), "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit",
                "--use-pid-file=no", "--realtime=no", "--high-priority=no", f"--log-target=file:{log}",
            ],
            env={**self.env(None), "PULSE_CONFIG": str(config)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"pulseaudio exited with {self.process.returncode}: {self._log_tail()}")
            probe = subprocess.run(["pactl", "info"], env=self.env(None), capture_output=True, timeout=5)
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pulseaudio did not become ready: {self._log_tail()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the helpers started here and the server: terminate, wait, kill after 5 s."""
        for child in self._children:
            _terminate(child)
        self._children.clear()
        if self.process is not None:
            _terminate(self.process)
            self.process = None
        if self._socket_directory is not None:
            shutil.rmtree(self._socket_directory, ignore_errors=True)
            self._socket_directory = None

    def _script(self) -> str:
        lines = [
            f"load-module module-native-protocol-unix auth-anonymous=1 auth-cookie-enabled=0 socket={self.socket}",
            f"load-module module-null-sink sink_name=void rate={SAMPLE_RATE} channels=1 norewinds=1",
        ]
        for name in self.clients:
            lines += [
                self._speaker_line(name),
                f"load-module module-null-sink sink_name=mic{name}_feed rate={SAMPLE_RATE} channels=1 norewinds=1",
                self._mic_line(name),
                self._speaker_keepalive_line(name),
                self._mic_keepalive_line(name),
            ]
        lines.append("set-default-sink void")
        lines.append("set-default-source void.monitor")
        return "\n".join(lines) + "\n"

    @staticmethod
    def _speaker_line(name: str) -> str:
        return f"load-module module-null-sink sink_name=spk{name} rate={SAMPLE_RATE} channels=1 norewinds=1"

    @staticmethod
    def _speaker_keepalive_line(name: str) -> str:
        return f"load-module module-loopback source=spk{name}.monitor sink=void latency_msec=40"

    @staticmethod
    def _mic_line(name: str) -> str:
        return f"load-module module-remap-source master=mic{name}_feed.monitor source_name=mic{name} channels=1"

    @staticmethod
    def _mic_keepalive_line(name: str) -> str:
        return f"load-module module-loopback source=mic{name} sink=void latency_msec=40"

    def _log_tail(self) -> str:
        try:
            return (self.directory / "pulse.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    # -- environment and control ---------------------------------------------------------------------------------

    def pulse_env(self) -> dict[str, str]:
        """The variables that point libpulse (and ALSA's pulse plugin) at this server."""
        run = str(self.directory / "run")
        return {
            "PULSE_SERVER": f"unix:{self.socket}",
            "PULSE_RUNTIME_PATH": run,
            "PULSE_STATE_PATH": str(self.directory / "state"),
            "XDG_RUNTIME_DIR": run,
        }

    def env(self, client: str | None) -> dict[str, str]:
        """The whole environment for a client process (``os.environ`` plus the server's variables and, for a client,
        ``PULSE_SINK=spkX`` and ``PULSE_SOURCE=micX``, so PortAudio's default devices are that client's)."""
        env = dict(os.environ)
        for key in _INHERITED_AUDIO_VARIABLES:
            env.pop(key, None)
        env.update(self.pulse_env())
        if client is not None:
            self._check_client(client)
            env["PULSE_SINK"] = f"spk{client}"
            env["PULSE_SOURCE"] = f"mic{client}"
        return env

    def _check_client(self, client: str) -> None:
        if client not in self.clients:
            raise KeyError(f"no such client: {client!r}")

    def pactl(self, *args: str) -> str:
        result = subprocess.run(["pactl", *args], env=self.env(None), capture_output=True, text=True, timeout=10)
        if result.returncode != 0:
            raise RuntimeError(f"pactl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def play_into_mic(self, client: str, wav: Path) -> subprocess.Popen[bytes]:
        """Play a WAV file into X's microphone (``paplay --device=micX_feed``); the caller waits for it."""
        self._check_client(client)
        return self._spawn(["paplay", f"--device=mic{client}_feed", "--latency-msec=20", str(wav)])

    def record_speaker(self, client: str, out: Path, seconds: float) -> subprocess.Popen[bytes]:
        """Record what X's speaker plays for ``seconds`` into ``out`` (48 kHz mono s16le WAV); wait for the process,
        it stops itself (SIGINT, so parecord closes the WAV properly)."""
        self._check_client(client)
        # timeout(1) exits 124 when it stopped parecord, the normal end here: report that as 0.
        return self._spawn(
            [
                "sh", "-c", 'timeout --signal=INT --kill-after=5 "$@"; rc=$?; [ $rc -eq 124 ] && exit 0; exit $rc',
                "record_speaker", f"{seconds:.3f}",
                "parecord", f"--device=spk{client}.monitor", f"--rate={SAMPLE_RATE}", "--channels=1",
                "--format=s16le", "--file-format=wav", "--latency-msec=20", str(out),
            ]
        )  # fmt: skip

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            argv, env=self.env(None), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._children = [child for child in self._children if child.poll() is None]
        self._children.append(process)
        return process

    def remove_mic(self, client: str) -> None:
        """Unplug X's microphone: unload its remap-source module (its keepalive loopback goes with it)."""
        self._check_client(client)
        self._unload("module-remap-source", f"source_name=mic{client}")

    def restore_mic(self, client: str) -> None:
        """Plug X's microphone back in: the remap source and its keepalive loopback, as at startup."""
        self._check_client(client)
        self.pactl(*self._mic_line(client).split())
        self.pactl(*self._mic_keepalive_line(client).split())

    def remove_speaker(self, client: str) -> None:
        """Unplug X's speaker: unload its null sink (its monitor and keepalive loopback go with it)."""
        self._check_client(client)
        self._unload("module-null-sink", f"sink_name=spk{client}")

    def restore_speaker(self, client: str) -> None:
        self._check_client(client)
        self.pactl(*self._speaker_line(client).split())
        self.pactl(*self._speaker_keepalive_line(client).split())

    def _unload(self, module: str, argument: str) -> None:
        for line in self.pactl("list", "short", "modules").splitlines():
            fields = line.split("\t")
            if len(fields) >= 3 and fields[1] == module and argument in fields[2].split():
                self.pactl("unload-module", fields[0])
                return
        raise RuntimeError(f"no {module} with {argument} is loaded")

    def sources(self) -> list[str]:
        return [line.split("\t")[1] for line in self.pactl("list", "short", "sources").splitlines() if "\t" in line]


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stderr is not None:
        process.stderr.close()


# -- signals ----------------------------------------------------------------------------------------------------


def speech_wav(text: str, path: Path) -> Path:
    """Speak ``text`` with espeak-ng and write it as a 48 kHz mono 16-bit WAV at ``path`` (sox resamples)."""
    raw = path.with_name(path.stem + ".espeak.wav")
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, capture_output=True, timeout=30)
    subprocess.run(
        ["sox", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", "-e", "signed-integer", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    raw.unlink()
    return path


def read_wav(path: Path) -> npt.NDArray[np.int16]:
    """The samples of a 16-bit mono WAV file."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
            raise ValueError(f"{path}: not 16-bit mono")
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)


def write_wav(path: Path, samples: npt.NDArray[np.int16], rate: int = SAMPLE_RATE) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.asarray(samples, dtype="<i2").tobytes())
    return path


def envelope(signal_: npt.ArrayLike, window_s: float = 0.01, rate: int = SAMPLE_RATE) -> npt.NDArray[np.float64]:
    """The RMS envelope of a signal, one value per ``window_s`` (10 ms: the syllable rhythm of speech)."""
    x = np.asarray(signal_, dtype=np.float64)
    step = max(1, round(window_s * rate))
    usable = len(x) // step * step
    result: npt.NDArray[np.float64] = np.sqrt(np.mean(x[:usable].reshape(-1, step) ** 2, axis=1))
    return result


def normalised_xcorr(
    reference: npt.ArrayLike,
    recording: npt.ArrayLike,
    max_lag_s: float = 2.0,
    *,
    rate: float = SAMPLE_RATE,
) -> tuple[float, float]:
    """Where ``reference`` best occurs in ``recording``: (correlation, lag in seconds; positive = recording later).

    The correlation at lag L is sum(ref[n] * rec[n + L]) / sqrt(sum ref[n]^2 * sum rec[n + L]^2), the second sum over
    the recording window the reference lines up with: 1.0 only if the recording holds the whole reference, scaled
    by any gain, and nothing else in that window; missing pieces, noise or distortion lower it. Gain does not matter,
    delay is searched over |L| <= max_lag_s (by FFT), DC is removed first.

    This is the strict test: raw waveforms, for a path that should be bit-transparent apart from gain and delay (a
    virtual mic or speaker). For a path through a codec, whose waveform legitimately differs (Opus at voice bitrates
    keeps the spectrum, not the phase), pass ``envelope(x)`` of both and ``rate=100``: the 10 ms RMS envelopes
    still correlate above 0.9 when the same words are heard, and a dropout or wrong timing still shows.
    """
    ref = np.asarray(reference, dtype=np.float64)
    rec = np.asarray(recording, dtype=np.float64)
    if ref.ndim != 1 or rec.ndim != 1 or len(ref) == 0 or len(rec) == 0:
        raise ValueError("two non-empty 1-D signals are needed")
    ref = ref - ref.mean()
    rec = rec - rec.mean()
    ref_energy = float(np.dot(ref, ref))
    if ref_energy == 0.0:
        raise ValueError("the reference is silent")
    max_lag = round(max_lag_s * rate)
    n, m = len(ref), len(rec)
    size = 1 << (n + m - 1).bit_length()
    # xc[k] = sum_n ref[n] * rec[n + k] for k = -(n-1) .. m-1 (negative k wrap to the end of the circular result).
    spectrum = np.fft.rfft(rec, size) * np.conj(np.fft.rfft(ref, size))
    circular = np.fft.irfft(spectrum, size)
    lags = np.arange(max(-(n - 1), -max_lag), min(m - 1, max_lag) + 1)
    xc = circular[lags % size]
    # Energy of rec[k : k + n] (clipped to the recording) for every lag, from a cumulative sum.
    cumulative = np.concatenate(([0.0], np.cumsum(rec * rec)))
    lo = np.clip(lags, 0, m)
    hi = np.clip(lags + n, 0, m)
    window_energy = cumulative[hi] - cumulative[lo]
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.where(window_energy > 0, xc / np.sqrt(ref_energy * np.maximum(window_energy, 1e-300)), 0.0)
    best = int(np.argmax(corr))
    return float(corr[best]), float(lags[best] / rate)


@dataclass(frozen=True)
class SpeechMatch:
    """How the speech of a reference is heard in a recording through an adaptive jitter buffer (``speech_match``)."""

    score: float  # energy-weighted mean of the segments' correlations
    worst: float  # the lowest segment correlation
    lag: float  # seconds, the whole reference's best lag
    lags: tuple[float, ...]  # seconds, each voiced segment's own best lag


def speech_match(
    reference: npt.ArrayLike,
    recording: npt.ArrayLike,
    max_lag_s: float,
    *,
    segment_s: float = 0.25,
    drift_s: float = 0.1,
    rate: int = SAMPLE_RATE,
) -> SpeechMatch:
    """``normalised_xcorr`` for speech heard through a receiver whose playout delay may step during the burst.

    An adaptive jitter buffer grows its delay by whole frames when packets come late (a frame of concealment, then
    the speech carries on 20 ms later): nothing is lost, yet the one waveform correlation of the whole signal,
    which needs a single lag, falls from 0.94 to about 0.6 at one 20 ms step. Here the whole reference is placed
    first, then each voiced ``segment_s`` piece of it at its own best lag within ``drift_s`` of that; ``score`` is
    the pieces' correlations weighted by their energy, so missing or garbled speech still lowers it as much as
    before, and ``lags`` shows how the delay moved. Pieces with under 1 % of the mean piece energy are left out.
    """
    ref = np.asarray(reference, dtype=np.float64)
    rec = np.asarray(recording, dtype=np.float64)
    _, lag = normalised_xcorr(ref, rec, max_lag_s, rate=rate)
    step, drift = round(segment_s * rate), round(drift_s * rate)
    pieces = [ref[i : i + step] for i in range(0, len(ref) - step + 1, step)]
    energies = np.array([float(np.dot(p - p.mean(), p - p.mean())) for p in pieces])
    if not len(pieces) or energies.sum() == 0.0:
        raise ValueError("the reference is silent")
    scores: list[float] = []
    weights: list[float] = []
    lags: list[float] = []
    for index, (piece, energy) in enumerate(zip(pieces, energies, strict=True)):
        if energy < 0.01 * energies.mean():
            continue
        expected = index * step + round(lag * rate)  # where the piece starts in the recording at the global lag
        start = max(0, expected - drift)
        window = rec[start : max(0, expected + step + drift)]
        if expected + drift < 0 or len(window) == 0:  # the piece would lie outside the recording
            correlation, found = 0.0, lag
        else:
            correlation, offset = normalised_xcorr(piece, window, (expected - start + drift) / rate, rate=rate)
            found = (start + round(offset * rate) - index * step) / rate
            if abs(found - lag) > drift_s + 1 / rate:  # the search window is wider than the drift allowed
                correlation = 0.0
        scores.append(max(correlation, 0.0))
        weights.append(energy)
        lags.append(found)
    score = float(np.average(scores, weights=weights))
    return SpeechMatch(score, min(scores), lag, tuple(lags))


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.audio_harness DIR NAME...``: virtual mic and speaker per NAME on a machine without a sound
    card; writes DIR/NAME.env (source it before starting that person's client) and runs until Ctrl-C."""
    import signal
    import sys
    import time

    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print("usage: python -m tests.audio_harness DIR NAME [NAME...]", file=sys.stderr)
        return 2
    directory = Path(args[0]).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    names = args[1:]
    with VirtualAudio(names, directory) as audio:
        for name in names:
            env = audio.env(name)
            keys = [*audio.pulse_env(), "PULSE_SINK", "PULSE_SOURCE"]
            lines = [f"export {key}={env[key]}" for key in keys]
            (directory / f"{name}.env").write_text("\n".join(lines) + "\n")
            print(
                f"{name}: source {directory / f'{name}.env'}  (mic: play into mic{name}_feed; speaker: "
                f"record spk{name}.monitor)",
                flush=True,
            )
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            while True:
                time.sleep(3600)
        except (KeyboardInterrupt, SystemExit):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
