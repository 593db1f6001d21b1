"""The client session's emergency part (client.session_emergency, issue 16): alerts from pushes and group lists,
and floor requests carrying the user's own level."""

from __future__ import annotations

from typing import Any

import pytest

from client.session_emergency import SessionEmergency
from client.session_floor import SessionFloor
from ptt.floor.fields import FloorIndicator

GROUP = "sip:fire@example.org"
ALICE, BOB = "sip:alice@example.org", "sip:bob@example.org"


@pytest.fixture
def session(monkeypatch: pytest.MonkeyPatch) -> tuple[SessionEmergency, list[Any]]:
    sent: list[Any] = []
    monkeypatch.setattr(
        SessionFloor, "request_floor", lambda self, group, *, priority=None, indicator=None: sent.append(indicator)
    )
    s = SessionEmergency.__new__(SessionEmergency)
    s.uri = ALICE
    return s, sent


def alert(uri: str, state: str = "raised", level: str = "emergency", **extra: Any) -> dict[str, Any]:
    return {"type": "alert", "group": GROUP, "state": state, "uri": uri, "level": level, "since": 5.0, **extra}


def test_requests_carry_the_users_own_level(session: tuple[SessionEmergency, list[Any]]) -> None:
    s, sent = session
    heard: list[Any] = []
    s.alert_listener = lambda group, a: heard.append((group, a.uri, a.active))
    s.request_floor(GROUP)
    s.on_alert(alert(BOB))  # someone else's emergency: my requests stay normal
    s.request_floor(GROUP)
    s.on_alert(alert(ALICE, level="imminent-peril"))
    s.request_floor(GROUP)
    s.on_alert(alert(ALICE))
    s.request_floor(GROUP, indicator=int(FloorIndicator.NORMAL))
    s.on_alert(alert(ALICE, state="cancelled", by="dana"))
    s.request_floor(GROUP)
    s.request_broadcast(GROUP)
    assert sent == [
        None,
        None,
        int(FloorIndicator.IMMINENT_PERIL),
        int(FloorIndicator.EMERGENCY),
        None,
        int(FloorIndicator.BROADCAST),
    ]
    assert heard[-1] == (GROUP, ALICE, False) and set(s.alerts[GROUP]) == {BOB}
    s.on_alert({"type": "alert", "group": GROUP, "state": "odd", "uri": BOB, "level": "emergency", "since": 1})
    assert len(heard) == 4  # an unusable alert is logged and dropped


def test_a_login_learns_the_alerts_from_the_group_list(session: tuple[SessionEmergency, list[Any]]) -> None:
    s, _ = session
    s._alerts_from_groups([{"uri": GROUP, "alerts": [{"uri": BOB, "level": "emergency", "since": 5.0}]}])
    assert s.alerts[GROUP][BOB].since == 5.0 and s.own_level(GROUP) is None
    s._alerts_from_groups([{"uri": GROUP}])
    assert s.alerts == {}
