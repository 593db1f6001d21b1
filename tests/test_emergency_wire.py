"""The wire: tshark 4.0's RTCP dissector decodes the arbiter's emergency, imminent peril and broadcast floor messages
(Floor Granted, Floor Taken, Floor Idle, Floor Revoke, Floor Deny) with their Floor Indicator bits (issue 16).

The messages are the ones ``ptt.floor.arbiter`` produces for a real sequence (what the group server protects with
SRTCP and sends); each goes into a pcap as one RTCP APP packet (text2pcap) and is read back with tshark."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ptt.floor.arbiter import ArbiterConfig, FloorArbiter, Participant
from ptt.floor.fields import FloorIndicator
from ptt.floor.messages import FloorMessage, Subtype
from tests.test_floor_messages import _hexdump, _tshark

GROUP = "sip:fire@example.org"
ALICE = Participant(0x1001, "sip:alice@example.org")
BOB = Participant(0x1002, "sip:bob@example.org")
CAROL = Participant(0x1003, "sip:carol@example.org", broadcast=True)
E, IP, BC = (int(f) for f in (FloorIndicator.EMERGENCY, FloorIndicator.IMMINENT_PERIL, FloorIndicator.BROADCAST))
NORMAL = int(FloorIndicator.NORMAL)


def arbiter_messages() -> list[FloorMessage]:
    """Carol broadcasts; Alice is denied; Bob's emergency pre-empts Carol; Bob releases; Alice in imminent peril."""
    floor = FloorArbiter(GROUP, ArbiterConfig(verified_call_types=True))
    for p in (ALICE, BOB, CAROL):
        floor.join(p, 0.0)

    def req(who: Participant, now: float, indicator: int | None = None) -> list[FloorMessage]:
        sends = floor.receive(who.ssrc, FloorMessage(Subtype.REQUEST, who.ssrc, floor_indicator=indicator), now)
        return [s.message for s in sends]

    out = req(CAROL, 1.0, BC)  # Granted, Taken (broadcast)
    out += req(ALICE, 1.5)  # Deny: broadcast in progress
    floor.set_alerts({BOB.uri: 2})
    out += req(BOB, 2.0, E)  # Revoke to Carol, Granted, Taken (emergency)
    out += [s.message for s in floor.receive(BOB.ssrc, FloorMessage(Subtype.RELEASE, BOB.ssrc), 3.0)]  # Idle
    floor.set_alerts({ALICE.uri: 1})
    out += req(ALICE, 4.0, IP)  # Granted, Taken (imminent peril)
    return out


def test_tshark_decodes_the_emergency_and_broadcast_indicators(tmp_path: Path) -> None:
    text2pcap = shutil.which("text2pcap")
    if shutil.which("tshark") is None or text2pcap is None:
        pytest.skip("tshark/text2pcap not installed (scripts/setup installs them)")
    messages = arbiter_messages()
    subtypes = [m.subtype for m in messages]
    assert subtypes == [
        Subtype.GRANTED,
        Subtype.TAKEN,
        Subtype.DENY,
        Subtype.REVOKE,
        Subtype.GRANTED,
        Subtype.TAKEN,
        Subtype.IDLE,
        Subtype.GRANTED,
        Subtype.TAKEN,
    ]
    (tmp_path / "in.txt").write_text(_hexdump([bytes(m) for m in messages]))
    pcap = tmp_path / "emergency.pcap"
    command = [text2pcap, "-q", "-u", "5000,5001", str(tmp_path / "in.txt"), str(pcap)]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    out = _tshark(
        pcap,
        "-T",
        "fields",
        "-E",
        "separator=\t",
        "-e",
        "rtcp.app.subtype",
        "-e",
        "rtcp.app_data.mcptt.floor_ind",
        "-e",
        "_ws.col.Info",
    )
    rows = [line.split("\t") for line in out.splitlines()]
    assert [int(r[0]) for r in rows] == [int(s) for s in subtypes]
    decoded = [int(r[1], 0) for r in rows]
    assert decoded == [m.floor_indicator for m in messages]
    assert decoded == [BC, BC, NORMAL, BC, E, E, E, IP, IP], [hex(d) for d in decoded]
    info = [r[-1] for r in rows]
    assert "Broadcast" in info[0] and "Broadcast" in info[1], info
    assert "Emergency" in info[4] and "Emergency" in info[5], info
    assert "Emergency" in info[6] and "Idle" in info[6], info  # the group is still in emergency (Bob's alert)
    assert "Imminent" in info[7] and "Imminent" in info[8], info
    assert _tshark(pcap, "-Y", "_ws.malformed") == ""
