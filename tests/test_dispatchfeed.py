"""The dispatchers' event stream without I/O (ptt.dispatchfeed): views of a group, the events between two views,
and who is told what."""

from __future__ import annotations

import itertools
from dataclasses import replace

from ptt.dispatchfeed import DispatcherFeed, GroupView, MemberView, group_view, view_events
from ptt.emergency import Alert, Level

FIRE, POLICE = "sip:fire@example.org", "sip:police@example.org"
ALICE, BOB, CAROL = (f"sip:{u}@example.org" for u in ("alice", "bob", "carol"))
MEMBERS = (MemberView(ALICE, 100, "member"), MemberView(BOB, 100, "member"), MemberView(CAROL, 200, "dispatcher"))


def fire(**status: object) -> GroupView:
    return group_view(FIRE, "fire", MEMBERS, [], status)


def test_a_view_keeps_only_members_and_active_alerts() -> None:
    alerts = [
        Alert(FIRE, BOB, Level.EMERGENCY, 5.0, acked_at=6.0, acked_by="dana"),
        Alert(FIRE, ALICE, Level.IMMINENT_PERIL, 1.0, cancelled_at=2.0, cancelled_by=ALICE),
    ]
    status = {"present": [ALICE, "sip:mallory@example.org"], "joined": [ALICE], "talker": ALICE, "queue": [BOB, 7]}
    view = group_view(FIRE, "fire", MEMBERS, alerts, status)
    assert view.online == {ALICE} and view.talker == ALICE and view.queue == (BOB,)
    (alert,) = view.alerts
    assert (alert.uri, alert.level, alert.acked_by) == (BOB, "emergency", "dana")
    document = view.to_json()
    assert document["members"][0] == {
        "uri": ALICE, "online": True, "joined": True, "talking": True, "queued": None, "priority": 100, "role": "member"
    }  # fmt: skip
    assert document["members"][1]["queued"] == 1
    assert group_view(FIRE, "fire", MEMBERS, [], {"talker": 3, "present": "x"}) == fire()  # junk status: empty


def test_presence_talker_and_queue_events() -> None:
    idle = fire(present=[ALICE, BOB])
    assert view_events(idle, idle) == []
    online = fire(present=[ALICE, BOB, CAROL], joined=[ALICE])
    events = view_events(idle, online)
    assert [(e["type"], e["uri"], e["online"], e["joined"]) for e in events] == [
        ("presence", ALICE, True, True),
        ("presence", CAROL, True, False),
    ]
    talking = fire(present=[ALICE, BOB, CAROL], joined=[ALICE, BOB], talker=ALICE, queue=[BOB])
    events = view_events(online, talking)
    kinds = [e["type"] for e in events]
    assert kinds == ["presence", "presence", "talker", "queue"], events
    assert events[0]["talking"] is True and events[1]["queued"] == 1
    assert events[2] == {"type": "talker", "group": FIRE, "uri": ALICE}
    assert view_events(talking, online)[-2:] == [
        {"type": "talker", "group": FIRE, "uri": None},
        {"type": "queue", "group": FIRE, "queue": []},
    ]


def test_membership_and_group_events() -> None:
    view = fire()
    changed = replace(view, name="Fire crew", members=(replace(MEMBERS[0], priority=150), MEMBERS[2]))
    events = view_events(view, changed)
    assert events[0] == {"type": "group", "group": FIRE, "state": "renamed", "name": "Fire crew"}
    assert [(e["state"], e["uri"]) for e in events[1:]] == [("changed", ALICE), ("removed", BOB)]
    assert events[1]["priority"] == 150
    assert view_events(None, view)[0]["state"] == "added" and view_events(None, view)[0]["view"]["name"] == "fire"
    assert view_events(view, None) == [{"type": "group", "group": FIRE, "state": "removed"}]
    assert view_events(None, None) == []


def test_alert_raised_acknowledged_upgraded_and_cancelled() -> None:
    raised = Alert(FIRE, BOB, Level.IMMINENT_PERIL, 5.0)
    acked = replace(raised, acked_at=6.0, acked_by="dana")
    upgraded = Alert(FIRE, BOB, Level.EMERGENCY, 7.0)
    views = [group_view(FIRE, "fire", MEMBERS, alerts, {}) for alerts in ([], [raised], [acked], [upgraded], [])]
    steps = [view_events(a, b) for a, b in itertools.pairwise(views)]
    assert [[(e["state"], e["level"], e["by"]) for e in step] for step in steps] == [
        [("raised", "imminent-peril", None)],
        [("acknowledged", "imminent-peril", "dana")],
        [("raised", "emergency", None)],  # an upgrade is a new alert, not yet acknowledged
        [("cancelled", "emergency", None)],
    ]


def test_subscribers_see_only_their_groups_and_follow_their_rights() -> None:
    feed = DispatcherFeed()
    assert feed.subscribe("dana", [FIRE]) == {"type": "snapshot", "groups": []}
    police = group_view(POLICE, "police", MEMBERS[:1], [], {})
    out = feed.update({FIRE: fire(), POLICE: police})
    assert [(key, e["group"], e["state"]) for key, e in out] == [("dana", FIRE, "added")]
    assert feed.watched() == {FIRE}
    assert feed.subscribe("erin", [FIRE, POLICE])["groups"][0]["uri"] == FIRE  # police was not kept: unwatched
    out = feed.update({FIRE: fire(present=[ALICE])})
    assert sorted(str(key) for key, _ in out) == ["dana", "erin"]
    feed.update({POLICE: police})
    gained = feed.set_visible("dana", [POLICE])  # dana lost fire (unassigned) and got police
    assert [(e["group"], e["state"]) for e in gained] == [(POLICE, "added"), (FIRE, "removed")]
    assert feed.set_visible("nobody", [FIRE]) == []
    feed.unsubscribe("erin")
    assert feed.watched() == {POLICE}
    out = feed.update({FIRE: None, POLICE: None})
    assert out == [("dana", {"type": "group", "group": POLICE, "state": "removed"})]
