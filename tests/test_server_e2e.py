"""The whole system as real processes on 127.0.0.1: KMS, group server, dispatcher CLI and three headless clients
sending synthetic audio through the relay (harness in bench/harness.py)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from bench.harness import GROUP, USERS, System, start_system, stop_system, wait_all


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    running = start_system(tmp_path_factory.mktemp("system"))
    yield running
    stop_system(running)


def test_only_the_floor_holders_media_is_forwarded(system: System) -> None:
    alice = system.client("alice", f"join {GROUP}; wait 1; talk 2; wait 1.5")
    bob = system.client("bob", f"join {GROUP}; wait 1.5; send 1; wait 2")  # media without the floor
    carol = system.client("carol", f"join {GROUP}; wait 4.5")
    wait_all([alice, bob, carol])
    a, b, c = (system.report(u) for u in USERS)
    assert a["sent"] >= 90 and b["sent"] >= 45
    for listener in (b, c):
        assert listener["received"].get("alice", 0) >= 0.95 * a["sent"]
        assert "bob" not in listener["received"]
        assert listener["stats"]["media_bad"] == 0
    assert "alice" not in a["received"]  # never to the talker itself
    assert [f["subtype"] for f in a["floor"]].count("GRANTED") == 1
    assert "TAKEN" in [f["subtype"] for f in c["floor"]]


def test_forged_floor_request_is_dropped(system: System) -> None:
    bob = system.client("bob", f"join {GROUP}; wait 0.5; forge-floor; wait 1; send 1; wait 0.5")
    carol = system.client("carol", f"join {GROUP}; wait 3")
    wait_all([bob, carol])
    assert "bob" not in system.report("carol")["received"]
    assert "GRANTED" not in [f["subtype"] for f in system.report("bob")["floor"]]
    assert "floor message from sip:bob@example.org" in system.server.output()


def wait_joined(
    system: System, users: tuple[str, ...], timeout: float = 30, clients: tuple[subprocess.Popen[str], ...] = ()
) -> None:
    """Until the server shows every one of ``users`` joined (bound at the relay) in GROUP; on timeout the
    ``clients`` are stopped and their output shown with the server's."""
    deadline = time.monotonic() + timeout
    shown: list[str] = []
    while time.monotonic() < deadline:
        shown = system.dispatch("group", "show", GROUP).stdout.splitlines()
        joined = {line.split()[0] for line in shown if len(line.split()) >= 5 and line.split()[4] == "yes"}
        if {f"sip:{u}@example.org" for u in users} <= joined:
            return
        time.sleep(0.2)
    outputs = []
    for client in clients:
        client.kill()
        outputs.append(client.communicate()[0][-3000:])
    raise AssertionError(
        f"{users} did not all join within {timeout} s\n"
        + "\n".join(shown)
        + "\n--- clients:\n"
        + "\n---\n".join(outputs)
        + "\n--- server:\n"
        + system.server.output()[-4000:]
    )


def test_removed_member_gets_no_new_key_and_no_media(system: System) -> None:
    carol = system.client("carol", f"join {GROUP}; wait 7")
    bob = system.client("bob", f"join {GROUP}; wait-key {GROUP} 2; wait 4")
    alice = system.client("alice", f"join {GROUP}; wait-key {GROUP} 2; wait 1; talk 1; wait 1")
    try:
        wait_joined(system, USERS)
        removed = system.dispatch("group", "remove-member", GROUP, "sip:carol@example.org")
        assert removed.returncode == 0, removed.stderr
        wait_all([alice, bob, carol])
    finally:
        system.dispatch("group", "add-member", GROUP, "sip:carol@example.org")  # for the other tests
    a, b, c = (system.report(u) for u in USERS)
    assert len(a["keys"][GROUP]) == 2 and a["keys"][GROUP] == b["keys"][GROUP]  # rekeyed
    assert GROUP not in c["keys"] or c["keys"][GROUP] == a["keys"][GROUP][:1]  # carol never got the new GMK
    assert b["received"].get("alice", 0) >= 0.9 * a["sent"]
    assert "alice" not in c["received"]


def test_server_restart_mid_call_recovers(system: System) -> None:
    go = system.root / "go-after-restart"
    go.unlink(missing_ok=True)
    # the second burst waits until both clients are back (reconnected and rejoined), however long the restart took
    alice = system.client("alice", f"join {GROUP}; wait 1; talk 1; wait-file {go}; wait 0.5; talk 1; wait 1")
    carol = system.client("carol", f"join {GROUP}; wait-file {go}; wait 3")
    wait_joined(system, ("alice", "carol"))
    time.sleep(2.6)  # Alice's first burst (1 s after joining, 1 s long) is over: restart between the bursts
    system.server.stop()
    system.server.log.clear()
    system.server.start()
    wait_joined(system, ("alice", "carol"), timeout=60)
    go.touch()
    wait_all([alice, carol])
    a, c = system.report("alice"), system.report("carol")
    per_burst = a["sent"] // 2
    assert c["received"].get("alice", 0) >= 1.8 * per_burst, (a, c)  # both bursts, before and after the restart
