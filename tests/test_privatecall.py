"""Private calls without I/O: the control messages, the caller's and callee's state machine, the server's router
(forwarding, the two-party relay binding with floor control, timeouts, refusals)."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest

from ptt.control import ControlProtocolError, check_message
from ptt.floor.messages import FloorMessage, Subtype
from ptt.groupcall import GroupCall
from ptt.groupinfo import GroupInfo, MemberInfo, Refused, RelayAddress
from ptt.privatecall.machine import CallState, CallTimers, PrivateCall
from ptt.privatecall.messages import (
    CallAccept,
    CallConnected,
    CallEnd,
    CallEnded,
    CallMessageError,
    CallOffer,
    CallReject,
    CallRinging,
    CallSetup,
    new_call_id,
    parse_call_message,
)
from ptt.privatecall.pck import build_pck_message, make_private_call_key
from ptt.privatecall.router import ANSWER_TIMEOUT, PrivateCallRouter
from ptt.relaycore import JoinSigner, RelayCore
from ptt.srtcp import CskKeys, SrtcpChannel
from tests.identities import keys_for, make_world

NOW = 1_760_000_000.0
ALICE, BOB, CAROL = "sip:alice@example.org", "sip:bob@example.org", "sip:carol@example.org"
RELAY = RelayAddress("192.0.2.1", 8446)
IMESSAGE = b"\x01\x1a" + os.urandom(50)


# --- messages --------------------------------------------------------------------------------------------------


def test_messages_round_trip_through_the_control_schema() -> None:
    call = new_call_id()
    for message in (
        CallSetup(call, BOB, "manual", IMESSAGE),
        CallOffer(call, ALICE, "automatic", IMESSAGE),
        CallRinging(call),
        CallAccept(call),
        CallReject(call, "rejected"),
        CallConnected(call, BOB, {"host": "127.0.0.1", "port": 8446}),
        CallEnd(call, "ended"),
        CallEnded(call, "unreachable"),
    ):
        wire = message.to_json()
        check_message(wire)  # ptt.control knows every call type
        assert parse_call_message(wire) == message


@pytest.mark.parametrize(
    "wire",
    [
        {"type": "call_setup", "call": "call:xyz", "to": BOB, "commencement": "manual", "imessage": "AA=="},
        {"type": "call_setup", "call": new_call_id(), "to": "bob", "commencement": "manual", "imessage": "AA=="},
        {"type": "call_setup", "call": new_call_id(), "to": BOB, "commencement": "later", "imessage": "AA=="},
        {"type": "call_setup", "call": new_call_id(), "to": BOB, "commencement": "manual", "imessage": "!!"},
        {"type": "call_setup", "call": new_call_id(), "to": BOB, "commencement": "manual", "imessage": ""},
        {"type": "call_setup", "call": new_call_id(), "to": BOB, "commencement": "manual", "imessage": "A" * 9000},
        {"type": "call_end", "call": new_call_id(), "reason": "because"},
        {"type": "call_connected", "call": new_call_id(), "peer": BOB, "relay": {"host": "h", "port": 0}},
        {"type": "call_connected", "call": new_call_id(), "peer": BOB, "relay": {"host": 1, "port": 5}},
        {"type": "call_teleport", "call": new_call_id()},
        {"type": "call_accept", "call": 5},
    ],
)
def test_bad_messages_are_precise_refusals(wire: dict[str, Any]) -> None:
    with pytest.raises(CallMessageError):
        parse_call_message(wire)


def test_the_control_schema_checks_call_fields() -> None:
    with pytest.raises(ControlProtocolError):
        check_message({"type": "call_setup", "call": new_call_id()})


def state_of(call: PrivateCall) -> CallState:
    return call.state


# --- the client's machine --------------------------------------------------------------------------------------


def test_automatic_commencement() -> None:
    call = new_call_id()
    caller = PrivateCall.outgoing_call(call, BOB, IMESSAGE, 0.0)
    (setup,) = caller.outgoing()
    assert setup == CallSetup(call, BOB, "automatic", IMESSAGE)
    callee = PrivateCall.incoming_call(CallOffer(call, ALICE, "automatic", IMESSAGE), 0.1)
    assert callee.state is CallState.OFFERED and callee.outgoing() == []
    callee.key_accepted(0.2)
    assert callee.outgoing() == [CallAccept(call)]
    assert [e.kind for e in callee.events()] == ["incoming"]
    connected = CallConnected(call, ALICE, {"host": "h", "port": 1})
    callee.receive(connected, 0.3)
    caller.receive(CallConnected(call, BOB, {"host": "h", "port": 1}), 0.3)
    assert state_of(caller) is state_of(callee) is CallState.CONNECTED
    assert [e.kind for e in caller.events()] == ["connected"]
    assert callee.relay == {"host": "h", "port": 1}


def test_connected_from_someone_else_is_ignored() -> None:
    call = new_call_id()
    caller = PrivateCall.outgoing_call(call, BOB, IMESSAGE, 0.0)
    caller.receive(CallConnected(call, CAROL, {"host": "h", "port": 1}), 0.1)
    caller.receive(CallConnected(new_call_id(), BOB, {"host": "h", "port": 1}), 0.1)
    assert caller.state is CallState.CALLING


def test_manual_commencement_accepted() -> None:
    call = new_call_id()
    caller = PrivateCall.outgoing_call(call, BOB, IMESSAGE, 0.0, manual=True)
    assert caller.outgoing()[0] == CallSetup(call, BOB, "manual", IMESSAGE)
    callee = PrivateCall.incoming_call(CallOffer(call, ALICE, "manual", IMESSAGE), 0.0)
    callee.key_accepted(0.1)
    assert callee.state is CallState.RINGING and callee.outgoing() == [CallRinging(call)]
    caller.receive(CallRinging(call), 0.2)
    assert caller.state is CallState.RINGING and [e.kind for e in caller.events()] == ["ringing"]
    assert not caller.accept(1.0)  # only the callee answers
    assert callee.accept(5.0) and callee.outgoing() == [CallAccept(call)]
    assert state_of(callee) is CallState.ACCEPTED


def test_manual_commencement_rejected_tells_the_caller() -> None:
    call = new_call_id()
    caller = PrivateCall.outgoing_call(call, BOB, IMESSAGE, 0.0, manual=True)
    callee = PrivateCall.incoming_call(CallOffer(call, ALICE, "manual", IMESSAGE), 0.0)
    callee.key_accepted(0.1)
    callee.outgoing()
    assert callee.reject(2.0)
    assert callee.outgoing() == [CallReject(call, "rejected")]
    caller.receive(CallEnded(call, "rejected"), 2.1)
    assert caller.ended and caller.reason == "rejected"
    assert caller.events()[-1].kind == "ended" and caller.events() == []


def test_ringing_timeout_rejects_and_the_caller_backstop() -> None:
    timers = CallTimers(ringing=30, answer=40)
    call = new_call_id()
    callee = PrivateCall.incoming_call(CallOffer(call, ALICE, "manual", IMESSAGE), 0.0, timers=timers)
    callee.key_accepted(0.0)
    callee.outgoing()
    assert callee.next_deadline() == 30.0
    callee.tick(29.9)
    assert callee.state is CallState.RINGING
    callee.tick(30.0)
    assert callee.outgoing() == [CallReject(call, "timeout")] and callee.reason == "timeout"
    caller = PrivateCall.outgoing_call(call, BOB, IMESSAGE, 0.0, timers=timers)
    caller.outgoing()
    caller.tick(40.0)
    assert caller.outgoing() == [CallEnd(call, "cancelled")] and caller.reason == "timeout"


def test_a_refused_key_rejects_without_alerting() -> None:
    call = new_call_id()
    callee = PrivateCall.incoming_call(CallOffer(call, ALICE, "automatic", IMESSAGE), 0.0)
    callee.key_refused(0.1)
    assert callee.outgoing() == [CallReject(call, "refused")] and callee.events() == [] and callee.ended


@pytest.mark.parametrize("reason", ["unreachable", "busy", "timeout", "refused", "rejected"])
def test_the_caller_is_told(reason: str) -> None:
    call = new_call_id()
    caller = PrivateCall.outgoing_call(call, BOB, IMESSAGE, 0.0)
    caller.receive(CallEnded(call, reason), 0.5)
    assert caller.ended and caller.events()[-1].reason == reason


def test_end_from_either_side_and_inactivity() -> None:
    call = new_call_id()
    timers = CallTimers(inactivity=10)
    caller = PrivateCall.outgoing_call(call, BOB, IMESSAGE, 0.0, timers=timers)
    caller.receive(CallConnected(call, BOB, {"host": "h", "port": 1}), 1.0)
    caller.outgoing()
    assert caller.next_deadline() == 11.0
    caller.media_activity(5.0)
    caller.tick(11.0)
    assert caller.state is CallState.CONNECTED and caller.next_deadline() == 15.0
    caller.tick(15.0)
    assert caller.outgoing() == [CallEnd(call, "inactivity")] and caller.reason == "inactivity"
    other = PrivateCall.outgoing_call(call, BOB, IMESSAGE, 0.0)
    other.receive(CallConnected(call, BOB, {"host": "h", "port": 1}), 1.0)
    other.outgoing()
    assert other.hang_up(2.0) and other.outgoing() == [CallEnd(call, "ended")]
    assert not other.hang_up(3.0)
    callee = PrivateCall.incoming_call(CallOffer(call, ALICE, "automatic", IMESSAGE), 0.0)
    callee.key_accepted(0.0)
    callee.receive(CallConnected(call, ALICE, {"host": "h", "port": 1}), 0.1)
    callee.receive(CallEnded(call, "ended"), 3.0)
    assert callee.ended and callee.reason == "ended" and callee.next_deadline() is None


def test_a_caller_hanging_up_before_the_answer_cancels() -> None:
    call = new_call_id()
    caller = PrivateCall.outgoing_call(call, BOB, IMESSAGE, 0.0)
    caller.outgoing()
    caller.hang_up(1.0)
    assert caller.outgoing() == [CallEnd(call, "cancelled")]


# --- the server's router ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    w = make_world()
    return {"domain": w[0], "keys": {u: keys_for(w, u, NOW) for u in (ALICE, BOB, CAROL)}}


def router(world: dict[str, Any], online: tuple[str, ...] = (ALICE, BOB, CAROL)) -> PrivateCallRouter:
    groupcall = GroupCall(RelayCore(), RELAY)
    group = GroupInfo("sip:fire@groups.example.org", "fire", 30.0, {u: MemberInfo(u) for u in (ALICE, BOB, CAROL)})
    groupcall.load([group])
    return PrivateCallRouter(groupcall, world["domain"], lambda uri: uri in online)


def setup_wire(world: dict[str, Any], caller: str = ALICE, callee: str = BOB, *, call: str | None = None) -> Any:
    data = build_pck_message(world["keys"][caller], callee, make_private_call_key(), now=NOW)
    return CallSetup(call or new_call_id(), callee, "manual", data).to_json()


def test_router_forwards_and_connects_a_two_party_call(world: dict[str, Any]) -> None:
    r = router(world)
    wire = setup_wire(world)
    call = wire["call"]
    r.handle(ALICE, wire, NOW)
    ((to, offer),) = r.pushes()
    assert to == BOB and offer["type"] == "call_offer" and offer["caller"] == ALICE
    assert base64.b64decode(offer["imessage"]) == base64.b64decode(wire["imessage"])  # forwarded as it came
    r.handle(BOB, CallRinging(call).to_json(), NOW + 1)
    assert r.pushes() == [(ALICE, CallRinging(call).to_json())]
    r.handle(BOB, CallRinging(call).to_json(), NOW + 1)
    assert r.pushes() == []  # forwarded once
    r.handle(BOB, CallAccept(call).to_json(), NOW + 2)
    pushed = dict(r.pushes())
    assert pushed[ALICE]["type"] == pushed[BOB]["type"] == "call_connected"
    assert pushed[ALICE]["peer"] == BOB and pushed[BOB]["peer"] == ALICE
    assert pushed[ALICE]["relay"] == {"host": RELAY.host, "port": RELAY.port}
    # the two-party call is a "group" of two in the GroupCall, never listed as a group
    groupcall = r.groupcall
    assert sorted(groupcall.members(call)) == [ALICE, BOB]
    assert [g["uri"] for g in groupcall.groups_of(ALICE)] == ["sip:fire@groups.example.org"]
    # both can join it; Carol cannot
    for uri in (ALICE, BOB, CAROL):
        groupcall.csk_keyed(uri, CskKeys(os.urandom(16), bytes.fromhex("2a") + os.urandom(3), os.urandom(16)))
    assert groupcall.join(ALICE, call, 11, os.urandom(8), NOW + 3)["type"] == "joined"
    with pytest.raises(Refused):
        groupcall.join(CAROL, call, 12, os.urandom(8), NOW + 3)
    r.handle(BOB, CallEnd(call, "ended").to_json(), NOW + 10)
    assert r.pushes() == [(ALICE, CallEnded(call, "ended").to_json())]
    assert groupcall.members(call) == [] and not r.is_call(call)
    assert all(m["type"] != "groups" for _, m in groupcall.pushes())  # the end is no group change


def test_floor_control_in_the_call(world: dict[str, Any]) -> None:
    r = router(world)
    wire = setup_wire(world)
    call = wire["call"]
    r.handle(ALICE, wire, NOW)
    r.handle(BOB, CallAccept(call).to_json(), NOW)
    groupcall, relay = r.groupcall, r.groupcall.relay
    channels = {}
    for uri, ssrc, port in ((ALICE, 21, 5000), (BOB, 22, 5001)):
        keys = CskKeys(os.urandom(16), bytes.fromhex("2a") + os.urandom(3), os.urandom(16))
        groupcall.csk_keyed(uri, keys)
        binding_id = os.urandom(8)
        groupcall.join(uri, call, ssrc, binding_id, NOW)
        result = relay.handle_rtcp(JoinSigner(ssrc, binding_id, keys.csk).packet(), ("10.0.0.1", port), NOW)
        assert result.binding is not None and groupcall.member_bound(result.binding, NOW)
        channels[uri] = (SrtcpChannel(keys), ssrc, ("10.0.0.1", port))
    groupcall.datagrams_to_send()
    channel, ssrc, addr = channels[ALICE]
    request = channel.protect(bytes(FloorMessage(Subtype.REQUEST, ssrc, user_id=ALICE)))
    result = relay.handle_rtcp(request, addr, NOW + 1)
    assert result.binding is not None
    groupcall.floor_packet(result.binding, result.data, addr, NOW + 1)
    events = [m for _, m in groupcall.pushes() if m["type"] == "event"]
    assert {"type": "event", "group": call, "kind": "talking", "uri": ALICE} in events


def test_router_offline_busy_and_bad_setups(world: dict[str, Any]) -> None:
    r = router(world, online=(ALICE, BOB))
    wire = setup_wire(world, callee=CAROL)
    r.handle(ALICE, wire, NOW)
    assert r.pushes() == [(ALICE, CallEnded(wire["call"], "unreachable").to_json())]
    first = setup_wire(world)
    r.handle(ALICE, first, NOW)
    r.pushes()
    second = setup_wire(world, caller=CAROL, callee=BOB)
    r.handle(CAROL, second, NOW)
    assert r.pushes() == [(CAROL, CallEnded(second["call"], "busy").to_json())]

    def refused_setup(uri: str, wire: dict[str, Any], words: str) -> None:
        r.handle(uri, wire, NOW)
        assert r.pushes() == [(uri, CallEnded(wire["call"], "refused").to_json())]  # the caller is told
        ((who, why),) = r.refused()
        assert who == uri and words in why, why

    refused_setup(CAROL, setup_wire(world, caller=ALICE, callee=BOB), "IDRi")  # Alice's I_MESSAGE sent by Carol
    refused_setup(CAROL, {**setup_wire(world, caller=CAROL, callee=BOB), "to": ALICE}, "IDRr")  # not to the callee
    refused_setup(ALICE, {**setup_wire(world), "imessage": base64.b64encode(os.urandom(200)).decode()}, "setup")
    refused_setup(ALICE, setup_wire(world, caller=ALICE, callee=ALICE), "oneself")

    def dropped(uri: str, wire: dict[str, Any], words: str) -> None:
        r.handle(uri, wire, NOW)
        assert r.pushes() == []  # no answer: the sender has no request waiting for one
        ((who, why),) = r.refused()
        assert who == uri and words in why, why

    dropped(CAROL, CallAccept(first["call"]).to_json(), "not a call of this user")
    dropped(ALICE, CallAccept(first["call"]).to_json(), "does not fit")  # only the callee accepts
    dropped(ALICE, {"type": "call_accept", "call": "nonsense"}, "bad call message")
    dropped(ALICE, first, "in use")
    assert r.is_call(first["call"])  # none of it touched the call


def test_router_stale_setup_is_refused(world: dict[str, Any]) -> None:
    r = router(world)
    wire = setup_wire(world)
    r.handle(ALICE, wire, NOW + 3600)
    assert r.pushes() == [(ALICE, CallEnded(wire["call"], "refused").to_json())]
    assert "time" in r.refused()[0][1]


def test_router_setup_rate_limit(world: dict[str, Any]) -> None:
    r = router(world, online=())
    for _ in range(8):
        r.handle(ALICE, setup_wire(world), NOW)
    reasons = [m["reason"] for _, m in r.pushes()]
    assert reasons == ["unreachable"] * 5 + ["refused"] * 3
    assert [why for _, why in r.refused()] == ["too many call setups"] * 3


def test_router_reject_timeout_and_lost_peer(world: dict[str, Any]) -> None:
    r = router(world)
    wire = setup_wire(world)
    r.handle(ALICE, wire, NOW)
    r.handle(BOB, CallReject(wire["call"], "rejected").to_json(), NOW + 1)
    assert r.pushes()[-1] == (ALICE, CallEnded(wire["call"], "rejected").to_json())
    r.handle(BOB, CallReject(wire["call"], "rejected").to_json(), NOW + 2)  # crossed: ignored
    wire = setup_wire(world)
    r.handle(ALICE, wire, NOW)
    r.pushes()
    assert r.next_deadline() == NOW + ANSWER_TIMEOUT
    r.tick(NOW + ANSWER_TIMEOUT)
    timeout = CallEnded(wire["call"], "timeout").to_json()
    assert sorted(r.pushes(), key=lambda p: p[0]) == [(ALICE, timeout), (BOB, timeout)]
    wire = setup_wire(world)
    r.handle(ALICE, wire, NOW)
    r.handle(BOB, CallAccept(wire["call"]).to_json(), NOW)
    r.pushes()
    r.disconnected(ALICE, NOW + 5)
    assert r.pushes() == [(BOB, CallEnded(wire["call"], "peer-lost").to_json())]
    assert r.calls() == []
