"""Private calls end to end with real processes on 127.0.0.1 (KMS, group server, headless clients; harness in
bench/harness.py): heard only by its two parties, a third member of their group receives nothing and cannot
open a captured packet or the PCK I_MESSAGE; manual commencement rejected → the caller is told; an offline
callee → unreachable."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bench.harness import GROUP, System, start_system, stop_system, wait_all
from client.keystore import Keystore
from ptt.mikey.errors import MikeyError
from ptt.mikey.imessage import ReplayCache
from ptt.privatecall.media import PrivateSrtpReceiver
from ptt.privatecall.pck import PckOffer, make_private_call_key, receive_pck_message
from ptt.srtp import SrtpError
from ptt.ts33180 import KeyPurpose, key_purpose

ALICE, BOB, CAROL = "sip:alice@example.org", "sip:bob@example.org", "sip:carol@example.org"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    running = start_system(tmp_path_factory.mktemp("calls"))
    yield running
    stop_system(running)


def keystore(system: System, user: str) -> Keystore:
    return Keystore.open(system.root / f"{user}.ks", (system.root / "ks.pw").read_bytes().rstrip(b"\n"))


def ended(report: dict[str, Any]) -> list[str]:
    return [e["reason"] for e in report["calls"] if e["kind"] == "ended"]


def test_a_private_call_is_heard_only_by_its_two_parties(system: System) -> None:
    carol = system.client("carol", f"join {GROUP}; wait 10")
    bob = system.client("bob", "wait-call 20; wait 2.5; talk 1; wait-ended 20")
    alice = system.client("alice", f"wait 1.5; call {BOB}; wait 0.3; talk 2; wait 2.5; hangup; wait 0.5")
    wait_all([alice, bob, carol])
    a, b, c = system.report("alice"), system.report("bob"), system.report("carol")
    assert [e["kind"] for e in a["calls"]] == ["connected", "ended"], a["calls"]
    assert [e["kind"] for e in b["calls"]] == ["incoming", "connected", "ended"], b["calls"]
    assert ended(b) == ["ended"]
    assert a["sent"] >= 90 and b["sent"] >= 45
    assert b["received"].get("alice", 0) >= 0.9 * a["sent"], b
    assert a["received"].get("bob", 0) >= 0.9 * b["sent"], a
    assert "alice" not in c["received"] and "bob" not in c["received"], c
    assert c["stats"]["media_bad"] == 0  # not even a packet it could not open reached Carol
    assert any(e["kind"] == "talking" and e.get("uri") == ALICE for e in a["events"])  # TS 24.380 floor in the call

    (capture,) = b["call_capture"].values()
    offer, packets = bytes.fromhex(capture["offer"]), [bytes.fromhex(p) for p in capture["packets"]]
    assert packets
    # the wire: the PCK I_MESSAGE has the TS 33.180 structure (purpose tag 1, IDRi/IDRr the two users' UIDs)
    parsed = PckOffer.parse(offer)
    assert key_purpose(parsed.pck_id) is KeyPurpose.PCK
    bob_keys, carol_keys = keystore(system, "bob"), keystore(system, "carol")
    assert bob_keys.enrolment is not None
    domain = bob_keys.enrolment.certificate.domain()
    parsed.check_parties(ALICE, BOB, domain)
    assert all(p[-4:] == parsed.pck_id for p in packets)  # SRTP MKI = PCK-ID
    trust = {domain.kms_uri: domain}
    # Carol (a member of both users' group) can open neither the I_MESSAGE nor a captured packet
    with pytest.raises(MikeyError):
        receive_pck_message(
            offer,
            callee=carol_keys.held_keys(CAROL),
            caller_uri=ALICE,
            trusted_kms=trust,
            now=parsed.timestamp + 1,
            replay_cache=ReplayCache(),
        )
    for guess in (PrivateSrtpReceiver(make_private_call_key(), caller=False),):
        for packet in packets:
            with pytest.raises(SrtpError):
                guess.unprotect(packet)
    # ... while Bob's keys open both: the capture is the call's real media
    got = receive_pck_message(
        offer,
        callee=bob_keys.held_keys(BOB),
        caller_uri=ALICE,
        trusted_kms=trust,
        now=parsed.timestamp + 1,
        replay_cache=ReplayCache(),
    )
    opened = PrivateSrtpReceiver(got.key, caller=False).unprotect(packets[0])[0]
    assert opened[12:15] == b"SYN"


def test_manual_commencement_rejected_tells_the_caller(system: System) -> None:
    bob = system.client("bob", "wait-call 20; wait 0.5; reject; wait 1")
    alice = system.client("alice", f"wait 1.5; call {BOB} manual; wait 0.5")
    wait_all([alice, bob])
    a, b = system.report("alice"), system.report("bob")
    assert [e["kind"] for e in a["calls"]] == ["ringing", "ended"], a["calls"]
    assert ended(a) == ["rejected"]
    assert [e["kind"] for e in b["calls"]] == ["incoming", "ended"] and ended(b) == ["rejected"]
    assert a["sent"] == 0 and "alice" not in b["received"]


def test_manual_commencement_accepted(system: System) -> None:
    bob = system.client("bob", "wait-call 20; wait 0.3; answer; wait-ended 20")
    alice = system.client("alice", f"wait 1.5; call {BOB} manual; talk 1; wait 1; hangup; wait 0.5")
    wait_all([alice, bob])
    a, b = system.report("alice"), system.report("bob")
    assert [e["kind"] for e in a["calls"]] == ["ringing", "connected", "ended"], a["calls"]
    assert b["received"].get("alice", 0) >= 0.9 * a["sent"] > 0


def test_an_offline_callee_is_unreachable(system: System) -> None:
    alice = system.client("alice", f"call {CAROL}; wait 0.2")
    wait_all([alice])
    assert ended(system.report("alice")) == ["unreachable"]


def offnet_client(system: System, user: str, port: int, peers: dict[str, int], script: str) -> Any:
    import subprocess
    import sys

    from bench.harness import ROOT, clean_env

    peer_args = [f"--peer=sip:{u}@example.org=127.0.0.1:{p}" for u, p in peers.items()]
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "client.headless",
            "--offnetwork",
            "--keystore",
            str(system.root / f"{user}.ks"),
            "--passphrase-file",
            str(system.root / "ks.pw"),
            "--uri",
            f"sip:{user}@example.org",
            "--signal-port",
            str(port),
            *peer_args,
            "--script",
            script,
            "--report",
            str(system.root / f"{user}-offnet.json"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=clean_env(),
    )


def test_off_network_private_call_with_the_server_stopped(system: System) -> None:
    """Last in the module: it stops the server and the KMS."""
    import json

    from bench.harness import free_ports

    system.server.stop()
    system.kms.stop()
    alice_port, bob_port = free_ports(2)
    bob = offnet_client(system, "bob", bob_port, {"alice": alice_port}, "wait-call 30; wait 2.5; send 1; wait-ended 20")
    alice = offnet_client(
        system, "alice", alice_port, {"bob": bob_port}, f"wait 1; call {BOB}; send 2; wait 2; hangup; wait 0.3"
    )
    wait_all([alice, bob])
    a = json.loads((system.root / "alice-offnet.json").read_text())
    b = json.loads((system.root / "bob-offnet.json").read_text())
    assert [e["kind"] for e in a["calls"]] == ["connected", "ended"], a
    assert [e["kind"] for e in b["calls"]] == ["incoming", "connected", "ended"], b
    assert ended(b) == ["ended"]
    assert a["sent"] >= 90 and b["sent"] >= 45
    assert b["received"].get("alice", 0) >= 0.9 * a["sent"], b
    assert a["received"].get("bob", 0) >= 0.9 * b["sent"], a
    assert a["stats"]["media_bad"] == b["stats"]["media_bad"] == 0


def test_off_network_manual_call_rejected(system: System) -> None:
    import json

    from bench.harness import free_ports

    system.server.stop()
    system.kms.stop()
    alice_port, bob_port = free_ports(2)
    bob = offnet_client(system, "bob", bob_port, {"alice": alice_port}, "wait-call 30; wait 0.3; reject; wait 1")
    alice = offnet_client(system, "alice", alice_port, {"bob": bob_port}, f"wait 1; call {BOB} manual; wait 0.5")
    wait_all([alice, bob])
    a = json.loads((system.root / "alice-offnet.json").read_text())
    assert [(e["kind"], e["reason"]) for e in a["calls"]] == [("ringing", ""), ("ended", "rejected")], a
