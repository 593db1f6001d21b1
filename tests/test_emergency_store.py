"""Emergency alerts and broadcast rights in the group store (issue 16), on SQLite and PostgreSQL: raised,
upgraded, cancelled by the member or a dispatcher, kept across a reopen (a server restart), gone with the
membership, audited; and the dispatcher API's routes over them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ptt.emergency import Level
from server.groups.database import SCHEMA_VERSION
from server.groups.manager import GroupChange, GroupManager, MemberSpec
from server.groups.store import AlertRefused, GroupStore, NoSuchMember
from tests.test_dispatch import DANA_AUTH, Api, _assign, _create, _path
from tests.test_dispatch import api as api
from tests.test_group_manager import ALICE, BOB, CAROL, DATA_KEY, GROUP, NOW, KeySource, KmsWorld
from tests.test_group_manager import world as world


@pytest.fixture
def store(database_url: str) -> Iterator[GroupStore]:
    s = GroupStore(database_url, DATA_KEY)
    yield s
    s.close()


@pytest.fixture
def changes() -> list[GroupChange]:
    return []


@pytest.fixture
def manager(store: GroupStore, world: KmsWorld, changes: list[GroupChange]) -> GroupManager:
    m = GroupManager(store, KeySource(world), on_change=changes.append)
    m.create_group(GROUP, "fire", [MemberSpec(ALICE), MemberSpec(BOB), MemberSpec(CAROL)], created_by="root", now=NOW)
    changes.clear()
    return m


def test_alerts_are_kept_across_a_reopen(database_url: str, manager: GroupManager, changes: list[GroupChange]) -> None:
    alert = manager.raise_alert(GROUP, BOB, Level.IMMINENT_PERIL, call=False, now=NOW + 1)
    assert alert is not None and alert.active
    assert manager.raise_alert(GROUP, BOB, Level.IMMINENT_PERIL, call=True, now=NOW + 2) is None  # no change
    manager.raise_alert(GROUP, BOB, Level.EMERGENCY, call=True, now=NOW + 3)
    manager.raise_alert(GROUP, ALICE, Level.EMERGENCY, call=False, now=NOW + 4)
    assert len(changes) == 3 and [a.uri for a in changes[-1].alerts] == [BOB, ALICE]
    manager.store.close()
    reopened = GroupStore(database_url, DATA_KEY)  # the server restarts
    try:
        alerts = {a.uri: a for a in reopened.alerts(GROUP)}
        assert (alerts[BOB].level, alerts[BOB].since, alerts[BOB].call) == (Level.EMERGENCY, NOW + 3, True)
        assert alerts[ALICE].active and alerts[ALICE].level is Level.EMERGENCY
        events = [r.event for r in reopened.audit_log()]
        assert events.count("emergency-raised") == 3
    finally:
        reopened.close()


def test_cancel_rules(manager: GroupManager, store: GroupStore) -> None:
    manager.raise_alert(GROUP, BOB, Level.EMERGENCY, call=False, now=NOW + 1)
    with pytest.raises(AlertRefused) as refused:
        manager.cancel_alert(GROUP, BOB, by=ALICE, dispatcher=False, now=NOW + 2)
    assert refused.value.code == 403
    with pytest.raises(AlertRefused) as downgrade:
        manager.raise_alert(GROUP, BOB, Level.IMMINENT_PERIL, call=False, now=NOW + 2)
    assert downgrade.value.code == 409
    cancelled = manager.cancel_alert(GROUP, BOB, by="dana", dispatcher=True, now=NOW + 3)
    assert (cancelled.active, cancelled.cancelled_by) == (False, "dana")
    (kept,) = store.alerts(GROUP)  # the last cancellation stays, with who cancelled
    assert (kept.active, kept.cancelled_at, kept.cancelled_by) == (False, NOW + 3, "dana")
    with pytest.raises(AlertRefused) as none:
        manager.cancel_alert(GROUP, BOB, by=BOB, dispatcher=False, now=NOW + 4)
    assert none.value.code == 404
    again = manager.raise_alert(GROUP, BOB, Level.IMMINENT_PERIL, call=False, now=NOW + 5)
    assert again is not None and again.active
    assert manager.cancel_alert(GROUP, BOB, by=BOB, dispatcher=False, now=NOW + 6).cancelled_by == BOB
    with pytest.raises(NoSuchMember):
        manager.raise_alert(GROUP, "sip:mallory@example.org", Level.EMERGENCY, call=False, now=NOW + 7)


def test_an_alert_goes_with_the_membership(manager: GroupManager, store: GroupStore) -> None:
    manager.raise_alert(GROUP, CAROL, Level.EMERGENCY, call=False, now=NOW + 1)
    manager.remove_member(GROUP, CAROL, by="root", now=NOW + 2)
    assert store.alerts(GROUP) == []


def test_broadcast_right(manager: GroupManager, store: GroupStore, changes: list[GroupChange]) -> None:
    assert store.broadcasters(GROUP) == set()
    record = manager.set_broadcast(GROUP, ALICE, True, by="root", now=NOW + 1)
    assert record.broadcast and store.broadcasters(GROUP) == {ALICE}
    assert {m.uri: m.broadcast for m in changes[-1].members} == {ALICE: True, BOB: False, CAROL: False}
    assert store.member(GROUP, ALICE).broadcast  # type: ignore[union-attr]
    updated = manager.update_member(GROUP, ALICE, priority=120, by="root", now=NOW + 2)
    assert updated.broadcast  # a priority change keeps the right
    manager.set_broadcast(GROUP, ALICE, False, by="root", now=NOW + 3)
    assert store.broadcasters(GROUP) == set()
    with pytest.raises(NoSuchMember):
        manager.set_broadcast(GROUP, "sip:mallory@example.org", True, by="root", now=NOW)
    assert [r.event for r in store.audit_log()][-2:] == ["member-updated", "broadcast-revoked"]


# --- the dispatcher API ----------------------------------------------------------------------------------------


def test_dispatcher_api_lists_and_cancels_alerts_and_sets_broadcast(api: Api) -> None:
    _create(api)
    api.store.raise_alert(GROUP, BOB, Level.EMERGENCY, call=True, now=100.0)
    status, doc, _ = api("GET", _path(GROUP, "alerts"))
    assert status == 200
    assert doc["alerts"] == [{"uri": BOB, "level": "emergency", "since": 100.0, "call": True, "active": True}]
    status, doc, _ = api("GET", _path(GROUP, "alerts"), auth=DANA_AUTH)  # a group dana may not see
    assert status == 404
    _assign(api)
    status, doc, _ = api("DELETE", _path(GROUP, "alerts", BOB), auth=DANA_AUTH)
    assert status == 200 and doc["cancelled"]["cancelled_by"] == "dana", doc
    status, doc, _ = api("DELETE", _path(GROUP, "alerts", BOB), auth=DANA_AUTH)
    assert status == 404 and "no active alert" in doc["error"]
    status, doc, _ = api("PUT", _path(GROUP, "members", ALICE, "broadcast"), auth=DANA_AUTH)
    assert status == 200 and doc["member"]["broadcast"] is True
    status, doc, _ = api("GET", _path(GROUP, "members", ALICE))
    assert doc["member"]["broadcast"] is True
    status, doc, _ = api("DELETE", _path(GROUP, "members", ALICE, "broadcast"))
    assert status == 200 and doc["member"]["broadcast"] is False
    status, doc, _ = api("POST", _path(GROUP, "alerts"))
    assert status == 405


def test_upgrade_from_version_2_keeps_members(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    GroupStore(path, DATA_KEY).close()
    with sqlite3.connect(path) as db:  # as a version 2 store: no broadcast column, no alerts table (nor recording)
        db.execute("DROP TABLE emergency_alerts")
        db.execute("ALTER TABLE members DROP COLUMN broadcast")
        db.execute("DROP TABLE recordings")
        db.execute("DROP TABLE key_archive")
        db.execute("ALTER TABLE groups DROP COLUMN recording_days")
        db.execute("DROP TABLE voice_message_receipts")  # nor voice messages (schema 6)
        db.execute("DROP TABLE voice_messages")
        db.execute("DROP TABLE media_blobs")  # nor the shared media (schema 7)
        db.execute("PRAGMA user_version = 2")
    store = GroupStore(path, DATA_KEY)
    try:
        assert store.schema_version() == SCHEMA_VERSION and store.alerts("sip:none@example.org") == []
        assert store.recorded_groups() == {} and store.bursts("sip:none@example.org") == []
        assert store.inbox("sip:none@example.org", now=0.0) == []
    finally:
        store.close()


def test_another_cluster_node_reads_the_alerts_with_the_group(manager: GroupManager, store: GroupStore) -> None:
    """A node told of a committed change re-reads the group (server.cluster.setup.group_reader): the alerts come
    with it, so its members are told and its floor follows."""
    from server.cluster.setup import group_reader

    manager.raise_alert(GROUP, BOB, Level.EMERGENCY, call=False, now=NOW + 1)
    change = group_reader(store, lambda: set())(GROUP, b"")
    assert [(a.uri, a.level, a.active) for a in change.alerts] == [(BOB, Level.EMERGENCY, True)]


# --- acknowledgement by a dispatcher (issue 15) ----------------------------------------------------------------


def test_a_dispatcher_acknowledges_an_alert_once_and_an_upgrade_needs_a_new_one(
    manager: GroupManager, store: GroupStore, changes: list[GroupChange]
) -> None:
    manager.raise_alert(GROUP, BOB, Level.IMMINENT_PERIL, call=False, now=NOW + 1)
    acked = manager.acknowledge_alert(GROUP, BOB, by="dana", now=NOW + 2)
    assert acked is not None and (acked.acked_by, acked.acked_at, acked.active) == ("dana", NOW + 2, True)
    assert changes[-1].alerts[0].acked_by == "dana"  # the change reaches the call (and the dispatchers' stream)
    count = len(changes)
    assert manager.acknowledge_alert(GROUP, BOB, by="erin", now=NOW + 3) is None  # the first one stays
    assert len(changes) == count and store.alerts(GROUP)[0].acked_by == "dana"
    manager.raise_alert(GROUP, BOB, Level.EMERGENCY, call=False, now=NOW + 4)
    (upgraded,) = store.alerts(GROUP)
    assert upgraded.level is Level.EMERGENCY and not upgraded.acknowledged
    manager.cancel_alert(GROUP, BOB, by=BOB, dispatcher=False, now=NOW + 5)
    with pytest.raises(AlertRefused) as none:
        manager.acknowledge_alert(GROUP, BOB, by="dana", now=NOW + 6)
    assert none.value.code == 404
    assert [r.event for r in store.audit_log()].count("emergency-acknowledged") == 1


def test_dispatcher_api_acknowledges_alerts(api: Api) -> None:
    _create(api)
    api.store.raise_alert(GROUP, BOB, Level.EMERGENCY, call=False, now=100.0)
    status, doc, _ = api("POST", _path(GROUP, "alerts", BOB, "ack"), auth=DANA_AUTH)
    assert status == 404  # not dana's group: as if it did not exist
    _assign(api)
    status, doc, _ = api("POST", _path(GROUP, "alerts", BOB, "ack"), auth=DANA_AUTH)
    assert status == 200 and doc["acknowledged"]["acked_by"] == "dana" and doc["acknowledged"]["active"], doc
    status, doc, _ = api("GET", _path(GROUP, "alerts"))
    assert doc["alerts"][0]["acked_by"] == "dana"
    status, doc, _ = api("POST", _path(GROUP, "alerts", ALICE, "ack"), auth=DANA_AUTH)
    assert status == 404 and "no active alert" in doc["error"]
    status, doc, _ = api("DELETE", _path(GROUP, "alerts", BOB, "ack"))
    assert status == 405
