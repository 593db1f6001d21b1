"""Emergency and imminent peril alerts and broadcast group calls (issue 16), without I/O: the alert decisions and
messages of ``ptt.emergency``, the floor arbiter with server-verified call types, and the group call's pushes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ptt.emergency import (
    Alert,
    AlertEvent,
    CancelRequest,
    EmergencyMessageError,
    EmergencyRefused,
    Level,
    RaiseRequest,
    acknowledge_alert,
    cancel_alert,
    changes,
    group_level,
    indicator_bits,
    raise_alert,
)
from ptt.floor.arbiter import ArbiterConfig, FloorArbiter, Participant, Send
from ptt.floor.fields import DenyCause, FloorIndicator, RevokeCause
from ptt.floor.messages import FloorMessage, Subtype
from ptt.groupcall import GroupCall
from ptt.groupinfo import GroupInfo, MemberInfo, Refused, RelayAddress
from ptt.relaycore import RelayCore

GROUP = "sip:fire@example.org"
ALICE = Participant(0x1001, "sip:alice@example.org", priority=100)
BOB = Participant(0x1002, "sip:bob@example.org", priority=100)
CAROL = Participant(0x1003, "sip:carol@example.org", priority=100)
CHIEF = Participant(0x1004, "sip:chief@example.org", priority=200, pre_emptive=True)
SPEAKER = Participant(0x1005, "sip:speaker@example.org", priority=100, broadcast=True)
E = int(FloorIndicator.EMERGENCY)
IP = int(FloorIndicator.IMMINENT_PERIL)
BC = int(FloorIndicator.BROADCAST)
NORMAL = int(FloorIndicator.NORMAL)


# -- alert decisions -------------------------------------------------------------------------------------------------


def test_raise_is_idempotent_upgrades_and_refuses_a_downgrade() -> None:
    first = raise_alert(None, GROUP, ALICE.uri, Level.IMMINENT_PERIL, False, 10.0)
    assert first == Alert(GROUP, ALICE.uri, Level.IMMINENT_PERIL, 10.0, False)
    assert raise_alert(first, GROUP, ALICE.uri, Level.IMMINENT_PERIL, True, 11.0) is None  # same level: nothing
    up = raise_alert(first, GROUP, ALICE.uri, Level.EMERGENCY, True, 12.0)
    assert up is not None and (up.level, up.since, up.call) == (Level.EMERGENCY, 12.0, True)
    with pytest.raises(EmergencyRefused) as refused:
        raise_alert(up, GROUP, ALICE.uri, Level.IMMINENT_PERIL, False, 13.0)
    assert refused.value.code == 409
    cancelled = replace(up, cancelled_at=14.0, cancelled_by=ALICE.uri)
    again = raise_alert(cancelled, GROUP, ALICE.uri, Level.IMMINENT_PERIL, False, 15.0)
    assert again is not None and again.active and again.since == 15.0


def test_cancel_own_or_by_a_dispatcher_only() -> None:
    alert = Alert(GROUP, ALICE.uri, Level.EMERGENCY, 10.0)
    with pytest.raises(EmergencyRefused) as refused:
        cancel_alert(alert, ALICE.uri, BOB.uri, dispatcher=False, now=11.0)
    assert refused.value.code == 403 and "only its own" in str(refused.value)
    mine = cancel_alert(alert, ALICE.uri, ALICE.uri, dispatcher=False, now=11.0)
    assert (mine.active, mine.cancelled_at, mine.cancelled_by) == (False, 11.0, ALICE.uri)
    theirs = cancel_alert(alert, ALICE.uri, "dana", dispatcher=True, now=12.0)
    assert theirs.cancelled_by == "dana"
    with pytest.raises(EmergencyRefused) as none:
        cancel_alert(mine, ALICE.uri, ALICE.uri, dispatcher=False, now=13.0)
    assert none.value.code == 404
    with pytest.raises(EmergencyRefused):
        cancel_alert(None, ALICE.uri, "dana", dispatcher=True, now=13.0)


def test_group_level_and_changes() -> None:
    peril = Alert(GROUP, BOB.uri, Level.IMMINENT_PERIL, 5.0)
    emergency = Alert(GROUP, ALICE.uri, Level.EMERGENCY, 10.0)
    assert group_level([]) is None and indicator_bits([]) == 0
    assert group_level([peril]) is Level.IMMINENT_PERIL and indicator_bits([peril]) == IP
    assert group_level([peril, emergency]) is Level.EMERGENCY and indicator_bits([peril, emergency]) == E
    cancelled = replace(emergency, cancelled_at=20.0, cancelled_by="dana")
    assert group_level([cancelled]) is None
    assert changes({}, {ALICE.uri: emergency}) == [emergency]
    assert changes({ALICE.uri: emergency}, {ALICE.uri: emergency}) == []
    assert changes({ALICE.uri: emergency}, {ALICE.uri: cancelled}) == [cancelled]
    assert changes({ALICE.uri: cancelled}, {ALICE.uri: cancelled}) == []
    (gone,) = changes({ALICE.uri: emergency}, {})  # the member was removed: its alert went with it
    assert not gone.active and gone.cancelled_by is None


def test_an_acknowledgement_is_kept_once_and_members_are_told_of_it() -> None:
    emergency = Alert(GROUP, ALICE.uri, Level.EMERGENCY, 10.0)
    acked = acknowledge_alert(emergency, ALICE.uri, "dana", 12.0)
    assert acked is not None and acked.acknowledged and (acked.acked_by, acked.acked_at) == ("dana", 12.0)
    assert acknowledge_alert(acked, ALICE.uri, "erin", 13.0) is None  # the first acknowledgement stays
    assert changes({ALICE.uri: emergency}, {ALICE.uri: acked}) == [acked]  # the member in danger learns it
    assert changes({ALICE.uri: acked}, {ALICE.uri: acked}) == []
    event = AlertEvent(GROUP, acked).to_json()
    assert (event["state"], event["by"], event["acked_at"]) == ("acknowledged", "dana", 12.0)
    assert AlertEvent.parse(event).alert == acked
    for bad in ({"by": None}, {"by": 7}, {"acked_at": "soon"}, {"acked_at": float("nan")}, {"state": "seen"}):
        with pytest.raises(EmergencyMessageError):
            AlertEvent.parse({**event, **bad})
    assert "acked_by" not in acked.to_json()  # members' group entries keep the fields their clients parse
    with pytest.raises(EmergencyRefused) as refused:
        acknowledge_alert(replace(emergency, cancelled_at=11.0), ALICE.uri, "dana", 12.0)
    assert refused.value.code == 404
    with pytest.raises(EmergencyRefused):
        acknowledge_alert(None, ALICE.uri, "dana", 12.0)


# -- control messages ----------------------------------------------------------------------------------------------


def test_requests_parse_and_round_trip() -> None:
    raised = RaiseRequest(GROUP, Level.IMMINENT_PERIL, call=True)
    assert RaiseRequest.parse(raised.to_json()) == raised
    assert RaiseRequest.parse({"type": "emergency", "group": GROUP, "level": "emergency"}).call is False
    cancel = CancelRequest(GROUP, ALICE.uri)
    assert CancelRequest.parse(cancel.to_json()) == cancel
    assert CancelRequest.parse({"type": "emergency_cancel", "group": GROUP}).uri is None
    event = AlertEvent(GROUP, Alert(GROUP, ALICE.uri, Level.EMERGENCY, 10.0, True, 12.0, "dana"))
    assert event.to_json()["state"] == "cancelled" and event.to_json()["by"] == "dana"
    parsed = AlertEvent.parse(event.to_json())
    assert (parsed.alert.uri, parsed.alert.level, parsed.alert.active, parsed.alert.cancelled_by) == (
        ALICE.uri,
        Level.EMERGENCY,
        False,
        "dana",
    )


@pytest.mark.parametrize(
    "message",
    [
        {"type": "emergency", "group": GROUP, "level": "panic"},
        {"type": "emergency", "group": GROUP, "level": 2},
        {"type": "emergency", "group": GROUP, "level": "emergency", "call": "yes"},
        {"type": "emergency", "group": GROUP, "level": "emergency", "extra": 1},
        {"type": "emergency", "group": "", "level": "emergency"},
        {"type": "emergency", "group": "sip:a b@example.org", "level": "emergency"},
        {"type": "emergency", "group": "x" * 256, "level": "emergency"},
        {"type": "emergency", "level": "emergency"},
    ],
)
def test_malformed_raise_is_refused_precisely(message: dict[str, object]) -> None:
    with pytest.raises(EmergencyMessageError):
        RaiseRequest.parse(message)


@pytest.mark.parametrize(
    "message",
    [
        {"type": "emergency_cancel", "group": GROUP, "uri": 5},
        {"type": "emergency_cancel", "group": GROUP, "uri": ""},
        {"type": "emergency_cancel", "group": GROUP, "why": "x"},
    ],
)
def test_malformed_cancel_is_refused_precisely(message: dict[str, object]) -> None:
    with pytest.raises(EmergencyMessageError):
        CancelRequest.parse(message)


# -- the arbiter with server-verified call types ---------------------------------------------------------------------


def arbiter(*members: Participant, alerts: dict[str, int] | None = None, **config: object) -> FloorArbiter:
    floor = FloorArbiter(GROUP, ArbiterConfig(verified_call_types=True, **config))  # type: ignore[arg-type]
    floor.set_alerts(alerts or {})
    for member in members:
        floor.join(member, 0.0)
    floor.events()
    return floor


def request(floor: FloorArbiter, who: Participant, now: float, indicator: int | None = None) -> list[Send]:
    return floor.receive(who.ssrc, FloorMessage(Subtype.REQUEST, who.ssrc, floor_indicator=indicator), now)


def kinds(sends: list[Send]) -> list[tuple[int | None, Subtype]]:
    return [(s.to, Subtype(s.message.subtype)) for s in sends]


def test_an_emergency_request_pre_empts_a_normal_talker_at_once() -> None:
    floor = arbiter(ALICE, BOB, CAROL, alerts={BOB.uri: 2})
    request(floor, ALICE, 0.0)
    sends = request(floor, BOB, 1.0, E)  # BOB is not pre-emptive: its alert is what counts
    assert kinds(sends) == [(ALICE.ssrc, Subtype.REVOKE), (BOB.ssrc, Subtype.GRANTED), (None, Subtype.TAKEN)]
    revoke, granted, taken = (s.message for s in sends)
    assert revoke.reject_cause is not None and revoke.reject_cause.code == RevokeCause.PRE_EMPTED
    assert granted.floor_indicator is not None and granted.floor_indicator & E
    assert taken.floor_indicator is not None and taken.floor_indicator & E and taken.granted_party == BOB.uri
    assert floor.holder == BOB


def test_the_server_sets_the_urgency_whatever_the_request_says() -> None:
    floor = arbiter(ALICE, BOB, CAROL, alerts={BOB.uri: 2})
    request(floor, ALICE, 0.0)
    # CAROL claims an emergency she has not raised: stripped, queued as a normal request
    assert kinds(request(floor, CAROL, 1.0, E)) == [(CAROL.ssrc, Subtype.QUEUE_POSITION_INFO)]
    assert floor.holder == ALICE
    # BOB's request without the bit still carries his emergency (raced his own alert's confirmation)
    sends = request(floor, BOB, 2.0)
    assert floor.holder == BOB and sends[1].message.floor_indicator == E
    # and he is granted before CAROL, who was queued first
    assert floor.queue == [CAROL]


def test_imminent_peril_sits_between_normal_and_emergency() -> None:
    floor = arbiter(ALICE, BOB, CAROL, alerts={BOB.uri: 1, CAROL.uri: 2})
    request(floor, ALICE, 0.0)
    assert kinds(request(floor, BOB, 1.0, IP))[:2] == [(ALICE.ssrc, Subtype.REVOKE), (BOB.ssrc, Subtype.GRANTED)]
    assert kinds(request(floor, CAROL, 2.0, E))[:2] == [(BOB.ssrc, Subtype.REVOKE), (CAROL.ssrc, Subtype.GRANTED)]
    # imminent peril does not pre-empt an emergency: queued, ahead of normal requests
    request(floor, ALICE, 3.0)
    assert kinds(request(floor, BOB, 3.5, IP)) == [(BOB.ssrc, Subtype.QUEUE_POSITION_INFO)]
    assert floor.queue == [BOB, ALICE]


def test_a_dispatchers_priority_does_not_pre_empt_an_emergency_talker() -> None:
    floor = arbiter(ALICE, CHIEF, alerts={ALICE.uri: 2})
    request(floor, ALICE, 0.0, E)
    assert kinds(request(floor, CHIEF, 1.0)) == [(CHIEF.ssrc, Subtype.QUEUE_POSITION_INFO)]
    assert floor.holder == ALICE
    # but it still pre-empts a normal talker
    normal = arbiter(ALICE, CHIEF)
    request(normal, ALICE, 0.0)
    assert kinds(request(normal, CHIEF, 1.0))[0] == (ALICE.ssrc, Subtype.REVOKE)


def test_floor_idle_and_taken_carry_the_groups_level_and_a_cancel_downgrades_the_claim() -> None:
    floor = arbiter(ALICE, BOB, CAROL)
    floor.set_alerts({BOB.uri: 2})
    (idle,) = floor.join(CAROL, 0.5)  # late entry while idle: Floor Idle with the emergency bit
    assert idle.message.subtype == Subtype.IDLE and idle.message.floor_indicator == E
    request(floor, ALICE, 1.0)  # a normal talker in an emergency group: its Floor Taken says emergency too
    (taken,) = floor.join(CAROL, 1.5)
    assert taken.message.floor_indicator == E
    request(floor, BOB, 2.0, E)
    assert floor.holder == BOB
    floor.set_alerts({})  # cancelled: BOB keeps talking, as a normal talker now
    floor.join(CHIEF, 3.0)
    assert kinds(request(floor, CHIEF, 3.5))[:2] == [(BOB.ssrc, Subtype.REVOKE), (CHIEF.ssrc, Subtype.GRANTED)]
    sends = floor.receive(CHIEF.ssrc, FloorMessage(Subtype.RELEASE, CHIEF.ssrc), 4.0)
    assert sends[-1].message.subtype == Subtype.IDLE and sends[-1].message.floor_indicator == NORMAL


def test_a_broadcast_cannot_be_interrupted_except_by_an_emergency() -> None:
    floor = arbiter(ALICE, BOB, CHIEF, SPEAKER, alerts={BOB.uri: 1})
    sends = request(floor, SPEAKER, 0.0, BC)
    assert floor.holder == SPEAKER
    # the broadcast bit, and the group's imminent peril level (BOB's alert)
    assert sends[0].message.floor_indicator == sends[1].message.floor_indicator == BC | IP
    for who, indicator in ((ALICE, None), (CHIEF, None), (BOB, IP), (ALICE, BC)):
        (deny,) = request(floor, who, 1.0, indicator)
        assert deny.to == who.ssrc and deny.message.subtype == Subtype.DENY
        assert deny.message.reject_cause is not None
        if indicator == BC and who is ALICE:
            assert deny.message.reject_cause.code == DenyCause.OTHER  # ALICE has no broadcast right at all
        else:
            assert deny.message.reject_cause.code == DenyCause.ANOTHER_CLIENT_HAS_PERMISSION
            assert deny.message.reject_cause.phrase == "broadcast group call in progress"
    assert floor.holder == SPEAKER and floor.queue == []  # nobody queued
    floor.set_alerts({BOB.uri: 2})  # BOB's alert becomes an emergency: that interrupts the broadcast
    sends = request(floor, BOB, 2.0, E)
    assert kinds(sends)[:2] == [(SPEAKER.ssrc, Subtype.REVOKE), (BOB.ssrc, Subtype.GRANTED)]


def test_broadcast_without_the_right_is_denied() -> None:
    floor = arbiter(ALICE, BOB)
    (deny,) = request(floor, ALICE, 0.0, BC)
    assert deny.message.subtype == Subtype.DENY and deny.message.reject_cause is not None
    assert deny.message.reject_cause.code == DenyCause.OTHER
    assert "not authorised for broadcast" in deny.message.reject_cause.phrase
    assert floor.holder is None
    floor.update_participant(replace(ALICE, broadcast=True))  # a dispatcher gave the right meanwhile
    request(floor, ALICE, 1.0, BC)
    assert floor.holder is not None and floor.holder.uri == ALICE.uri


def test_every_message_fits_the_wire_format() -> None:
    floor = arbiter(ALICE, BOB, SPEAKER, alerts={BOB.uri: 2})
    for sends in (request(floor, SPEAKER, 0.0, BC), request(floor, BOB, 1.0, E), floor.join(ALICE, 2.0)):
        for send in sends:
            assert FloorMessage.parse(bytes(send.message)) == send.message


# -- the group call: alerts pushed to every member, and the floor told --------------------------------------------


def group(alerts: dict[str, Alert] | None = None, broadcast: tuple[str, ...] = ()) -> GroupInfo:
    members = {p.uri: MemberInfo(p.uri, 100, "member", p.uri in broadcast) for p in (ALICE, BOB, CAROL)}
    return GroupInfo(GROUP, "fire", 30.0, members, alerts or {})


def test_group_call_pushes_alerts_to_every_member_and_lists_them() -> None:
    call = GroupCall(RelayCore(), RelayAddress("127.0.0.1", 9))
    call.set_group(group(), 0.0)
    call.pushes()
    alert = Alert(GROUP, BOB.uri, Level.EMERGENCY, 5.0, True)
    call.set_group(group({BOB.uri: alert}), 5.0)
    pushes = call.pushes()
    assert sorted(m for m, _ in pushes) == sorted([ALICE.uri, BOB.uri, CAROL.uri])
    message = pushes[0][1]
    assert (message["type"], message["state"], message["uri"], message["level"], message["since"]) == (
        "alert",
        "raised",
        BOB.uri,
        "emergency",
        5.0,
    )
    (entry,) = call.groups_of(ALICE.uri)
    assert entry["alerts"] == [{"uri": BOB.uri, "level": "emergency", "since": 5.0, "call": True}]
    assert call.status(GROUP)["alerts"] == entry["alerts"]
    call.set_group(group({BOB.uri: alert}), 6.0)  # the same state again: nothing to tell
    assert call.pushes() == []
    cancelled = replace(alert, cancelled_at=7.0, cancelled_by="dana")
    call.set_group(group({BOB.uri: cancelled}), 7.0)
    pushes = call.pushes()
    assert {m["state"] for _, m in pushes} == {"cancelled"} and {m["by"] for _, m in pushes} == {"dana"}
    assert "alerts" not in call.groups_of(ALICE.uri)[0]


def test_group_call_names_the_broadcast_right_and_checks_membership() -> None:
    call = GroupCall(RelayCore(), RelayAddress("127.0.0.1", 9))
    call.set_group(group(), 0.0)
    call.pushes()
    call.set_group(group(broadcast=(ALICE.uri,)), 1.0)
    assert call.groups_of(ALICE.uri)[0]["broadcast"] is True
    assert [m for m, message in call.pushes() if message["type"] == "groups"] == [ALICE.uri]
    call.check_member(GROUP, ALICE.uri)
    with pytest.raises(Refused) as refused:
        call.check_member(GROUP, "sip:mallory@example.org")
    assert refused.value.code == 403
