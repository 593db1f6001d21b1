"""Issue 12, relay binding hijack, against real processes: a KMS, the group server and three headless clients run in
a private network namespace; the test sniffs every ``PTTJ`` on the namespace's loopback (an AF_PACKET socket, as an
attacker on the path would) and, while alice talks, replays them from addresses of its own:

* phase 1: bob's and carol's sniffed packets, each from its own attacker address (before: the relay moved each
  member's binding to the attacker, who received the stream and the member heard nothing);
* phase 2: bob's and carol's sniffed packets from one address (before: the second unbound the first).

Every sniffed packet is replayed within 50 ms of being seen, and again every 50 ms. Both members must still hear
≥ 95 % of alice's packets and the attackers must receive nothing; the server logs the refusals.
"""

from __future__ import annotations

import re
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.harness import GROUP, start_system, stop_system, wait_all
from tests.netns import Lan, netns_available

pytestmark = pytest.mark.skipif(netns_available() is not None, reason=str(netns_available()))

ETH_P_IP = 0x0800
PACKET_OUTGOING = 4  # on lo every frame shows up twice: as sent and as received; keep the received copy
TALK = 12.0  # seconds: 600 packets at 50/s
REPLAY_EVERY = 0.05


class Sniffer:
    """Every UDP payload named ``PTTJ`` seen on the namespace's lo, by source port (a thread reads them)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
        self.sock.bind(("lo", 0))
        self.packets: dict[int, list[bytes]] = {}  # source port -> PTTJ payloads in order
        self.relay_port: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            if not select.select([self.sock], [], [], 0.1)[0]:
                continue
            frame, address = self.sock.recvfrom(65535)
            if address[2] == PACKET_OUTGOING or len(frame) < 20 or frame[9] != socket.IPPROTO_UDP:
                continue
            udp = frame[(frame[0] & 0x0F) * 4 :]
            payload = udp[8:]
            if len(payload) >= 12 and payload[1] == 204 and payload[8:12] == b"PTTJ":
                with self._lock:
                    self.relay_port = int.from_bytes(udp[2:4], "big")
                    self.packets.setdefault(int.from_bytes(udp[0:2], "big"), []).append(payload)

    def latest(self, port: int) -> bytes | None:
        with self._lock:
            seen = self.packets.get(port)
            return seen[-1] if seen else None

    def count(self, port: int) -> int:
        with self._lock:
            return len(self.packets.get(port, []))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def joined_ports(output: str) -> dict[str, int]:
    """Where the server bound each member, from its log ("sip:bob@example.org joined ... from 127.0.0.1:P")."""
    found = re.findall(r"sip:(\w+)@example\.org joined \S+ from 127\.0\.0\.1:(\d+)", output)
    return {user: int(port) for user, port in found}


def drain(sockets: dict[str, socket.socket], counts: dict[str, int]) -> None:
    for name, sock in sockets.items():
        while True:
            try:
                sock.recv(4096)
            except BlockingIOError:
                break
            counts[name] += 1


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_replayed_and_shared_binding_packets_hijack_nothing(tmp_path: Path) -> None:
    with Lan(["net"], prefix="pttj") as lan, lan.enter("net"):
        # Everything below runs in the namespace: the processes started from this thread, and the sockets made here.
        system = start_system(tmp_path / "system")
        sniffer = Sniffer()
        attackers = {name: socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for name in ("bob", "carol", "both")}
        for sock in attackers.values():
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
        try:
            listeners = [system.client(user, f"join {GROUP}; wait 24") for user in ("bob", "carol")]
            wait_for(lambda: {"bob", "carol"} <= set(joined_ports(system.server.output())), 30, "bob and carol")
            alice = system.client("alice", f"join {GROUP}; wait 2; talk {TALK}; wait 1")
            wait_for(lambda: "alice" in joined_ports(system.server.output()), 30, "alice")
            ports = joined_ports(system.server.output())
            assert sniffer.relay_port is not None  # the members' joins were seen
            relay = ("127.0.0.1", sniffer.relay_port)
            talk_starts = time.monotonic() + 2.0
            sent = {name: 0 for name in attackers}
            stolen = {name: 0 for name in attackers}  # datagrams the relay sent the attackers
            # phase 1, from the talk's start: each member's packets from an address of its own
            # phase 2, half-way through: both members' packets from one address
            while alice.poll() is None:
                phase2 = time.monotonic() > talk_starts + TALK / 2
                for user in ("bob", "carol"):
                    packet = sniffer.latest(ports[user])
                    if packet is not None:
                        attackers["both" if phase2 else user].sendto(packet, relay)
                        sent["both" if phase2 else user] += 1
                drain(attackers, stolen)
                time.sleep(REPLAY_EVERY)
            wait_all([alice, *listeners])
            time.sleep(0.2)
            drain(attackers, stolen)
            a, b, c = (system.report(user) for user in ("alice", "bob", "carol"))
            output = system.server.output()
        finally:
            for sock in attackers.values():
                sock.close()
            sniffer.close()
            stop_system(system)

    heard = {"bob": b["received"].get("alice", 0), "carol": c["received"].get("alice", 0)}
    refused = {user: output.count(f"for sip:{user}@example.org in {GROUP} refused") for user in ("bob", "carol")}
    print(
        f"alice sent {a['sent']}; heard {heard}; replays sent {sent}; attackers received {stolen}; "
        f"PTTJ sniffed bob {sniffer.count(ports['bob'])} carol {sniffer.count(ports['carol'])}; "
        f"refusals logged {refused}"
    )
    assert a["sent"] >= 0.95 * TALK / 0.02
    assert sniffer.count(ports["bob"]) >= 3 and sniffer.count(ports["carol"]) >= 3  # join + keepalives
    assert min(sent.values()) >= 50  # both phases really ran
    for user, count in heard.items():
        assert count >= 0.95 * a["sent"], (user, heard, a["sent"])
    assert stolen == {"bob": 0, "carol": 0, "both": 0}
    assert refused["bob"] >= 1 and refused["carol"] >= 1  # logged, rate-limited
    assert "refused: replayed" in output
