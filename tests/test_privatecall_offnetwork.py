"""Off-network private calls without I/O: two engines exchange signed CALL datagrams directly (no server), the PCK
goes caller → callee in its I_MESSAGE; retransmission, manual commencement, rejection, forgery and strangers."""

from __future__ import annotations

import os
from typing import Any

import pytest

from ptt.adhoc.bodies import CallSignal
from ptt.adhoc.fields import MalformedAdhocMessage
from ptt.adhoc.messages import Envelope, seal
from ptt.privatecall.machine import CallState
from ptt.privatecall.offnetwork import OffNetworkCalls
from tests.identities import keys_for, make_world

NOW = 1_760_000_000.0
ALICE, BOB, MALLORY = "sip:alice@example.org", "sip:bob@example.org", "sip:mallory@example.org"
ADDR = {ALICE: ("10.0.0.1", 5000), BOB: ("10.0.0.2", 5000), MALLORY: ("10.0.0.3", 5000)}


@pytest.fixture(scope="module")
def world() -> Any:
    return make_world()


def engine(world: Any, uri: str, port: int) -> OffNetworkCalls:
    keys = keys_for(world, uri, NOW)
    domain = world[0]
    return OffNetworkCalls(uri, lambda now: keys, lambda: [keys], {domain.kms_uri: domain}, media_port=port)


def deliver(sender: OffNetworkCalls, engines: dict[str, OffNetworkCalls], now: float, *, drop: int = 0) -> int:
    """Hand ``sender``'s datagrams to the engine at each address; drop the first ``drop``. Returns how many went."""
    by_addr = {ADDR[uri]: e for uri, e in engines.items()}
    sent = 0
    for data, addr in sender.datagrams():
        if drop:
            drop -= 1
            continue
        by_addr[addr].datagram(data, ADDR[sender.uri], now)
        sent += 1
    return sent


def kinds(e: OffNetworkCalls) -> list[str]:
    return [event.kind for event in e.events()]


def test_automatic_call_connects_both_with_the_same_pck(world: Any) -> None:
    alice, bob = engine(world, ALICE, 7000), engine(world, BOB, 7001)
    engines = {ALICE: alice, BOB: bob}
    call = alice.call(BOB, ADDR[BOB], NOW)
    assert deliver(alice, engines, NOW) == 1
    assert kinds(bob) == ["incoming", "connected"]
    (bob_media,) = bob.connected()
    deliver(bob, engines, NOW)  # ACCEPT
    assert kinds(alice) == ["connected"]
    (alice_media,) = alice.connected()
    assert alice_media.key.pck == bob_media.key.pck and alice_media.key.pck_id == bob_media.key.pck_id
    assert (alice_media.caller, bob_media.caller) == (True, False)
    assert alice_media.peer_media == (ADDR[BOB][0], 7001) and bob_media.peer_media == (ADDR[ALICE][0], 7000)
    assert alice.state(call) is bob.state(call) is CallState.CONNECTED
    alice.hang_up(NOW + 5)
    assert kinds(alice) == ["ended"]
    deliver(alice, engines, NOW + 5)  # END, twice: the second is a replay of nothing new
    assert [(e.kind, e.reason) for e in bob.events()] == [("ended", "ended")]
    assert alice.current() is None and bob.current() is None


def test_a_lost_setup_is_sent_again_and_a_lost_accept_answered_again(world: Any) -> None:
    alice, bob = engine(world, ALICE, 7000), engine(world, BOB, 7001)
    engines = {ALICE: alice, BOB: bob}
    alice.call(BOB, ADDR[BOB], NOW)
    deliver(alice, engines, NOW, drop=1)
    assert alice.next_deadline() == NOW + 0.5
    alice.tick(NOW + 0.5)
    assert deliver(alice, engines, NOW + 0.5) == 1
    assert "connected" in kinds(bob)
    bob.datagrams()  # the ACCEPT is lost
    alice.tick(NOW + 1.5)
    deliver(alice, engines, NOW + 1.5)  # the third SETUP copy: Bob answers it again
    deliver(bob, engines, NOW + 1.5)
    assert kinds(alice) == ["connected"]
    alice.tick(NOW + 10)
    assert alice.datagrams() == []  # answered: no more copies


def test_manual_commencement_rejected_tells_the_caller(world: Any) -> None:
    alice, bob = engine(world, ALICE, 7000), engine(world, BOB, 7001)
    engines = {ALICE: alice, BOB: bob}
    alice.call(BOB, ADDR[BOB], NOW, manual=True)
    deliver(alice, engines, NOW)
    assert kinds(bob) == ["incoming"] and bob.current(CallState.RINGING) is not None
    deliver(bob, engines, NOW)  # RINGING
    assert kinds(alice) == ["ringing"]
    assert bob.reject(NOW + 2)
    deliver(bob, engines, NOW + 2)
    assert [(e.kind, e.reason) for e in alice.events()] == [("ended", "rejected")]
    assert alice.connected() == [] and bob.connected() == []


def test_manual_commencement_accepted(world: Any) -> None:
    alice, bob = engine(world, ALICE, 7000), engine(world, BOB, 7001)
    engines = {ALICE: alice, BOB: bob}
    alice.call(BOB, ADDR[BOB], NOW, manual=True)
    deliver(alice, engines, NOW)
    deliver(bob, engines, NOW)
    assert bob.accept(NOW + 1)
    deliver(bob, engines, NOW + 1)
    assert "connected" in kinds(alice) and len(bob.connected()) == 1 and len(alice.connected()) == 1


def test_strangers_and_forgeries_change_nothing(world: Any) -> None:
    alice, bob, mallory = engine(world, ALICE, 7000), engine(world, BOB, 7001), engine(world, MALLORY, 7002)
    engines = {ALICE: alice, BOB: bob, MALLORY: mallory}
    call = alice.call(BOB, ADDR[BOB], NOW)
    deliver(alice, engines, NOW)
    deliver(bob, engines, NOW)
    bob.events()
    alice.events()
    call_id = bytes.fromhex(call[5:])
    # Mallory ends Alice and Bob's call: signed by Mallory, not the peer: refused
    bob.datagram(seal(keys_for(world, MALLORY, NOW), CallSignal(call_id, 5, 0, BOB), NOW), ADDR[MALLORY], NOW)
    assert bob.state(call) is CallState.CONNECTED and bob.refused()
    # a datagram claiming to be Alice's, signed by Mallory: the signature does not verify
    forged = Envelope.parse(seal(keys_for(world, MALLORY, NOW), CallSignal(call_id, 5, 0, BOB), NOW))
    octets = Envelope(ALICE, forged.sender_kms, forged.time_ms, forged.body, forged.signature)
    bob.datagram(bytes(octets), ADDR[ALICE], NOW)
    assert bob.state(call) is CallState.CONNECTED
    # a SETUP for Bob handed to Mallory: not addressed to her, refused
    alice2 = engine(world, ALICE, 7000)
    alice2.call(BOB, ADDR[BOB], NOW + 1)
    ((setup, _),) = alice2.datagrams()
    mallory.datagram(setup, ADDR[ALICE], NOW + 1)  # not addressed to Mallory
    assert mallory.refused() and mallory.current() is None
    bob.datagram(b"PTTA garbage", ADDR[MALLORY], NOW)
    assert any("refused" in r for r in bob.refused())


def test_a_setup_whose_i_message_is_not_the_senders_is_refused(world: Any) -> None:
    alice, bob = engine(world, ALICE, 7000), engine(world, BOB, 7001)
    alice.call(BOB, ADDR[BOB], NOW)
    ((setup, _),) = alice.datagrams()
    body = Envelope.parse(setup).body
    assert isinstance(body, CallSignal)
    # Mallory wraps Alice's I_MESSAGE in a SETUP of its own
    wrapped = seal(keys_for(world, MALLORY, NOW), body, NOW)
    bob.datagram(wrapped, ADDR[MALLORY], NOW)
    assert bob.current() is None and any("PCK" in r for r in bob.refused())
    ((reject, addr),) = bob.datagrams()
    answer = Envelope.parse(reject).body
    assert isinstance(answer, CallSignal) and answer.step == 4 and addr == ADDR[MALLORY]


def test_busy_and_timeouts(world: Any) -> None:
    alice, bob, mallory = engine(world, ALICE, 7000), engine(world, BOB, 7001), engine(world, MALLORY, 7002)
    engines = {ALICE: alice, BOB: bob, MALLORY: mallory}
    alice.call(BOB, ADDR[BOB], NOW)
    deliver(alice, engines, NOW)
    mallory.call(BOB, ADDR[BOB], NOW)
    deliver(mallory, engines, NOW)
    deliver(bob, engines, NOW)
    assert [(e.kind, e.reason) for e in mallory.events()] == [("ended", "busy")]
    lonely = engine(world, ALICE, 7000)
    lonely.call(MALLORY, ADDR[MALLORY], NOW)
    lonely.tick(NOW + 40)
    assert [(e.kind, e.reason) for e in lonely.events()] == [("ended", "timeout")]


def test_call_signal_body_is_strict() -> None:
    good = CallSignal(os.urandom(8), 1, 0, BOB, 7000, b"\x01" * 10)
    assert CallSignal.parse(bytes(good)) == good
    for bad in (
        lambda: CallSignal(os.urandom(7), 2, 0, BOB),
        lambda: CallSignal(os.urandom(8), 9, 0, BOB),
        lambda: CallSignal(os.urandom(8), 2, 0, BOB, 0, b"x"),
        lambda: CallSignal(os.urandom(8), 1, 0, BOB),
        lambda: CallSignal.parse(bytes(good) + b"\x00"),
        lambda: CallSignal.parse(bytes(good)[:-3]),
    ):
        with pytest.raises(MalformedAdhocMessage):
            bad()
