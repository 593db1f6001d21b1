"""Deferred delivery end to end with real processes (KMS, group server, headless clients; harness in
bench/harness.py): Alice leaves Bob, who is offline, a voice message of speech (and calls him: he is unreachable, so
the call becomes a second voice message); Bob connects later and plays both (cross-correlation with what was spoken
≥ 0.8); Alice, online meanwhile, is told "delivered" then "played"; Carol cannot fetch them, nor upload Alice's
I_MESSAGE as hers, nor one with a forged signature; Alice's upload of the same I_MESSAGE again is refused; the
server's store holds ciphertext only (no Opus frame of the speech, no key any of its identities opens)."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.harness import GROUP, ROOT, System, clean_env, run, start_system, stop_system, wait_all
from client.codec import OpusEncoder
from client.headless_history import read_frames
from client.keystore import Keystore
from ptt.mikey.errors import MikeyError
from ptt.mikey.imessage import ReplayCache
from ptt.privatecall.pck import receive_pck_message
from ptt.recording import parse_burst
from tests.audio_harness import read_wav, speech_match, speech_wav

ALICE, BOB, CAROL, DAVE = (f"sip:{u}@example.org" for u in ("alice", "bob", "carol", "dave"))
TEXTS = (
    "Bob, this is Alice. The north gate is closed, use the east entrance.",
    "Call me back when you are on site, the ladder truck is on its way.",
)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    running = start_system(tmp_path_factory.mktemp("deferred"), outsiders=("dave",))
    yield running
    stop_system(running)


def test_a_voice_message_to_an_offline_user_is_played_after_they_connect_and_only_by_them(
    system: System, tmp_path: Path
) -> None:
    speech = [speech_wav(text, tmp_path / f"speech{i}.wav") for i, text in enumerate(TEXTS)]

    # Bob is offline: Alice leaves a message, uploads it again (a replay), then calls him (unreachable → message).
    alice = system.client(
        "alice", f"message-wav {BOB} {speech[0]}; message-resend {BOB}; call-or-message {BOB} {speech[1]}"
    )
    wait_all([alice])
    report = system.report("alice")
    sent = report["messages_sent"]
    assert [s["to"] for s in sent] == [BOB, BOB], report
    assert [e["kind"] for e in report["calls"]][-1] == "ended" and report["calls"][-1]["reason"] == "unreachable"
    assert [e["code"] for e in report["message_errors"]] == [409], report["message_errors"]  # the replayed upload
    first, second = (s["message"] for s in sent)

    # Carol: Alice's I_MESSAGE uploaded as hers, a forged signature, and fetching Alice's message: all refused.
    theirs = tmp_path / "alice-imessage.hex"
    theirs.write_text(sent[0]["imessage"])
    carol = system.client(
        "carol",
        f"message-raw {BOB} {speech[0]} {theirs}; message-raw {BOB} {speech[0]} flip; "
        f"fetch-message {first}; fetch-message {second}; fetch-message 999999",
    )
    wait_all([carol])
    errors = system.report("carol")["message_errors"]
    assert [e["code"] for e in errors] == [403, 403, 404, 404, 404], errors
    assert "WrongParties" in errors[0]["reason"] and "signature" in errors[1]["reason"]
    assert errors[2]["reason"].split(":", 1)[1].replace(str(first), "N") == errors[4]["reason"].split(":", 1)[
        1
    ].replace("999999", "N")  # "not yours" and "no such message" read alike

    # Bob connects and plays both; Alice, online, hears "delivered" then "played".
    out = tmp_path / "bob-messages"
    alice = system.client("alice", f"wait-message-status {first} played 90; wait-message-status {second} played 30")
    bob = system.client("bob", f"wait 2; wait-message 30; play-messages {out}; wait 1")
    wait_all([alice, bob], timeout=150)
    played = system.report("bob")["messages_played"]
    assert [(p["id"], p["from"]) for p in played] == [(first, ALICE), (second, ALICE)], played
    assert all(p["failed"] == 0 and p["decrypted"] == p["packets"] for p in played), played
    scores = [speech_match(read_wav(ref), read_wav(Path(p["wav"])), max_lag_s=1.0).score for ref, p in zip(
        speech, played, strict=True)]  # fmt: skip
    print(f"voice message cross-correlation with what was spoken: {', '.join(f'{s:.3f}' for s in scores)}")
    assert min(scores) >= 0.8, scores
    states = system.report("alice")["message_states"]
    assert states[str(first)] == ["delivered", "played"] and states[str(second)] == ["delivered", "played"], states

    # Carol still cannot fetch them; the server's store: ciphertext only.
    carol = system.client("carol", f"fetch-message {first}")
    wait_all([carol])
    assert [e["code"] for e in system.report("carol")["message_errors"]] == [404]
    data = system.root / "server"
    db = sqlite3.connect(data / "server.sqlite3")
    rows = db.execute(
        "SELECT id, sender, addressee, imessage, path, delivered_at, played_at FROM voice_messages"
    ).fetchall()
    db.close()
    assert [(r[0], r[1], r[2]) for r in rows] == [(first, ALICE, BOB), (second, ALICE, BOB)]
    assert all(r[5] is not None and r[6] is not None for r in rows)
    stored = b""
    for row in rows:
        path = data / "messages" / row[4]
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        stored += b"".join(p for _, p in parse_burst(path.read_bytes()))
    encoder = OpusEncoder()
    frames = [encoder.encode(f) for f in read_frames(speech[0])]
    assert all(len(f) < 8 or f[:16] not in stored for f in frames[5:80])
    server_ks = Keystore.open(data / "keystore", (data / "keystore.pass").read_bytes())
    domain = server_ks.enrolment.certificate.domain()  # type: ignore[union-attr]
    for identity in server_ks.identities():
        for row in rows:
            with pytest.raises(MikeyError):
                receive_pck_message(
                    bytes(row[3]),
                    callee=server_ks.held_keys(identity),
                    caller_uri=ALICE,
                    trusted_kms={domain.kms_uri: domain},
                    now=time.time(),
                    replay_cache=ReplayCache(8),
                    max_age=domain.key_period,
                )


def ptt_client(system: System, user: str, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "client.cli", "--keystore", str(system.root / f"{user}.ks"),
        "--passphrase-file", str(system.root / "ks.pw"), *args,
        "--uri", f"sip:{user}@example.org", "--server-info", str(system.root / "server.json"),
    ]  # fmt: skip


def test_the_user_commands_leave_a_message_and_play_it(system: System, tmp_path: Path) -> None:
    """``ptt-client message URI --wav F --wait played`` and ``ptt-client messages --wav-dir D`` (Bob's turn comes
    while Alice's command waits)."""
    speech = speech_wav("Meet me at the station at noon.", tmp_path / "speech.wav")
    alice = subprocess.Popen(
        ptt_client(system, "alice", "message", BOB, "--wav", str(speech), "--wait", "played"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env(),
    )  # fmt: skip
    assert alice.stdout is not None
    left = alice.stdout.readline()
    assert "left on the server" in left, left + alice.stdout.read()
    number = int(left.split("#")[1].split()[0])
    out = run(*ptt_client(system, "bob", "messages", "--wav-dir", str(tmp_path / "bob"))[1:], timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"#{number}" in out.stdout and ALICE in out.stdout, out.stdout
    rest, _ = alice.communicate(timeout=60)
    assert alice.returncode == 0, rest
    assert rest.splitlines() == [f"voice message #{number}: delivered", f"voice message #{number}: played"], rest
    heard = tmp_path / "bob" / f"message-{number}.wav"
    score = speech_match(read_wav(speech), read_wav(heard), max_lag_s=1.0).score
    print(f"ptt-client messages: cross-correlation {score:.3f}")
    assert score >= 0.8
    again = run(*ptt_client(system, "carol", "messages", "--play", str(number))[1:], timeout=60)
    assert again.returncode != 0 and f"no voice message {number}" in again.stderr, again.stderr


def test_a_voice_message_to_a_group_is_played_by_its_members_only(system: System, tmp_path: Path) -> None:
    """Alice leaves the group (Bob and Carol) a message under its GMK while Bob is offline; both play it, Alice is
    told per member; Dave, not a member, can neither leave the group one nor fetch it; the same upload again is
    refused."""
    speech = speech_wav("All units of the fire group, the briefing is moved to six.", tmp_path / "group.wav")
    alice = system.client("alice", f"message-wav {GROUP} {speech}; message-resend {GROUP}")
    wait_all([alice])
    report = system.report("alice")
    assert [e["code"] for e in report["message_errors"]] == [409], report["message_errors"]
    number = report["messages_sent"][0]["message"]
    dave = system.client("dave", f"message-wav {GROUP} {speech}; fetch-message {number}")
    wait_all([dave])
    errors = system.report("dave")["message_errors"]
    assert [e["code"] for e in errors] == [404, 404], errors  # no such user (not his group), not his to fetch
    assert system.report("dave")["messages_sent"] == []

    out = {u: tmp_path / f"{u}-group" for u in ("bob", "carol")}
    alice = system.client(
        "alice", f"wait-message-status {number} played 90 {BOB}; wait-message-status {number} played 30 {CAROL}"
    )
    members = [system.client(u, f"wait 2; wait-message 30; play-messages {out[u]}; wait 1") for u in out]
    wait_all([alice, *members], timeout=150)
    for user in out:
        played = [p for p in system.report(user)["messages_played"] if p["id"] == number]
        assert played and played[0]["from"] == ALICE and played[0]["failed"] == 0, system.report(user)
        score = speech_match(read_wav(speech), read_wav(Path(played[0]["wav"])), max_lag_s=1.0).score
        print(f"group voice message heard by {user}: cross-correlation {score:.3f}")
        assert score >= 0.8
    receipts = system.report("alice")["message_receipts"][str(number)]
    assert receipts == {BOB: ["delivered", "played"], CAROL: ["delivered", "played"]}, receipts
