"""The on-network floor control server (TS 24.380 §6.3): contention, queue, pre-emption, burst limit, late entry."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ptt.floor.arbiter import (
    DEFAULT_SERVER_SSRC,
    ArbiterConfig,
    FloorArbiter,
    Participant,
    Send,
)
from ptt.floor.arbiter_types import urgency
from ptt.floor.messages import QUEUE_POSITION_NOT_QUEUED, FloorIndicator, FloorMessage, QueueInfo, Subtype

GROUP = "sip:fire-ops@example.org"
ALICE = Participant(0x1001, "sip:alice@example.org")
BOB = Participant(0x1002, "sip:bob@example.org")
CAROL = Participant(0x1003, "sip:carol@example.org", priority=5)
DAVE = Participant(0x1004, "sip:dave@example.org", priority=5)
ERIN = Participant(0x1005, "sip:erin@example.org", priority=1)
DISPATCH = Participant(0x1006, "sip:dispatch@example.org", priority=200, pre_emptive=True)
LISTENER = Participant(0x1007, "sip:listener@example.org", receive_only=True)
EVERYONE = (ALICE, BOB, CAROL, DAVE, ERIN, DISPATCH, LISTENER)


def summary(floor: FloorArbiter) -> list[tuple[str, int | None, str | None]]:
    """The drained events as (kind, member SSRC, member URI)."""
    return [(event.kind.value, event.member_ssrc, event.member) for event in floor.events()]


def arbiter(*members: Participant, **config: object) -> FloorArbiter:
    """An arbiter with ``members`` joined at t=0 (their Floor Idle answers and events dropped)."""
    floor = FloorArbiter(GROUP, ArbiterConfig(**config))  # type: ignore[arg-type]
    for member in members:
        floor.join(member, 0.0)
    floor.events()
    return floor


def msg(subtype: Subtype, sender: Participant, **fields: object) -> FloorMessage:
    return FloorMessage(subtype=subtype, ssrc=sender.ssrc, **fields)  # type: ignore[arg-type]


def request(floor: FloorArbiter, who: Participant, now: float, **fields: object) -> list[Send]:
    return floor.receive(who.ssrc, msg(Subtype.REQUEST, who, **fields), now)


def release(floor: FloorArbiter, who: Participant, now: float, **fields: object) -> list[Send]:
    return floor.receive(who.ssrc, msg(Subtype.RELEASE, who, **fields), now)


def kinds(sends: list[Send]) -> list[tuple[int | None, Subtype]]:
    return [(send.to, Subtype(send.message.subtype)) for send in sends]


def assert_granted(sends: list[Send], who: Participant, sequence: int) -> tuple[FloorMessage, FloorMessage]:
    """``sends`` end in Floor Granted to ``who`` and Floor Taken (naming ``who``) to everyone else."""
    granted, taken = sends[-2:]
    assert (granted.to, granted.message.subtype, granted.exclude) == (who.ssrc, Subtype.GRANTED, None)
    assert (taken.to, taken.message.subtype, taken.exclude) == (None, Subtype.TAKEN, who.ssrc)
    assert taken.message.granted_party == who.uri
    assert taken.message.ssrc_field == who.ssrc
    assert taken.message.permission_to_request is True
    assert taken.message.sequence == sequence
    assert granted.message.ssrc == taken.message.ssrc == DEFAULT_SERVER_SSRC
    return granted.message, taken.message


# -- granting, contention, queue ------------------------------------------------------------------------------


def test_idle_request_is_granted_and_announced_as_taken() -> None:
    floor = arbiter(ALICE, BOB, CAROL)
    sends = request(floor, ALICE, 1.0)
    assert len(sends) == 2
    granted, taken = assert_granted(sends, ALICE, sequence=1)
    assert granted.duration == 30
    assert granted.priority == 0
    assert granted.queue_size == 0
    assert granted.floor_indicator == taken.floor_indicator == FloorIndicator.NORMAL
    assert floor.holder == ALICE
    assert floor.queue == []
    assert summary(floor) == [("granted", ALICE.ssrc, ALICE.uri)]
    assert summary(floor) == []  # drained


def test_contention_grants_one_and_queues_the_other() -> None:
    floor = arbiter(ALICE, BOB, CAROL)
    first = request(floor, ALICE, 1.0)
    second = request(floor, BOB, 1.0)
    assert kinds(first) == [(ALICE.ssrc, Subtype.GRANTED), (None, Subtype.TAKEN)]
    assert kinds(second) == [(BOB.ssrc, Subtype.QUEUE_POSITION_INFO)]
    info = second[0].message
    assert info.queue_info == QueueInfo(position=1, priority=0)
    assert info.queued_user_id == BOB.uri
    assert info.ssrc_field == BOB.ssrc
    assert floor.holder == ALICE
    assert floor.queue == [BOB]
    assert [event.kind.value for event in floor.events()] == ["granted", "queued"]


def test_release_hands_the_floor_to_the_queue_head() -> None:
    floor = arbiter(ALICE, BOB, CAROL)
    request(floor, ALICE, 1.0)
    request(floor, BOB, 2.0)
    floor.events()
    sends = release(floor, ALICE, 5.0)
    granted, _ = assert_granted(sends, BOB, sequence=2)
    assert len(sends) == 2
    assert granted.duration == 30
    assert floor.holder == BOB
    assert floor.queue == []
    assert floor.next_deadline() == 35.0
    assert summary(floor) == [("granted", BOB.ssrc, BOB.uri)]


def test_release_with_an_empty_queue_makes_the_floor_idle() -> None:
    floor = arbiter(ALICE, BOB)
    request(floor, ALICE, 1.0)
    floor.events()
    sends = release(floor, ALICE, 2.0)
    assert len(sends) == 1
    (idle,) = sends
    assert (idle.to, idle.exclude, idle.message.subtype) == (None, None, Subtype.IDLE)
    assert idle.message.sequence == 2
    assert idle.message.floor_indicator == FloorIndicator.NORMAL
    assert floor.holder is None
    assert floor.next_deadline() is None
    assert summary(floor) == [("idle", None, None)]
    # the message sequence number keeps counting transitions
    assert_granted(request(floor, BOB, 3.0), BOB, sequence=3)
    assert release(floor, BOB, 4.0)[0].message.sequence == 4


def test_queue_is_ordered_by_priority_then_arrival() -> None:
    floor = arbiter(*EVERYONE)
    request(floor, ALICE, 0.0)
    positions = {}
    for who in (BOB, CAROL, ERIN, DAVE):  # priorities 0, 5, 1, 5
        (send,) = request(floor, who, 1.0)
        assert send.message.queue_info is not None
        positions[who.uri] = send.message.queue_info
    assert floor.queue == [CAROL, DAVE, ERIN, BOB]
    # the position when queued, with the priority it was queued at
    assert positions == {
        BOB.uri: QueueInfo(1, 0),
        CAROL.uri: QueueInfo(1, 5),
        ERIN.uri: QueueInfo(2, 1),
        DAVE.uri: QueueInfo(2, 5),
    }
    # and the current position on a Queue Position Request
    (answer,) = floor.receive(BOB.ssrc, msg(Subtype.QUEUE_POSITION_REQUEST, BOB), 2.0)
    assert answer.to == BOB.ssrc
    assert answer.message.queue_info == QueueInfo(4, 0)
    # hand-overs follow the queue
    order = []
    for now in (3.0, 4.0, 5.0, 6.0):
        holder = floor.holder
        assert holder is not None
        release(floor, holder, now)
        order.append(floor.holder)
    assert order == [CAROL, DAVE, ERIN, BOB]


def test_request_priority_field_can_lower_but_not_raise_the_priority() -> None:
    floor = arbiter(ALICE, BOB, CAROL, DAVE)
    request(floor, ALICE, 0.0)
    request(floor, BOB, 1.0, priority=255)  # authorised 0: stays 0
    request(floor, CAROL, 1.0, priority=1)  # authorised 5: asks for 1
    (send,) = request(floor, DAVE, 1.0)  # 5
    assert floor.queue == [DAVE, CAROL, BOB]
    assert send.message.queue_info == QueueInfo(1, 5)


def test_a_queued_participant_asking_again_keeps_its_place() -> None:
    floor = arbiter(ALICE, BOB, CAROL)
    request(floor, ALICE, 0.0)
    request(floor, BOB, 1.0)
    request(floor, CAROL, 2.0)
    floor.events()
    assert floor.queue == [CAROL, BOB]  # Carol has the higher priority
    (again,) = request(floor, BOB, 3.0)
    assert again.message.queue_info == QueueInfo(2, 0)
    assert floor.queue == [CAROL, BOB]
    assert summary(floor) == []


def test_full_queue_is_denied_with_cause_7() -> None:
    floor = arbiter(ALICE, BOB, CAROL, queue_limit=1)
    request(floor, ALICE, 0.0)
    request(floor, BOB, 1.0)
    floor.events()
    (deny,) = request(floor, CAROL, 2.0)
    assert (deny.to, deny.message.subtype) == (CAROL.ssrc, Subtype.DENY)
    assert deny.message.reject_cause is not None
    assert deny.message.reject_cause.code == 7
    assert floor.queue == [BOB]
    assert summary(floor) == [("denied", CAROL.ssrc, CAROL.uri)]


def test_without_queueing_a_busy_floor_is_denied_with_cause_1() -> None:
    floor = arbiter(ALICE, BOB, queueing=False)
    granted = request(floor, ALICE, 0.0)
    assert granted[0].message.queue_size is None
    (deny,) = request(floor, BOB, 1.0)
    assert (deny.to, deny.message.subtype) == (BOB.ssrc, Subtype.DENY)
    assert deny.message.reject_cause is not None
    assert deny.message.reject_cause.code == 1
    assert floor.queue == []
    assert floor.holder == ALICE


def test_receive_only_participants_are_denied_with_cause_5() -> None:
    floor = arbiter(ALICE, LISTENER)
    (deny,) = request(floor, LISTENER, 0.0)  # even when the floor is idle
    assert (deny.to, deny.message.subtype) == (LISTENER.ssrc, Subtype.DENY)
    assert deny.message.reject_cause is not None
    assert deny.message.reject_cause.code == 5
    assert floor.holder is None
    request(floor, ALICE, 1.0)
    (deny,) = request(floor, LISTENER, 2.0)
    assert deny.message.reject_cause is not None
    assert deny.message.reject_cause.code == 5
    assert floor.queue == []


# -- pre-emption ------------------------------------------------------------------------------------------------


def test_dispatcher_pre_empts_a_lower_priority_talker() -> None:
    floor = arbiter(ALICE, BOB, DISPATCH)
    request(floor, ALICE, 0.0)
    request(floor, BOB, 1.0)
    floor.events()
    sends = request(floor, DISPATCH, 2.0)
    assert kinds(sends) == [(ALICE.ssrc, Subtype.REVOKE), (DISPATCH.ssrc, Subtype.GRANTED), (None, Subtype.TAKEN)]
    revoke = sends[0].message
    assert revoke.reject_cause is not None
    assert revoke.reject_cause.code == 4
    granted, _ = assert_granted(sends, DISPATCH, sequence=2)
    assert granted.priority == 200
    assert granted.queue_size == 1
    assert floor.holder == DISPATCH
    assert floor.queue == [BOB]  # the pre-empted talker is not queued; Bob keeps his place
    assert summary(floor) == [
        ("revoked", ALICE.ssrc, ALICE.uri),
        ("granted", DISPATCH.ssrc, DISPATCH.uri),
    ]
    # Alice's late Release is from a non-holder now: ignored
    assert release(floor, ALICE, 2.1) == []
    assert floor.holder == DISPATCH


def test_no_pre_emption_without_authorisation_or_higher_priority() -> None:
    boss = Participant(0x2001, "sip:boss@example.org", priority=9)  # high priority, not pre-emptive
    peer = Participant(0x2002, "sip:peer@example.org", priority=200, pre_emptive=True)
    floor = arbiter(DISPATCH, boss, peer)
    request(floor, DISPATCH, 0.0)
    assert kinds(request(floor, peer, 1.0)) == [(peer.ssrc, Subtype.QUEUE_POSITION_INFO)]  # equal priority
    floor2 = arbiter(ALICE, boss)
    request(floor2, ALICE, 0.0)
    assert kinds(request(floor2, boss, 1.0)) == [(boss.ssrc, Subtype.QUEUE_POSITION_INFO)]
    assert floor.holder == DISPATCH
    assert floor2.holder == ALICE


def test_emergency_request_pre_empts_a_normal_grant() -> None:
    medic = Participant(0x3001, "sip:medic@example.org", priority=0, pre_emptive=True)
    other = Participant(0x3002, "sip:other@example.org", priority=0, pre_emptive=True)
    floor = arbiter(ALICE, BOB, medic, other)
    request(floor, ALICE, 0.0)
    emergency = int(FloorIndicator.NORMAL | FloorIndicator.EMERGENCY)
    sends = request(floor, medic, 1.0, floor_indicator=emergency)
    assert kinds(sends) == [(ALICE.ssrc, Subtype.REVOKE), (medic.ssrc, Subtype.GRANTED), (None, Subtype.TAKEN)]
    assert sends[0].message.reject_cause is not None
    assert sends[0].message.reject_cause.code == 4
    granted, taken = assert_granted(sends, medic, sequence=2)
    assert granted.floor_indicator == taken.floor_indicator == emergency
    # another emergency request does not pre-empt an emergency grant; a non-pre-emptive one is queued too
    assert kinds(request(floor, other, 2.0, floor_indicator=emergency)) == [(other.ssrc, Subtype.QUEUE_POSITION_INFO)]
    assert kinds(request(floor, BOB, 2.0, floor_indicator=emergency)) == [(BOB.ssrc, Subtype.QUEUE_POSITION_INFO)]
    assert floor.holder == medic


def test_emergency_outranks_imminent_peril() -> None:
    first = Participant(0x3001, "sip:first@example.org", pre_emptive=True)
    second = Participant(0x3002, "sip:second@example.org", pre_emptive=True)
    floor = arbiter(first, second)
    request(floor, first, 0.0, floor_indicator=int(FloorIndicator.IMMINENT_PERIL))
    sends = request(floor, second, 1.0, floor_indicator=int(FloorIndicator.EMERGENCY))
    assert kinds(sends)[0] == (first.ssrc, Subtype.REVOKE)
    assert floor.holder == second


# -- burst limit --------------------------------------------------------------------------------------------------


def test_burst_limit_revokes_then_forces_idle_after_the_grace() -> None:
    floor = arbiter(ALICE, BOB, max_burst=30.0, revoke_grace=2.0)
    assert floor.next_deadline() is None
    request(floor, ALICE, 10.0)
    floor.events()
    assert floor.next_deadline() == 40.0
    assert floor.on_timer(39.5) == []
    sends = floor.on_timer(40.0)
    assert kinds(sends) == [(ALICE.ssrc, Subtype.REVOKE)]
    assert sends[0].message.reject_cause is not None
    assert sends[0].message.reject_cause.code == 2
    assert floor.revoking
    assert floor.holder == ALICE
    assert floor.next_deadline() == 42.0
    assert summary(floor) == [("revoked", ALICE.ssrc, ALICE.uri)]
    assert floor.on_timer(41.0) == []
    # a Request from the revoked holder (its Revoke lost?) is answered with the Revoke again
    assert kinds(request(floor, ALICE, 41.5)) == [(ALICE.ssrc, Subtype.REVOKE)]
    assert floor.next_deadline() == 42.0
    sends = floor.on_timer(42.0)  # the holder never answered
    assert kinds(sends) == [(None, Subtype.IDLE)]
    assert floor.holder is None
    assert floor.next_deadline() is None
    assert summary(floor) == [("idle", None, None)]
    assert floor.on_timer(100.0) == []


def test_burst_limit_hands_over_to_the_queue_after_the_grace() -> None:
    floor = arbiter(ALICE, BOB, max_burst=10.0, revoke_grace=1.5)
    request(floor, ALICE, 0.0)
    request(floor, BOB, 1.0)
    assert floor.next_deadline() == 10.0
    floor.on_timer(10.0)
    assert floor.next_deadline() == 11.5
    assert_granted(floor.on_timer(11.5), BOB, sequence=2)
    assert floor.next_deadline() == 21.5


def test_release_during_the_grace_ends_the_revoke() -> None:
    floor = arbiter(ALICE, BOB, max_burst=10.0)
    request(floor, ALICE, 0.0)
    floor.on_timer(10.0)
    assert kinds(release(floor, ALICE, 10.5)) == [(None, Subtype.IDLE)]
    assert floor.next_deadline() is None
    assert not floor.revoking


def test_holder_leaving_mid_burst_passes_the_floor_to_the_queue() -> None:
    floor = arbiter(ALICE, BOB, CAROL)
    request(floor, ALICE, 0.0)
    request(floor, BOB, 1.0)
    request(floor, CAROL, 2.0)
    floor.events()
    sends = floor.leave(ALICE.ssrc, 5.0)
    assert_granted(sends, CAROL, sequence=2)  # Carol has priority 5
    assert all(send.to != ALICE.ssrc for send in sends)
    assert floor.holder == CAROL
    assert floor.queue == [BOB]
    assert floor.next_deadline() == 35.0
    assert summary(floor) == [("granted", CAROL.ssrc, CAROL.uri)]
    assert ALICE not in floor.participants
    assert floor.receive(ALICE.ssrc, msg(Subtype.REQUEST, ALICE), 6.0) == []


def test_queued_participant_leaving_is_removed() -> None:
    floor = arbiter(ALICE, BOB, CAROL)
    request(floor, ALICE, 0.0)
    request(floor, BOB, 1.0)
    assert floor.leave(BOB.ssrc, 2.0) == []
    assert floor.queue == []
    assert floor.leave(BOB.ssrc, 2.0) == []  # twice: nothing
    assert kinds(release(floor, ALICE, 3.0)) == [(None, Subtype.IDLE)]


# -- late entry ---------------------------------------------------------------------------------------------------


def test_late_entry_while_taken_gets_floor_taken() -> None:
    floor = arbiter(ALICE, BOB)
    request(floor, ALICE, 0.0, floor_indicator=int(FloorIndicator.EMERGENCY))
    (taken,) = floor.join(CAROL, 3.0)
    assert (taken.to, taken.exclude, taken.message.subtype) == (CAROL.ssrc, None, Subtype.TAKEN)
    assert taken.message.granted_party == ALICE.uri
    assert taken.message.ssrc_field == ALICE.ssrc
    assert taken.message.permission_to_request is True
    assert taken.message.sequence == 1  # the same transition as the broadcast
    assert taken.message.floor_indicator == FloorIndicator.EMERGENCY
    assert summary(floor) == [("granted", ALICE.ssrc, ALICE.uri)]  # joining is no event


def test_late_entry_while_idle_gets_floor_idle() -> None:
    floor = FloorArbiter(GROUP)
    (idle,) = floor.join(ALICE, 0.0)
    assert (idle.to, idle.message.subtype, idle.message.sequence) == (ALICE.ssrc, Subtype.IDLE, 0)
    floor.join(BOB, 0.0)
    request(floor, ALICE, 1.0)
    release(floor, ALICE, 2.0)
    (idle,) = floor.join(CAROL, 3.0)
    assert (idle.to, idle.message.subtype, idle.message.sequence) == (CAROL.ssrc, Subtype.IDLE, 2)


def test_joining_again_is_leave_then_join() -> None:
    floor = arbiter(ALICE, BOB)
    request(floor, ALICE, 0.0)
    sends = floor.join(Participant(ALICE.ssrc, ALICE.uri, priority=7), 1.0)
    assert kinds(sends) == [(None, Subtype.IDLE), (ALICE.ssrc, Subtype.IDLE)]
    assert floor.holder is None
    assert len(floor.participants) == 2


# -- repeated and stray messages, acks ----------------------------------------------------------------------------


def test_repeated_request_from_the_holder_re_sends_granted() -> None:
    floor = arbiter(ALICE, BOB)
    request(floor, ALICE, 0.0)
    floor.events()
    sends = request(floor, ALICE, 10.5)
    assert kinds(sends) == [(ALICE.ssrc, Subtype.GRANTED)]
    assert sends[0].message.duration == 20  # what is left of the 30 s, rounded up
    assert floor.holder == ALICE
    assert floor.next_deadline() == 30.0
    assert summary(floor) == []
    # nothing changed: the next transition still has sequence number 2
    assert release(floor, ALICE, 11.0)[0].message.sequence == 2


def test_release_from_a_non_holder_is_ignored_but_acknowledged_if_asked() -> None:
    floor = arbiter(ALICE, BOB)
    request(floor, ALICE, 0.0)
    assert release(floor, BOB, 1.0) == []
    sends = release(floor, BOB, 1.0, ack_required=True)
    assert kinds(sends) == [(BOB.ssrc, Subtype.ACK)]
    assert sends[0].message.message_type == Subtype.RELEASE
    assert floor.holder == ALICE


def test_release_or_cancel_from_a_queued_participant_cancels_its_request() -> None:
    floor = arbiter(ALICE, BOB, CAROL)
    request(floor, ALICE, 0.0)
    request(floor, BOB, 1.0)
    request(floor, CAROL, 1.0)
    assert release(floor, BOB, 2.0) == []
    assert floor.queue == [CAROL]
    cancel = floor.receive(CAROL.ssrc, msg(Subtype.QUEUED_CANCEL, CAROL, ack_required=True), 3.0)
    assert kinds(cancel) == [(CAROL.ssrc, Subtype.ACK)]
    assert cancel[0].message.message_type == Subtype.QUEUED_CANCEL
    assert floor.queue == []
    assert floor.holder == ALICE


def test_unknown_ssrc_and_unhandled_messages_are_ignored() -> None:
    floor = arbiter(ALICE, BOB)
    stranger = Participant(0x9999, "sip:stranger@example.org")
    assert request(floor, stranger, 0.0) == []
    assert release(floor, stranger, 0.0, ack_required=True) == []
    assert floor.holder is None
    # a participant sending server messages: discarded (TS 24.380 §6.3.4.1), no Ack either
    for subtype in (Subtype.GRANTED, Subtype.TAKEN, Subtype.IDLE, Subtype.REVOKE, Subtype.DENY):
        assert floor.receive(ALICE.ssrc, msg(subtype, ALICE, ack_required=True), 1.0) == []
    assert floor.receive(ALICE.ssrc, msg(Subtype.ACK, ALICE, message_type=int(Subtype.GRANTED)), 1.0) == []
    assert floor.holder is None
    assert summary(floor) == []


def test_acknowledgement_required_messages_get_floor_ack_first() -> None:
    floor = arbiter(ALICE, BOB)
    sends = request(floor, ALICE, 0.0, ack_required=True)
    assert kinds(sends) == [(ALICE.ssrc, Subtype.ACK), (ALICE.ssrc, Subtype.GRANTED), (None, Subtype.TAKEN)]
    ack = sends[0].message
    assert ack.message_type == Subtype.REQUEST
    assert ack.source == 2
    assert ack.ssrc == DEFAULT_SERVER_SSRC
    query = floor.receive(BOB.ssrc, msg(Subtype.QUEUE_POSITION_REQUEST, BOB, ack_required=True), 1.0)
    assert kinds(query) == [(BOB.ssrc, Subtype.ACK), (BOB.ssrc, Subtype.QUEUE_POSITION_INFO)]
    released = release(floor, ALICE, 2.0, ack_required=True)
    assert kinds(released) == [(ALICE.ssrc, Subtype.ACK), (None, Subtype.IDLE)]
    assert released[0].message.message_type == Subtype.RELEASE


def test_queue_position_of_someone_not_queued() -> None:
    floor = arbiter(ALICE, CAROL)
    (answer,) = floor.receive(CAROL.ssrc, msg(Subtype.QUEUE_POSITION_REQUEST, CAROL), 0.0)
    assert answer.message.queue_info == QueueInfo(QUEUE_POSITION_NOT_QUEUED, 5)


def test_server_ssrc_is_configurable() -> None:
    floor = arbiter(ALICE, BOB, server_ssrc=0xABCDEF01)
    assert {send.message.ssrc for send in request(floor, ALICE, 0.0)} == {0xABCDEF01}


@pytest.mark.parametrize(
    "config",
    [{"max_burst": 0.0}, {"revoke_grace": -1.0}, {"queue_limit": -1}],
)
def test_bad_configuration_is_refused(config: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ArbiterConfig(**config)  # type: ignore[arg-type]


@pytest.mark.parametrize(("ssrc", "priority"), [(-1, 0), (1 << 32, 0), (1, 256), (1, -1)])
def test_bad_participants_are_refused(ssrc: int, priority: int) -> None:
    with pytest.raises(ValueError):
        Participant(ssrc, "sip:x@example.org", priority=priority)


def test_message_sequence_number_wraps_at_16_bits() -> None:
    floor = arbiter(ALICE, BOB)
    last = None
    for i in range(0x8000):
        request(floor, ALICE, float(i))
        last = release(floor, ALICE, float(i))[0].message.sequence
    assert last == 0  # 65536 transitions later
    assert request(floor, ALICE, 1e6)[1].message.sequence == 1


# -- stateful: invariants under any interleaving ------------------------------------------------------------------


class ArbiterMachine(RuleBasedStateMachine):
    """Random joins, leaves, requests, releases, cancels and time; the floor's invariants hold after each step."""

    def __init__(self) -> None:
        super().__init__()
        self.config = ArbiterConfig(max_burst=5.0, revoke_grace=1.0, queue_limit=3)
        self.floor = FloorArbiter(GROUP, self.config)
        self.joined: dict[int, Participant] = {}
        self.now = 0.0

    def apply(self, sends: list[Send], before: Participant | None) -> None:
        after = self.floor.holder
        for send in sends:
            assert send.message.ssrc == self.config.server_ssrc
            assert send.to is None or send.to in self.joined
            assert FloorMessage.parse(bytes(send.message)) == send.message  # every message fits the wire format
        for i, send in enumerate(sends):
            if send.message.subtype == Subtype.GRANTED and send.to != (before.ssrc if before else None):
                # a new grant: announced with Floor Taken to everyone else, right after
                assert send.to is not None
                assert i + 1 < len(sends)
                taken = sends[i + 1]
                assert (taken.to, taken.exclude, taken.message.subtype) == (None, send.to, Subtype.TAKEN)
                assert taken.message.ssrc_field == send.to
                assert taken.message.granted_party == self.joined[send.to].uri
        if after is not None and after != before:
            granted = [s for s in sends if s.message.subtype == Subtype.GRANTED]
            assert granted and granted[-1].to == after.ssrc
        if after is None and before is not None:
            assert len([s for s in sends if s.message.subtype == Subtype.IDLE and s.to is None]) == 1
        events = [(event.kind.value, event.member_ssrc, event.member) for event in self.floor.events()]
        if after != before and after is not None:
            assert events[-1] == ("granted", after.ssrc, after.uri)
        if after is None and before is not None:
            assert events[-1] == ("idle", None, None)

    @rule(who=st.sampled_from(EVERYONE))
    def join(self, who: Participant) -> None:
        before = self.floor.holder
        self.joined[who.ssrc] = who
        sends = self.floor.join(who, self.now)  # joining again: leave, then join
        self.apply(sends, before)
        assert sends[-1].to == who.ssrc
        assert sends[-1].message.subtype in (Subtype.TAKEN, Subtype.IDLE)

    @rule(who=st.sampled_from(EVERYONE))
    def leave(self, who: Participant) -> None:
        before = self.floor.holder
        self.joined.pop(who.ssrc, None)
        self.apply(self.floor.leave(who.ssrc, self.now), before)

    @rule(
        who=st.sampled_from(EVERYONE),
        indicator=st.sampled_from([None, int(FloorIndicator.NORMAL), int(FloorIndicator.EMERGENCY)]),
        ack=st.booleans(),
    )
    def request(self, who: Participant, indicator: int | None, ack: bool) -> None:
        before = self.floor.holder
        message = msg(Subtype.REQUEST, who, floor_indicator=indicator, ack_required=ack)
        sends = self.floor.receive(who.ssrc, message, self.now)
        self.apply(sends, before)
        if who.ssrc not in self.joined:
            assert sends == []
        elif ack:
            assert (sends[0].to, sends[0].message.subtype) == (who.ssrc, Subtype.ACK)

    @rule(
        who=st.sampled_from(EVERYONE),
        subtype=st.sampled_from([Subtype.RELEASE, Subtype.QUEUED_CANCEL, Subtype.QUEUE_POSITION_REQUEST]),
    )
    def other_message(self, who: Participant, subtype: Subtype) -> None:
        before = self.floor.holder
        self.apply(self.floor.receive(who.ssrc, msg(subtype, who), self.now), before)

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 3.0, 5.0, 7.5]))
    def advance(self, dt: float) -> None:
        target = self.now + dt
        while (deadline := self.floor.next_deadline()) is not None and deadline <= target:
            assert deadline >= self.now
            self.now = deadline
            before = self.floor.holder
            sends = self.floor.on_timer(self.now)
            assert sends  # a due timer always does something
            self.apply(sends, before)
        self.now = target

    @invariant()
    def floor_is_consistent(self) -> None:
        holder = self.floor.holder
        queue = self.floor.queue
        ssrcs = [p.ssrc for p in queue]
        assert len(ssrcs) == len(set(ssrcs))
        assert set(ssrcs) <= set(self.joined)
        assert len(queue) <= self.config.queue_limit
        assert not any(p.receive_only for p in queue)
        ranks = [(urgency(c.indicator), c.priority) for c in self.floor._queue]  # urgency first (issue 16)
        assert ranks == sorted(ranks, reverse=True)
        assert {p.ssrc for p in self.floor.participants} == set(self.joined)
        if holder is None:
            assert self.floor.next_deadline() is None
        else:
            assert holder.ssrc in self.joined
            assert holder.ssrc not in ssrcs
            assert not holder.receive_only
            deadline = self.floor.next_deadline()
            assert deadline is not None
            assert deadline >= self.now


TestArbiterMachine = ArbiterMachine.TestCase
TestArbiterMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
