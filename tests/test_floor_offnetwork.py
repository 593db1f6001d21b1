"""Off-network floor control (TS 24.380 clause 7): transitions, timers, odd inputs, and simultaneous requests.

The last part connects several machines through an in-test multicast network (per-link delay, jitter, loss,
looped-back copies, every message through the codec) driven by a discrete-event clock, and checks that
simultaneous requests settle on exactly one talker that everyone else agrees on.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptt.floor.events import FloorEvent, FloorEventKind
from ptt.floor.messages import (
    QUEUE_POSITION_NOT_QUEUED,
    DenyCause,
    FloorIndicator,
    FloorMessage,
    QueuedParticipant,
    QueueInfo,
    RejectCause,
    RevokeCause,
    Subtype,
)
from ptt.floor.offnetwork import (
    HAS_NO_PERMISSION,
    HAS_PERMISSION,
    MAX_KNOWN_NAMES,
    PENDING_GRANTED,
    PENDING_REQUEST,
    QUEUED,
    SILENCE,
    START_STOP,
    OffNetworkConfig,
    OffNetworkFloor,
)


@dataclass(frozen=True)
class Member:
    uri: str
    ssrc: int


ALICE = Member("sip:alice@example.org", 0x1001)
BOB = Member("sip:bob@example.org", 0x1002)
CAROL = Member("sip:carol@example.org", 0x1003)

K = FloorEventKind


def floor(who: Member, now: float = 0.0, **kwargs: Any) -> OffNetworkFloor:
    """A machine without queueing unless ``queueing=True``: the tests up to "queueing" describe the no-queue mode."""
    kwargs.setdefault("queueing", False)
    return OffNetworkFloor(who.uri, who.ssrc, now=now, **kwargs)


def msg(subtype: Subtype, sender: Member, **fields: Any) -> FloorMessage:
    """A message as ``sender`` would send it (its SSRC and User ID), through the codec."""
    fields.setdefault("user_id", sender.uri)
    message = FloorMessage(subtype=subtype, ssrc=sender.ssrc, **fields)
    return FloorMessage.parse(bytes(message))


def taken(sender: Member, priority: int = 0, **fields: Any) -> FloorMessage:
    return msg(Subtype.TAKEN, sender, granted_party=sender.uri, ssrc_field=sender.ssrc, priority=priority, **fields)


def request_from(sender: Member, priority: int = 0, **fields: Any) -> FloorMessage:
    return msg(Subtype.REQUEST, sender, priority=priority, floor_indicator=int(FloorIndicator.NORMAL), **fields)


def subtypes(messages: list[FloorMessage]) -> list[Subtype]:
    return [m.subtype for m in messages]


def kinds(events: list[FloorEvent]) -> list[FloorEventKind]:
    return [e.kind for e in events]


def expire(f: OffNetworkFloor) -> float:
    """Run the next timer exactly when it is due, as the shell does; returns that time."""
    deadline = f.next_deadline()
    assert deadline is not None
    f.tick(deadline)
    return deadline


def holding(who: Member, now: float = 0.0, **kwargs: Any) -> OffNetworkFloor:
    """A machine that took the idle floor (nobody answered) at ``now`` + 3 T201; outputs drained."""
    f = floor(who, now, **kwargs)
    f.request(now)
    for _ in range(3):
        expire(f)
    assert f.state == HAS_PERMISSION
    f.outgoing()
    f.events()
    return f


def listening_to(who: Member, talker: Member, now: float = 0.0, **kwargs: Any) -> OffNetworkFloor:
    f = floor(who, now, **kwargs)
    f.receive(taken(talker), now)
    assert f.state == HAS_NO_PERMISSION
    f.events()
    return f


# -- requesting an idle floor -------------------------------------------------------------------------------------


def test_starts_in_silence_with_t230_running() -> None:
    f = floor(ALICE, now=5.0)
    assert f.state == SILENCE
    assert (f.talker, f.talker_ssrc, f.has_permission) == (None, None, False)
    assert f.next_deadline() == pytest.approx(605.0)
    assert f.outgoing() == [] and f.events() == []


def test_request_sends_floor_request_and_starts_t201() -> None:
    f = floor(ALICE, priority=7)
    f.request(1.0)
    assert f.state == PENDING_REQUEST
    [m] = f.outgoing()
    assert (m.subtype, m.ssrc, m.user_id, m.priority) == (Subtype.REQUEST, ALICE.ssrc, ALICE.uri, 7)
    assert m.floor_indicator == FloorIndicator.NORMAL
    assert FloorMessage.parse(bytes(m)) == m
    assert f.next_deadline() == pytest.approx(1.04)
    f.request(1.01)  # pressing again changes nothing
    assert f.outgoing() == []


def test_unanswered_request_is_sent_c201_times_then_the_floor_is_taken() -> None:
    f = floor(ALICE)
    f.request(0.0)
    assert len(f.outgoing()) == 1
    f.tick(0.039)
    assert f.outgoing() == [] and f.state == PENDING_REQUEST
    f.tick(0.04)
    assert subtypes(f.outgoing()) == [Subtype.REQUEST]
    f.tick(0.08)
    assert subtypes(f.outgoing()) == [Subtype.REQUEST]
    assert f.events() == []
    f.tick(0.12)  # the third T201 expiry: C201 = 3 requests went unanswered
    [m] = f.outgoing()
    assert m.subtype == Subtype.TAKEN
    assert (m.ssrc, m.user_id, m.granted_party, m.ssrc_field) == (ALICE.ssrc, ALICE.uri, ALICE.uri, ALICE.ssrc)
    assert m.permission_to_request is True
    assert f.state == HAS_PERMISSION and f.has_permission
    assert (f.talker, f.talker_ssrc) == (ALICE.uri, ALICE.ssrc)
    [event] = f.events()
    assert (event.kind, event.talker, event.talker_ssrc) == (K.GRANTED, ALICE.uri, ALICE.ssrc)


def test_c201_and_t201_are_configurable() -> None:
    f = floor(ALICE, config=OffNetworkConfig(t201=0.1, c201=5))
    f.request(0.0)
    sent = f.outgoing()
    for step in range(1, 5):
        f.tick(step * 0.1)
        sent += f.outgoing()
    assert subtypes(sent) == [Subtype.REQUEST] * 5
    f.tick(0.5)
    assert subtypes(f.outgoing()) == [Subtype.TAKEN]


def test_late_tick_runs_one_expiry_not_a_burst() -> None:
    f = floor(ALICE)
    f.request(0.0)
    f.outgoing()
    f.tick(0.5)  # the shell was late: one retransmission now, the chain goes on from here
    assert subtypes(f.outgoing()) == [Subtype.REQUEST]
    assert f.next_deadline() == pytest.approx(0.54)


def test_request_with_priority_and_emergency_indicator() -> None:
    f = floor(ALICE, priority=3)
    f.request(0.0, priority=9, indicator=int(FloorIndicator.NORMAL | FloorIndicator.EMERGENCY))
    [m] = f.outgoing()
    assert m.priority == 9
    assert m.floor_indicator == FloorIndicator.NORMAL | FloorIndicator.EMERGENCY
    with pytest.raises(ValueError):
        f.request(0.0, priority=256)


# -- the holder arbitrates: deny and pre-emption -------------------------------------------------------------------


def test_holder_denies_an_equal_priority_request() -> None:
    alice = holding(ALICE, priority=5)
    alice.receive(request_from(BOB, priority=5), 1.0)
    [deny] = alice.outgoing()
    assert deny.subtype == Subtype.DENY
    assert deny.reject_cause == RejectCause(
        DenyCause.ANOTHER_CLIENT_HAS_PERMISSION, "another MCPTT client has permission"
    )
    assert (deny.ssrc, deny.user_id, deny.ssrc_field) == (ALICE.ssrc, ALICE.uri, BOB.ssrc)
    assert alice.state == HAS_PERMISSION and alice.events() == []


def test_denied_requester_has_no_permission_and_stops_asking() -> None:
    bob = listening_to(BOB, ALICE)
    bob.request(1.0)
    bob.outgoing()
    deny = msg(Subtype.DENY, ALICE, reject_cause=RejectCause(1, "busy"), ssrc_field=BOB.ssrc)
    bob.receive(deny, 1.01)
    assert bob.state == HAS_NO_PERMISSION
    [event] = bob.events()
    assert (event.kind, event.cause, event.text, event.talker, event.talker_ssrc) == (
        K.DENIED,
        1,
        "busy",
        ALICE.uri,
        ALICE.ssrc,
    )
    bob.tick(1.2)
    assert bob.outgoing() == []
    bob.receive(deny, 1.3)  # a duplicate
    assert bob.events() == [] and bob.state == HAS_NO_PERMISSION


def test_deny_for_someone_else_is_ignored() -> None:
    bob = floor(BOB)
    bob.request(0.0)
    bob.receive(msg(Subtype.DENY, ALICE, reject_cause=RejectCause(1), ssrc_field=CAROL.ssrc), 0.01)
    bob.receive(msg(Subtype.DENY, ALICE, reject_cause=RejectCause(1)), 0.02)  # addressed to nobody
    assert bob.state == PENDING_REQUEST and bob.events() == []


def test_higher_priority_request_pre_empts_the_holder_with_t205_retransmissions() -> None:
    alice = holding(ALICE, priority=1)
    alice.receive(request_from(CAROL, priority=9), 1.0)
    [granted] = alice.outgoing()
    assert granted.subtype == Subtype.GRANTED
    assert (granted.ssrc, granted.user_id) == (ALICE.ssrc, ALICE.uri)
    assert (granted.granted_party, granted.ssrc_field, granted.priority) == (CAROL.uri, CAROL.ssrc, 9)
    assert granted.duration == 30
    assert alice.state == PENDING_GRANTED and not alice.has_permission
    assert (alice.talker, alice.talker_ssrc) == (CAROL.uri, CAROL.ssrc)
    [event] = alice.events()
    assert (event.kind, event.cause, event.talker) == (K.REVOKED, RevokeCause.PRE_EMPTED, CAROL.uri)
    resent = []
    for t in (1.08, 1.16, 1.24):
        assert expire(alice) == pytest.approx(t)
        resent += alice.outgoing()
    assert resent == [granted] * 3  # C205 = 4 Floor Granted in all
    assert alice.state == PENDING_GRANTED
    assert expire(alice) == pytest.approx(1.32)
    assert alice.outgoing() == []
    assert alice.state == SILENCE and kinds(alice.events()) == [K.IDLE]


def test_grantee_media_stops_the_retransmissions() -> None:
    alice = holding(ALICE)
    alice.receive(request_from(CAROL, priority=9), 1.0)
    alice.outgoing()
    alice.events()
    alice.media_received(BOB.ssrc, 1.05)  # not the grantee: nothing
    assert alice.state == PENDING_GRANTED
    alice.media_received(CAROL.ssrc, 1.06)
    assert alice.state == HAS_NO_PERMISSION and alice.talker_ssrc == CAROL.ssrc
    alice.tick(1.5)
    assert alice.outgoing() == [] and alice.events() == []
    assert alice.next_deadline() == pytest.approx(5.06)  # T203 from the grantee's media


def test_grantee_floor_taken_stops_the_retransmissions() -> None:
    alice = holding(ALICE)
    alice.receive(request_from(CAROL, priority=9), 1.0)
    alice.outgoing()
    alice.receive(taken(CAROL, priority=9), 1.05)
    assert alice.state == HAS_NO_PERMISSION and alice.talker == CAROL.uri
    alice.tick(1.5)
    assert alice.outgoing() == []


def test_grantee_still_asking_gets_the_grant_again_and_others_are_denied() -> None:
    alice = holding(ALICE)
    alice.receive(request_from(CAROL, priority=9), 1.0)
    [granted] = alice.outgoing()
    alice.receive(request_from(CAROL, priority=9), 1.01)
    assert alice.outgoing() == [granted]
    alice.receive(request_from(BOB), 1.02)
    [deny] = alice.outgoing()
    assert (deny.subtype, deny.ssrc_field) == (Subtype.DENY, BOB.ssrc)


def test_grantee_declining_by_release_frees_the_floor() -> None:
    alice = holding(ALICE)
    alice.receive(request_from(CAROL, priority=9), 1.0)
    alice.events()
    alice.receive(msg(Subtype.RELEASE, CAROL), 1.05)
    assert alice.state == SILENCE and kinds(alice.events()) == [K.IDLE]


def test_emergency_pre_empts_a_higher_normal_priority() -> None:
    alice = holding(ALICE, priority=200)
    emergency = int(FloorIndicator.NORMAL | FloorIndicator.EMERGENCY)
    alice.receive(msg(Subtype.REQUEST, BOB, priority=1, floor_indicator=emergency), 1.0)
    [granted] = alice.outgoing()
    assert granted.subtype == Subtype.GRANTED and granted.floor_indicator == emergency


def test_imminent_peril_pre_empts_normal_but_not_emergency() -> None:
    peril = int(FloorIndicator.NORMAL | FloorIndicator.IMMINENT_PERIL)
    alice = holding(ALICE, priority=9)
    alice.receive(msg(Subtype.REQUEST, BOB, priority=0, floor_indicator=peril), 1.0)
    assert subtypes(alice.outgoing()) == [Subtype.GRANTED]
    carol = floor(CAROL, priority=0)
    carol.request(0.0, indicator=int(FloorIndicator.NORMAL | FloorIndicator.EMERGENCY))
    for _ in range(3):
        expire(carol)
    carol.outgoing()
    carol.receive(msg(Subtype.REQUEST, BOB, priority=200, floor_indicator=peril), 1.0)
    assert subtypes(carol.outgoing()) == [Subtype.DENY]


def test_claim_from_a_third_member_during_a_hand_over() -> None:
    alice = holding(ALICE)
    alice.receive(request_from(BOB, priority=9), 1.0)  # pre-empted: handing over to Bob
    alice.events()
    alice.receive(taken(CAROL, priority=9), 1.05)  # Carol took the floor too; she outranks Bob (SSRC)
    assert (alice.state, alice.talker) == (HAS_NO_PERMISSION, CAROL.uri)
    assert kinds(alice.events()) == [K.TAKEN]
    alice.tick(1.5)
    assert subtypes(alice.outgoing()) == [Subtype.GRANTED]  # no retransmissions after the first


def test_requester_accepts_floor_granted_announces_it_and_honours_the_duration() -> None:
    carol = listening_to(CAROL, ALICE)
    carol.request(1.0, priority=9)
    carol.outgoing()
    grant = msg(Subtype.GRANTED, ALICE, granted_party=CAROL.uri, ssrc_field=CAROL.ssrc, priority=9, duration=10)
    carol.receive(grant, 1.03)
    assert carol.state == HAS_PERMISSION
    [event] = carol.events()
    assert event.kind == K.GRANTED
    [announce] = carol.outgoing()
    assert (announce.subtype, announce.granted_party, announce.ssrc_field, announce.priority) == (
        Subtype.TAKEN,
        CAROL.uri,
        CAROL.ssrc,
        9,
    )
    carol.receive(grant, 1.1)  # a retransmission: say again that we have it
    assert subtypes(carol.outgoing()) == [Subtype.TAKEN]
    assert carol.state == HAS_PERMISSION
    carol.tick(8.02)
    assert kinds(carol.events()) == []
    carol.tick(8.031)  # Duration 10 s, warning T207 = 3 s before the end
    assert kinds(carol.events()) == [K.STOP_WARNING]
    carol.tick(11.029)
    assert carol.has_permission
    carol.tick(11.031)
    assert kinds(carol.events()) == [K.STOP_TALKING, K.IDLE]
    assert subtypes(carol.outgoing()) == [Subtype.RELEASE]


def test_unexpected_floor_granted_is_declined_with_floor_release() -> None:
    bob = floor(BOB)
    bob.receive(msg(Subtype.GRANTED, ALICE, granted_party=BOB.uri, ssrc_field=BOB.ssrc), 1.0)
    assert subtypes(bob.outgoing()) == [Subtype.RELEASE]
    assert bob.state == SILENCE


def test_floor_granted_to_someone_else_makes_that_member_the_talker() -> None:
    bob = listening_to(BOB, ALICE)
    bob.receive(msg(Subtype.GRANTED, ALICE, granted_party=CAROL.uri, ssrc_field=CAROL.ssrc, priority=9), 1.0)
    assert (bob.state, bob.talker, bob.talker_ssrc) == (HAS_NO_PERMISSION, CAROL.uri, CAROL.ssrc)
    assert kinds(bob.events()) == [K.TAKEN]


# -- release, floor taken, late entry, T203 --------------------------------------------------------------------------


def test_holder_release_sends_floor_release_and_everyone_goes_silent() -> None:
    alice = holding(ALICE)
    bob = listening_to(BOB, ALICE)
    alice.release(2.0)
    [release] = alice.outgoing()
    assert (release.subtype, release.ssrc, release.user_id) == (Subtype.RELEASE, ALICE.ssrc, ALICE.uri)
    assert alice.state == SILENCE and kinds(alice.events()) == [K.IDLE]
    assert alice.next_deadline() == pytest.approx(602.0)  # T230 again
    bob.receive(release, 2.01)
    assert (bob.state, bob.talker, bob.talker_ssrc) == (SILENCE, None, None)
    assert kinds(bob.events()) == [K.IDLE]


def test_release_from_someone_who_is_not_the_talker_is_ignored() -> None:
    bob = listening_to(BOB, ALICE)
    bob.receive(msg(Subtype.RELEASE, CAROL), 1.0)
    assert bob.state == HAS_NO_PERMISSION and bob.talker == ALICE.uri and bob.events() == []


def test_releasing_a_pending_request() -> None:
    f = floor(ALICE)
    f.request(0.0)
    f.release(0.01)
    assert subtypes(f.outgoing()) == [Subtype.REQUEST, Subtype.RELEASE]
    assert f.state == SILENCE
    f.tick(0.2)
    assert f.outgoing() == []
    bob = listening_to(BOB, ALICE)
    bob.request(1.0)
    bob.release(1.01)
    assert bob.state == HAS_NO_PERMISSION and bob.talker == ALICE.uri


def test_floor_taken_in_silence_makes_the_taker_the_talker() -> None:
    bob = floor(BOB)
    bob.receive(taken(ALICE), 1.0)
    assert (bob.state, bob.talker, bob.talker_ssrc) == (HAS_NO_PERMISSION, ALICE.uri, ALICE.ssrc)
    [event] = bob.events()
    assert (event.kind, event.talker, event.talker_ssrc) == (K.TAKEN, ALICE.uri, ALICE.ssrc)
    assert bob.next_deadline() == pytest.approx(5.0)  # T203
    bob.receive(taken(ALICE), 1.1)  # a duplicate
    assert bob.events() == []


def test_floor_taken_while_requesting_names_the_talker_and_the_request_goes_to_it() -> None:
    bob = floor(BOB)
    bob.request(0.0)
    bob.outgoing()
    expire(bob)
    bob.outgoing()
    bob.receive(taken(ALICE), 0.07)
    assert bob.state == PENDING_REQUEST
    assert (bob.talker, bob.talker_ssrc) == (ALICE.uri, ALICE.ssrc)
    assert kinds(bob.events()) == [K.TAKEN]
    # C201 starts over: three more requests (to the talker) before Bob would take the floor
    for t in (0.11, 0.15):
        assert expire(bob) == pytest.approx(t)
        assert subtypes(bob.outgoing()) == [Subtype.REQUEST]
    bob.receive(msg(Subtype.DENY, ALICE, reject_cause=RejectCause(1), ssrc_field=BOB.ssrc), 0.16)
    assert bob.state == HAS_NO_PERMISSION and kinds(bob.events()) == [K.DENIED]


def test_talker_media_keeps_a_requester_from_taking_the_floor() -> None:
    bob = listening_to(BOB, ALICE)
    bob.request(1.0)
    t = 1.0
    while t < 2.0:
        t += 0.02
        bob.media_received(ALICE.ssrc, t)
        bob.tick(t)
    assert bob.state == PENDING_REQUEST
    assert Subtype.TAKEN not in subtypes(bob.outgoing())


def test_pending_requester_competes_again_when_the_talker_releases() -> None:
    bob = listening_to(BOB, ALICE)
    bob.request(1.0)
    bob.outgoing()
    bob.receive(msg(Subtype.RELEASE, ALICE), 1.02)
    assert kinds(bob.events()) == [K.IDLE]
    assert subtypes(bob.outgoing()) == [Subtype.REQUEST]
    assert bob.state == PENDING_REQUEST and bob.talker is None
    for t in (1.06, 1.10):
        assert expire(bob) == pytest.approx(t)
        assert subtypes(bob.outgoing()) == [Subtype.REQUEST]
    assert expire(bob) == pytest.approx(1.14)
    assert bob.state == HAS_PERMISSION and subtypes(bob.outgoing()) == [Subtype.TAKEN]


def test_talker_going_quiet_while_we_ask_frees_the_floor() -> None:
    bob = listening_to(BOB, ALICE)  # T203 runs out at 4.0
    bob.request(3.9)
    for t in (3.93, 3.97, 4.01, 4.05):
        bob.receive(request_from(CAROL), t)  # a better-ranked requester keeps Bob's chain from ending
    assert bob.state == PENDING_REQUEST and bob.talker is None
    assert kinds(bob.events()) == [K.IDLE]


def test_late_entry_by_media_and_t203_expiry() -> None:
    bob = floor(BOB)
    bob.receive(request_from(ALICE), 0.5)  # teaches Bob Alice's SSRC → URI
    bob.media_received(ALICE.ssrc, 1.0)
    assert (bob.state, bob.talker, bob.talker_ssrc) == (HAS_NO_PERMISSION, ALICE.uri, ALICE.ssrc)
    [event] = bob.events()
    assert (event.kind, event.talker) == (K.TAKEN, ALICE.uri)
    for t in (1.02, 2.0, 4.0):
        bob.media_received(ALICE.ssrc, t)  # T203 restarts on every packet
    assert bob.next_deadline() == pytest.approx(8.0)
    bob.tick(7.99)
    assert bob.state == HAS_NO_PERMISSION
    bob.tick(8.0)
    assert (bob.state, bob.talker) == (SILENCE, None)
    assert kinds(bob.events()) == [K.IDLE]
    assert bob.next_deadline() == pytest.approx(608.0)


def test_late_entry_by_media_of_an_unknown_member_is_named_later() -> None:
    bob = floor(BOB)
    bob.media_received(CAROL.ssrc, 1.0)
    [event] = bob.events()
    assert (event.kind, event.talker, event.talker_ssrc) == (K.TAKEN, None, CAROL.ssrc)
    bob.media_received(CAROL.ssrc, 1.02, user=CAROL.uri)
    assert bob.talker == CAROL.uri
    assert [(e.kind, e.talker) for e in bob.events()] == [(K.TAKEN, CAROL.uri)]


def test_names_of_members_are_remembered_within_a_bound() -> None:
    members = [Member(f"sip:m{i}@example.org", 0x5000 + i) for i in range(MAX_KNOWN_NAMES + 10)]
    bob = floor(BOB)
    for i, member in enumerate(members):
        bob.receive(request_from(member), 0.001 * i)
    bob.media_received(members[0].ssrc, 1.0)  # forgotten: the oldest names go first
    assert (bob.talker, bob.talker_ssrc) == (None, members[0].ssrc)
    carol = floor(CAROL)
    for i, member in enumerate(members):
        carol.receive(request_from(member), 0.001 * i)
    carol.media_received(members[-1].ssrc, 1.0)
    assert carol.talker == members[-1].uri


def test_media_from_another_member_replaces_a_talker_only_after_it_went_quiet() -> None:
    bob = listening_to(BOB, ALICE)
    bob.media_received(ALICE.ssrc, 0.01)
    bob.media_received(CAROL.ssrc, 0.1)  # Alice was heard 90 ms ago: keep her
    assert bob.talker_ssrc == ALICE.ssrc and bob.events() == []
    bob.media_received(CAROL.ssrc, 0.22)  # Alice silent for 210 ms: Carol is who talks now
    assert bob.talker_ssrc == CAROL.ssrc
    assert kinds(bob.events()) == [K.TAKEN]


# -- T206 / T207 / T230 ------------------------------------------------------------------------------------------------


def test_t206_warns_and_t207_stops_the_burst_with_floor_release() -> None:
    alice = holding(ALICE)  # took the floor at 0.12
    alice.tick(27.11)
    assert alice.events() == []
    alice.tick(27.12)
    [warning] = alice.events()
    assert (warning.kind, warning.text) == (K.STOP_WARNING, "stop talking in 3 s") and alice.has_permission
    alice.tick(30.11)
    assert alice.has_permission
    alice.tick(30.12)
    [stop, idle] = alice.events()
    assert (stop.kind, stop.cause) == (K.STOP_TALKING, RevokeCause.MEDIA_BURST_TOO_LONG)
    assert idle.kind == K.IDLE
    assert subtypes(alice.outgoing()) == [Subtype.RELEASE]
    assert alice.state == SILENCE


def test_max_talk_duration_is_configurable() -> None:
    config = OffNetworkConfig(t206=5.0, t207=1.0)
    assert config.max_talk == 6.0
    alice = holding(ALICE, config=config)
    alice.tick(5.12)
    assert kinds(alice.events()) == [K.STOP_WARNING]
    alice.tick(6.12)
    assert kinds(alice.events()) == [K.STOP_TALKING, K.IDLE]
    alice2 = holding(ALICE, config=config)
    alice2.receive(request_from(CAROL, priority=9), 1.0)
    [granted] = alice2.outgoing()
    assert granted.duration == 6


def test_t230_reports_inactivity_and_enters_start_stop() -> None:
    f = floor(BOB)
    f.receive(request_from(ALICE), 300.0)  # floor activity restarts T230 in O: silence
    f.tick(600.0)
    assert f.events() == []
    f.tick(900.0)
    assert kinds(f.events()) == [K.INACTIVE]
    assert f.state == START_STOP and f.next_deadline() is None
    f.media_received(ALICE.ssrc, 950.0)  # the call came back: late entry still works
    assert f.state == HAS_NO_PERMISSION and f.talker == ALICE.uri
    g = floor(CAROL)
    g.tick(600.0)
    g.events()
    g.request(601.0)
    assert g.state == PENDING_REQUEST


def test_t230_does_not_run_while_the_floor_is_busy() -> None:
    alice = holding(ALICE)
    assert alice.next_deadline() == pytest.approx(27.12)  # T206, not T230
    bob = listening_to(BOB, ALICE)
    assert bob.next_deadline() == pytest.approx(4.0)  # T203


# -- collisions (unit level) ---------------------------------------------------------------------------------------


def test_pending_requester_defers_to_a_better_ranked_request() -> None:
    alice = floor(ALICE)  # SSRC 0x1001 < Bob's 0x1002: Bob ranks higher at equal priority
    alice.request(0.0)
    alice.outgoing()
    alice.receive(request_from(BOB), 0.1)
    alice.tick(0.119)
    alice.tick(0.12)  # without Bob's request Alice would have taken the floor here
    assert alice.state == PENDING_REQUEST
    assert Subtype.TAKEN not in subtypes(alice.outgoing())
    alice.receive(taken(BOB), 0.13)
    assert alice.talker == BOB.uri and kinds(alice.events()) == [K.TAKEN]


def test_pending_requester_ignores_a_worse_ranked_request() -> None:
    bob = floor(BOB)
    bob.request(0.0)
    bob.receive(request_from(ALICE), 0.01)  # Alice ranks lower (SSRC): Bob's chain goes on
    assert [expire(bob) for _ in range(3)] == pytest.approx([0.04, 0.08, 0.12])
    assert bob.state == HAS_PERMISSION
    bob2 = floor(BOB, priority=1)
    bob2.request(0.0)
    bob2.receive(request_from(CAROL, priority=0), 0.01)  # Carol's SSRC is higher, but priority ranks first
    assert [expire(bob2) for _ in range(3)] == pytest.approx([0.04, 0.08, 0.12])
    assert bob2.state == HAS_PERMISSION


def test_deferring_restarts_the_chain_so_a_silent_winner_is_not_waited_for_forever() -> None:
    bob = floor(BOB)
    bob.request(0.0)
    bob.receive(request_from(CAROL), 0.01)  # Carol ranks higher: start over
    assert [expire(bob) for _ in range(3)] == pytest.approx([0.05, 0.09, 0.13])
    assert bob.state == HAS_PERMISSION  # Carol never took the floor (gave up, or her Floor Taken was lost)


def test_holder_yields_to_a_better_ranked_floor_taken() -> None:
    alice = holding(ALICE)
    alice.receive(taken(BOB), 0.15)
    assert alice.state == HAS_NO_PERMISSION and not alice.has_permission
    assert (alice.talker, alice.talker_ssrc) == (BOB.uri, BOB.ssrc)
    [event] = alice.events()
    assert (event.kind, event.cause, event.talker) == (K.REVOKED, RevokeCause.NO_PERMISSION, BOB.uri)
    assert alice.outgoing() == []


def test_holder_answers_a_worse_ranked_floor_taken_with_its_own() -> None:
    bob = holding(BOB)
    bob.receive(taken(ALICE), 0.15)
    assert bob.has_permission and bob.events() == []
    [again] = bob.outgoing()
    assert (again.subtype, again.granted_party, again.ssrc_field) == (Subtype.TAKEN, BOB.uri, BOB.ssrc)
    bob.receive(taken(ALICE, priority=1), 0.16)  # priority ranks before SSRC
    assert not bob.has_permission and kinds(bob.events()) == [K.REVOKED]


def test_holder_does_not_yield_to_a_grant_only_to_the_grantee_taking_the_floor() -> None:
    alice = holding(ALICE)  # took the floor at 0.12
    # Bob also thought he held the floor and handed it to Carol: Carol may decline, so Alice only reminds everyone.
    alice.receive(msg(Subtype.GRANTED, BOB, granted_party=CAROL.uri, ssrc_field=CAROL.ssrc, priority=3), 0.25)
    assert alice.has_permission and alice.events() == []
    assert subtypes(alice.outgoing()) == [Subtype.TAKEN]
    alice.receive(taken(CAROL, priority=3), 0.3)  # Carol accepted: her claim outranks Alice's
    assert alice.state == HAS_NO_PERMISSION and alice.talker == CAROL.uri
    assert kinds(alice.events()) == [K.REVOKED]


def test_holder_hearing_foreign_media_repeats_floor_taken_rate_limited() -> None:
    alice = holding(ALICE)  # took the floor (and announced it) at 0.12
    alice.media_received(BOB.ssrc, 0.15)
    assert alice.outgoing() == []  # announced 30 ms ago
    alice.media_received(BOB.ssrc, 0.21)
    assert subtypes(alice.outgoing()) == [Subtype.TAKEN]
    alice.media_received(BOB.ssrc, 0.23)
    assert alice.outgoing() == []
    alice.receive(msg(Subtype.DENY, BOB, reject_cause=RejectCause(1), ssrc_field=CAROL.ssrc), 0.3)
    assert subtypes(alice.outgoing()) == [Subtype.TAKEN]  # Bob arbitrates too: make it compare claims
    assert alice.has_permission


def test_listener_keeps_a_fresh_better_ranked_talker() -> None:
    carol = floor(CAROL)
    carol.receive(taken(BOB), 1.0)
    carol.receive(taken(ALICE), 1.05)  # Alice lost the collision and will yield
    assert carol.talker == BOB.uri
    carol.receive(taken(ALICE), 2.0)  # long after: a new floor
    assert carol.talker == ALICE.uri
    carol.receive(taken(BOB), 2.01)  # better ranked and Alice's claim is fresh: Bob wins
    assert carol.talker == BOB.uri


# -- odd inputs -------------------------------------------------------------------------------------------------------


def test_own_looped_back_messages_and_media_are_ignored() -> None:
    alice = floor(ALICE)
    alice.request(0.0)
    for m in alice.outgoing():
        alice.receive(m, 0.001)
    alice.receive(taken(ALICE), 0.002)
    alice.receive(msg(Subtype.TAKEN, Member(ALICE.uri, 0x9999)), 0.003)  # our User ID, another SSRC
    alice.receive(msg(Subtype.REQUEST, Member("sip:x@example.org", ALICE.ssrc)), 0.004)  # our SSRC
    alice.media_received(ALICE.ssrc, 0.005)
    assert alice.state == PENDING_REQUEST and alice.events() == [] and alice.outgoing() == []
    for _ in range(3):
        expire(alice)
    assert alice.state == HAS_PERMISSION  # none of it counted as an answer


@pytest.mark.parametrize(
    "subtype",
    [Subtype.IDLE, Subtype.REVOKE, Subtype.ACK, Subtype.QUEUE_POSITION_REQUEST, Subtype.QUEUE_POSITION_INFO],
)
def test_subtypes_without_off_network_meaning_are_ignored(subtype: Subtype) -> None:
    for f in (floor(BOB), holding(BOB), listening_to(BOB, ALICE)):
        state, talker = f.state, f.talker
        f.receive(msg(subtype, ALICE), 1.0)
        assert (f.state, f.talker, f.outgoing(), f.events()) == (state, talker, [], [])


def test_unknown_subtype_value_is_ignored() -> None:
    f = holding(BOB)
    f.receive(FloorMessage(subtype=cast(Subtype, 7), ssrc=ALICE.ssrc), 1.0)
    f.receive(FloorMessage(subtype=cast(Subtype, 31), ssrc=ALICE.ssrc, user_id=ALICE.uri), 1.0)
    assert f.has_permission and f.outgoing() == [] and f.events() == []


def test_messages_with_missing_fields() -> None:
    bob = floor(BOB)
    bob.receive(FloorMessage(Subtype.GRANTED, ALICE.ssrc), 1.0)  # grantee unknown: ignored
    assert bob.state == SILENCE and bob.outgoing() == []
    bob.receive(FloorMessage(Subtype.GRANTED, ALICE.ssrc, granted_party="sip:who@example.org"), 1.0)
    assert bob.state == SILENCE  # a name whose SSRC we never saw
    bob.receive(FloorMessage(Subtype.TAKEN, CAROL.ssrc), 1.1)  # bare Floor Taken: the sender took the floor
    assert (bob.state, bob.talker, bob.talker_ssrc) == (HAS_NO_PERMISSION, None, CAROL.ssrc)
    bob.receive(FloorMessage(Subtype.RELEASE, CAROL.ssrc), 1.2)
    assert bob.state == SILENCE
    bob.receive(FloorMessage(Subtype.REQUEST, 0xDEAD), 1.3)  # unknown SSRC, no fields
    bob.receive(FloorMessage(Subtype.DENY, 0xBEEF), 1.4)
    assert bob.state == SILENCE and bob.outgoing() == []
    alice = holding(ALICE)
    alice.receive(FloorMessage(Subtype.REQUEST, 0xDEAD), 1.5)  # answered like any request
    [deny] = alice.outgoing()
    assert deny.ssrc_field == 0xDEAD


def test_floor_granted_found_by_granted_party_alone() -> None:
    alice = floor(ALICE)
    alice.request(0.0)
    alice.receive(FloorMessage(Subtype.GRANTED, BOB.ssrc, granted_party=ALICE.uri), 0.01)
    assert alice.has_permission
    carol = floor(CAROL)
    carol.receive(request_from(ALICE), 0.0)
    carol.receive(FloorMessage(Subtype.GRANTED, BOB.ssrc, granted_party=ALICE.uri), 0.01)
    assert (carol.talker, carol.talker_ssrc) == (ALICE.uri, ALICE.ssrc)


def test_claim_naming_us_that_we_did_not_make_is_ignored() -> None:
    bob = floor(BOB)
    bob.receive(msg(Subtype.TAKEN, ALICE, granted_party=BOB.uri, ssrc_field=BOB.ssrc), 1.0)
    assert bob.state == SILENCE and bob.events() == []


def test_request_while_handing_over_is_refused_locally() -> None:
    alice = holding(ALICE)
    alice.receive(request_from(CAROL, priority=9), 1.0)
    alice.events()
    alice.outgoing()
    alice.request(1.01)
    [event] = alice.events()
    assert (event.kind, event.talker) == (K.DENIED, CAROL.uri)
    assert alice.outgoing() == [] and alice.state == PENDING_GRANTED


def test_invalid_configuration_and_identity() -> None:
    with pytest.raises(ValueError):
        OffNetworkConfig(t201=0)
    with pytest.raises(ValueError):
        OffNetworkConfig(c205=0)
    with pytest.raises(ValueError):
        OffNetworkConfig(talker_switch=-1)
    with pytest.raises(ValueError):
        OffNetworkFloor("sip:a@example.org", 1 << 32, now=0.0)
    with pytest.raises(ValueError):
        OffNetworkFloor("", 1, now=0.0)
    with pytest.raises(ValueError):
        OffNetworkFloor("sip:a@example.org", 1, priority=-1, now=0.0)


# -- queueing (TS 24.380 §7, "queueing of floor requests may be supported") -------------------------------------------

DAVE = Member("sip:dave@example.org", 0x1004)
QUEUEING = int(FloorIndicator.NORMAL | FloorIndicator.QUEUEING_SUPPORTED)


def queued_request_from(sender: Member, priority: int = 0, indicator: int = QUEUEING) -> FloorMessage:
    return msg(Subtype.REQUEST, sender, priority=priority, floor_indicator=indicator)


def position_info(arbitrator: Member, to: Member, position: int, priority: int = 0) -> FloorMessage:
    return msg(
        Subtype.QUEUE_POSITION_INFO,
        arbitrator,
        queued_user_id=to.uri,
        ssrc_field=to.ssrc,
        queue_info=QueueInfo(position, priority),
        floor_indicator=int(FloorIndicator.NORMAL),
    )


def granted(granter: Member, to: Member, queue: Sequence[tuple[Member, int]] = (), priority: int = 0) -> FloorMessage:
    members = tuple(QueuedParticipant(m.ssrc, m.uri, QueueInfo(n, p)) for n, (m, p) in enumerate(queue, start=1))
    return msg(
        Subtype.GRANTED,
        granter,
        granted_party=to.uri,
        ssrc_field=to.ssrc,
        priority=priority,
        duration=30,
        floor_indicator=QUEUEING,
        queue_size=len(members) if members else None,
        queued=members,
    )


def arbitrating(who: Member, queue: list[tuple[Member, int]], **kwargs: Any) -> OffNetworkFloor:
    """A holder (queueing on) that queued these members, in this order of arrival; outputs drained."""
    f = holding(who, queueing=True, **kwargs)
    for member, priority in queue:
        f.receive(queued_request_from(member, priority), 0.5)
    f.outgoing()
    f.events()
    return f


def queued_at(who: Member, arbitrator: Member, position: int, **kwargs: Any) -> OffNetworkFloor:
    """A member (queueing on) listening to ``arbitrator`` that asked for the floor and got queued at ``position``."""
    f = listening_to(who, arbitrator, queueing=True, **kwargs)
    f.request(0.2)
    f.outgoing()
    f.receive(position_info(arbitrator, who, position), 0.21)
    assert f.state == QUEUED
    f.events()
    return f


def test_queueing_request_carries_the_queueing_supported_bit() -> None:
    f = floor(ALICE, queueing=True)
    f.request(0.0)
    [m] = f.outgoing()
    assert m.floor_indicator == FloorIndicator.NORMAL | FloorIndicator.QUEUEING_SUPPORTED
    f.release(0.01)
    f.request(0.02, indicator=int(FloorIndicator.NORMAL | FloorIndicator.EMERGENCY))
    [m] = [m for m in f.outgoing() if m.subtype == Subtype.REQUEST]
    assert m.floor_indicator == FloorIndicator.NORMAL | FloorIndicator.EMERGENCY | FloorIndicator.QUEUEING_SUPPORTED


def test_holder_queues_a_request_and_answers_with_its_position() -> None:
    alice = holding(ALICE, priority=5, queueing=True)
    alice.receive(queued_request_from(BOB, priority=5), 1.0)
    [info] = alice.outgoing()
    assert info.subtype == Subtype.QUEUE_POSITION_INFO
    assert (info.ssrc, info.user_id, info.queued_user_id, info.ssrc_field) == (ALICE.ssrc, ALICE.uri, BOB.uri, BOB.ssrc)
    assert info.queue_info == QueueInfo(1, 5)
    assert FloorMessage.parse(bytes(info)) == info
    assert alice.state == HAS_PERMISSION and alice.queue == [(BOB.ssrc, BOB.uri)] and alice.events() == []
    alice.receive(queued_request_from(BOB, priority=5), 1.05)  # a retransmission: the same answer, one entry
    assert alice.outgoing() == [info] and alice.queue == [(BOB.ssrc, BOB.uri)]


def test_queue_is_ordered_by_priority_then_arrival() -> None:
    alice = arbitrating(ALICE, [], priority=9)
    positions = []
    for member, priority in [(BOB, 1), (CAROL, 3), (DAVE, 1)]:
        alice.receive(queued_request_from(member, priority), 1.0)
        [info] = alice.outgoing()
        assert info.queue_info is not None
        positions.append(info.queue_info.position)
    assert positions == [1, 1, 3]  # Carol overtakes Bob; Dave arrives after Bob at the same priority
    assert alice.queue == [(CAROL.ssrc, CAROL.uri), (BOB.ssrc, BOB.uri), (DAVE.ssrc, DAVE.uri)]


def test_full_queue_denies_with_cause_queue_full() -> None:
    alice = arbitrating(ALICE, [(BOB, 0), (CAROL, 0)], config=OffNetworkConfig(queue_capacity=2))
    alice.receive(queued_request_from(DAVE), 1.0)
    [deny] = alice.outgoing()
    assert deny.subtype == Subtype.DENY and deny.ssrc_field == DAVE.ssrc
    assert deny.reject_cause == RejectCause(DenyCause.QUEUE_FULL, "queue full")
    assert len(alice.queue) == 2


def test_request_without_the_queueing_bit_is_denied_as_before() -> None:
    alice = holding(ALICE, queueing=True)
    alice.receive(request_from(BOB), 1.0)
    [deny] = alice.outgoing()
    assert deny.subtype == Subtype.DENY and deny.reject_cause is not None
    assert deny.reject_cause.code == DenyCause.ANOTHER_CLIENT_HAS_PERMISSION and alice.queue == []
    no_queue = holding(CAROL)  # queueing off: even a request that allows queueing is denied
    no_queue.receive(queued_request_from(BOB), 1.0)
    assert subtypes(no_queue.outgoing()) == [Subtype.DENY]


def test_requester_enters_o_queued_on_floor_queue_position_info() -> None:
    bob = listening_to(BOB, ALICE, queueing=True)
    bob.request(1.0)
    bob.outgoing()
    bob.receive(position_info(ALICE, CAROL, 1), 1.01)  # for someone else
    assert bob.state == PENDING_REQUEST
    bob.receive(position_info(ALICE, BOB, 2), 1.02)
    assert bob.state == QUEUED and bob.queue_position == 2 and not bob.has_permission
    [event] = bob.events()
    assert (event.kind, event.position, event.talker, event.talker_ssrc) == (K.QUEUED, 2, ALICE.uri, ALICE.ssrc)
    assert bob.next_deadline() == pytest.approx(5.02)  # T201 stopped; T203 (the arbitrator's liveness) runs
    bob.tick(1.5)
    assert bob.outgoing() == [] and bob.state == QUEUED
    bob.request(1.6)  # pressing again changes nothing
    assert bob.outgoing() == []
    bob.receive(position_info(ALICE, BOB, 2), 1.7)  # a duplicate: no news
    assert bob.events() == []
    bob.media_received(ALICE.ssrc, 3.0)
    assert bob.next_deadline() == pytest.approx(7.0)


def test_queued_member_that_releases_ptt_leaves_the_queue() -> None:
    bob = queued_at(BOB, ALICE, 1)
    bob.release(2.0)
    [cancel] = bob.outgoing()
    assert (cancel.subtype, cancel.ssrc, cancel.user_id) == (Subtype.RELEASE, BOB.ssrc, BOB.uri)
    assert bob.state == HAS_NO_PERMISSION and bob.talker == ALICE.uri and bob.queue_position is None
    [event] = bob.events()
    assert (event.kind, event.text) == (K.QUEUE_CANCELLED, "PTT released")
    alice = arbitrating(ALICE, [(BOB, 0), (CAROL, 0)])
    alice.receive(cancel, 2.01)
    assert alice.queue == [(CAROL.ssrc, CAROL.uri)] and alice.has_permission and alice.outgoing() == []
    alice.receive(msg(Subtype.QUEUED_CANCEL, CAROL), 2.02)  # Floor Queued Cancel is accepted too
    assert alice.queue == [] and alice.has_permission


def test_released_member_still_queued_somewhere_cancels_again() -> None:
    bob = queued_at(BOB, ALICE, 1)
    bob.release(2.0)
    bob.outgoing()
    bob.receive(position_info(ALICE, BOB, 1), 2.1)  # our Floor Release was lost
    assert subtypes(bob.outgoing()) == [Subtype.RELEASE]
    bob.receive(granted(ALICE, CAROL, [(BOB, 0)]), 2.2)
    assert subtypes(bob.outgoing()) == [Subtype.RELEASE]
    assert bob.state == HAS_NO_PERMISSION and bob.talker == CAROL.uri


def test_end_of_burst_grants_the_first_queued_member_with_the_rest_of_the_queue() -> None:
    alice = arbitrating(ALICE, [(CAROL, 0), (DAVE, 0), (BOB, 2)], priority=9)  # Bob's priority puts him first
    alice.release(3.0)
    [grant] = alice.outgoing()
    assert grant.subtype == Subtype.GRANTED and (grant.granted_party, grant.ssrc_field) == (BOB.uri, BOB.ssrc)
    assert grant.queue_size == 2
    assert grant.queued == (
        QueuedParticipant(CAROL.ssrc, CAROL.uri, QueueInfo(1, 0)),
        QueuedParticipant(DAVE.ssrc, DAVE.uri, QueueInfo(2, 0)),
    )
    assert FloorMessage.parse(bytes(grant)) == grant
    assert alice.state == PENDING_GRANTED and alice.talker == BOB.uri
    [event] = alice.events()
    assert (event.kind, event.talker) == (K.TAKEN, BOB.uri)
    # Bob (queued first) takes the floor and the queue; Carol and Dave move up.
    bob = queued_at(BOB, ALICE, 1)
    bob.receive(grant, 3.01)
    assert bob.has_permission and bob.queue == [(CAROL.ssrc, CAROL.uri), (DAVE.ssrc, DAVE.uri)]
    [event] = bob.events()
    assert (event.kind, event.text) == (K.GRANTED, "granted from the queue")
    assert subtypes(bob.outgoing()) == [Subtype.TAKEN]
    dave = queued_at(DAVE, ALICE, 3)
    dave.receive(grant, 3.01)
    assert (dave.state, dave.queue_position, dave.talker) == (QUEUED, 2, BOB.uri)
    [talker, event] = dave.events()
    assert (talker.kind, talker.talker) == (K.TAKEN, BOB.uri)
    assert (event.kind, event.position, event.talker) == (K.QUEUE_POSITION, 2, BOB.uri)
    assert dave.outgoing() == []
    dave.receive(taken(BOB), 3.02)  # the grantee announces itself: the talker we expected
    assert dave.state == QUEUED and dave.outgoing() == [] and dave.events() == []
    # Alice hears Bob take over; Bob's later release goes to Carol, with Dave still queued.
    alice.receive(taken(BOB), 3.02)
    assert alice.state == HAS_NO_PERMISSION and alice.queue == []
    bob.release(5.0)
    [grant] = bob.outgoing()
    assert (grant.ssrc_field, grant.queued) == (CAROL.ssrc, (QueuedParticipant(DAVE.ssrc, DAVE.uri, QueueInfo(1, 0)),))
    dave.receive(grant, 5.01)
    assert (dave.queue_position, dave.talker) == (1, CAROL.uri)


def test_t207_hands_the_floor_to_the_queue() -> None:
    alice = arbitrating(ALICE, [(BOB, 0)])
    while alice.has_permission:
        expire(alice)
    assert kinds(alice.events()) == [K.STOP_WARNING, K.STOP_TALKING, K.TAKEN]
    [grant] = alice.outgoing()
    assert grant.subtype == Subtype.GRANTED and grant.ssrc_field == BOB.ssrc and grant.queued == ()
    assert alice.state == PENDING_GRANTED


def test_next_in_queue_when_the_grantee_does_not_take_the_floor() -> None:
    alice = arbitrating(ALICE, [(BOB, 0), (CAROL, 0), (DAVE, 0)])
    alice.release(3.0)
    alice.outgoing()
    alice.events()
    for _ in range(3):
        expire(alice)
    assert [m.ssrc_field for m in alice.outgoing()] == [BOB.ssrc] * 3
    assert expire(alice) == pytest.approx(3.32)  # T205 x C205: Bob never started
    [grant] = alice.outgoing()
    assert grant.ssrc_field == CAROL.ssrc and [m.ssrc for m in grant.queued] == [DAVE.ssrc]
    assert alice.state == PENDING_GRANTED and kinds(alice.events()) == [K.TAKEN]
    alice.receive(msg(Subtype.RELEASE, CAROL), 3.4)  # Carol declines at once
    [grant] = alice.outgoing()
    assert grant.ssrc_field == DAVE.ssrc and grant.queued == () and grant.queue_size is None
    for _ in range(4):
        expire(alice)
    assert alice.state == SILENCE and alice.queue == [] and K.IDLE in kinds(alice.events())


def test_pre_emption_is_still_immediate_and_carries_the_queue() -> None:
    alice = arbitrating(ALICE, [(BOB, 0), (CAROL, 0)], priority=5)
    emergency = int(FloorIndicator.NORMAL | FloorIndicator.EMERGENCY | FloorIndicator.QUEUEING_SUPPORTED)
    alice.receive(queued_request_from(DAVE, 1, emergency), 1.0)
    [grant] = alice.outgoing()
    assert grant.subtype == Subtype.GRANTED and grant.ssrc_field == DAVE.ssrc
    assert [m.ssrc for m in grant.queued] == [BOB.ssrc, CAROL.ssrc]
    [event] = alice.events()
    assert (event.kind, event.cause) == (K.REVOKED, RevokeCause.PRE_EMPTED)
    bob = floor(BOB, queueing=True, priority=9)
    bob.receive(taken(ALICE, 5), 0.0)
    bob.request(0.1)
    bob.receive(position_info(ALICE, BOB, 1), 0.11)
    bob.request(0.2, priority=9)  # already queued: pressing again changes nothing
    alice2 = arbitrating(ALICE, [(BOB, 0)], priority=5)
    alice2.receive(queued_request_from(BOB, 9), 1.0)  # a queued member asking again with a pre-empting priority
    [grant] = alice2.outgoing()
    assert grant.subtype == Subtype.GRANTED and grant.ssrc_field == BOB.ssrc and grant.queued == ()


def test_requests_while_handing_over_are_queued_and_the_grant_carries_them() -> None:
    alice = arbitrating(ALICE, [(BOB, 0)])
    alice.release(3.0)
    [first] = alice.outgoing()
    alice.receive(queued_request_from(CAROL), 3.01)
    [info] = alice.outgoing()
    assert info.subtype == Subtype.QUEUE_POSITION_INFO and info.queue_info == QueueInfo(1, 0)
    alice.receive(queued_request_from(BOB), 3.02)  # the grantee has not heard the grant yet: grant again
    [again] = alice.outgoing()
    assert again.ssrc_field == BOB.ssrc and [m.ssrc for m in again.queued] == [CAROL.ssrc]
    expire(alice)
    assert alice.outgoing() == [again]
    # Bob took the floor from the first Floor Granted; the retransmission adds Carol to his queue.
    bob = queued_at(BOB, ALICE, 1)
    bob.receive(first, 3.01)
    assert bob.queue == []
    bob.receive(again, 3.09)
    assert bob.queue == [(CAROL.ssrc, CAROL.uri)] and subtypes(bob.outgoing()) == [Subtype.TAKEN, Subtype.TAKEN]


def test_queue_position_request_and_t204() -> None:
    bob = queued_at(BOB, ALICE, 2)
    bob.ask_queue_position(1.0)
    [ask] = bob.outgoing()
    assert (ask.subtype, ask.ssrc, ask.user_id) == (Subtype.QUEUE_POSITION_REQUEST, BOB.ssrc, BOB.uri)
    assert bob.next_deadline() == pytest.approx(1.08)
    alice = arbitrating(ALICE, [(CAROL, 0), (BOB, 0)])
    alice.receive(ask, 1.01)
    [answer] = alice.outgoing()
    assert answer.queue_info == QueueInfo(2, 0) and answer.ssrc_field == BOB.ssrc
    bob.receive(answer, 1.02)
    [event] = bob.events()
    assert (event.kind, event.position) == (K.QUEUE_POSITION, 2)  # answered, even if unchanged
    bob.tick(1.2)
    assert bob.outgoing() == []  # T204 stopped by the answer
    bob.ask_queue_position(2.0)
    bob.outgoing()
    assert expire(bob) == pytest.approx(2.08)
    assert expire(bob) == pytest.approx(2.16)
    assert subtypes(bob.outgoing()) == [Subtype.QUEUE_POSITION_REQUEST] * 2  # C204 = 3 in all
    assert expire(bob) == pytest.approx(2.24)  # no answer: our place is lost, ask for the floor again
    assert bob.state == PENDING_REQUEST and subtypes(bob.outgoing()) == [Subtype.REQUEST]
    [event] = bob.events()
    assert (event.kind, event.text) == (K.QUEUE_CANCELLED, "no answer from the talker")


def test_arbitrator_that_does_not_hold_us_answers_not_queued_and_we_request_again() -> None:
    alice = holding(ALICE, queueing=True)
    alice.receive(msg(Subtype.QUEUE_POSITION_REQUEST, BOB), 1.0)
    [answer] = alice.outgoing()
    assert answer.queue_info == QueueInfo(QUEUE_POSITION_NOT_QUEUED, 0) and answer.ssrc_field == BOB.ssrc
    bob = queued_at(BOB, ALICE, 1)
    bob.ask_queue_position(1.0)
    bob.outgoing()
    bob.receive(answer, 1.01)
    assert bob.state == PENDING_REQUEST and subtypes(bob.outgoing()) == [Subtype.REQUEST]
    assert kinds(bob.events()) == [K.QUEUE_CANCELLED]
    alice.receive(queued_request_from(BOB), 1.02)
    bob.receive(alice.outgoing()[0], 1.03)
    assert bob.state == QUEUED and kinds(bob.events()) == [K.QUEUED]


def test_queued_member_asks_a_new_talker_for_its_place() -> None:
    bob = queued_at(BOB, ALICE, 1)
    bob.receive(taken(CAROL, priority=0), 1.0)  # Carol (outranking Alice by SSRC) holds the floor now
    assert bob.talker == CAROL.uri and bob.state == QUEUED
    assert subtypes(bob.outgoing()) == [Subtype.QUEUE_POSITION_REQUEST]
    dave = queued_at(DAVE, ALICE, 1)
    dave.media_received(ALICE.ssrc, 0.3)
    dave.media_received(CAROL.ssrc, 1.0)  # Alice's media stopped long ago: Carol talks
    assert dave.talker_ssrc == CAROL.ssrc and subtypes(dave.outgoing()) == [Subtype.QUEUE_POSITION_REQUEST]


def test_floor_granted_to_another_that_does_not_list_us_makes_us_request_again() -> None:
    bob = queued_at(BOB, ALICE, 2)
    bob.receive(granted(ALICE, CAROL, [(DAVE, 0)]), 1.0)
    assert (bob.state, bob.talker) == (PENDING_REQUEST, CAROL.uri)
    assert kinds(bob.events()) == [K.TAKEN, K.QUEUE_CANCELLED]
    assert subtypes(bob.outgoing()) == [Subtype.REQUEST]


def test_queued_member_denied_after_all() -> None:
    bob = queued_at(BOB, ALICE, 1)
    bob.receive(msg(Subtype.DENY, ALICE, reject_cause=RejectCause(1), ssrc_field=BOB.ssrc), 1.0)
    assert bob.state == HAS_NO_PERMISSION and kinds(bob.events()) == [K.DENIED]


def test_floor_release_by_the_talker_while_queued_makes_us_compete() -> None:
    bob = queued_at(BOB, ALICE, 1)
    bob.receive(msg(Subtype.RELEASE, ALICE), 1.0)
    assert bob.state == PENDING_REQUEST and bob.talker is None
    assert kinds(bob.events()) == [K.IDLE, K.QUEUE_CANCELLED]
    assert subtypes(bob.outgoing()) == [Subtype.REQUEST]
    for _ in range(3):
        expire(bob)
    assert bob.has_permission


def test_arbitrator_gone_while_queued_we_take_the_silent_floor() -> None:
    bob = queued_at(BOB, ALICE, 1)
    bob.media_received(ALICE.ssrc, 1.0)
    assert expire(bob) == pytest.approx(5.0)  # T203: no media or floor message from Alice for 4 s
    assert bob.state == PENDING_REQUEST and bob.talker is None
    [idle, cancelled] = bob.events()
    assert (idle.kind, cancelled.kind, cancelled.text) == (K.IDLE, K.QUEUE_CANCELLED, "the talker went silent")
    assert subtypes(bob.outgoing()) == [Subtype.REQUEST]
    for _ in range(3):
        expire(bob)
    assert bob.has_permission and kinds(bob.events()) == [K.GRANTED]
    released = queued_at(CAROL, ALICE, 1)
    released.release(1.0)
    expire(released)  # a member that released is not brought back by T203
    assert released.state == SILENCE and subtypes(released.outgoing()) == [Subtype.RELEASE]


def test_holder_hearing_another_arbitrators_position_info_reasserts() -> None:
    alice = holding(ALICE, queueing=True)
    alice.receive(position_info(BOB, CAROL, 1), 1.0)
    assert subtypes(alice.outgoing()) == [Subtype.TAKEN] and alice.has_permission


def test_queue_messages_in_odd_states_never_raise() -> None:
    for f in (floor(BOB, queueing=True), holding(BOB, queueing=True), listening_to(BOB, ALICE, queueing=True)):
        f.receive(FloorMessage(Subtype.QUEUE_POSITION_INFO, ALICE.ssrc), 1.0)
        f.receive(FloorMessage(Subtype.QUEUE_POSITION_INFO, ALICE.ssrc, ssrc_field=BOB.ssrc), 1.0)
        f.receive(FloorMessage(Subtype.QUEUE_POSITION_REQUEST, 0xDEAD), 1.0)
        f.receive(FloorMessage(Subtype.QUEUED_CANCEL, 0xDEAD), 1.0)
        f.receive(granted(ALICE, CAROL, [(DAVE, 0), (BOB, 0)]), 1.1)
        f.ask_queue_position(1.2)
        f.tick(20.0)


# -- the multicast network simulator ----------------------------------------------------------------------------------

MEDIA_INTERVAL = 0.02


@dataclass
class Net:
    """N machines on a lossy multicast network: ``delay[i][j]`` + uniform jitter, independent loss per copy.

    Every message goes through the codec; the sender gets a looped-back copy at once (as IP multicast does).
    Members with permission send a media packet every 20 ms. Time advances from one event to the next. Until
    ``blackout`` every copy to another member is lost (a radio fade), which makes simultaneous requests collide.
    """

    floors: list[OffNetworkFloor]
    delay: list[list[float]]
    jitter: float
    loss: float
    rng: random.Random
    blackout: float = 0.0
    now: float = 0.0
    double_talk: float = 0.0
    queue: list[tuple[float, int, int, str, bytes | int]] = field(default_factory=list)
    next_media: list[float | None] = field(default_factory=list)
    actions: list[tuple[float, int, str]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.next_media = [None] * len(self.floors)

    def at(self, t: float, i: int, action: str) -> None:
        self.actions.append((t, i, action))
        self.actions.sort()

    def _multicast(self, i: int, kind: str, payload: bytes | int) -> None:
        if kind == "msg":
            heapq.heappush(self.queue, (self.now, next(self._seq), i, kind, payload))  # loopback
        for j in range(len(self.floors)):
            if j != i and self.now >= self.blackout and self.rng.random() >= self.loss:
                arrival = self.now + self.delay[i][j] + self.rng.uniform(0.0, self.jitter)
                heapq.heappush(self.queue, (arrival, next(self._seq), j, kind, payload))

    def _flush(self) -> None:
        for i, f in enumerate(self.floors):
            for message in f.outgoing():
                self._multicast(i, "msg", bytes(message))
            if f.has_permission and self.next_media[i] is None:
                self.next_media[i] = self.now
            elif not f.has_permission:
                self.next_media[i] = None

    def run(self, until: float) -> None:
        while True:
            times: list[tuple[float, int, str]] = []
            if self.queue:
                times.append((self.queue[0][0], 0, "arrival"))
            if self.actions:
                times.append((self.actions[0][0], 1, "action"))
            for i, f in enumerate(self.floors):
                deadline = f.next_deadline()
                if deadline is not None:
                    times.append((deadline, 2 + i, "timer"))
                media = self.next_media[i]
                if media is not None:
                    times.append((media, 2 + len(self.floors) + i, "media"))
            if not times or min(times)[0] > until:
                self._advance(until)
                return
            t, index, what = min(times)
            self._advance(t)
            if what == "arrival":
                _, _, dst, kind, payload = heapq.heappop(self.queue)
                if kind == "msg":
                    assert isinstance(payload, bytes)
                    self.floors[dst].receive(FloorMessage.parse(payload), self.now)
                else:
                    assert isinstance(payload, int)
                    self.floors[dst].media_received(payload, self.now)
            elif what == "action":
                _, i, action = self.actions.pop(0)
                self._act(i, action)
            elif what == "timer":
                self.floors[index - 2].tick(self.now)
            else:
                i = index - 2 - len(self.floors)
                self._multicast(i, "media", self.floors[i].own_ssrc)
                self.next_media[i] = self.now + MEDIA_INTERVAL
            self._flush()

    def _act(self, i: int, action: str) -> None:
        if action == "press":
            self.floors[i].request(self.now)
        else:
            self.floors[i].release(self.now)

    def _advance(self, t: float) -> None:
        if sum(f.has_permission for f in self.floors) > 1:
            self.double_talk += t - self.now
        self.now = max(self.now, t)

    def assert_one_talker(self) -> OffNetworkFloor:
        holders = [f for f in self.floors if f.has_permission]
        assert len(holders) == 1, [(f.own_uri, f.state) for f in self.floors]
        [holder] = holders
        for f in self.floors:
            if f is not holder:
                assert f.state in (HAS_NO_PERMISSION, QUEUED), (f.own_uri, f.state)  # queued: still pressing
                assert f.talker_ssrc == holder.own_ssrc, (f.own_uri, f.state)
        return holder

    def assert_idle(self) -> None:
        assert [f.state for f in self.floors] == [SILENCE] * len(self.floors)


def make_net(
    n: int,
    delays: list[float],
    jitter: float,
    loss: float,
    seed: int,
    priorities: list[int] | None = None,
    *,
    queueing: bool = False,
) -> Net:
    rng = random.Random(seed)
    ssrcs = rng.sample(range(1, 1 << 32), n)
    floors = [
        OffNetworkFloor(
            f"sip:m{i}@example.org", ssrcs[i], priority=(priorities or [0] * n)[i], queueing=queueing, now=0.0
        )
        for i in range(n)
    ]
    delay = [[delays[(i * n + j) % len(delays)] for j in range(n)] for i in range(n)]
    return Net(floors, delay, jitter, loss, rng)


def test_two_members_talk_in_turn_over_a_clean_network() -> None:
    net = make_net(2, [0.01], 0.0, 0.0, seed=1)
    a, b = net.floors
    net.at(0.0, 0, "press")
    net.run(0.5)
    assert a.has_permission and (b.state, b.talker) == (HAS_NO_PERMISSION, a.own_uri)
    net.at(0.6, 1, "press")  # denied: same priority
    net.run(0.8)
    assert a.has_permission and b.state == HAS_NO_PERMISSION
    net.at(1.0, 0, "release")
    net.run(1.1)
    net.assert_idle()
    net.at(1.2, 1, "press")
    net.run(1.5)
    assert b.has_permission and a.talker == b.own_uri
    assert net.double_talk == 0.0


def test_simultaneous_presses_over_a_clean_network_settle_without_double_talk() -> None:
    net = make_net(4, [0.02, 0.035, 0.05], 0.0, 0.0, seed=7)
    for i in range(4):
        net.at(0.0, i, "press")
    net.run(2.0)
    holder = net.assert_one_talker()
    assert holder.own_ssrc == max(f.own_ssrc for f in net.floors)  # everyone deferred to the best rank
    assert net.double_talk == 0.0


def test_both_take_the_floor_when_requests_are_lost_and_the_lower_rank_yields() -> None:
    net = make_net(2, [0.03], 0.0, 0.0, seed=3)
    a, b = net.floors
    net.blackout = 0.1  # every Floor Request is lost: both take the floor at 120 ms
    net.at(0.0, 0, "press")
    net.at(0.0, 1, "press")
    net.run(0.121)
    assert a.has_permission and b.has_permission
    net.run(1.0)
    holder = net.assert_one_talker()
    loser = b if holder is a else a
    assert holder.own_ssrc > loser.own_ssrc
    assert FloorEventKind.REVOKED in kinds(loser.events())


def test_lost_floor_taken_messages_are_repaired_by_media() -> None:
    net = make_net(2, [0.03], 0.0, 0.0, seed=4)
    net.blackout = 0.15  # requests and both Floor Taken messages lost
    net.at(0.0, 0, "press")
    net.at(0.0, 1, "press")
    net.run(0.15)
    assert all(f.has_permission for f in net.floors)
    net.run(1.0)
    net.assert_one_talker()


def test_high_priority_member_pre_empts_a_talker() -> None:
    net = make_net(3, [0.02, 0.04], 0.005, 0.0, seed=5, priorities=[0, 0, 9])
    net.at(0.0, 0, "press")
    net.at(1.0, 2, "press")
    net.run(2.0)
    holder = net.assert_one_talker()
    assert holder is net.floors[2]
    assert FloorEventKind.REVOKED in kinds(net.floors[0].events())


delays_st = st.lists(st.floats(0.0, 0.06), min_size=1, max_size=25)


@settings(max_examples=120, deadline=None)
@given(
    n=st.integers(2, 5),
    delays=delays_st,
    jitter=st.floats(0.0, 0.02),
    loss=st.floats(0.0, 0.25),
    seed=st.integers(0, 2**32 - 1),
    blackout=st.sampled_from([0.0, 0.0, 0.06, 0.13, 0.2]),
    data=st.data(),
)
def test_simultaneous_requests_resolve_to_exactly_one_talker(
    n: int, delays: list[float], jitter: float, loss: float, seed: int, blackout: float, data: st.DataObject
) -> None:
    priorities = data.draw(st.lists(st.sampled_from([0, 0, 0, 5]), min_size=n, max_size=n))
    presses = data.draw(st.lists(st.none() | st.floats(0.0, 0.03), min_size=n, max_size=n))
    pressers = [i for i, t in enumerate(presses) if t is not None]
    if len(pressers) < 2:
        presses[0], presses[1] = 0.0, 0.0
        pressers = sorted({*pressers, 0, 1})
    net = make_net(n, delays, jitter, loss, seed, priorities)
    net.blackout = blackout
    for i in pressers:
        press = presses[i]
        assert press is not None
        net.at(press, i, "press")
    net.run(3.0)
    holder = net.assert_one_talker()
    assert holder.priority == max(priorities[i] for i in pressers)
    assert net.double_talk < 1.0


def contention_rounds(net: Net, rounds: list[tuple[float, dict[int, float]]]) -> None:
    """Round after round: after an optional blackout some members press together; two seconds later exactly one
    talks (one of the highest priority among them) and everyone else agrees; all release; five seconds later
    (longer than T203, for listeners that missed the Floor Release) the floor is idle everywhere."""
    start = net.now
    for blackout, presses in rounds:
        net.blackout = start + blackout
        for i, offset in presses.items():
            net.at(start + offset, i, "press")
        net.run(start + 2.0)
        holder = net.assert_one_talker()
        assert holder.priority == max(net.floors[i].priority for i in presses)
        for i in range(len(net.floors)):
            net.at(start + 2.0, i, "release")
        net.run(start + 7.0)
        net.assert_idle()
        start += 7.0


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 5),
    delays=delays_st,
    jitter=st.floats(0.0, 0.02),
    loss=st.floats(0.0, 0.25),
    seed=st.integers(0, 2**32 - 1),
    queueing=st.booleans(),
    data=st.data(),
)
def test_rounds_of_contention_release_and_silence(
    n: int, delays: list[float], jitter: float, loss: float, seed: int, queueing: bool, data: st.DataObject
) -> None:
    priorities = data.draw(st.lists(st.sampled_from([0, 0, 5]), min_size=n, max_size=n))
    presses = st.dictionaries(st.integers(0, n - 1), st.floats(0.0, 0.05), min_size=1)
    rounds = data.draw(st.lists(st.tuples(st.sampled_from([0.0, 0.0, 0.13]), presses), min_size=1, max_size=3))
    contention_rounds(make_net(n, delays, jitter, loss, seed, priorities, queueing=queueing), rounds)


@pytest.mark.slow
@pytest.mark.parametrize("queueing", [False, True], ids=["no-queue", "queueing"])
@pytest.mark.parametrize(("max_delay", "max_loss"), [(0.06, 0.25), (0.06, 0.45), (0.15, 0.25)])
def test_soak_contention_rounds(max_delay: float, max_loss: float, queueing: bool) -> None:
    """Seeded soak (``pytest -m slow``): 1500 networks of three rounds each, up to 45 % loss or 150 ms delay."""
    for seed in range(1500):
        rng = random.Random(seed)
        n = rng.randint(2, 5)
        delays = [rng.uniform(0.0, max_delay) for _ in range(rng.randint(1, 25))]
        priorities = [rng.choice([0, 0, 5]) for _ in range(n)]
        loss = rng.uniform(0.0, max_loss)
        net = make_net(n, delays, rng.uniform(0.0, 0.02), loss, seed, priorities, queueing=queueing)
        rounds = [
            (
                rng.choice([0.0, 0.0, 0.13, 0.3]),
                {i: rng.uniform(0.0, 0.05) for i in rng.sample(range(n), rng.randint(1, n))},
            )
            for _ in range(3)
        ]
        contention_rounds(net, rounds)


# -- the simulator with queueing: users who keep PTT pressed -----------------------------------------------------------

WAITING = (SILENCE, START_STOP, HAS_NO_PERMISSION)


@dataclass
class Crowd(Net):
    """A ``Net`` of members with queueing whose users keep PTT pressed until they have talked ``talk`` seconds.

    A user whose machine ends up waiting without a request (denied, revoked, lost a collision) presses again
    ``retry`` seconds later, as someone holding the PTT button would; a user whose floor is taken away before the
    end of its talk wants the rest of it again. ``turns`` records who started talking when.
    """

    talk: float = 1.0
    retry: float = 0.3
    wants: set[int] = field(default_factory=set)
    talked: dict[int, float] = field(default_factory=dict)
    since: dict[int, float] = field(default_factory=dict)
    retrying: set[int] = field(default_factory=set)
    turns: list[tuple[float, int]] = field(default_factory=list)

    def _act(self, i: int, action: str) -> None:
        f = self.floors[i]
        if action == "press":
            self.wants.add(i)
            f.request(self.now)
        elif action == "retry":
            self.retrying.discard(i)
            if i in self.wants and f.state in WAITING:
                f.request(self.now)
        elif action == f"done@{self.since.get(i)!r}" and f.has_permission:
            f.release(self.now)
            self.wants.discard(i)
            self.talked[i] = self.now

    def _flush(self) -> None:
        super()._flush()
        for i, f in enumerate(self.floors):
            if f.has_permission and i not in self.since:
                self.since[i] = self.now
                self.turns.append((self.now, i))
                self.at(self.now + self.talk, i, f"done@{self.now!r}")
            elif not f.has_permission:
                self.since.pop(i, None)
            if i in self.wants and f.state in WAITING and i not in self.retrying:
                self.retrying.add(i)
                self.at(self.now + self.retry, i, "retry")


def make_crowd(
    n: int, delays: list[float], jitter: float, loss: float, seed: int, priorities: list[int] | None = None
) -> Crowd:
    net = make_net(n, delays, jitter, loss, seed, priorities, queueing=True)
    return Crowd(net.floors, net.delay, net.jitter, net.loss, net.rng)


def test_queue_serves_everyone_in_priority_then_arrival_order_over_a_clean_network() -> None:
    net = make_crowd(5, [0.01, 0.02], 0.0, 0.0, seed=11, priorities=[5, 0, 0, 3, 0])
    net.talk = 2.0
    net.at(0.0, 0, "press")
    for i, t in ((1, 0.5), (2, 0.6), (3, 0.7), (4, 0.8)):
        net.at(t, i, "press")
    net.run(1.0)
    holder = net.floors[0]
    assert holder.has_permission
    assert [ssrc for ssrc, _ in holder.queue] == [net.floors[i].own_ssrc for i in (3, 1, 2, 4)]
    # As each was told when queued: member 3 overtook 1 and 2, who learn it at the next hand-over.
    assert [net.floors[i].queue_position for i in (1, 2, 3, 4)] == [1, 2, 1, 4]
    net.run(20.0)
    assert [i for _, i in net.turns] == [0, 3, 1, 2, 4]
    assert set(net.talked) == {0, 1, 2, 3, 4} and net.double_talk == 0.0
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(net.turns)]
    assert all(1.99 < gap < 2.1 for gap in gaps), gaps  # each hand-over takes one network delay, not a T203
    net.run(30.0)
    net.assert_idle()


def test_grantee_that_vanished_is_skipped() -> None:
    net = make_crowd(3, [0.01], 0.0, 0.0, seed=12)
    net.talk = 1.0
    net.at(0.0, 0, "press")
    net.at(0.3, 1, "press")
    net.at(0.4, 2, "press")
    net.run(0.6)
    assert [f.state for f in net.floors] == [HAS_PERMISSION, QUEUED, QUEUED]
    net.delay[0][1] = net.delay[2][1] = 100.0  # member 1 goes out of range: it never hears its Floor Granted
    net.run(10.0)
    assert net.talked.keys() >= {0, 2} and [i for _, i in net.turns][:2] == [0, 2]
    assert net.double_talk == 0.0


def queue_rounds(net: Crowd, presses: dict[int, float], horizon: float) -> None:
    for i, t in presses.items():
        net.at(t, i, "press")
    net.run(horizon)
    assert set(net.talked) == set(presses), (net.talked, presses, [f.state for f in net.floors])
    net.run(horizon + 10.0)  # longer than T203 for listeners that missed the last Floor Release
    net.assert_idle()


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 5),
    delays=delays_st,
    jitter=st.floats(0.0, 0.02),
    loss=st.floats(0.0, 0.25),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_with_queueing_everyone_holding_ptt_talks_and_never_two_at_once(
    n: int, delays: list[float], jitter: float, loss: float, seed: int, data: st.DataObject
) -> None:
    priorities = data.draw(st.lists(st.sampled_from([0, 0, 0, 5]), min_size=n, max_size=n))
    presses = data.draw(st.dictionaries(st.integers(0, n - 1), st.floats(0.0, 1.5), min_size=1))
    net = make_crowd(n, delays, jitter, loss, seed, priorities)
    queue_rounds(net, presses, 60.0)
    assert net.double_talk < 1.0, net.double_talk
    if loss == 0.0:
        assert net.double_talk == 0.0


@pytest.mark.slow
@pytest.mark.parametrize(("max_delay", "max_loss"), [(0.06, 0.25), (0.06, 0.4), (0.15, 0.25)])
def test_soak_queueing(max_delay: float, max_loss: float) -> None:
    """Seeded soak with queueing (``pytest -m slow``): 1500 networks, everyone holding PTT talks once, in turn."""
    for seed in range(1500):
        rng = random.Random(seed)
        n = rng.randint(2, 5)
        delays = [rng.uniform(0.0, max_delay) for _ in range(rng.randint(1, 25))]
        priorities = [rng.choice([0, 0, 5]) for _ in range(n)]
        net = make_crowd(n, delays, rng.uniform(0.0, 0.02), rng.uniform(0.0, max_loss), seed, priorities)
        presses = {i: rng.uniform(0.0, 2.0) for i in rng.sample(range(n), rng.randint(1, n))}
        queue_rounds(net, presses, 90.0)
        assert net.double_talk < 1.5, (seed, net.double_talk)
