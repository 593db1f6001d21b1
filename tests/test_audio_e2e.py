"""Real (virtual) audio end to end: speech into Alice's microphone reaches Bob's and Carol's speakers through the
KMS-keyed group, the relay and floor control. Each client is a real `ptt-client talk` process whose sounddevice
streams run on a private PulseAudio with its own virtual microphone and speaker (tests/audio_harness.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.harness import GROUP, ROOT, System, start_system, stop_system
from tests.audio_harness import VirtualAudio, read_wav, speech_match, speech_wav

TEXT = "Fire crew two, proceed to the north entrance. Hose team, hold position until further notice."

# real-time audio on 2 cores: these run one after another on one worker, never beside each other
pytestmark = pytest.mark.xdist_group("audio")


def scripted_client(
    system: System, audio: VirtualAudio, user: str, command: list[str], script: str
) -> subprocess.Popen[str]:
    """``ptt-client COMMAND`` as ``user`` on its own virtual microphone and speaker, driven by ``script``."""
    env = {k: v for k, v in audio.env(user).items() if not k.startswith("PTT_")}
    env["PTT_KEYSTORE_PASSPHRASE"] = "keystore-passphrase"
    keystore = ["--keystore", str(system.root / f"{user}.ks")]
    options = ["--uri", f"sip:{user}@example.org", "--server-info", str(system.root / "server.json")]
    options += ["--script", script, "--report", str(system.root / f"{user}-talk.json"), "--quiet"]
    return subprocess.Popen(
        [sys.executable, "-m", "client.cli", *keystore, *command, *options],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def talk_client(system: System, audio: VirtualAudio, user: str, script: str) -> subprocess.Popen[str]:
    return scripted_client(system, audio, user, ["talk", "--group", GROUP], script)


def wait_for_line(process: subprocess.Popen[str], text: str, timeout: float = 30) -> None:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return
    raise AssertionError(f"no {text!r} from the client:\n" + "".join(seen))


def report(system: System, user: str) -> dict[str, Any]:
    return dict(json.loads((system.root / f"{user}-talk.json").read_text()))


def run_call(
    system: System, audio: VirtualAudio, speech: Path, tmp: Path, during: Callable[[], None] | None = None
) -> dict[str, float]:
    """Bob and Carol listen and record their speakers; Alice talks while the speech plays into her mic."""
    seconds = read_wav(speech).size / 48000
    listeners = {u: talk_client(system, audio, u, f"wait {seconds + 9:.1f}") for u in ("bob", "carol")}
    for process in listeners.values():
        wait_for_line(process, "connected as")
    recordings = {u: audio.record_speaker(u, tmp / f"{u}.wav", seconds + 7) for u in listeners}
    alice = talk_client(system, audio, "alice", f"wait 1; talk {seconds + 1.5:.1f}; wait 1")
    wait_for_line(alice, "connected as")
    time.sleep(1.4)  # Alice presses PTT 1 s after connecting; speak once the floor is hers
    mic = audio.play_into_mic("alice", speech)
    if during is not None:
        time.sleep(seconds / 3)
        during()
    mic.wait(timeout=seconds + 10)
    for client in (alice, *listeners.values()):
        out, _ = client.communicate(timeout=60)
        assert client.returncode == 0, out
    for recorder in recordings.values():
        recorder.wait(timeout=30)
    # waveform normalised cross-correlation (gain-insensitive), piece by piece so that a step of the receiver's
    # adaptive playout delay does not count as lost speech; the speech starts some seconds into each recording
    # (connect, floor request), so the lag window covers the recording
    reference = read_wav(speech)
    return {u: speech_match(reference, read_wav(tmp / f"{u}.wav"), max_lag_s=seconds + 7).score for u in listeners}


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualAudio]:
    with VirtualAudio(["alice", "bob", "carol", "dave"], tmp_path_factory.mktemp("pulse")) as virtual:
        yield virtual


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speech_wav(TEXT, tmp_path_factory.mktemp("speech") / "speech.wav")


def test_speech_reaches_the_other_members(audio: VirtualAudio, speech: Path, tmp_path: Path) -> None:
    system = start_system(tmp_path / "system", outsiders=("dave",))
    try:
        scores = run_call(system, audio, speech, tmp_path)
        assert scores["bob"] >= 0.9 and scores["carol"] >= 0.9, scores
        heard = report(system, "bob")["heard"]
        assert len(heard) == 1  # one talker (Alice's MKI)
        # Dave is in the domain but not in the group: the server refuses to let him join
        dave = talk_client(system, audio, "dave", "wait 1")
        out, _ = dave.communicate(timeout=60)
        assert dave.returncode == 6 and "not a member" in out  # client.errors.Exit.REFUSED
    finally:
        stop_system(system)


def test_speech_survives_five_percent_loss(audio: VirtualAudio, speech: Path, tmp_path: Path) -> None:
    system = start_system(tmp_path / "system", server_env={"PTT_RELAY_TEST_LOSS": "0.05"})
    try:
        scores = run_call(system, audio, speech, tmp_path)
        assert scores["bob"] >= 0.7 and scores["carol"] >= 0.7, scores
        frames = report(system, "bob")["frames"]
        assert frames["concealed"] + frames["fec"] > 0  # losses happened and were concealed
    finally:
        stop_system(system)


def test_rekey_mid_burst_loses_no_audio(audio: VirtualAudio, speech: Path, tmp_path: Path) -> None:
    system = start_system(tmp_path / "system", outsiders=("dave",))
    try:
        assert system.dispatch("group", "add-member", GROUP, "sip:dave@example.org").returncode == 0

        def rekey() -> None:  # removing a member makes a fresh GMK while Alice is talking
            removed = system.dispatch("group", "remove-member", GROUP, "sip:dave@example.org")
            assert removed.returncode == 0, removed.stderr

        scores = run_call(system, audio, speech, tmp_path, during=rekey)
        assert scores["bob"] >= 0.9 and scores["carol"] >= 0.9, scores
        bob = report(system, "bob")
        assert len(bob["keys"][GROUP]) == 2, bob  # old and new GMK
        assert len(bob["heard"]) == 2, bob  # Alice's packets arrived under both (two MKIs)
        assert bob["stats"]["media_bad"] == 0, bob
        sent = report(system, "alice")["frames"]["sent"]
        for listener in ("bob", "carol"):  # every frame Alice sent was played (none lost, none dropped as late)
            frames = report(system, listener)["frames"]
            assert frames["played"] - frames["concealed"] - frames["fec"] == sent, (sent, frames)
    finally:
        stop_system(system)
