"""The control channel's emergency requests on the server (server.emergencyshell): form, membership and rights
checked before the store, the store's refusals turned into clear errors, a rate limit."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer

from ptt.emergency import Alert, Level
from ptt.groupcall import GroupCall
from ptt.groupinfo import GroupInfo, MemberInfo, Refused, RelayAddress
from ptt.relaycore import RelayCore
from server import emergencyshell
from server.emergencyshell import EmergencyRequests
from server.groups.store import AlertRefused

GROUP = "sip:fire@example.org"
ALICE, BOB, CHIEF = "sip:alice@example.org", "sip:bob@example.org", "sip:chief@example.org"


class Manager:
    """Records what the shell asks of the group manager; ``refuse`` makes the store refuse."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.refuse: AlertRefused | None = None

    def raise_alert(self, group: str, uri: str, level: Level, *, call: bool, now: float) -> Alert:
        if self.refuse:
            raise self.refuse
        self.calls.append(("raise", group, uri, level, call))
        return Alert(group, uri, level, now, call)

    def cancel_alert(self, group: str, uri: str, *, by: str, dispatcher: bool, now: float) -> Alert:
        if self.refuse:
            raise self.refuse
        self.calls.append(("cancel", group, uri, by, dispatcher))
        return Alert(group, uri, Level.EMERGENCY, 0.0, False, now, by)


@pytest.fixture
def shell(monkeypatch: pytest.MonkeyPatch) -> tuple[EmergencyRequests, Manager]:
    monkeypatch.setattr(
        emergencyshell, "deferToThreadPool", lambda reactor, pool, f, *args: defer.maybeDeferred(f, *args)
    )
    call = GroupCall(RelayCore(), RelayAddress("127.0.0.1", 9))
    members = {ALICE: MemberInfo(ALICE), BOB: MemberInfo(BOB), CHIEF: MemberInfo(CHIEF, 200, "dispatcher")}
    call.set_group(GroupInfo(GROUP, "fire", 30.0, members), 0.0)
    manager = Manager()
    return EmergencyRequests(None, call, manager, None), manager  # type: ignore[arg-type]


def result(d: defer.Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    (value,) = out
    if hasattr(value, "raiseException"):
        value.raiseException()
    return value


def test_raise_and_cancel(shell: tuple[EmergencyRequests, Manager]) -> None:
    requests, manager = shell
    reply = result(requests.handle(BOB, {"type": "emergency", "group": GROUP, "level": "emergency", "call": True}, 1))
    assert reply == {"type": "emergency_ok", "group": GROUP, "state": "raised", "level": "emergency"}
    reply = result(requests.handle(BOB, {"type": "emergency_cancel", "group": GROUP}, 2))
    assert reply["state"] == "cancelled" and reply["uri"] == BOB
    result(requests.handle(CHIEF, {"type": "emergency_cancel", "group": GROUP, "uri": BOB}, 3))
    assert manager.calls == [
        ("raise", GROUP, BOB, Level.EMERGENCY, True),
        ("cancel", GROUP, BOB, BOB, False),
        ("cancel", GROUP, BOB, CHIEF, True),  # a dispatcher member cancels anyone's
    ]


@pytest.mark.parametrize(
    ("who", "message", "code", "words"),
    [
        (ALICE, {"type": "emergency_cancel", "group": GROUP, "uri": BOB}, 403, "only its own"),
        ("sip:mallory@example.org", {"type": "emergency", "group": GROUP, "level": "emergency"}, 403, "not a member"),
        (ALICE, {"type": "emergency", "group": GROUP, "level": "panic"}, 400, "unknown alert level"),
        (ALICE, {"type": "emergency", "group": "sip:other@example.org", "level": "emergency"}, 404, "no group"),
    ],
)
def test_refusals_are_clear(
    shell: tuple[EmergencyRequests, Manager], who: str, message: dict[str, Any], code: int, words: str
) -> None:
    requests, manager = shell
    with pytest.raises(Refused) as refused:
        result(requests.handle(who, message, 1))
    assert refused.value.code == code and words in str(refused.value)
    assert manager.calls == []


def test_store_refusals_and_the_rate_limit(shell: tuple[EmergencyRequests, Manager]) -> None:
    requests, manager = shell
    manager.refuse = AlertRefused(409, "sip:bob@example.org is in emergency: cancel it before raising imminent peril")
    with pytest.raises(Refused) as refused:
        result(requests.handle(BOB, {"type": "emergency", "group": GROUP, "level": "imminent-peril"}, 1))
    assert refused.value.code == 409 and "cancel it" in str(refused.value)
    manager.refuse = None
    message = {"type": "emergency", "group": GROUP, "level": "emergency"}
    for _ in range(emergencyshell.BURST):
        result(requests.handle(ALICE, message, 1))
    with pytest.raises(Refused) as limited:
        requests.handle(ALICE, message, 1)
    assert limited.value.code == 429
