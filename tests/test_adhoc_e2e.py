"""Ad-hoc groups end to end with no server at all: three users, each in their own network namespace on one bridged
LAN segment (tests/netns.py), each a real ``ptt-client adhoc`` process with a virtual microphone and speaker
(tests/audio_harness.py). The KMS only provisions the keystores beforehand and is stopped before the call.

Alice creates a group, Bob and Carol are keyed over multicast discovery and unicast delivery, Alice's speech reaches
both speakers over multicast SRTP; simultaneous PTT gives one talker; a non-member's injected media, floor messages
and forged key deliveries change nothing; a member that vanishes and comes back gets the key again and hears; when
Alice leaves, Bob takes over and the group goes on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.harness import ROOT, provision_offline
from client.adhoc_app import control_request
from tests.audio_harness import VirtualAudio, read_wav, speech_match, speech_wav
from tests.netns import Lan, netns_available

TEXT = "Rescue team one, the bridge is out. Take the east road and wait at the water tower."
USERS = ["alice", "bob", "carol", "mallory"]
PASSPHRASE = "keystore-passphrase"

pytestmark = [
    pytest.mark.skipif(netns_available() is not None, reason=f"network namespaces: {netns_available()}"),
    pytest.mark.xdist_group("audio"),  # real-time audio on 2 cores: never beside the other audio tests
]


def uri(user: str) -> str:
    return f"sip:{user}@example.org"


@pytest.fixture(scope="module")
def keystores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return provision_offline(tmp_path_factory.mktemp("offline"), USERS)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speech_wav(TEXT, tmp_path_factory.mktemp("speech") / "speech.wav")


class Peers:
    """The ``ptt-client adhoc`` processes of one test, each in its own namespace."""

    def __init__(self, lan: Lan, audio: VirtualAudio | None, root: Path, work: Path) -> None:
        self.lan, self.audio, self.root, self.work = lan, audio, root, work
        self.processes: dict[str, subprocess.Popen[str]] = {}
        self.output: dict[str, list[str]] = {}

    def socket(self, user: str) -> str:
        return str(self.work / f"{user}.sock")

    def start(self, user: str, *args: str, audio: bool = True) -> subprocess.Popen[str]:
        env = dict(self.audio.env(user)) if audio and self.audio is not None else dict(__import__("os").environ)
        env = {k: v for k, v in env.items() if not k.startswith("PTT_")}
        env["PTT_KEYSTORE_PASSPHRASE"] = PASSPHRASE
        command = [
            sys.executable, "-m", "client.cli", "--keystore", str(self.root / f"{user}.ks"),
            "adhoc", "--control-socket", self.socket(user), args[0], *args[1:],
            "--uri", uri(user), "--interface", self.lan.peers[user].address,
            "--report", str(self.work / f"{user}.json"), "--quiet",
            *([] if audio else ["--no-audio"]),
        ]  # fmt: skip
        process = self.lan.popen(
            user, command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.processes[user] = process
        lines: list[str] = []
        self.output[user] = lines
        threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True).start()  # type: ignore[union-attr]
        self.wait_for(user, "control socket")
        return process

    def wait_for(self, user: str, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.output[user]):
                return
            if self.processes[user].poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} from {user}:\n" + "".join(self.output[user]))

    def control(self, user: str, cmd: str, **fields: Any) -> dict[str, Any]:
        reply = control_request(self.socket(user), {"cmd": cmd, **fields})
        assert reply["ok"], reply
        return reply

    def group(self, user: str) -> Any:  # the first group listed, or None
        groups = self.control(user, "list")["groups"]
        return groups[0] if groups else None

    def until(self, condition: Any, timeout: float = 20, what: str = "") -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if condition():
                return time.monotonic() - start
            time.sleep(0.05)
        raise AssertionError(
            f"timed out waiting for {what or condition}: "
            + json.dumps(
                {u: self.control(u, "list")["groups"] for u in self.processes if self.processes[u].poll() is None}
            )
        )

    def keyed(self, user: str, gmk_id: str) -> bool:
        group = self.group(user)
        return group is not None and group["gmk_id"] == gmk_id

    def quit(self, user: str) -> dict[str, Any]:
        process = self.processes[user]
        if process.poll() is None:
            try:
                self.control(user, "quit")
            except (OSError, AssertionError):
                process.terminate()
            process.wait(timeout=30)
        assert process.returncode == 0, "".join(self.output[user])
        return dict(json.loads((self.work / f"{user}.json").read_text()))


@pytest.fixture
def lan() -> Iterator[Lan]:
    with Lan(USERS) as network:
        yield network


def test_three_peers_create_key_and_talk_with_no_server(
    lan: Lan, keystores: Path, speech: Path, tmp_path: Path
) -> None:
    with VirtualAudio(["alice", "bob", "carol"], tmp_path / "pulse") as audio:
        peers = Peers(lan, audio, keystores, tmp_path)
        for user in ("bob", "carol"):
            peers.start(user, "join", "rescue")
        peers.start("alice", "create", "rescue", "--member", uri("bob"), "--member", uri("carol"))
        group = peers.group("alice")
        assert group is not None and group["role"] == "manager"
        gmk = group["gmk_id"]
        peers.until(lambda: all(m["keyed"] for m in peers.group("alice")["members"]), what="every member keyed")
        assert peers.keyed("bob", gmk) and peers.keyed("carol", gmk)

        # The ptt-client command line shows the same
        listing = subprocess.run(
            [sys.executable, "-m", "client.cli", "--keystore", str(keystores / "alice.ks"), "adhoc",
             "--control-socket", peers.socket("alice"), "list"],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert listing.returncode == 0 and "manager" in listing.stdout and "NOT keyed" not in listing.stdout

        # Alice talks: her speech reaches Bob's and Carol's speakers
        seconds = read_wav(speech).size / 48000
        recordings = {u: audio.record_speaker(u, tmp_path / f"{u}.wav", seconds + 4) for u in ("bob", "carol")}
        peers.control("alice", "press")
        peers.until(lambda: peers.group("alice")["floor"] == "granted", timeout=5, what="floor granted")
        mic = audio.play_into_mic("alice", speech)
        mic.wait(timeout=seconds + 10)
        time.sleep(0.5)
        peers.control("alice", "release")
        assert peers.group("bob")["talker"] in (uri("alice"), None)
        for recorder in recordings.values():
            recorder.wait(timeout=30)
        reference = read_wav(speech)
        scores = {u: speech_match(reference, read_wav(tmp_path / f"{u}.wav"), max_lag_s=seconds + 4).score
                  for u in recordings}  # fmt: skip
        assert scores["bob"] >= 0.85 and scores["carol"] >= 0.85, scores

        # Bob and Carol press at the same moment: exactly one talker
        peers.until(lambda: peers.group("alice")["floor"] in ("idle", "-"), timeout=6, what="floor idle")
        barrier = threading.Barrier(2)

        def press(user: str) -> None:
            barrier.wait()
            peers.control(user, "press")

        threads = [threading.Thread(target=press, args=(u,)) for u in ("bob", "carol")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(1.0)
        floors = {u: peers.group(u)["floor"] for u in ("alice", "bob", "carol")}
        talkers = {u: peers.group(u)["talker"] for u in ("alice", "bob", "carol")}
        assert sorted(floors[u] for u in ("bob", "carol")).count("granted") == 1, floors
        winner = uri("bob") if floors["bob"] == "granted" else uri("carol")
        assert set(talkers.values()) == {winner}, talkers
        # the other one was queued (its PTT still pressed) and gets the floor when the winner releases
        first, second = ("bob", "carol") if winner == uri("bob") else ("carol", "bob")
        assert floors[second] == "queued", floors
        peers.control(first, "release")
        peers.until(lambda: peers.group(second)["floor"] == "granted", timeout=5, what="queued member granted")
        peers.until(
            lambda: {peers.group(u)["talker"] for u in ("alice", "bob", "carol")} == {uri(second)},
            timeout=3,
            what="everyone sees the queued member talk",
        )
        peers.control(second, "release")

        reports = {u: peers.quit(u) for u in ("alice", "bob", "carol")}
    for user in ("bob", "carol"):
        heard = reports[user]["heard"]
        assert heard and reports[user]["stats"]["media_bad"] == 0, reports[user]["stats"]
    assert reports["alice"]["frames"]["sent"] > seconds * 40


def test_outsiders_cannot_inject_and_peers_come_back(lan: Lan, keystores: Path, tmp_path: Path) -> None:
    peers = Peers(lan, None, keystores, tmp_path)
    for user in ("bob", "carol"):
        peers.start(user, "join", audio=False)
    peers.start("mallory", "join", audio=False)  # a domain user, not a member
    peers.start("alice", "create", "rescue", "--member", uri("bob"), "--member", uri("carol"), audio=False)
    gmk = peers.group("alice")["gmk_id"]
    peers.until(lambda: peers.keyed("bob", gmk) and peers.keyed("carol", gmk), what="members keyed")
    assert peers.group("mallory") is None
    media = peers.group("alice")["media"]

    # Mallory injects: random and forged SRTP media and floor messages at the group's multicast address, and a key
    # delivery she signed claiming to manage the group, and an unsigned one, at Bob's discovery port.
    injected = lan.run(
        "mallory",
        [sys.executable, "-m", "tests.adhoc_inject", str(keystores / "mallory.ks"), PASSPHRASE, media,
         lan.peers["mallory"].address, peers.group("bob")["uri"]],
        cwd=ROOT, capture_output=True, timeout=60,
    )  # fmt: skip
    assert injected.returncode == 0, injected.stdout + injected.stderr
    time.sleep(1.0)
    bob = peers.group("bob")
    assert bob is not None and bob["gmk_id"] == gmk and bob["manager"] == uri("alice") and bob["talker"] is None
    assert peers.group("mallory") is None

    # Alice talks (synthetic: no audio devices here); Bob and Carol receive
    peers.control("alice", "press")
    peers.until(lambda: peers.group("bob")["talker"] == uri("alice"), timeout=5, what="bob sees alice talking")
    peers.control("alice", "release")

    # Carol's link goes; Alice removes nobody; Carol comes back: she is keyed and follows the floor again
    lan.disconnect("carol")
    time.sleep(8.5)  # longer than the peer timeout
    peers.control("alice", "press")
    peers.until(lambda: peers.group("bob")["talker"] == uri("alice"), timeout=5, what="talking while carol is away")
    peers.control("alice", "release")
    lan.reconnect("carol")
    peers.until(lambda: peers.group("alice")["members"][2]["online"], timeout=10, what="carol back online")
    peers.control("bob", "press")
    peers.until(lambda: peers.group("carol")["talker"] == uri("bob"), timeout=5, what="carol hears bob again")
    peers.control("bob", "release")

    # Carol's client restarts (lost all state): the manager keys her again
    peers.quit("carol")
    peers.start("carol", "join", audio=False)
    peers.until(lambda: peers.keyed("carol", gmk), timeout=15, what="carol re-keyed after restart")

    # Alice leaves: Bob (first member) takes over with a fresh GMK for Carol
    peers.control("alice", "leave", group="rescue")
    peers.until(lambda: (peers.group("bob") or {}).get("role") == "manager", timeout=15, what="bob takes over")
    new = peers.group("bob")
    assert new["gmk_id"] != gmk and [m["uri"] for m in new["members"]] == [uri("bob"), uri("carol")]
    peers.until(lambda: peers.keyed("carol", new["gmk_id"]), timeout=15, what="carol keyed by bob")
    assert peers.group("alice") is None

    reports = {u: peers.quit(u) for u in ("alice", "bob", "carol", "mallory")}
    bob_stats = reports["bob"]["stats"]
    assert bob_stats["media_bad"] + bob_stats["floor_bad"] + bob_stats.get("foreign", 0) > 0, bob_stats
    assert bob_stats["imessage_bad"] >= 2, bob_stats  # the forged and the unsigned key deliveries
    assert not reports["mallory"]["adhoc"]
