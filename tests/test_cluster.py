"""The cluster's pure parts: lease ownership and fencing (ptt/cluster.py), the messages between nodes
(ptt/cluster_messages.py), the sealed CSK of forwarded joins."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from ptt.cluster import (
    Adopted,
    ClusterError,
    Lease,
    Lost,
    Moved,
    NodeInfo,
    Ownership,
    RoundResult,
    check_node_name,
    preferred_node,
)
from ptt.cluster_messages import (
    MAX_MESSAGE,
    CallEvent,
    CallForward,
    GroupChanged,
    GroupMoved,
    JoinReply,
    JoinRequest,
    Left,
    StatusReply,
    StatusRequest,
    UserPush,
    parse,
)
from ptt.srtcp import CskKeys
from server.cluster.node import open_csk, seal_csk

GROUPS = [f"sip:g{i}@example.org" for i in range(200)]


def node(name: str) -> NodeInfo:
    return NodeInfo(name, f"{name}.example.org", 8445, f"{name}.example.org", 8446, 8444)


def result(started: float, leases: dict[str, Lease], nodes: tuple[str, ...] = ("a", "b")) -> RoundResult:
    return RoundResult(started, True, {n: node(n) for n in nodes}, leases)


def test_preferred_nodes_spread_groups_evenly_and_losing_a_node_moves_only_its_groups() -> None:
    three = Counter(preferred_node(g, ["a", "b", "c"]) for g in GROUPS)
    assert set(three) == {"a", "b", "c"} and min(three.values()) >= 45
    for group in GROUPS:
        before = preferred_node(group, ["a", "b", "c"])
        after = preferred_node(group, ["a", "b"])
        assert after == before or before == "c"
    assert preferred_node("g", []) is None


def test_a_node_claims_its_preferred_free_groups_then_any_left_free_after_the_grace() -> None:
    mine = Ownership("a", grace=1.0)
    mine.nodes = {"a": node("a"), "b": node("b")}
    claims = mine.to_claim(GROUPS, now=0.0)
    assert claims == [g for g in GROUPS if preferred_node(g, ["a", "b"]) == "a"]
    assert sorted(mine.to_claim(GROUPS, now=1.5)) == sorted(GROUPS)  # b never took its share
    taken = {g: Lease(g, "b", 1) for g in GROUPS}
    mine.apply(result(2.0, taken), now=2.0)
    assert mine.to_claim(GROUPS, now=2.1) == []
    expired = {g: Lease(g, "b", 1, expired=True) for g in GROUPS}
    mine.apply(result(3.0, expired, nodes=("a",)), now=3.0)  # b died: its leases expired, it left the node list
    assert sorted(mine.to_claim(GROUPS, now=3.1)) == sorted(GROUPS)


def test_adopting_losing_and_seeing_moves() -> None:
    mine = Ownership("a", lease_time=2.5, margin=0.5)
    events = mine.apply(result(10.0, {"g1": Lease("g1", "a", 1), "g2": Lease("g2", "b", 4)}), now=10.1)
    assert Adopted("g1", 1) in events and Moved("g2", Lease("g2", "b", 4)) in events
    assert mine.holds("g1", 12.0) and not mine.holds("g1", 12.01)  # started + lease - margin
    assert mine.owner("g2") == node("b") and mine.generation("g2") == 4
    # another node took g1 over (a was too slow): lost; b's g2 unchanged: no event
    events = mine.apply(result(11.0, {"g1": Lease("g1", "b", 2), "g2": Lease("g2", "b", 4)}), now=11.1)
    assert events == [Lost("g1"), Moved("g1", Lease("g1", "b", 2))]
    assert not mine.holds("g1", 11.2)


def test_a_node_whose_renewals_fail_stops_serving_before_its_lease_can_expire() -> None:
    mine = Ownership("a", lease_time=2.5, margin=0.5)
    mine.apply(result(100.0, {"g": Lease("g", "a", 3)}), now=100.2)
    assert mine.apply(RoundResult(100.5, False), now=101.9) == []  # renewal failed, still within the deadline
    assert mine.holds("g", 101.9)
    assert mine.fence(102.1) == [Lost("g")]  # 100.0 + 2.5 - 0.5: before the database's 100.0+ + 2.5
    assert not mine.holds("g", 102.1) and mine.held == {}


def test_a_fenced_node_serves_its_groups_again_only_at_a_new_generation() -> None:
    """The fence dropped the group's call (bindings, floor): carrying on at the same generation would leave the
    members bound to nothing, and no node would tell them to join again. It is taken back at the next one."""
    mine = Ownership("a", lease_time=2.5, margin=0.5)
    mine.apply(result(100.0, {"g": Lease("g", "a", 3)}), now=100.1)
    assert mine.to_reclaim() == []
    assert mine.fence(102.1) == [Lost("g")]  # the next round was late
    assert mine.to_reclaim() == ["g"]
    assert "g" not in mine.to_claim(["g"], now=102.2)  # not claimed as a free group too
    # that late round (sent before the fence) renewed it: still generation 3, so it is not served
    assert mine.apply(result(101.9, {"g": Lease("g", "a", 3)}), now=102.2) == []
    assert not mine.holds("g", 102.3) and mine.to_reclaim() == ["g"]
    # the next round took it back: generation 4, a move every node announces to its members
    assert mine.apply(result(102.5, {"g": Lease("g", "a", 4)}), now=102.6) == [Adopted("g", 4)]
    assert mine.holds("g", 104.5) and mine.to_reclaim() == []


def test_a_fenced_node_does_not_take_back_a_group_another_node_took() -> None:
    mine = Ownership("a", lease_time=2.5, margin=0.5)
    mine.apply(result(100.0, {"g": Lease("g", "a", 3), "h": Lease("h", "a", 1)}), now=100.1)
    assert sorted(map(repr, mine.fence(103.0))) == sorted(map(repr, [Lost("g"), Lost("h")]))  # frozen 3 s
    # b took g when the lease expired; h expired in the database but nobody took it yet
    leases = {"g": Lease("g", "b", 4), "h": Lease("h", "a", 1, expired=True)}
    events = mine.apply(result(103.1, leases), now=103.2)
    assert events == [Moved("g", Lease("g", "b", 4))] and mine.held == {}
    assert mine.to_reclaim() == ["h"]  # still its own in the database: taken back (node = a) at generation 2
    assert mine.apply(result(103.6, {"g": Lease("g", "b", 4), "h": Lease("h", "a", 2)}), now=103.7) == [Adopted("h", 2)]
    assert mine.to_reclaim() == [] and mine.held == {"h": 2}


def test_a_committed_renewal_moves_the_deadline_before_its_round_is_applied() -> None:
    """A busy reactor may apply a round's answer after the deadline although the renewal committed in time."""
    mine = Ownership("a", lease_time=2.5, margin=0.5)
    mine.apply(result(100.0, {"g": Lease("g", "a", 1)}), now=100.1)
    mine.renewal_committed(101.5, now=101.9)  # sent at 101.5, committed; its answer still queued
    assert mine.fence(102.5) == [] and mine.holds("g", 103.5) and not mine.holds("g", 103.6)
    mine.renewal_committed(101.0, now=102.6)  # an older one changes nothing
    assert mine.valid_until == 103.5
    # past the deadline a late renewal cannot vouch for every group (one may have been taken): the round decides
    assert mine.fence(103.6) == [Lost("g")]
    mine.renewal_committed(103.4, now=103.7)
    assert not mine.holds("g", 103.8)


def test_the_deadline_counts_from_when_the_renewal_was_sent_not_when_its_answer_came() -> None:
    """A slow answer eats into the deadline: the database's lease ran from a later moment."""
    mine = Ownership("a", lease_time=2.5, margin=0.5)
    mine.apply(result(100.0, {"g": Lease("g", "a", 1)}), now=101.4)  # 1.4 s to answer
    assert mine.valid_until == 102.0
    assert mine.fence(101.99) == [] and mine.fence(102.01) == [Lost("g")]


def test_node_names_and_descriptions_are_checked() -> None:
    assert check_node_name("node-1.example_2") == "node-1.example_2"
    for bad in ("", "a b", "x" * 65, "node;drop", "é"):
        with pytest.raises(ClusterError):
            check_node_name(bad)
    assert NodeInfo.from_json(node("a").to_json()) == node("a")
    for broken in ({}, {**node("a").to_json(), "relay_port": 0}, {**node("a").to_json(), "control_port": "x"}):
        with pytest.raises(ClusterError):
            NodeInfo.from_json(broken)


MESSAGES = [
    JoinRequest("a", 1, "sip:g@x", "sip:m@x", 7, "AAAAAAAA", "sealed"),
    JoinReply("b", 1, 0, generation=3),
    JoinReply("b", 2, 403, "not a member"),
    Left("a", "sip:m@x"),
    Left("a", "sip:m@x", "sip:g@x"),
    CallEvent("b", "sip:g@x", 3, {"type": "event", "group": "sip:g@x", "kind": "talking", "uri": "sip:m@x"}),
    GroupMoved("b", "sip:g@x", 4),
    GroupChanged("a", "sip:g@x", "0a0b0c0d"),
    StatusRequest("a", 5, "sip:g@x"),
    StatusReply("b", 5, {"talker": None, "queue": []}),
    UserPush("a", "sip:m@x", {"type": "call_offer", "call": "call:0123456789abcdef", "from": "sip:n@x"}),
    CallForward("b", "sip:m@x", {"type": "call_accept", "call": "call:0123456789abcdef"}),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.kind)
def test_messages_round_trip(message: object) -> None:
    assert parse(bytes(message)) == message  # type: ignore[call-overload]


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"[]",
        b'{"kind":"nope","sender":"a"}',
        b'{"kind":"left","sender":"a"}',  # member missing
        b'{"kind":"left","sender":"a","member":5}',
        b'{"kind":"left","sender":"a","member":"m","extra":1}',
        b'{"kind":"left","sender":"bad name","member":"m"}',
        b'{"kind":"moved","sender":"a","group":"g","generation":true}',
        b'{"kind":"left","sender":"a","member":"m","member":"n"}',
        b'{"kind":"left","sender":"a","member":"' + b"x" * 9000 + b'"}',
        b"\xff\xfe",
    ],
)
def test_malformed_messages_are_refused(payload: bytes) -> None:
    with pytest.raises(ClusterError):
        parse(payload)


def test_an_oversized_message_is_refused_when_built() -> None:
    with pytest.raises(ClusterError):
        bytes(StatusReply("b", 1, {"present": ["x" * 100] * 100}))
    assert len(bytes(MESSAGES[0])) < MAX_MESSAGE


def test_a_forwarded_csk_opens_only_under_the_data_key_and_for_its_member() -> None:
    key, keys = os.urandom(32), CskKeys(os.urandom(16), os.urandom(4), os.urandom(16))
    sealed = seal_csk(key, "sip:alice@x", keys)
    opened = open_csk(key, "sip:alice@x", sealed)
    assert (opened.csk, opened.csk_id, opened.rand) == (keys.csk, keys.csk_id, keys.rand)
    with pytest.raises(ClusterError):
        open_csk(os.urandom(32), "sip:alice@x", sealed)
    with pytest.raises(ClusterError):
        open_csk(key, "sip:mallory@x", sealed)  # bound to the member it was sealed for
