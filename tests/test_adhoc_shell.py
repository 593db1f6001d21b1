"""The ad-hoc Twisted shell (``client.adhoc.AdhocSession``, the control socket protocol) on a fake reactor: sockets
are in-memory, multicast reaches every port joined to the group, time is a ``task.Clock``."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from client.adhoc import AdhocSession, NetworkConfig
from client.adhoc_app import Agent, ControlProtocol
from client.keystore import Keystore
from ptt.crypto import kms
from ptt.floor.events import FloorEventKind
from ptt.floor.messages import FloorMessage, Subtype
from ptt.groupkeys import make_group_key
from ptt.kmsformat.enrolment import Enrolment
from ptt.kmsformat.model import KmsCertificate, KmsKeySet
from ptt.mikey.imessage import IdentityKeys, KmsDomain
from ptt.srtp import SrtpSender
from ptt.ts33180 import period_bounds
from server.kms.material import certificate_pem, make_self_signed

NOW = 1_790_000_000.0
ALICE, BOB, CAROL = "sip:alice@example.org", "sip:bob@example.org", "sip:carol@example.org"
World = tuple[KmsDomain, kms.MasterSecrets, Enrolment]


@pytest.fixture(scope="module")
def world() -> World:
    master = kms.generate_master_secrets()
    certificate = KmsCertificate("kms.example.org", 2592000, 0, master.z_public, master.kpak)
    _, cert = make_self_signed("kms", san_dns=["localhost"], san_ips=["127.0.0.1"])
    pem = certificate_pem(cert)
    return certificate.domain(), master, Enrolment("kms.example.org", "https://127.0.0.1:8443", pem, pem, certificate)


def keystore_for(world: World, uri: str, tmp_path: Path) -> Keystore:
    domain, master, enrolment = world
    keystore = Keystore(tmp_path / f"{uri.split(':')[1]}.ks", b"pass")
    keystore.enrolment = enrolment
    period = domain.period_number(NOW)
    me = IdentityKeys(uri, domain, period)
    keys = kms.derive_user_keys(me.uid, master)
    start, end = period_bounds(period, domain.key_period, domain.key_period_offset)
    key_set = KmsKeySet(domain.kms_uri, uri, me.uid, period, keys.rsk, keys.ssk, keys.pvt,
                        datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC))  # fmt: skip
    keystore.add([key_set], datetime.fromtimestamp(NOW, UTC), uri)
    return keystore


class FakePort:
    def __init__(self, net: FakeNet, host: str, port: int, protocol: Any) -> None:
        self.net, self.host, self.port, self.protocol = net, host, port, protocol
        self.groups: set[str] = set()
        self.open = True

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.open
        self.net.sent.append((self, data, addr))

    def joinGroup(self, group: str, interface: str = "") -> defer.Deferred[None]:
        self.groups.add(group)
        return defer.succeed(None)

    def setTTL(self, ttl: int) -> None: ...

    def setLoopbackMode(self, mode: bool) -> None: ...

    def setOutgoingInterface(self, address: str) -> None: ...

    def getHost(self) -> Any:
        return type("Host", (), {"port": self.port})()

    def stopListening(self) -> None:
        self.open = False


class FakeNet:
    """One LAN: hosts 10.0.0.N; delivery runs when ``flush`` is called."""

    def __init__(self) -> None:
        self.ports: list[FakePort] = []
        self.sent: list[tuple[FakePort, bytes, tuple[str, int]]] = []
        self.drop: Callable[[bytes], bool] = lambda data: False

    def reactor(self, host: str) -> Any:
        net = self
        clock = task.Clock()
        clock.advance(NOW)
        counter = iter(range(40000, 50000))

        def listen_udp(port: int, protocol: Any, interface: str = "") -> FakePort:
            fake = FakePort(net, host, port or next(counter), protocol)
            net.ports.append(fake)
            return fake

        def listen_multicast(port: int, protocol: Any, interface: str = "", listenMultiple: bool = False) -> FakePort:
            return listen_udp(port, protocol)

        clock.listenUDP = listen_udp  # type: ignore[attr-defined]
        clock.listenMulticast = listen_multicast  # type: ignore[attr-defined]
        return clock

    def flush(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            if not self.sent:
                return
            sent, self.sent = self.sent, []
            for source, data, (host, port) in sent:
                if self.drop(data):
                    continue
                for target in list(self.ports):
                    if not target.open or target.port != port:
                        continue
                    if host in target.groups or (host == target.host and not host.startswith("239.")):
                        target.protocol.datagramReceived(data, (source.host, source.port))


class Peers:
    def __init__(
        self, world: World, tmp_path: Path, uris: list[str], keystores: dict[str, Keystore] | None = None
    ) -> None:
        self.net = FakeNet()
        self.sessions: dict[str, AdhocSession] = {}
        self.clocks: dict[str, task.Clock] = {}
        for index, uri in enumerate(uris, start=1):
            reactor = self.net.reactor(f"10.0.0.{index}")
            self.clocks[uri] = reactor
            keystore = (keystores or {}).get(uri) or keystore_for(world, uri, tmp_path)
            session = AdhocSession(reactor, keystore, uri, network=NetworkConfig())
            session.start()
            self.sessions[uri] = session
        self.net.flush()

    def advance(self, seconds: float, step: float = 0.02) -> None:
        for _ in range(max(1, round(seconds / step))):
            for clock in self.clocks.values():
                clock.advance(step)
            self.net.flush()


@pytest.fixture
def peers(world: World, tmp_path: Path) -> Peers:
    return Peers(world, tmp_path, [ALICE, BOB, CAROL])


def keyed(peers: Peers, info_uri: str) -> None:
    peers.advance(0.5)
    gmks = {uri: s.groups[info_uri].key for uri, s in peers.sessions.items() if info_uri in s.groups}
    assert len(gmks) == 3 and len({k.gmk for k in gmks.values() if k is not None}) == 1, gmks


def test_create_key_talk_and_floor_over_multicast(peers: Peers) -> None:
    alice, bob, carol = (peers.sessions[u] for u in (ALICE, BOB, CAROL))
    info = alice.create("rescue", [BOB, CAROL])
    keyed(peers, info.uri)
    assert bob.groups[info.uri].name == "rescue"  # what the status line shows
    heard: list[tuple[str, bytes]] = []
    bob.media_listener = lambda group, mki, rtp: heard.append((group, rtp))
    floor_at_bob: list[FloorEventKind] = []
    bob.floor_listener = lambda group, event: floor_at_bob.append(event.kind)

    alice.request_floor(info.uri)
    peers.advance(0.3)  # nobody answers an idle floor: Alice takes it after T201 x C201
    assert alice.groups[info.uri].floor == "granted" and alice.access_ms and alice.access_ms[-1] >= 100
    assert bob.groups[info.uri].talker == ALICE and FloorEventKind.TAKEN in floor_at_bob
    for n in range(10):
        alice.send_media(info.uri, b"voice-%d" % n, marker=n == 0)
    peers.advance(0.1)
    assert [rtp[12:] for _, rtp in heard] == [b"voice-%d" % n for n in range(10)]
    assert carol.stats["media_in"] == 10 and carol.stats["media_bad"] == 0

    bob.request_floor(info.uri)  # same priority: Alice queues Bob (queueing is on in ad-hoc groups)
    peers.advance(0.3)
    assert bob.groups[info.uri].floor == "queued" and alice.groups[info.uri].floor == "granted"
    assert bob.groups[info.uri].machine.queue_position == 1 and FloorEventKind.QUEUED in floor_at_bob
    alice.release_floor(info.uri)  # the floor goes to Bob, the first queued
    peers.advance(0.3)
    assert bob.groups[info.uri].floor == "granted" and FloorEventKind.GRANTED in floor_at_bob
    assert alice.groups[info.uri].talker == BOB and carol.groups[info.uri].talker == BOB
    bob.release_floor(info.uri)
    peers.advance(0.3)
    assert alice.groups[info.uri].talker is None and carol.groups[info.uri].floor == "idle"


def test_queued_member_is_shown_its_position_and_starts_talking_when_granted(peers: Peers) -> None:
    """Off-network queueing through the terminal UI: "queued (position N)" as on-network, then talking."""
    from types import SimpleNamespace

    from client.app import Client

    alice, bob, carol = (peers.sessions[u] for u in (ALICE, BOB, CAROL))
    info = alice.create("rescue", [BOB, CAROL])
    keyed(peers, info.uri)
    talking: list[str] = []
    voice: Any = SimpleNamespace(
        engine=SimpleNamespace(level=-30.0, status="ok"),
        start_talking=talking.append,
        stop_talking=lambda: talking.append("stop"),
    )
    ui = Client(peers.clocks[CAROL], carol, voice, [info.uri], quiet=True)
    alice.request_floor(info.uri)
    peers.advance(0.3)
    bob.request_floor(info.uri)
    peers.advance(0.2)
    ui.press()  # Carol: queued behind Bob
    peers.advance(0.2)
    assert carol.groups[info.uri].floor == "queued" and ui.message == "queued (position 2)"
    assert "floor:queued" in ui.status_line() and talking == []
    alice.release_floor(info.uri)  # Bob gets the floor and Alice's queue: Carol is next
    peers.advance(0.3)
    assert bob.groups[info.uri].floor == "granted" and bob.groups[info.uri].machine.queue == [
        (carol.groups[info.uri].ssrc, CAROL)
    ]
    assert carol.groups[info.uri].floor == "queued" and ui.message == "queued (position 1)"
    assert carol.groups[info.uri].talker == BOB
    bob.release_floor(info.uri)
    peers.advance(0.3)
    assert carol.groups[info.uri].floor == "granted" and talking == [info.uri]
    assert ui.message.startswith("TALKING")
    assert alice.groups[info.uri].talker == CAROL and bob.groups[info.uri].talker == CAROL
    ui.press()  # toggle: release
    peers.advance(0.3)
    assert talking == [info.uri, "stop"] and alice.groups[info.uri].floor == "idle"


def test_queued_member_releasing_leaves_the_queue(peers: Peers) -> None:
    alice, bob = peers.sessions[ALICE], peers.sessions[BOB]
    info = alice.create("rescue", [BOB, CAROL])
    keyed(peers, info.uri)
    cancelled: list[dict[str, Any]] = []
    bob.event_listener = cancelled.append
    alice.request_floor(info.uri)
    peers.advance(0.3)
    bob.request_floor(info.uri)
    peers.advance(0.2)
    assert bob.groups[info.uri].floor == "queued" and len(alice.groups[info.uri].machine.queue) == 1
    bob.release_floor(info.uri)
    peers.advance(0.2)
    assert alice.groups[info.uri].machine.queue == []
    assert bob.groups[info.uri].floor == "taken" and bob.groups[info.uri].talker == ALICE
    assert [e["kind"] for e in cancelled if e.get("kind") == "queue-cancelled"] == ["queue-cancelled"]
    alice.release_floor(info.uri)  # nobody queued: Floor Release
    peers.advance(0.2)
    assert bob.groups[info.uri].floor == "idle"


def test_garbage_and_outsiders_are_dropped_and_counted(peers: Peers) -> None:
    alice, bob = peers.sessions[ALICE], peers.sessions[BOB]
    info = alice.create("rescue", [BOB, CAROL])
    keyed(peers, info.uri)
    outsider = SrtpSender(make_group_key(), "sip:mallory@example.org")
    media = bob.groups[info.uri].port
    signalling = bob._unicast
    rtcp = bytes(FloorMessage(Subtype.TAKEN, 0xBAD, user_id="sip:mallory@example.org"))
    rtp = struct.pack(">BBHII", 0x80, 96, 1, 960, 0xBAD) + b"x" * 50
    inputs = [
        b"",
        b"\x80",
        os.urandom(11),
        os.urandom(200),
        rtp,
        rtcp,
        outsider.protect(rtp),
        outsider.protect_rtcp(rtcp),
    ]
    for data in inputs:
        media.protocol.datagramReceived(data, ("10.0.0.9", 5000))
        signalling.protocol.datagramReceived(data, ("10.0.0.9", 5000))
        bob._discovery.protocol.datagramReceived(data, ("10.0.0.9", 5000))
    # a member claiming to be another in a floor message (Carol's key, Alice's name) is dropped too
    carol_sender = peers.sessions[CAROL].groups[info.uri].sender
    assert carol_sender is not None
    forged = carol_sender.protect_rtcp(bytes(FloorMessage(Subtype.TAKEN, 0x1234, user_id=ALICE, granted_party=ALICE)))
    before = bob.stats["floor_bad"]
    media.protocol.datagramReceived(forged, ("10.0.0.3", 5000))
    assert bob.stats["floor_bad"] == before + 1 and bob.groups[info.uri].talker is None
    assert bob.stats["floor_bad"] >= 2 and bob.stats["media_bad"] >= 1
    peers.advance(3.0)  # pending media under the unknown GMK expires; nothing was played
    assert bob.groups[info.uri].key is not None and bob.groups[info.uri].talker is None


def test_removed_member_leaves_the_media_group_and_the_rest_are_rekeyed(peers: Peers) -> None:
    alice, bob, carol = (peers.sessions[u] for u in (ALICE, BOB, CAROL))
    info = alice.create("rescue", [BOB, CAROL])
    keyed(peers, info.uri)
    old = bob.groups[info.uri].key
    carol_port = carol.groups[info.uri].port
    alice.remove_member(info.uri, CAROL)
    peers.advance(1.0)
    assert info.uri not in carol.groups and not carol_port.open
    new = bob.groups[info.uri].key
    assert new is not None and old is not None and new.gmk != old.gmk and alice.groups[info.uri].key == new
    peers.advance(0.5)  # the sender switches after KEY_SWITCH_DELAY; media under the new GMK reaches Bob
    heard: list[bytes] = []
    bob.media_listener = lambda group, mki, rtp: heard.append(mki)
    alice.send_media(info.uri, b"after")
    peers.advance(0.05)
    assert heard and heard[0][:4] == new.gmk_id


def test_start_needs_current_keys(world: World, tmp_path: Path) -> None:
    keystore = keystore_for(world, ALICE, tmp_path)
    reactor = FakeNet().reactor("10.0.0.1")
    reactor.advance(40 * 86400)  # two key periods later: no keys for now
    with pytest.raises(RuntimeError, match="provision"):
        AdhocSession(reactor, keystore, ALICE).start()


def test_control_protocol_answers_bad_requests_without_dying(peers: Peers) -> None:
    agent = Agent(peers.clocks[ALICE], peers.sessions[ALICE], None)
    protocol = ControlProtocol(agent)
    transport = StringTransport()
    protocol.makeConnection(transport)

    def ask(line: bytes) -> dict[str, Any]:
        transport.clear()
        protocol.dataReceived(line + b"\n")
        return dict(json.loads(transport.value()))

    assert ask(b"not json")["ok"] is False
    assert ask(b"[1, 2]")["ok"] is False
    assert "unknown command" in ask(b'{"cmd": "fly"}')["error"]
    assert ask(b'{"cmd": "add", "group": "nope", "member": "sip:x@example.org"}')["ok"] is False
    created = ask(b'{"cmd": "create", "name": "ops", "members": ["sip:bob@example.org"]}')
    assert created["ok"] and created["group"]["members"] == [ALICE, BOB]
    assert ask(b'{"cmd": "create", "name": "x", "members": ["bad uri"]}')["ok"] is False
    assert "missing" in ask(b'{"cmd": "add", "group": "ops"}')["error"]
    assert ask(b'{"cmd": "list"}')["groups"][0]["name"] == "ops"
    assert ask(b'{"cmd": "press", "group": "ops"}')["ok"]
    transport.clear()
    protocol.dataReceived(b"x" * (70 * 1024))
    assert b"too long" in transport.value() and transport.disconnecting


def test_a_partner_domain_member_is_keyed_and_heard_when_our_kms_vouches_for_its_kms(
    world: World, tmp_path: Path
) -> None:
    """Erin is keyed by kms.partner.org. Alice's and Bob's keystores hold that KMS's certificate (from their KMS's
    certificate cache), bound to partner.org; Erin's holds ours, bound to example.org. Carol's holds none."""
    master = kms.generate_master_secrets()
    partner_cert = KmsCertificate("kms.partner.org", 2592000, 0, master.z_public, master.kpak)
    _, enrolment_cert = make_self_signed("kms", san_dns=["localhost"], san_ips=["127.0.0.1"])
    pem = certificate_pem(enrolment_cert)
    partner: World = (partner_cert.domain(), master, Enrolment("kms.partner.org", "https://127.0.0.1:8443", pem, pem,
                                                                partner_cert))  # fmt: skip
    erin = "sip:erin@partner.org"
    ours = replace(world[2].certificate, role="External", kms_domains=("example.org",))
    theirs = replace(partner_cert, role="External", kms_domains=("partner.org",))
    keystores = {uri: keystore_for(world, uri, tmp_path) for uri in (ALICE, BOB, CAROL)}
    keystores[erin] = keystore_for(partner, erin, tmp_path)
    for uri in (ALICE, BOB):
        keystores[uri].set_external([theirs], datetime.fromtimestamp(NOW, UTC))
    keystores[erin].set_external([ours], datetime.fromtimestamp(NOW, UTC))
    peers = Peers(world, tmp_path, [ALICE, BOB, CAROL, erin], keystores)
    alice, bob, carol, partner_erin = (peers.sessions[u] for u in (ALICE, BOB, CAROL, erin))
    info = alice.create("joint", [BOB, erin])
    peers.advance(0.5)
    keys = {s.groups[info.uri].key for s in (alice, bob, partner_erin)}
    assert len(keys) == 1 and None not in keys
    assert info.uri not in carol.groups and carol.engine is not None and carol.engine.stats["refused"] > 0

    heard: list[bytes] = []
    bob.media_listener = lambda group, mki, rtp: heard.append(rtp[12:])
    partner_erin.request_floor(info.uri)
    peers.advance(0.3)
    assert partner_erin.groups[info.uri].floor == "granted" and bob.groups[info.uri].talker == erin
    partner_erin.send_media(info.uri, b"from the partner", marker=True)
    peers.advance(0.05)
    assert heard == [b"from the partner"] and bob.stats["media_bad"] == 0
