"""Running clients across two key-period boundaries while keys are renewed (issue 18), with a KMS whose key period
is PERIOD seconds.

On-network: a KMS and a group server (``bench.harness.start_system``), Alice and Bob as ``ptt-headless`` clients in
the group. Ad-hoc: Dave creates a group with Erin, each a ``ptt-client adhoc`` process in its own network namespace
with a virtual microphone and speaker (``tests.audio_harness``, as ``tests/test_adhoc_e2e.py``). Every user's
keystore is renewed by its own ``ptt-client provision --watch``, which stores period N+1's keys some time during
period N. Nothing is restarted.

After each boundary Alice talks on-network and Dave talks ad-hoc; the listeners' reports say which GMK the media
they heard was under, who signed that GMK's I_MESSAGE in which key period, and which of their own periods' RSK
opened it (``client.keystore_watch.KeyUse``). Each burst after boundary k must be heard under a GMK signed in the
period that began at k and opened with that period's RSK. The second boundary is the one that needs the reload:
the keys for it were stored by the watcher while the clients ran (a client that read its keystore only at start
holds its first two periods' keys, no more).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.harness import GROUP, ROOT, System, clean_env, start_system, stop_system
from ptt.ts33180 import period_bounds, period_number
from tests.audio_harness import VirtualAudio, read_wav, speech_wav
from tests.netns import Lan, netns_available
from tests.test_adhoc_e2e import Peers

PERIOD = 45
"""Seconds: short, so that two boundaries pass in ~2 minutes; long enough for a renewal in the middle 80 % of
each period (4.5-40.5 s in) and a burst after each boundary."""
SETTLE = 5.0
"""Seconds after a boundary before talking: the group server and the ad-hoc manager rekey 0.5 s after it, then
the members open the new GMK and the talker switches to it (``KEY_SWITCH_DELAY``)."""
TALK = 2.0
ADHOC = ["dave", "erin"]
TEXT = "Team two, the road is clear."

pytestmark = [
    pytest.mark.periods,
    pytest.mark.skipif(netns_available() is not None, reason=f"network namespaces: {netns_available()}"),
    pytest.mark.xdist_group("audio"),  # real-time audio on 2 cores: never beside the other audio tests
]


def uri(user: str) -> str:
    return f"sip:{user}@example.org"


def next_boundary(t: float) -> float:
    return float(period_bounds(period_number(t, PERIOD, 0) + 1, PERIOD, 0)[0])


def watch(root: Path, user: str) -> subprocess.Popen[str]:
    """``ptt-client provision --watch`` for ``user``'s keystore (in the root namespace: it talks to the KMS)."""
    args = ["--keystore", str(root / f"{user}.ks"), "--passphrase-file", str(root / "ks.pw"), "provision",
            "--enrolment", str(root / "enrol.json"), "--user", user, "--password-file", str(root / f"{user}.pw"),
            "--uri", uri(user), "--watch"]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "client.cli", *args], cwd=ROOT, env=clean_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        if "watching" in line:
            return process
    raise AssertionError(f"provision --watch for {user} did not start: {process.wait()}")


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    system = start_system(tmp_path / "sys", outsiders=tuple(ADHOC), kms_init=("--key-period", str(PERIOD)))
    try:
        yield system
    finally:
        stop_system(system)


def burst_keys(report: dict[str, Any], start: float, end: float) -> dict[str, dict[str, Any]]:
    """The GMKs (ID -> origin, packets) under which media heard between ``start`` and ``end`` came."""
    found = {}
    for gmk, use in report["media_keys"].items():
        if use["last"] >= start and use["first"] <= end:
            found[gmk] = {**report["key_origins"].get(gmk, {}), "packets": use["packets"], "first": use["first"]}
    return found


def test_clients_cross_two_key_periods_with_renewed_keys(system: System, tmp_path: Path) -> None:
    root = system.root
    watchers = [watch(root, user) for user in ("alice", "bob", *ADHOC)]
    go = tmp_path / "go"
    waits = "; ".join([f"wait-file {go}{{n}}"] * 4)  # a wait-file gives up after 60 s: four cover one period
    script = f"join {GROUP}; " + "; ".join(
        [waits.format(n=1), f"talk {TALK}", waits.format(n=2), f"talk {TALK}", waits.format(n=3)]
    )
    listener = f"join {GROUP}; " + waits.format(n=3)
    speech = speech_wav(TEXT, tmp_path / "speech.wav")
    seconds = read_wav(speech).size / 48000
    try:
        with Lan(ADHOC) as lan, VirtualAudio(ADHOC, tmp_path / "pulse") as audio:
            peers = Peers(lan, audio, root, tmp_path)
            peers.start("erin", "join", "team")
            peers.start("dave", "create", "team", "--member", uri("erin"))
            peers.until(lambda: all(m["keyed"] for m in peers.group("dave")["members"]), what="Erin keyed")
            alice = system.client("alice", script)
            bob = system.client("bob", listener)
            time.sleep(3)  # both joined
            assert alice.poll() is None and bob.poll() is None

            windows = []
            boundary = next_boundary(time.time())
            for n in (1, 2):
                time.sleep(max(0.0, boundary + SETTLE - time.time()))
                start = time.time()
                (tmp_path / f"go{n}").touch()  # Alice talks on-network
                peers.control("dave", "press")  # Dave talks ad-hoc
                peers.until(lambda: peers.group("dave")["floor"] == "granted", timeout=5, what="Dave's floor")
                audio.play_into_mic("dave", speech).wait(timeout=seconds + 10)
                peers.control("dave", "release")
                time.sleep(max(0.0, start + TALK + 1 - time.time()))
                windows.append((boundary, start, time.time()))
                boundary = next_boundary(boundary + 1)
            (tmp_path / "go3").touch()
            for process in (alice, bob):
                out, _ = process.communicate(timeout=60)
                assert process.returncode == 0, out
            adhoc = {user: peers.quit(user) for user in ADHOC}
    finally:
        for process in watchers:
            process.terminate()
            process.wait(timeout=10)
    reports = {"bob": system.report("bob"), "alice": system.report("alice"), **adhoc}
    server = system.server.output()

    for boundary, start, end in windows:
        new = period_number(boundary, PERIOD, 0)
        assert period_number(start, PERIOD, 0) == new and period_number(end, PERIOD, 0) == new, "burst past a boundary"
        # on-network: Bob heard Alice's burst under a GMK the group server signed in the new period, opened with his
        # RSK of the new period
        heard = burst_keys(reports["bob"], start, end)
        assert heard and sum(k["packets"] for k in heard.values()) >= TALK * 50 * 0.8, (new, heard, server[-3000:])
        for gmk, key in heard.items():
            assert (key.get("signer"), key.get("signed_period"), key.get("rsk_period")) == (GROUP, new, new), (
                new, gmk, key
            )  # fmt: skip
        # ad-hoc: Erin heard Dave's burst under a GMK Dave signed in the new period, opened with her new RSK
        heard = burst_keys(reports["erin"], start, end)
        assert heard and sum(k["packets"] for k in heard.values()) >= seconds * 50 * 0.8, (new, heard)
        for gmk, key in heard.items():
            assert (key.get("signer"), key.get("signed_period"), key.get("rsk_period")) == (uri("dave"), new, new), (
                new, gmk, key
            )  # fmt: skip
        # the talkers themselves sign with the new period: Dave's GMK is his own of the new period
        for gmk in burst_keys(reports["erin"], start, end):
            assert reports["dave"]["key_origins"][gmk]["signed_period"] == new
    for user in ("alice", "bob"):
        assert reports[user]["stats"]["imessage_bad"] == 0, reports[user]["stats"]
    assert reports["erin"]["stats"]["media_bad"] == 0 and reports["bob"]["stats"]["media_bad"] == 0
