"""The on-network group call core (ptt.groupcall), driven directly: no sockets, no reactor, time passed in."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from ptt.control import unb64
from ptt.floor.messages import FloorMessage, Subtype, parse_rtcp
from ptt.groupcall import GroupCall
from ptt.groupinfo import GroupInfo, MemberInfo, Refused, RelayAddress
from ptt.relaycore import Address, JoinSigner, RelayCore, join_packet
from ptt.srtcp import CskKeys, SrtcpChannel

GROUP = "sip:fire@groups.example.org"
ALICE, BOB, CAROL, DISPATCH = (f"sip:{n}@example.org" for n in ("alice", "bob", "carol", "dispatch"))
RELAY = RelayAddress("192.0.2.1", 8446)


@dataclass
class Member:
    uri: str
    ssrc: int
    addr: Address
    channel: SrtcpChannel  # the member's end of its floor control channel (same CSK as the server's)
    keys: CskKeys


def info(*members: str, max_burst: float = 30.0, priorities: dict[str, int] | None = None) -> GroupInfo:
    roles = {DISPATCH: "dispatcher"}
    return GroupInfo(
        GROUP,
        "fire",
        max_burst,
        {
            m: MemberInfo(m, (priorities or {}).get(m, 200 if m == DISPATCH else 0), roles.get(m, "member"))
            for m in members
        },
    )


def make_call(*members: str, max_burst: float = 30.0) -> GroupCall:
    call = GroupCall(RelayCore(), RELAY)
    call.load([info(*members, max_burst=max_burst)])
    return call


def enter(call: GroupCall, uri: str, ssrc: int, port: int, now: float = 0.0) -> Member:
    """CSK, join and bind: the member is a floor participant afterwards."""
    keys = CskKeys(os.urandom(16), bytes.fromhex("0a") + os.urandom(3), os.urandom(16))
    call.csk_keyed(uri, keys)
    binding_id = os.urandom(8)
    reply = call.join(uri, GROUP, ssrc, binding_id, now)
    assert reply["type"] == "joined" and reply["relay"] == {"host": RELAY.host, "port": RELAY.port}
    assert unb64(reply["token"], "token") == binding_id  # public; the key is the member's own, from its CSK
    addr = ("198.51.100.7", port)
    result = call.relay.handle_rtcp(JoinSigner(ssrc, binding_id, keys.csk).packet(), addr, now)
    assert result.kind == "joined" and result.binding is not None
    assert call.member_bound(result.binding, now)
    return Member(uri, ssrc, addr, SrtcpChannel(keys), keys)


def floor(call: GroupCall, member: Member, subtype: Subtype, now: float) -> None:
    data = member.channel.protect(bytes(FloorMessage(subtype, member.ssrc, user_id=member.uri)))
    result = call.relay.handle_rtcp(data, member.addr, now)
    assert result.kind == "floor" and result.binding is not None
    call.floor_packet(result.binding, result.data, member.addr, now)


def received(call: GroupCall, *members: Member) -> dict[str, list[Subtype]]:
    """The floor messages the server sent, decrypted by their addressees."""
    by_addr = {m.addr: m for m in members}
    got: dict[str, list[Subtype]] = {m.uri: [] for m in members}
    for data, addr in call.datagrams_to_send():
        member = by_addr[addr]
        got[member.uri] += [message.subtype for message in parse_rtcp(member.channel.unprotect(data))]
    return got


def events(call: GroupCall) -> list[tuple[str, str, str | None]]:
    """Call events pushed on the control channel, once per event (as sent to the first member)."""
    seen: list[tuple[str, str, str | None]] = []
    for _, message in call.pushes():
        if message["type"] == "event":
            item = (message["kind"], message["group"], message.get("uri"))
            if not seen or seen[-1] != item:
                seen.append(item)
    return seen


def test_join_needs_membership_and_a_csk() -> None:
    call = make_call(ALICE)
    with pytest.raises(Refused) as refused:
        call.join(BOB, GROUP, 1, os.urandom(8), 0.0)
    assert refused.value.code == 403 and "not a member" in str(refused.value)
    with pytest.raises(Refused) as refused:
        call.join(ALICE, "sip:nothing@example.org", 1, os.urandom(8), 0.0)
    assert refused.value.code == 404 and "no group sip:nothing@example.org" in str(refused.value)
    with pytest.raises(Refused) as refused:
        call.join(ALICE, GROUP, 1, os.urandom(8), 0.0)
    assert refused.value.code == 409
    call.csk_keyed(ALICE, CskKeys(bytes(16), bytes.fromhex("0a000001"), bytes(16)))
    with pytest.raises(Refused) as refused:
        call.join(ALICE, GROUP, 1 << 32, os.urandom(8), 0.0)
    assert refused.value.code == 400


def test_the_binding_key_comes_from_the_members_own_csk() -> None:
    call = make_call(ALICE, BOB)
    alice_keys = CskKeys(os.urandom(16), bytes.fromhex("0a000001"), os.urandom(16))
    call.csk_keyed(ALICE, alice_keys)
    enter(call, BOB, 2, 4002)
    binding_id = os.urandom(8)
    call.join(ALICE, GROUP, 1, binding_id, 0.0)
    addr = ("198.51.100.7", 4001)
    bob_csk = bytes(16)  # anyone without alice's CSK (bob, the relay's neighbours) cannot bind her
    for forged in (JoinSigner(1, binding_id, bob_csk).packet(), join_packet(1, binding_id, 1, bytes(32))):
        assert call.relay.handle_rtcp(forged, addr, 0.1).kind == "refused"
    assert call.relay.stats["dropped_join_mac"] == 2
    assert call.relay.handle_rtcp(JoinSigner(1, binding_id, alice_keys.csk).packet(), addr, 0.2).kind == "joined"
    with pytest.raises(ValueError):
        call.join(ALICE, GROUP, 1, os.urandom(16), 0.3)  # binding IDs are 8 octets


def test_the_same_csk_again_keeps_the_srtcp_index_going() -> None:
    """A cluster node that dropped a group's call (fence) and serves it again gets each member's CSK anew with the
    forwarded join: its floor messages must go on from the last SRTCP index, or the keystream would repeat and the
    member would refuse them as replays."""
    call = make_call(ALICE, BOB)
    alice, bob = enter(call, ALICE, 0x1111, 4001), enter(call, BOB, 0x2222, 4002)
    floor(call, alice, Subtype.REQUEST, 0.1)
    assert received(call, alice, bob)[BOB] == [Subtype.IDLE, Subtype.TAKEN]  # bob's entry, alice's grant
    call.release(GROUP)
    call.csk_keyed(BOB, bob.keys)
    binding_id = os.urandom(8)
    call.join(BOB, GROUP, bob.ssrc, binding_id, 1.0)
    result = call.relay.handle_rtcp(JoinSigner(bob.ssrc, binding_id, bob.keys.csk).packet(), bob.addr, 1.0)
    assert result.binding is not None and call.member_bound(result.binding, 1.0)
    floor(call, bob, Subtype.REQUEST, 1.1)
    assert received(call, bob)[BOB] == [Subtype.IDLE, Subtype.GRANTED]  # accepted by his channel: later indexes
    call.csk_keyed(BOB, CskKeys(os.urandom(16), bytes.fromhex("0a000009"), os.urandom(16)))
    assert call.csk_keys(BOB) != bob.keys  # a new CSK is a new channel


def test_late_entry_grant_taken_and_the_relay_follows_the_holder() -> None:
    call = make_call(ALICE, BOB, CAROL)
    alice = enter(call, ALICE, 0x1111, 4001)
    bob = enter(call, BOB, 0x2222, 4002)
    assert received(call, alice, bob) == {ALICE: [Subtype.IDLE], BOB: [Subtype.IDLE]}  # late entry: idle
    assert ("joined", GROUP, BOB) in events(call)
    floor(call, alice, Subtype.REQUEST, 1.0)
    assert received(call, alice, bob) == {ALICE: [Subtype.GRANTED], BOB: [Subtype.TAKEN]}
    assert events(call) == [("talking", GROUP, ALICE)]
    media = bytes([0x80, 96]) + bytes(6) + alice.ssrc.to_bytes(4, "big") + bytes(20)
    assert call.relay.route(media, alice.addr, 1.1) == [bob.addr]
    carol = enter(call, CAROL, 0x3333, 4003, now=1.2)
    assert received(call, carol) == {CAROL: [Subtype.TAKEN]}  # late entry: told who talks
    assert call.status(GROUP, online=[ALICE, CAROL])["talker"] == ALICE
    assert events(call) == [("joined", GROUP, CAROL)]
    floor(call, alice, Subtype.RELEASE, 2.0)
    assert received(call, alice, bob, carol) == {ALICE: [Subtype.IDLE], BOB: [Subtype.IDLE], CAROL: [Subtype.IDLE]}
    assert events(call) == [("idle", GROUP, None)]
    assert call.relay.route(media, alice.addr, 2.1) is None


def test_burst_limit_runs_on_the_callers_clock() -> None:
    call = make_call(ALICE, BOB, max_burst=5.0)
    alice, bob = enter(call, ALICE, 1, 4001), enter(call, BOB, 2, 4002)
    call.datagrams_to_send()
    floor(call, alice, Subtype.REQUEST, 10.0)
    call.datagrams_to_send()
    assert call.next_deadline() == 15.0
    call.tick(14.9)
    assert call.datagrams_to_send() == []
    call.tick(15.0)
    assert received(call, alice, bob) == {ALICE: [Subtype.REVOKE], BOB: []}
    assert call.next_deadline() == 17.0  # the revoke grace (T3)
    call.tick(17.0)
    assert received(call, alice, bob) == {ALICE: [Subtype.IDLE], BOB: [Subtype.IDLE]}
    assert call.next_deadline() is None


def test_forged_and_foreign_floor_messages_are_dropped_and_reported() -> None:
    call = make_call(ALICE, BOB)
    alice, bob = enter(call, ALICE, 1, 4001), enter(call, BOB, 2, 4002)
    call.datagrams_to_send()
    forged = SrtcpChannel(CskKeys(os.urandom(16), bytes.fromhex("0a000009"), os.urandom(16)))
    data = forged.protect(bytes(FloorMessage(Subtype.REQUEST, bob.ssrc)))
    call.floor_packet(call.relay.handle_rtcp(data, bob.addr, 1.0).binding, data, bob.addr, 1.0)  # type: ignore[arg-type]
    # Bob's own key, but Alice's SSRC inside: not Bob's to send
    data = bob.channel.protect(bytes(FloorMessage(Subtype.REQUEST, alice.ssrc)))
    call.floor_packet(call.relay.handle_rtcp(data, bob.addr, 1.1).binding, data, bob.addr, 1.1)  # type: ignore[arg-type]
    assert call.datagrams_to_send() == []
    reasons = [d.reason for d in call.dropped()]
    assert len(reasons) == 2 and "SRTCP rejected" in reasons[0] and "foreign SSRC" in reasons[1]
    assert all(BOB in reason for reason in reasons)
    assert call.status(GROUP)["talker"] is None


def test_removing_the_talker_unbinds_it_frees_the_floor_and_tells_it() -> None:
    call = make_call(ALICE, BOB)
    alice, bob = enter(call, ALICE, 1, 4001), enter(call, BOB, 2, 4002)
    floor(call, alice, Subtype.REQUEST, 1.0)
    call.datagrams_to_send()
    call.pushes()
    call.set_group(info(BOB), 2.0)
    assert received(call, bob) == {BOB: [Subtype.IDLE]}
    pushes = call.pushes()
    assert (ALICE, {"type": "groups", "groups": []}) in pushes
    assert call.relay.members(GROUP)[0][0].member == BOB
    assert call.groups_of(ALICE) == [] and call.groups_of(BOB)[0]["uri"] == GROUP
    with pytest.raises(Refused):
        call.join(ALICE, GROUP, 1, os.urandom(8), 3.0)


def test_dead_member_leaves_the_floor_and_deleted_group_is_forgotten() -> None:
    call = make_call(ALICE, BOB)
    alice = enter(call, ALICE, 1, 4001)
    enter(call, BOB, 2, 4002)
    floor(call, alice, Subtype.REQUEST, 1.0)
    call.datagrams_to_send()
    call.pushes()
    dead = []
    for second in range(2, 18):  # the shell sweeps every second; nobody sends a keepalive
        dead += call.relay.sweep(float(second))
    assert {b.member for b in dead} == {ALICE, BOB}
    call.members_dead(dead, 17.0)
    assert ("idle", GROUP, None) in events(call)
    call.drop_group(GROUP, 18.0)
    assert call.groups_of(ALICE) == [] and call.members(GROUP) == []
    assert call.status(GROUP) == {"present": [], "joined": [], "talker": None, "queue": [], "alerts": []}


def test_dispatcher_pre_empts_with_its_role_and_priority_from_the_store() -> None:
    call = make_call(ALICE, DISPATCH)
    alice, dispatch = enter(call, ALICE, 1, 4001), enter(call, DISPATCH, 2, 4002)
    call.datagrams_to_send()
    floor(call, alice, Subtype.REQUEST, 1.0)
    call.datagrams_to_send()
    floor(call, dispatch, Subtype.REQUEST, 2.0)
    got = received(call, alice, dispatch)
    assert Subtype.REVOKE in got[ALICE] and got[DISPATCH] == [Subtype.GRANTED]
    assert call.status(GROUP)["talker"] == DISPATCH


def test_fresh_imessages_go_to_their_members_with_the_group_list() -> None:
    call = make_call(ALICE, BOB)
    call.imessages(GROUP, bytes.fromhex("01020304"), {ALICE: b"a", BOB: b"b"})
    pushes = call.pushes()
    kinds = [(member, message["type"]) for member, message in pushes]
    assert kinds == [(ALICE, "imessage"), (ALICE, "groups"), (BOB, "imessage"), (BOB, "groups")]
    assert pushes[0][1]["gmk_id"] == "01020304"
    call.imessages(GROUP, bytes(4), {ALICE: b"a", BOB: b"b"}, online=lambda uri: uri == BOB)
    assert [member for member, _ in call.pushes()] == [BOB, BOB]
