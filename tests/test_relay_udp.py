"""The relay's UDP shell on real sockets: a relay process with plain sockets as members, and the shell's parts
(sweep timer, callbacks, send errors, the batched port) driven in-process without running a reactor."""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import task, udp
from twisted.internet.testing import MemoryReactorClock

from ptt.relaycore import Address, Binding, JoinSigner, RelayConfig, RelayCore, binding_key, join_packet
from server.relay import MAX_DATAGRAM, BatchedPort, RelayProtocol, batched_available, listen_relay

ROOT = Path(__file__).resolve().parent.parent
MODES = ["portable", pytest.param("batched", marks=pytest.mark.skipif(not batched_available(), reason="Linux only"))]

# The relay process: members from stdin, "port N" when listening, one line per join and floor packet.
RELAY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from twisted.internet import reactor
    from ptt.relaycore import Binding, RelayCore
    from server.relay import listen_relay

    setup = json.loads(sys.stdin.readline())
    core = RelayCore()
    for group, member, ssrc, binding_id, key in setup["members"]:
        core.expect(bytes.fromhex(binding_id), Binding(group, member, ssrc), bytes.fromhex(key), reactor.seconds())
    for group, ssrc in setup["talkers"].items():
        core.set_talker(group, ssrc)

    def say(*words):
        print(*words, flush=True)

    _, port = listen_relay(
        reactor, core, 0, "127.0.0.1", batched=setup["batched"],
        on_floor=lambda binding, data, addr: say("floor", binding.member, len(data), addr[1]),
        on_dead=lambda bindings: say("dead", *[b.member for b in bindings]),
        on_joined=lambda binding, addr: say("joined", binding.member, addr[1]),
    )
    say("port", port.getHost().port)
    reactor.callLater(30, reactor.stop)  # never outlive the test
    reactor.run()
    say("stats", json.dumps(core.stats))
    """
)


def rtp(ssrc: int, seq: int, payload: bytes = b"\x00" * 100) -> bytes:
    return bytes((0x80, 0x60)) + seq.to_bytes(2, "big") + bytes(4) + ssrc.to_bytes(4, "big") + payload


def floor_packet(ssrc: int) -> bytes:
    return bytes((0x80, 204, 0, 4)) + ssrc.to_bytes(4, "big") + bytes(12) + bytes(20)  # + SRTCP trailer


class Relay:
    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self._buffer = b""

    def line(self, timeout: float = 5.0) -> str:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            assert remaining > 0 and select.select([fd], [], [], remaining)[0], "relay said nothing"
            chunk = os.read(fd, 4096)
            assert chunk, f"relay exited: {self.process.wait()}"
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()


class Member:
    def __init__(self, group: str, name: str, ssrc: int) -> None:
        self.binding = Binding(group, name, ssrc)
        self.token = os.urandom(8)  # binding ID
        csk = os.urandom(16)
        self.key = binding_key(csk, self.token)
        self.signer = JoinSigner(ssrc, self.token, csk)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0)
        self.port = self.sock.getsockname()[1]

    def received(self, count: int = 0, timeout: float = 3.0) -> list[bytes]:
        """What arrives: waits up to ``timeout`` for ``count`` datagrams, then 50 ms more for any extra."""
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if len(got) >= count:
                remaining = min(remaining, 0.05)
            if not select.select([self.sock], [], [], remaining)[0]:
                break
            got.append(self.sock.recv(4096))
        return got


@pytest.fixture(params=MODES)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Relay, dict[str, list[Member]]]]:
    groups = {g: [Member(g, f"{g}-{i}", 0x100 * (n + 1) + i) for i in range(3)] for n, g in enumerate("ab")}
    script = tmp_path / "relay.py"
    script.write_text(RELAY_SCRIPT)
    setup = {
        "members": [
            [m.binding.group, m.binding.member, m.binding.ssrc, m.token.hex(), m.key.hex()]
            for ms in groups.values()
            for m in ms
        ],
        "talkers": {g: ms[0].binding.ssrc for g, ms in groups.items()},
        "batched": request.param == "batched",
    }
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env=env
    )
    assert process.stdin is not None
    process.stdin.write(json.dumps(setup).encode() + b"\n")
    process.stdin.close()
    relay = Relay(process)
    try:
        yield relay, groups
    finally:
        process.terminate()
        process.wait(5)
        assert process.stdout is not None
        process.stdout.close()
        for members in groups.values():
            for member in members:
                member.sock.close()


def test_members_join_and_only_the_talkers_media_reaches_the_others(
    world: tuple[Relay, dict[str, list[Member]]],
) -> None:
    relay, groups = world
    port_line = relay.line(10.0)
    assert port_line.startswith("port ")
    relay_addr: Address = ("127.0.0.1", int(port_line.split()[1]))
    a, b = groups["a"], groups["b"]

    # a-2 never joins; everyone else binds its socket with its token
    for member in a[:2] + b:
        member.sock.sendto(member.signer.packet(), relay_addr)
    joined = {relay.line() for _ in range(5)}
    assert joined == {f"joined {m.binding.member} {m.port}" for m in a[:2] + b}
    # an unknown binding ID binds nothing
    a[2].sock.sendto(join_packet(a[2].binding.ssrc, os.urandom(8), 1, a[2].key), relay_addr)

    for seq in range(5):
        a[0].sock.sendto(rtp(a[0].binding.ssrc, seq), relay_addr)  # a's talker
        a[1].sock.sendto(rtp(a[1].binding.ssrc, seq), relay_addr)  # a member without the floor: dropped
        a[2].sock.sendto(rtp(a[0].binding.ssrc, seq), relay_addr)  # unbound, even with the talker's SSRC
        b[1].sock.sendto(rtp(b[0].binding.ssrc, seq), relay_addr)  # b-1 with b's talker SSRC: dropped
        b[0].sock.sendto(rtp(0xBAD, seq), relay_addr)  # b's talker with a foreign SSRC: dropped
    b[0].sock.sendto(rtp(b[0].binding.ssrc, 99, b"from b"), relay_addr)

    # b's packet was sent last: once it is through, the relay has dealt with everything before it
    assert b[1].received(1) == b[2].received(1) == [rtp(b[0].binding.ssrc, 99, b"from b")]  # not a's media
    assert a[1].received(5) == [rtp(a[0].binding.ssrc, seq) for seq in range(5)]
    assert a[0].received() == []  # not back to the talker
    assert a[2].received() == []  # not to the unbound member
    assert b[0].received() == []

    a[1].sock.sendto(floor_packet(a[1].binding.ssrc), relay_addr)
    a[2].sock.sendto(floor_packet(a[2].binding.ssrc), relay_addr)  # unbound: not handed over
    assert relay.line() == f"floor a-1 {len(floor_packet(0))} {a[1].port}"

    relay.process.terminate()
    line = relay.line()
    while not line.startswith("stats "):
        line = relay.line()
    stats = json.loads(line[6:])
    assert stats["forwarded"] == 6 and stats["copies"] == 7
    assert stats["dropped_not_talker"] == 10 and stats["dropped_unbound"] == 5 and stats["dropped_ssrc"] == 5
    assert stats["dropped_token"] == 1 and stats["floor"] == 1 and stats["bound"] == 5


# --- the shell in-process ----------------------------------------------------------------------------------


class FakeSocket:
    def __init__(self, refuse: set[Address] | None = None) -> None:
        self.sent: list[tuple[bytes, Address]] = []
        self.refuse = refuse or set()

    def sendto(self, data: bytes, addr: Address) -> int:
        if addr in self.refuse:
            raise OSError(101, "Network is unreachable")
        self.sent.append((data, addr))
        return len(data)


class FakeTransport:
    def __init__(self, sock: FakeSocket) -> None:
        self.socket = sock


def make_protocol(refuse: set[Address] | None = None) -> tuple[RelayProtocol, RelayCore, task.Clock, dict[str, Any]]:
    clock = task.Clock()
    clock.advance(1000.0)
    core = RelayCore(RelayConfig())
    calls: dict[str, Any] = {"floor": [], "dead": [], "joined": []}
    protocol = RelayProtocol(
        core,
        clock,
        on_floor=lambda binding, data, addr: calls["floor"].append((binding, data, addr)),
        on_dead=lambda bindings: calls["dead"].append(bindings),
        on_joined=lambda binding, addr: calls["joined"].append((binding, addr)),
    )
    transport: Any = FakeTransport(FakeSocket(refuse))
    protocol.makeConnection(transport)
    return protocol, core, clock, calls


def join(protocol: RelayProtocol, core: RelayCore, member: str, ssrc: int, addr: Address) -> Binding:
    binding = Binding("g", member, ssrc)
    binding_id, csk = os.urandom(8), os.urandom(16)
    core.expect(binding_id, binding, binding_key(csk, binding_id), protocol.clock.seconds())
    protocol.datagramReceived(JoinSigner(ssrc, binding_id, csk).packet(), addr)
    return binding


def test_shell_forwards_with_sendto_and_reports_joins_floor_and_deaths() -> None:
    protocol, core, clock, calls = make_protocol()
    sock = protocol.transport.socket  # type: ignore[union-attr]
    alice = join(protocol, core, "alice", 1, ("127.0.0.1", 5001))
    bob = join(protocol, core, "bob", 2, ("127.0.0.1", 5002))
    assert calls["joined"] == [(alice, ("127.0.0.1", 5001)), (bob, ("127.0.0.1", 5002))]
    core.set_talker("g", 1)
    protocol.datagramReceived(rtp(1, 0), ("127.0.0.1", 5001))
    assert sock.sent == [(rtp(1, 0), ("127.0.0.1", 5002))]
    protocol.datagramReceived(floor_packet(2), ("127.0.0.1", 5002))
    assert calls["floor"] == [(bob, floor_packet(2), ("127.0.0.1", 5002))]
    protocol.send(b"reply", ("127.0.0.1", 5002))
    assert sock.sent[-1] == (b"reply", ("127.0.0.1", 5002))

    # the sweep runs ten times a second on the injected clock, over a tenth of the members each time (here one:
    # at least one a call); alice keeps talking, bob falls silent and is found dead within a second of his 15 s
    for tick in range(161):
        clock.advance(0.1)
        if tick % 10 == 0:
            protocol.datagramReceived(rtp(1, 1), ("127.0.0.1", 5001))
        if tick == 140:
            assert calls["dead"] == []
    assert calls["dead"] == [[bob]]
    protocol.doStop()
    assert not clock.getDelayedCalls()


def test_shell_logs_refused_bindings_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    protocol, core, clock, calls = make_protocol()
    binding_id, csk = os.urandom(8), os.urandom(16)
    signer = JoinSigner(1, binding_id, csk)
    core.expect(binding_id, Binding("g", "alice", 1), binding_key(csk, binding_id), clock.seconds())
    sniffed = signer.packet()
    protocol.datagramReceived(sniffed, ("127.0.0.1", 5001))
    with caplog.at_level(logging.INFO, logger="ptt.server.relay"):
        for _ in range(50):  # the sniffed packet replayed from elsewhere, 50 times in a moment
            protocol.datagramReceived(sniffed, ("192.0.2.66", 4000))
        refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(refused) == 5  # counted 50 times, logged a burst of 5
        assert refused[0] == "PTTJ from 192.0.2.66:4000 for alice in g refused: replayed (counter 1, last 1)"
        # the binding's check limit (burst 20, one spent on the join) spares the HMAC of the rest
        assert core.stats["dropped_join_replay"] == 19 and core.stats["dropped_join_limit"] == 31
        clock.advance(1.0)  # ~1 line a second after the burst
        protocol.datagramReceived(sniffed, ("192.0.2.66", 4000))
        protocol.datagramReceived(signer.packet(), ("127.0.0.1", 5099))  # alice's NAT rebinds: logged at info
        messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "refused" in m]) == 6
    assert messages[-1] == "alice in g moved its binding to 127.0.0.1:5099"
    assert protocol.transport.socket.sent == []  # type: ignore[union-attr]  # nothing goes back to the source
    assert calls["joined"] == [(Binding("g", "alice", 1), ("127.0.0.1", 5001))]
    protocol.doStop()


def test_shell_drops_oversized_datagrams_and_survives_send_errors_and_failing_callbacks() -> None:
    protocol, core, _, _ = make_protocol(refuse={("127.0.0.1", 5003)})
    sock = protocol.transport.socket  # type: ignore[union-attr]
    for n, name in enumerate(("alice", "bob", "carol", "dave"), start=1):
        join(protocol, core, name, n, ("127.0.0.1", 5000 + n))
    core.set_talker("g", 1)
    protocol.datagramReceived(rtp(1, 0), ("127.0.0.1", 5001))
    # carol's failure cost only carol's copy; no one got two
    assert sorted(sock.sent) == [(rtp(1, 0), ("127.0.0.1", 5002)), (rtp(1, 0), ("127.0.0.1", 5004))]
    assert protocol.send_errors == 1
    protocol.datagramReceived(rtp(1, 0, bytes(MAX_DATAGRAM)), ("127.0.0.1", 5001))
    assert core.stats["dropped_malformed"] == 1 and len(sock.sent) == 2

    def broken(*_: object) -> None:
        raise RuntimeError("bug in the floor server")

    protocol.on_floor = broken
    protocol.datagramReceived(floor_packet(3), ("127.0.0.1", 5003))  # logged, not raised
    protocol.datagramReceived(rtp(1, 1), ("127.0.0.1", 5001))
    assert len(sock.sent) == 4
    protocol.doStop()


@pytest.mark.skipif(not batched_available(), reason="recvmmsg/sendmmsg are Linux only")
def test_batched_port_drains_and_fans_out_in_one_read() -> None:
    reactor = MemoryReactorClock()
    core = RelayCore(RelayConfig(rate_packets_per_s=1e6, rate_burst=100_000))
    floors: list[tuple[Binding, bytes, Address]] = []
    port: Any
    _, port = listen_relay(
        reactor,
        core,
        0,
        "127.0.0.1",
        batched=True,
        on_floor=lambda binding, data, addr: floors.append((binding, data, addr)),
        on_dead=lambda bindings: None,
    )
    assert isinstance(port, BatchedPort)
    relay_addr = ("127.0.0.1", port.getHost().port)
    members = [Member("g", f"m{i}", 10 + i) for i in range(4)]
    try:
        for member in members:
            core.expect(member.token, member.binding, member.key, reactor.seconds())
            member.sock.sendto(member.signer.packet(), relay_addr)
        core.set_talker("g", 10)
        packets = [rtp(10, seq, os.urandom(20 + seq)) for seq in range(150)]  # more than one recvmmsg batch
        for packet in packets:
            members[0].sock.sendto(packet, relay_addr)
        members[1].sock.sendto(rtp(11, 0), relay_addr)  # not the talker
        members[2].sock.sendto(floor_packet(12), relay_addr)
        members[0].sock.sendto(rtp(10, 999, bytes(MAX_DATAGRAM)), relay_addr)  # too big: truncated, dropped
        time.sleep(0.05)
        port.doRead()
        assert core.stats["bound"] == 4
        for member in members[1:]:
            assert member.received(len(packets)) == packets
        assert members[0].received() == []
        assert [(b.member, data) for b, data, _ in floors] == [("m2", floor_packet(12))]
        assert core.stats["dropped_not_talker"] == 1 and core.stats["dropped_malformed"] == 1
        assert core.stats["copies"] == 3 * len(packets)
    finally:
        port.stopListening()
        reactor.advance(0)  # the port closes its socket in a callLater(0)
        for member in members:
            member.sock.close()


@pytest.mark.skipif(not batched_available(), reason="recvmmsg/sendmmsg are Linux only")
def test_batched_port_skips_a_failing_destination() -> None:
    reactor = MemoryReactorClock()
    core = RelayCore()
    protocol: Any
    port: Any
    protocol, port = listen_relay(reactor, core, 0, batched=True, on_floor=lambda *_: None, on_dead=lambda _: None)
    members = [Member("g", f"m{i}", i) for i in range(3)]
    # Port 0 is refused by the kernel (EINVAL): the copies around it must still go out.
    targets = [("127.0.0.1", 0), ("127.0.0.1", members[1].port), ("127.0.0.1", 0), ("127.0.0.1", members[2].port)]
    core.route = lambda data, addr, now: targets  # type: ignore[method-assign]
    try:
        for seq in range(3):
            members[0].sock.sendto(rtp(1, seq), ("127.0.0.1", port.getHost().port))
        time.sleep(0.05)
        port.doRead()
        for member in members[1:]:
            assert member.received(3) == [rtp(1, seq) for seq in range(3)]
        assert protocol.send_errors == 6
    finally:
        port.stopListening()
        reactor.advance(0)
        for member in members:
            member.sock.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux reports the granted buffer")
@pytest.mark.parametrize("batched", [False, True] if batched_available() else [False])
def test_a_receive_buffer_capped_by_the_kernel_is_logged(caplog: pytest.LogCaptureFixture, batched: bool) -> None:
    class UdpReactor(MemoryReactorClock):
        def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> Any:
            listening = udp.Port(port, protocol, interface, maxPacketSize, self)
            listening.startListening()
            return listening

    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    reactor = UdpReactor()
    for asked, warned in ((rmem_max // 2, False), (rmem_max * 4, True)):
        caplog.clear()
        port: Any
        with caplog.at_level(logging.WARNING, logger="ptt.server.relay"):
            _, port = listen_relay(
                reactor, RelayCore(), 0, batched=batched, receive_buffer=asked,
                on_floor=lambda *_: None, on_dead=lambda _: None,
            )  # fmt: skip
        try:
            assert port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2 == min(asked, rmem_max)
            assert ("net.core.rmem_max" in caplog.text) is warned
        finally:
            port.stopListening()
            reactor.advance(0)
