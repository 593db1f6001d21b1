"""The dispatchers' event stream (``GET /api/events``, issue 15) with real processes: KMS, group server and headless
clients on 127.0.0.1. A dispatcher sees a member come online, join and talk within a second, an emergency raised,
acknowledged and cancelled, a member added; another dispatcher sees nothing of a group it may not see until it is
assigned to it; a wrong password gets no stream."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.harness import GROUP, System, run, start_system, stop_system, wait_all
from tests.sse_client import EventReader

ALICE, BOB = "sip:alice@example.org", "sip:bob@example.org"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    running = start_system(tmp_path_factory.mktemp("stream"))
    yield running
    stop_system(running)


def reader(system: System, user: str = "admin", password: str = "admin-password-x") -> EventReader:
    return EventReader(system.dispatch_port, system.root / "server" / "tls-cert.pem", user, password)


def test_presence_talker_and_alerts_reach_the_dispatcher_at_once(system: System) -> None:
    events = reader(system)
    try:
        events.wait_for(lambda e: e["type"] == "snapshot")  # the groups already viewed; the others follow:
        _, added = events.wait_for(lambda e: e["type"] == "group" and e["state"] == "added")
        assert added["group"] == GROUP and not any(m["online"] for m in added["view"]["members"])
        alice = system.client("alice", f"join {GROUP}; wait 1.5; talk 1; wait 0.5; emergency; wait 3")
        online_at, _ = events.wait_for(lambda e: e["type"] == "presence" and e["uri"] == ALICE and e["joined"], 30)
        _, talking = events.wait_for(lambda e: e["type"] == "talker" and e["uri"] == ALICE)
        _, idle = events.wait_for(lambda e: e["type"] == "talker" and e["uri"] is None)
        _, raised = events.wait_for(lambda e: e["type"] == "alert" and e["state"] == "raised")
        assert raised["uri"] == ALICE and raised["level"] == "emergency" and raised["group"] == GROUP
        acked = system.dispatch("group", "emergency", "ack", GROUP, ALICE)
        assert acked.returncode == 0 and "acknowledged" in acked.stdout, acked.stdout + acked.stderr
        _, ack = events.wait_for(lambda e: e["type"] == "alert" and e["state"] == "acknowledged")
        assert ack["by"] == "admin"
        assert system.dispatch("group", "emergency", "cancel", GROUP, ALICE).returncode == 0
        events.wait_for(lambda e: e["type"] == "alert" and e["state"] == "cancelled")
        wait_all([alice])
        report = system.report("alice")
        granted = next(f["t"] for f in report["floor"] if f["kind"] == "GRANTED")
        talker_at = next(at for at, e in events.events if e is talking)
        print(f"stream: talker shown {1e3 * (talker_at - granted):.0f} ms after the grant")
        assert talker_at - granted < 1.0
        events.wait_for(lambda e: e["type"] == "presence" and e["uri"] == ALICE and not e["online"])
        assert idle["group"] == GROUP and online_at > 0
    finally:
        events.close()


def test_a_dispatcher_sees_only_its_groups_and_a_bad_login_gets_no_stream(system: System) -> None:
    server = ["-m", "server.main", "--data", str(system.root / "server")]
    (system.root / "dana.pw").write_text("dana-password-x\n")
    added = run(*server, "dispatcher", "add", "dana", "--password-file", str(system.root / "dana.pw"))
    assert added.returncode == 0, added.stderr
    assert reader(system, "dana", "wrong").status == 401
    events = reader(system, "dana", "dana-password-x")
    try:
        _, snapshot = events.wait_for(lambda e: e["type"] == "snapshot")
        assert snapshot["groups"] == []
        assert run(*server, "dispatcher", "assign", "dana", GROUP).returncode == 0
        _, added_event = events.wait_for(lambda e: e["type"] == "group" and e["state"] == "added", 10)
        assert added_event["group"] == GROUP and len(added_event["view"]["members"]) == 3
        assert system.dispatch("group", "add-member", GROUP, "sip:dave@example.org").returncode == 0
        _, member = events.wait_for(lambda e: e["type"] == "member" and e["state"] == "added")
        assert member["uri"] == "sip:dave@example.org"
        assert run(*server, "dispatcher", "unassign", "dana", GROUP).returncode == 0
        events.wait_for(lambda e: e["type"] == "group" and e["state"] == "removed", 10)
    finally:
        events.close()
