"""The relay's forwarding core: authenticated binding, talker-only forwarding, drops, rate limit, liveness, floor."""

from __future__ import annotations

import hashlib
import hmac
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptt.relaycore import (
    MAX_UNBOUND_BUCKETS,
    TOKEN_LIFETIME,
    Address,
    Binding,
    JoinSigner,
    RelayConfig,
    RelayCore,
    RtcpResult,
    binding_key,
    join_packet,
)

T0 = 1000.0
PLENTY = RelayConfig(rate_packets_per_s=1e6, rate_burst=1_000_000)


def rtp(ssrc: int, payload: bytes = b"\x00" * 40, seq: int = 1) -> bytes:
    """An RTP-shaped datagram (V=2, PT 96): all the relay looks at is the header."""
    return bytes((0x80, 0x60)) + seq.to_bytes(2, "big") + (0).to_bytes(4, "big") + ssrc.to_bytes(4, "big") + payload


def floor_packet(ssrc: int) -> bytes:
    """An RTCP APP packet as SRTCP leaves it: header and SSRC in clear, the rest (name included) encrypted."""
    body = bytes(range(16))  # stands for the encrypted name and fields
    length_words = (8 + len(body)) // 4 - 1
    trailer = b"\x80\x00\x00\x01" + b"\xaa" * 16  # E flag + index, tag: outside the RTCP length
    return bytes((0x80, 204)) + length_words.to_bytes(2, "big") + ssrc.to_bytes(4, "big") + body + trailer


def addr(n: int) -> Address:
    return ("127.0.0.1", 40000 + n)


class Group:
    """Members m0..m{n-1} of one group, each with a binding ID, a CSK, an SSRC and an address."""

    def __init__(self, core: RelayCore, name: str, size: int, base: int = 0) -> None:
        self.core = core
        self.name = name
        self.bindings = [Binding(name, f"{name}-m{i}", 0x1000 + base + i) for i in range(size)]
        self.tokens = [bytes([base + i + 1]) * 8 for i in range(size)]  # binding IDs
        self.csks = [bytes([0xC0 + base + i]) * 16 for i in range(size)]
        self.keys = [binding_key(csk, token) for csk, token in zip(self.csks, self.tokens, strict=True)]
        self.signers = [
            JoinSigner(b.ssrc, token, csk) for b, token, csk in zip(self.bindings, self.tokens, self.csks, strict=True)
        ]
        self.addrs = [addr(base + i) for i in range(size)]
        for token, binding, key in zip(self.tokens, self.bindings, self.keys, strict=True):
            core.expect(token, binding, key, T0)

    def packet(self, i: int) -> bytes:
        """Member i's next PTTJ (a fresh counter)."""
        return self.signers[i].packet()

    def join(self, i: int, now: float = T0, at: Address | None = None) -> RtcpResult:
        return self.core.handle_rtcp(self.packet(i), at or self.addrs[i], now)

    def join_all(self, now: float = T0) -> None:
        for i in range(len(self.bindings)):
            assert self.join(i, now).kind == "joined"

    def send(self, i: int, now: float = T0 + 1, ssrc: int | None = None) -> list[Address] | None:
        return self.core.route(rtp(self.bindings[i].ssrc if ssrc is None else ssrc), self.addrs[i], now)


@pytest.fixture
def core() -> RelayCore:
    return RelayCore(PLENTY)


# --- binding ----------------------------------------------------------------------------------------------------


def test_join_binds_the_source_address(core: RelayCore) -> None:
    group = Group(core, "g", 3)
    result = group.join(1)
    assert result == RtcpResult("joined", group.bindings[1])
    assert core.members("g") == [(group.bindings[1], group.addrs[1], T0)]
    assert core.address_of("g", "g-m1") == group.addrs[1]
    assert core.stats["joined"] == 1 and core.stats["bound"] == 1


def test_join_packet_layout() -> None:
    key = bytes(range(32))
    packet = join_packet(0x11223344, bytes(range(8)), 0x0102, key)
    assert len(packet) == 44
    assert packet[:12] == bytes.fromhex("80cc000a 11223344") + b"PTTJ"  # RTCP APP, subtype 0, 11 words
    assert packet[12:20] == bytes(range(8)) and packet[20:28] == (0x0102).to_bytes(8, "big")
    assert packet[28:] == hmac.new(key, packet[:28], hashlib.sha256).digest()[:16]
    with pytest.raises(ValueError):
        join_packet(1, b"short", 1, key)
    with pytest.raises(ValueError):
        join_packet(1 << 32, bytes(8), 1, key)
    with pytest.raises(ValueError):
        join_packet(1, bytes(8), 0, key)  # counters start at 1: the relay's last accepted starts at 0


def test_tshark_decodes_pttj_as_rtcp_app(tmp_path: Path) -> None:
    """The authenticated PTTJ is still a well-formed RTCP APP packet (RFC 5761 demultiplexing on the media port)."""
    text2pcap, tshark = shutil.which("text2pcap"), shutil.which("tshark")
    if text2pcap is None or tshark is None:
        pytest.skip("tshark/text2pcap not installed (scripts/setup installs them)")
    signer = JoinSigner(0x11223344, bytes(range(1, 9)), bytes(range(16)))
    packet = signer.packet()
    (tmp_path / "in.txt").write_text("0000 " + " ".join(f"{b:02x}" for b in packet) + "\n")
    pcap = tmp_path / "pttj.pcap"
    subprocess.run([text2pcap, "-q", "-u", "40000,8446", str(tmp_path / "in.txt"), str(pcap)], check=True)
    fields = ["frame.protocols", "rtcp.pt", "rtcp.app.name", "rtcp.app.subtype", "rtcp.length", "rtcp.app.data"]
    for decode_as in ("rtcp", "rtp"):  # as RTCP, and as RTP, whose dissector hands PT 204 to RTCP
        out = subprocess.run(
            [tshark, "-r", str(pcap), "-d", f"udp.port==8446,{decode_as}", "-T", "fields"]
            + [a for f in fields for a in ("-e", f)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        protocols, pt, name, subtype, length, data = out.split("\t")
        assert protocols.endswith(":rtcp") and (pt, name, subtype, length) == ("204", "PTTJ", "0", "10")
        assert data.replace(":", "") == packet[12:].hex()


def test_binding_key_is_the_3gpp_kdf_of_the_csk() -> None:
    csk, binding_id = bytes(range(16)), b"\x01" * 8
    label = b"ptt-relay-binding"
    s = b"\xf0" + label + len(label).to_bytes(2, "big") + binding_id + b"\x00\x08"
    assert binding_key(csk, binding_id) == hmac.new(csk, s, hashlib.sha256).digest()
    assert binding_key(csk, b"\x02" * 8) != binding_key(csk, binding_id)
    assert binding_key(b"\x00" * 16, binding_id) != binding_key(csk, binding_id)
    signer = JoinSigner(5, binding_id, csk)
    assert [signer.packet()[20:28] for _ in range(3)] == [n.to_bytes(8, "big") for n in (1, 2, 3)]
    assert csk.hex() not in repr(signer)


def test_unknown_binding_id_is_refused(core: RelayCore) -> None:
    group = Group(core, "g", 2)
    packet = join_packet(group.bindings[0].ssrc, b"\xee" * 8, 1, group.keys[0])
    result = core.handle_rtcp(packet, group.addrs[0], T0)
    assert result.kind == "refused" and result.binding is None
    assert core.members("g") == [] and core.stats["dropped_token"] == 1


def test_join_with_another_ssrc_than_expected_is_refused(core: RelayCore) -> None:
    group = Group(core, "g", 2)
    result = core.handle_rtcp(join_packet(0xBAD, group.tokens[0], 1, group.keys[0]), group.addrs[0], T0)
    assert result.kind == "refused" and core.stats["dropped_token"] == 1
    assert group.join(0).kind == "joined"  # the binding was not used up


def test_expired_binding_is_refused(core: RelayCore) -> None:
    group = Group(core, "g", 2)
    assert group.join(0, now=T0 + TOKEN_LIFETIME + 0.1).kind == "refused"
    assert group.join(1, now=T0 + TOKEN_LIFETIME - 0.1).kind == "joined"


def test_sweep_forgets_expired_bindings(core: RelayCore) -> None:
    group = Group(core, "g", 1)
    core.sweep(T0 + TOKEN_LIFETIME + 1)
    assert group.join(0, now=T0 + 1).kind == "refused"  # gone, even if the clock were to go back


def test_malformed_join_packets_are_dropped(core: RelayCore) -> None:
    group = Group(core, "g", 1)
    good = group.packet(0)
    for bad in (good[:-1], good + b"\x00", b"\x81" + good[1:], good[:2] + b"\x00\x07" + good[4:]):
        assert core.handle_rtcp(bad, group.addrs[0], T0).kind == "dropped"
    assert core.members("g") == []
    assert core.handle_rtcp(good, group.addrs[0], T0).kind == "joined"  # none of them used its counter up


def test_binding_id_reuse_is_refused_by_expect(core: RelayCore) -> None:
    group = Group(core, "g", 2)
    group.join(0)
    with pytest.raises(ValueError):  # bound
        core.expect(group.tokens[0], Binding("g", "other", 5), bytes(32), T0)
    with pytest.raises(ValueError):  # pending
        core.expect(group.tokens[1], Binding("g", "other", 5), bytes(32), T0)
    with pytest.raises(ValueError):
        core.expect(b"short", Binding("g", "other", 5), bytes(32), T0)
    with pytest.raises(ValueError):
        core.expect(b"\x42" * 8, Binding("g", "other", 5), b"", T0)


# --- the attacks of issue 12: replay, forgery, displacing another member ---------------------------------------


def test_forged_mac_is_refused(core: RelayCore) -> None:
    group = Group(core, "g", 2)
    ssrc, binding_id = group.bindings[0].ssrc, group.tokens[0]
    wrong_key = join_packet(ssrc, binding_id, 1, binding_key(group.csks[1], binding_id))  # another member's CSK
    flipped = bytearray(group.packet(0))
    flipped[-1] ^= 1
    for forged in (wrong_key, bytes(flipped)):
        result = core.handle_rtcp(forged, group.addrs[0], T0)
        assert result.kind == "refused" and result.binding == group.bindings[0] and "MAC" in result.reason
    assert core.stats["dropped_join_mac"] == 2 and core.members("g") == []
    # the forgeries used up nothing: the member's next packet binds
    assert group.join(0).kind == "joined"
    # nor can a bound member's counter be pushed up by a forgery with a huge counter
    forged = join_packet(ssrc, binding_id, (1 << 64) - 1, bytes(32))
    assert core.handle_rtcp(forged, addr(77), T0 + 1).kind == "refused"
    assert group.join(0, now=T0 + 2).kind == "keepalive"
    assert core.stats["dropped_join_mac"] == 3


def test_replay_from_another_address_is_refused(core: RelayCore) -> None:
    group = Group(core, "g", 3)
    group.join_all()
    core.set_talker("g", group.bindings[0].ssrc)
    sniffed = group.packet(1)
    assert core.handle_rtcp(sniffed, group.addrs[1], T0 + 1).kind == "keepalive"
    attacker = addr(66)
    for t in (1.1, 2.0, 6.0):
        result = core.handle_rtcp(sniffed, attacker, T0 + t)
        assert result.kind == "refused" and "replayed" in result.reason
    assert core.stats["dropped_join_replay"] == 3 and core.stats["rebound"] == 0
    assert core.address_of("g", "g-m1") == group.addrs[1]
    assert sorted(group.send(0) or []) == sorted(group.addrs[1:])  # the attacker gets nothing
    assert core.route(rtp(0x1001), attacker, T0 + 7) is None


def test_the_same_counter_is_refused_even_from_the_bound_address(core: RelayCore) -> None:
    group = Group(core, "g", 1)
    first = group.packet(0)
    assert core.handle_rtcp(first, group.addrs[0], T0).kind == "joined"
    assert core.handle_rtcp(first, group.addrs[0], T0 + 1).kind == "refused"
    older = join_packet(group.bindings[0].ssrc, group.tokens[0], 1, group.keys[0])  # counter 1 == first's
    assert core.handle_rtcp(older, addr(5), T0 + 1).kind == "refused"
    assert core.stats["dropped_join_replay"] == 2 and core.stats["keepalive"] == 0
    assert group.join(0, now=T0 + 2).kind == "keepalive"  # counter 2


def test_a_replayed_first_packet_does_not_bind_elsewhere(core: RelayCore) -> None:
    group = Group(core, "g", 2)
    first = group.packet(0)
    assert core.handle_rtcp(first, group.addrs[0], T0).kind == "joined"
    assert core.handle_rtcp(first, addr(66), T0 + 0.1).kind == "refused"
    assert core.address_of("g", "g-m0") == group.addrs[0]


def test_two_members_packets_from_one_address_do_not_unbind_the_first(core: RelayCore) -> None:
    group = Group(core, "g", 3)
    group.join(0)
    group.join(1)
    core.set_talker("g", group.bindings[0].ssrc)
    # the attacker sends both members' sniffed (already used) packets from its one address: replays
    attacker = addr(66)
    alice_seen, bob_seen = group.packet(0), group.packet(1)
    assert core.handle_rtcp(alice_seen, group.addrs[0], T0 + 1).kind == "keepalive"
    assert core.handle_rtcp(bob_seen, group.addrs[1], T0 + 1).kind == "keepalive"
    assert core.handle_rtcp(alice_seen, attacker, T0 + 2).kind == "refused"
    assert core.handle_rtcp(bob_seen, attacker, T0 + 2).kind == "refused"
    # even fresh packets (an attacker who got them first, on the path) never unbind the address's owner
    assert group.join(1, now=T0 + 3, at=attacker).kind == "moved"  # bob's own binding moves: it is his packet
    result = group.join(0, now=T0 + 3, at=attacker)  # alice's would displace bob: refused, nobody unbound
    assert result.kind == "refused" and "bound to g-m1" in result.reason
    assert core.stats["dropped_join_conflict"] == 1
    assert core.address_of("g", "g-m0") == group.addrs[0]
    assert core.address_of("g", "g-m1") == attacker
    # bob's next keepalive from his real address takes his binding back; alice stayed bound throughout
    assert group.join(1, now=T0 + 4).kind == "moved"
    assert sorted(group.send(0, now=T0 + 4) or []) == [group.addrs[1]]
    # a member's pending first binding cannot take a bound member's address either
    assert group.join(2, now=T0 + 5, at=group.addrs[0]).kind == "refused"
    assert core.stats["dropped_join_conflict"] == 2
    assert [b.member for b, _, _ in core.members("g")] == ["g-m0", "g-m1"]
    assert group.join(2, now=T0 + 6).kind == "joined"  # from its own address: fine


def test_checks_from_elsewhere_are_limited_per_binding_but_not_keepalives() -> None:
    core = RelayCore(
        RelayConfig(rate_packets_per_s=1e6, rate_burst=1_000_000, join_checks_per_s=1.0, join_check_burst=3)
    )
    group = Group(core, "g", 2)
    group.join_all()
    forged = join_packet(group.bindings[0].ssrc, group.tokens[0], 99, bytes(32))
    results = [core.handle_rtcp(forged, addr(60 + n), T0 + 1).kind for n in range(6)]
    assert results == ["refused"] * 6
    # burst 3, less the join's check, plus one refilled in the second since: 3 checked, 3 cut
    assert core.stats["dropped_join_mac"] == 3 and core.stats["dropped_join_limit"] == 3
    assert group.join(0, now=T0 + 1).kind == "keepalive"  # from the bound address: not limited
    assert group.join(1, now=T0 + 1, at=addr(90)).kind == "moved"  # another binding's bucket is its own
    assert group.join(0, now=T0 + 2.1, at=addr(91)).kind == "moved"  # a second later: a check is back


def test_nat_rebinding_with_a_fresh_packet_moves_the_member(core: RelayCore) -> None:
    group = Group(core, "g", 3)
    group.join_all()
    core.set_talker("g", group.bindings[0].ssrc)
    new = addr(99)
    result = group.join(2, now=T0 + 2, at=new)
    assert result == RtcpResult("moved", group.bindings[2])  # for the floor and the group, nothing changed
    assert core.stats["rebound"] == 1
    assert sorted(group.send(0) or []) == sorted([group.addrs[1], new])
    # the old address is no one's any more
    assert core.route(rtp(group.bindings[2].ssrc), group.addrs[2], T0 + 2) is None
    assert core.stats["dropped_unbound"] == 1


def test_new_binding_for_a_bound_member_replaces_the_old_one(core: RelayCore) -> None:
    group = Group(core, "g", 2)
    group.join_all()
    key = binding_key(group.csks[1], b"\x77" * 8)
    core.expect(b"\x77" * 8, group.bindings[1], key, T0 + 1)
    packet = join_packet(group.bindings[1].ssrc, b"\x77" * 8, 1, key)
    assert core.handle_rtcp(packet, addr(50), T0 + 2).kind == "joined"
    assert [(b.member, a) for b, a, _ in core.members("g")] == [("g-m0", group.addrs[0]), ("g-m1", addr(50))]
    assert group.join(1, now=T0 + 3).kind == "refused"  # the old binding is void


def test_rejections_are_counted(core: RelayCore) -> None:
    group = Group(core, "g", 2)
    group.join_all()
    seen = group.packet(0)
    core.handle_rtcp(seen, group.addrs[0], T0 + 1)
    core.handle_rtcp(seen, addr(70), T0 + 1)  # replay
    core.handle_rtcp(join_packet(group.bindings[0].ssrc, group.tokens[0], 50, bytes(32)), addr(70), T0 + 1)  # MAC
    core.handle_rtcp(group.packet(0), group.addrs[1], T0 + 1)  # onto another member's address
    core.handle_rtcp(join_packet(group.bindings[0].ssrc, b"\x55" * 8, 1, bytes(32)), addr(70), T0 + 1)  # unknown
    counts = {k: core.stats[k] for k in ("dropped_join_replay", "dropped_join_mac", "dropped_join_conflict")}
    assert counts == {"dropped_join_replay": 1, "dropped_join_mac": 1, "dropped_join_conflict": 1}
    assert core.stats["dropped_token"] == 1 and core.stats["rebound"] == 0 and core.stats["bound"] == 2


# --- forwarding -----------------------------------------------------------------------------------------------


def test_only_the_talker_is_forwarded_to_the_other_members_of_its_group(core: RelayCore) -> None:
    a = Group(core, "a", 4)
    b = Group(core, "b", 3, base=10)
    a.join_all()
    b.join_all()
    core.set_talker("a", a.bindings[1].ssrc)
    targets = a.send(1)
    assert targets is not None and sorted(targets) == sorted(a.addrs[i] for i in (0, 2, 3))
    assert core.stats["forwarded"] == 1 and core.stats["copies"] == 3
    for i in (0, 2, 3):
        assert a.send(i) is None
    assert core.stats["dropped_not_talker"] == 3
    assert all(b.send(i) is None for i in range(3))  # b's floor is idle
    core.set_talker("b", b.bindings[2].ssrc)
    assert sorted(b.send(2) or []) == sorted(b.addrs[:2])


def test_talker_change_and_idle(core: RelayCore) -> None:
    group = Group(core, "g", 3)
    group.join_all()
    core.set_talker("g", group.bindings[0].ssrc)
    assert group.send(0)
    core.set_talker("g", group.bindings[2].ssrc)
    assert group.send(0) is None
    assert sorted(group.send(2) or []) == sorted(group.addrs[:2])
    core.set_talker("g", None)
    assert group.send(2) is None


def test_talker_set_before_it_binds(core: RelayCore) -> None:
    group = Group(core, "g", 3)
    core.set_talker("g", group.bindings[0].ssrc)
    group.join(1)
    assert group.send(0) is None and core.stats["dropped_unbound"] == 1
    group.join(0, now=T0 + 1)
    assert group.send(0) == [group.addrs[1]]
    group.join(2, now=T0 + 1)
    assert sorted(group.send(0) or []) == sorted(group.addrs[1:])


def test_lone_talker_forwards_to_no_one(core: RelayCore) -> None:
    group = Group(core, "g", 1)
    group.join_all()
    core.set_talker("g", group.bindings[0].ssrc)
    assert group.send(0) == []


def test_unbound_source_is_dropped(core: RelayCore) -> None:
    group = Group(core, "g", 2)
    group.join_all()
    core.set_talker("g", group.bindings[0].ssrc)
    assert core.route(rtp(group.bindings[0].ssrc), addr(77), T0) is None
    assert core.stats["dropped_unbound"] == 1 and core.stats["forwarded"] == 0


def test_talker_address_with_another_ssrc_is_dropped(core: RelayCore) -> None:
    group = Group(core, "g", 2)
    group.join_all()
    core.set_talker("g", group.bindings[0].ssrc)
    assert group.send(0, ssrc=group.bindings[1].ssrc) is None
    assert group.send(0, ssrc=0xDEAD) is None
    assert core.stats["dropped_ssrc"] == 2


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\x80",
        b"\x80\x60\x00\x01\x00\x00\x00\x00\x00\x00\x10",  # 11 octets: short of an RTP header
        b"\x40" + rtp(0x1000)[1:],  # version 1
        b"\xc0" + rtp(0x1000)[1:],  # version 3
        b"\x00" * 40,
    ],
)
def test_malformed_media_is_dropped(core: RelayCore, datagram: bytes) -> None:
    group = Group(core, "g", 2)
    group.join_all()
    core.set_talker("g", group.bindings[0].ssrc)
    assert core.route(datagram, group.addrs[0], T0 + 1) is None
    assert core.stats["dropped_malformed"] == 1 and core.stats["forwarded"] == 0


def test_rtcp_through_route_is_handled_and_not_forwarded(core: RelayCore) -> None:
    group = Group(core, "g", 2)
    assert core.route(group.packet(0), group.addrs[0], T0) is None
    assert core.address_of("g", "g-m0") == group.addrs[0]
    core.set_talker("g", group.bindings[0].ssrc)
    assert core.route(floor_packet(group.bindings[0].ssrc), group.addrs[0], T0) is None
    assert core.stats["floor"] == 1 and core.stats["forwarded"] == 0


def test_fanout_list_is_cached_until_membership_changes(core: RelayCore) -> None:
    group = Group(core, "g", 3)
    group.join(0)
    group.join(1)
    core.set_talker("g", group.bindings[0].ssrc)
    first = group.send(0)
    assert group.send(0) is first
    group.join(2)
    second = group.send(0)
    assert second is not first and first == [group.addrs[1]]  # the old list was not changed under its user
    assert second is not None and sorted(second) == sorted(group.addrs[1:])


# --- rate limiting -------------------------------------------------------------------------------------------


def test_rate_limit_per_source() -> None:
    core = RelayCore(RelayConfig(rate_packets_per_s=100.0, rate_burst=10))
    group = Group(core, "g", 3)
    group.join_all(now=T0)  # each join spent one token
    core.set_talker("g", group.bindings[0].ssrc)
    now = T0
    results = [group.send(0, now=now) for _ in range(12)]
    assert sum(r is not None for r in results) == 9 and core.stats["dropped_rate"] == 3
    assert group.send(1, now=now) is None and core.stats["dropped_not_talker"] == 1  # another source: own bucket
    assert group.send(0, now=now + 0.0501) is not None  # 5 tokens back after 50 ms
    sent = sum(group.send(0, now=now + 0.0501) is not None for _ in range(10))
    assert sent == 4


def test_rate_limit_covers_rtcp_and_unbound_sources() -> None:
    core = RelayCore(RelayConfig(rate_packets_per_s=1.0, rate_burst=2))
    group = Group(core, "g", 1)
    stranger = addr(66)
    for _ in range(5):
        core.handle_rtcp(join_packet(1, b"\x99" * 8, 1, bytes(32)), stranger, T0)
    assert core.stats["dropped_token"] == 2 and core.stats["dropped_rate"] == 3
    # a flood from one address does not affect the member
    assert group.join(0).kind == "joined"
    assert core.handle_rtcp(floor_packet(group.bindings[0].ssrc), group.addrs[0], T0).kind == "floor"
    assert core.handle_rtcp(floor_packet(group.bindings[0].ssrc), group.addrs[0], T0).kind == "dropped"
    assert core.stats["dropped_rate"] == 4


def test_unbound_buckets_are_bounded() -> None:
    core = RelayCore(RelayConfig(rate_packets_per_s=1.0, rate_burst=1))
    for n in range(MAX_UNBOUND_BUCKETS + 50):
        core.route(rtp(1), ("10.0.0.1", n), T0)
    assert len(core._unbound_buckets) == MAX_UNBOUND_BUCKETS
    # the overflow shares one bucket: one packet passed the limit (and was dropped as unbound), the rest not
    assert core.stats["dropped_rate"] == 49
    core.sweep(T0 + 10)
    assert core._unbound_buckets == {}


# --- liveness ----------------------------------------------------------------------------------------------


def sweep_every_second(core: RelayCore, start: float, end: float) -> list[Binding]:
    """Run sweep as the shell does, once a second from ``start`` to ``end``; return all the dead."""
    dead: list[Binding] = []
    t = start
    while t <= end:
        dead += core.sweep(t)
        t += 1.0
    return dead


def test_sweep_declares_silent_members_dead() -> None:
    core = RelayCore(RelayConfig(dead_after=15.0))
    group = Group(core, "g", 3)
    group.join_all(now=T0)
    core.set_talker("g", group.bindings[0].ssrc)
    assert sweep_every_second(core, T0, T0 + 14.5) == []
    for t in (5.0, 10.0, 15.0):  # m1 keeps alive; m2 is silent; the talker is alive through its media
        assert group.join(1, now=T0 + t).kind == "keepalive"
        assert group.send(0, now=T0 + t) is not None
    assert core.sweep(T0 + 15.1) == [group.bindings[2]]
    assert core.stats["dead"] == 1 and core.stats["bound"] == 2
    assert group.send(0, now=T0 + 16) == [group.addrs[1]]
    assert core.route(rtp(group.bindings[2].ssrc), group.addrs[2], T0 + 16) is None
    assert group.join(2, now=T0 + 16).kind == "refused"  # the dead member needs a new binding
    assert sweep_every_second(core, T0 + 16.1, T0 + 29.6) == []  # m1 last kept alive at 15, m0 sent at 16
    assert sweep_every_second(core, T0 + 30.1, T0 + 30.6) == [group.bindings[1]]
    assert sweep_every_second(core, T0 + 31.1, T0 + 31.6) == [group.bindings[0]]
    assert core.members("g") == []


def test_sweep_in_slices_checks_everyone_once_a_round() -> None:
    """The shell sweeps a tenth of the members ten times a second: the same deaths, found within the same second
    as a whole pass would, but no call looks at more than its share."""
    core = RelayCore(RelayConfig(dead_after=15.0))
    group = Group(core, "g", 40)
    group.join_all(now=T0)
    for t in (5.0, 10.0):  # members 0-9 keep alive, 10-39 fall silent after T0
        for m in range(10):
            assert group.join(m, now=T0 + t).kind == "keepalive"
    dead: list[Binding] = []
    t = T0 + 0.1
    while t < T0 + 15.0:
        assert core.sweep(t, share=0.1) == []
        t += 0.1
    per_call = []
    while t < T0 + 16.05:  # the silent ones die within a round (1 s) of their 15 s
        found = core.sweep(t, share=0.1)
        per_call.append(len(found))
        dead += found
        t += 0.1
    assert sorted(b.member for b in dead) == sorted(b.member for b in group.bindings[10:])
    assert max(per_call) <= 4  # a tenth of the 40 bound when the round started
    assert core.stats["bound"] == 10
    while t < T0 + 24.95:  # the others were last heard at T0 + 10
        assert core.sweep(t, share=0.1) == []
        t += 0.1
    dead = []
    while t < T0 + 26.05:
        dead += core.sweep(t, share=0.1)
        t += 0.1
    assert sorted(b.member for b in dead) == sorted(b.member for b in group.bindings[:10])


def test_a_member_unbound_during_a_round_is_not_reported_dead() -> None:
    core = RelayCore(RelayConfig(dead_after=15.0))
    group = Group(core, "g", 10)
    group.join_all(now=T0)
    assert sweep_every_second(core, T0 + 1, T0 + 15) == []
    assert len(core.sweep(T0 + 15.1, share=0.1)) == 1  # a round of 10 starts: one (dead) member per call
    core.unbind("g", group.bindings[3].member)  # gone while the round still holds it (silent too)
    dead = [b.member for k in range(2, 12) for b in core.sweep(T0 + 15 + k * 0.1, share=0.1)]
    assert sorted(dead) == sorted(b.member for b in group.bindings[:9] if b is not group.bindings[3])
    assert core.stats["bound"] == 0 and core.stats["dead"] == 9


def test_a_gap_between_sweeps_kills_no_one() -> None:
    core = RelayCore(RelayConfig(dead_after=15.0))
    group = Group(core, "g", 2)
    group.join_all(now=T0)
    core.sweep(T0 + 1)
    assert core.sweep(T0 + 100) == []  # the relay was suspended (or the clock jumped): no one could be heard
    assert core.sweep(T0 + 50) == []  # the clock went back
    assert core.sweep(T0 + 51) == []
    assert group.join(0, now=T0 + 60).kind == "keepalive"
    assert sweep_every_second(core, T0 + 52, T0 + 66) == [group.bindings[1]]


def test_clock_going_back_does_not_block_the_rate_limit() -> None:
    core = RelayCore(RelayConfig(rate_packets_per_s=10.0, rate_burst=5))
    group = Group(core, "g", 2)
    group.join_all(now=T0)
    core.set_talker("g", group.bindings[0].ssrc)
    assert group.send(0, now=T0 + 1) is not None
    assert group.send(0, now=T0 - 3600) is not None  # an hour back: the bucket keeps what it had
    assert group.send(0, now=T0 - 3599) is not None


def test_keepalive_updates_last_seen(core: RelayCore) -> None:
    group = Group(core, "g", 1)
    group.join(0, now=T0)
    assert group.join(0, now=T0 + 5).kind == "keepalive"
    assert core.members("g")[0][2] == T0 + 5
    assert core.stats["keepalive"] == 1


def test_config_is_checked() -> None:
    with pytest.raises(ValueError):
        RelayConfig(dead_after=5.0, keepalive_interval=5.0)
    with pytest.raises(ValueError):
        RelayConfig(rate_packets_per_s=0)


# --- floor control ----------------------------------------------------------------------------------------


def test_floor_packets_only_from_bound_members(core: RelayCore) -> None:
    group = Group(core, "g", 2)
    group.join(0)
    packet = floor_packet(group.bindings[0].ssrc)
    assert core.handle_rtcp(packet, group.addrs[0], T0) == RtcpResult("floor", group.bindings[0], packet)
    assert core.handle_rtcp(packet, group.addrs[1], T0).kind == "dropped"  # m1 has not bound
    assert core.handle_rtcp(packet, addr(55), T0).kind == "dropped"
    assert core.stats["floor"] == 1 and core.stats["dropped_rtcp"] == 2


def test_other_rtcp_from_members_is_dropped(core: RelayCore) -> None:
    group = Group(core, "g", 1)
    group.join(0)
    receiver_report = bytes.fromhex("81c90007") + bytes(28)
    assert core.handle_rtcp(receiver_report, group.addrs[0], T0).kind == "dropped"
    too_long = bytes.fromhex("80cc00ff") + bytes(12)  # length field beyond the datagram
    assert core.handle_rtcp(too_long, group.addrs[0], T0).kind == "dropped"
    assert core.stats["dropped_rtcp"] == 1 and core.stats["dropped_malformed"] == 1


# --- unbind ---------------------------------------------------------------------------------------------


def test_unbind(core: RelayCore) -> None:
    group = Group(core, "g", 3)
    group.join_all()
    core.set_talker("g", group.bindings[0].ssrc)
    core.unbind("g", "g-m1")
    assert group.send(0) == [group.addrs[2]]
    assert core.route(rtp(group.bindings[1].ssrc), group.addrs[1], T0 + 1) is None
    assert group.join(1).kind == "refused"  # its binding is gone with it
    core.unbind("g", "g-m0")  # the talker left: nothing to forward
    assert group.send(0) is None
    core.unbind("g", "nobody")
    core.unbind("nogroup", "nobody")
    assert core.stats["bound"] == 1


def test_unbind_voids_a_pending_token(core: RelayCore) -> None:
    group = Group(core, "g", 1)
    core.unbind("g", "g-m0")
    assert group.join(0).kind == "refused"


def test_groups_are_forgotten_when_empty(core: RelayCore) -> None:
    group = Group(core, "g", 2)
    group.join_all()
    core.unbind("g", "g-m0")
    core.unbind("g", "g-m1")
    assert core._groups == {}
    core.set_talker("g", None)
    assert core._groups == {}


# --- robustness ----------------------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(
    datagrams=st.lists(
        st.one_of(
            st.binary(max_size=64),
            st.binary(min_size=12, max_size=64).map(lambda b: bytes((0x80 | b[0] & 0x3F,)) + b[1:]),
            st.sampled_from(
                [
                    rtp(0x1000),
                    rtp(0x1001),
                    join_packet(0x1000, b"\x01" * 8, 1, binding_key(b"\xc0" * 16, b"\x01" * 8)),
                    join_packet(0x1000, b"\x01" * 8, 2, bytes(32)),
                    floor_packet(0x1001),
                ]
            ),
        ),
        max_size=20,
    ),
    sources=st.lists(st.integers(0, 3), min_size=20, max_size=20),
)
def test_route_never_raises(datagrams: list[bytes], sources: list[int]) -> None:
    core = RelayCore(RelayConfig(rate_packets_per_s=50.0, rate_burst=5))
    group = Group(core, "g", 2)
    group.join(1)
    core.set_talker("g", 0x1000)
    now = T0
    for datagram, source in zip(datagrams, sources, strict=False):
        now += 0.01
        result = core.route(datagram, addr(source), now)
        assert result is None or isinstance(result, list)
        assert isinstance(core.handle_rtcp(datagram, addr(source), now), RtcpResult)
    core.sweep(now + 100)
    assert all(v >= 0 for v in core.stats.values())


def test_floor_control_has_its_own_limit_within_the_members_rate() -> None:
    from ptt.relaycore import RelayConfig

    core = RelayCore(RelayConfig(floor_packets_per_s=2.0, floor_burst=3))
    signer = JoinSigner(7, bytes(range(8)), b"csk" * 6)
    core.expect(signer.binding_id, Binding("g", "alice", 7), binding_key(b"csk" * 6, signer.binding_id), 0.0)
    assert core.handle_rtcp(signer.packet(), ("10.0.0.1", 5000), 0.0).kind == "joined"
    floor_packet = bytes([0x81, 204, 0, 3]) + (7).to_bytes(4, "big") + b"MCPT" + bytes(4)
    kinds = [core.handle_rtcp(floor_packet, ("10.0.0.1", 5000), 0.0).kind for _ in range(5)]
    assert kinds == ["floor"] * 3 + ["dropped"] * 2
    assert core.stats["dropped_floor_rate"] == 2
    assert core.handle_rtcp(floor_packet, ("10.0.0.1", 5000), 0.5).kind == "floor"  # refilled at 2/s
    # keepalives are not floor control: never cut by the floor limit
    assert core.handle_rtcp(signer.packet(), ("10.0.0.1", 5000), 0.5).kind == "keepalive"


def test_past_a_cluster_nodes_lease_deadline_nothing_is_served(core: RelayCore) -> None:
    """A node that lost the certainty of its leases (``serving_until``, ptt.cluster) forwards no media and takes no
    join or floor packet, even before its shell has dropped the groups: another node may serve them already."""
    group = Group(core, "g", 2)
    group.join(0)
    group.join(1)
    core.set_talker("g", group.bindings[0].ssrc)
    core.serving_until = T0 + 1.0
    media = rtp(group.bindings[0].ssrc)
    assert core.route(media, group.addrs[0], T0 + 0.5) == [group.addrs[1]]
    assert core.route(media, group.addrs[0], T0 + 1.5) is None
    assert core.handle_rtcp(group.packet(1), group.addrs[1], T0 + 1.5).kind == "dropped"
    assert core.stats["dropped_fenced"] == 2
    core.serving_until = T0 + 10.0  # renewed
    assert core.route(media, group.addrs[0], T0 + 2.0) == [group.addrs[1]]
