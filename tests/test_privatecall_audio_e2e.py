"""``ptt-client call`` with real (virtual) audio: Alice calls Bob, whose running ``ptt-client talk`` answers the
automatic call; her speech reaches Bob's speaker and not Carol's (a member of their group, listening to it)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.harness import System, start_system, stop_system
from tests.audio_harness import VirtualAudio, read_wav, speech_match, speech_wav
from tests.test_audio_e2e import report, scripted_client, talk_client, wait_for_line

TEXT = "Bob, this is Alice on a private line. Meet me at the pump house in ten minutes."

pytestmark = pytest.mark.xdist_group("audio")


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualAudio]:
    with VirtualAudio(["alice", "bob", "carol"], tmp_path_factory.mktemp("pulse")) as virtual:
        yield virtual


def call_client(system: System, audio: VirtualAudio, user: str, callee: str, script: str) -> subprocess.Popen[str]:
    return scripted_client(system, audio, user, ["call", callee], script)


def test_a_private_call_is_heard_by_the_callee_only(audio: VirtualAudio, tmp_path: Path) -> None:
    speech = speech_wav(TEXT, tmp_path / "speech.wav")
    seconds = read_wav(speech).size / 48000
    system = start_system(tmp_path / "system")
    try:
        listeners = {u: talk_client(system, audio, u, f"wait {seconds + 12:.1f}") for u in ("bob", "carol")}
        for process in listeners.values():
            wait_for_line(process, "connected as")
        recordings = {u: audio.record_speaker(u, tmp_path / f"{u}.wav", seconds + 9) for u in listeners}
        alice = call_client(
            system,
            audio,
            "alice",
            "sip:bob@example.org",
            f"wait-connected 20; echo call-connected; wait 1; talk {seconds + 1.5:.1f}; wait 1; hangup; wait 0.5",
        )
        wait_for_line(alice, "calling sip:bob@example.org")
        # Speak once the call is up and the floor granted (pressed 1 s after connecting). Counting from "calling"
        # instead cut the first words on a loaded machine (setting the call up took longer): scores 0.62-0.85.
        wait_for_line(alice, "call-connected")
        time.sleep(1.3)
        mic = audio.play_into_mic("alice", speech)
        mic.wait(timeout=seconds + 10)
        for client in (alice, *listeners.values()):
            out, _ = client.communicate(timeout=60)
            assert client.returncode == 0, out
        for recorder in recordings.values():
            recorder.wait(timeout=30)
        reference = read_wav(speech)
        scores = {
            u: speech_match(reference, read_wav(tmp_path / f"{u}.wav"), max_lag_s=seconds + 9).score for u in listeners
        }
        assert scores["bob"] >= 0.9 and scores["carol"] < 0.5, scores
        calls = report(system, "alice")["calls"]
        assert [c["kind"] for c in calls] == ["connected", "ended"], calls
        assert not report(system, "carol")["heard"]  # not a frame of the call reached Carol's speaker
    finally:
        stop_system(system)
