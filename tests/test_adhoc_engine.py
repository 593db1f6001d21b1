"""Ad-hoc group signalling (``ptt.adhoc.engine``) over an in-memory LAN: discovery, key delivery until
acknowledged, trust decisions, late join, rekey on removal, manager take-over, peers that vanish and return."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest

from ptt.adhoc.engine import (
    MULTICAST,
    AdhocConfig,
    AdhocEngine,
    AdhocError,
    Event,
    GroupKeyed,
    GroupRemoved,
    GroupUpdated,
    MemberKeyed,
    Refused,
    Role,
)
from ptt.adhoc.messages import Envelope, GroupInfo, KeyDelivery, seal
from ptt.crypto import kms
from ptt.groupkeys import make_group_key
from ptt.kmsformat.trust import KmsTrust
from ptt.mikey.imessage import IdentityKeys, KmsDomain, build_i_message

NOW = 1_790_000_000.0
DOMAIN = "@example.org"
ALICE, BOB, CAROL, DAVE = (f"sip:{n}{DOMAIN}" for n in ("alice", "bob", "carol", "dave"))


@dataclass
class World:
    domain: KmsDomain
    master: kms.MasterSecrets
    cache: dict[tuple[str, int], IdentityKeys] = field(default_factory=dict)

    def keys(self, uri: str, now: float) -> IdentityKeys:
        period = self.domain.period_number(now)
        if (uri, period) not in self.cache:
            material = kms.derive_user_keys(self.domain.uid(uri, period), self.master)
            self.cache[(uri, period)] = IdentityKeys(uri, self.domain, period, material.ssk, material.pvt, material.rsk)
        return self.cache[(uri, period)]


@pytest.fixture(scope="module")
def world() -> World:
    master = kms.generate_master_secrets()
    return World(KmsDomain("kms.example.org", master.kpak, master.z_public), master)


@pytest.fixture(scope="module")
def other_world() -> World:
    master = kms.generate_master_secrets()
    return World(KmsDomain("kms.elsewhere.org", master.kpak, master.z_public), master)


class Lan:
    """Engines on one segment: multicast reaches every connected engine, unicast the addressed one."""

    def __init__(self, world: World, *, loss: float = 0.0, seed: int = 1, config: AdhocConfig | None = None) -> None:
        self.world = world
        self.now = NOW
        self.engines: dict[str, AdhocEngine] = {}
        self.addresses: dict[str, tuple[str, int]] = {}
        self.connected: set[str] = set()
        self.events: dict[str, list[Event]] = {}
        self.loss = loss
        self.random = random.Random(seed)
        self.config = config or AdhocConfig()
        self.sent: list[tuple[str, bytes, tuple[str, int]]] = []
        self.drop: Callable[[str, bytes, tuple[str, int]], bool] = lambda sender, data, to: False

    def add(
        self,
        uri: str,
        *,
        accept: Callable[[str, GroupInfo], bool] | None = None,
        world: World | None = None,
        trust: KmsTrust | None = None,
    ) -> AdhocEngine:
        """An engine for ``uri`` keyed by ``world``'s KMS (default: the LAN's), trusting ``trust`` (default: it)."""
        index = len(self.addresses) + 1 if uri not in self.addresses else int(self.addresses[uri][0].split(".")[-1])
        address = (f"10.0.0.{index}", 5000 + index)
        own = world or self.world
        engine = AdhocEngine(
            uri=uri,
            keys_at=lambda t: own.keys(uri, t),
            # like a keystore: the previous, current and next key period (provisioned ahead, not yet pruned)
            held_keys=lambda: [own.keys(uri, self.now + k * own.domain.key_period) for k in (-1, 0, 1)],
            trust=trust or KmsTrust(own.domain),
            unicast_port=address[1],
            now=self.now,
            accept_from=accept,
            config=self.config,
        )
        self.engines[uri] = engine
        self.addresses[uri] = address
        self.connected.add(uri)
        self.events[uri] = []
        return engine

    def deliver(self) -> None:
        for _ in range(100):
            moved = False
            for uri, engine in list(self.engines.items()):
                self.events[uri] += engine.events()
                for data, to in engine.outgoing():
                    if uri not in self.connected:
                        continue
                    self.sent.append((uri, data, to))
                    moved = True
                    targets = [u for u in self.connected if u != uri and (to == MULTICAST or self.addresses[u] == to)]
                    for target in targets:
                        if self.random.random() < self.loss or self.drop(uri, data, to):
                            continue
                        self.engines[target].datagram(data, self.addresses[uri], self.now)
            if not moved:
                for uri, engine in self.engines.items():
                    self.events[uri] += engine.events()
                return
        raise AssertionError("datagrams never stopped")

    def run(self, seconds: float, step: float = 0.05) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            for engine in self.engines.values():
                if engine.next_deadline() <= self.now:
                    engine.tick(self.now)
            self.deliver()

    def of(self, uri: str, kind: type) -> list:  # type: ignore[type-arg]
        return [e for e in self.events[uri] if isinstance(e, kind)]


def keyed(lan: Lan, uri: str, group: str) -> bytes | None:
    state = lan.engines[uri].groups.get(group)
    return state.key.gmk if state is not None and state.key is not None else None


def start(world: World, *members: str, **kwargs: object) -> Lan:
    lan = Lan(world, **kwargs)  # type: ignore[arg-type]
    for uri in members:
        lan.add(uri)
    lan.run(0.1)  # first Hellos: everyone knows everyone
    return lan


def test_create_keys_every_member_and_every_member_acknowledges(world: World) -> None:
    lan = start(world, ALICE, BOB, CAROL)
    info = lan.engines[ALICE].create("rescue", [BOB, CAROL], lan.now)
    lan.run(0.5)
    gmk = keyed(lan, ALICE, info.uri)
    assert gmk is not None and keyed(lan, BOB, info.uri) == gmk and keyed(lan, CAROL, info.uri) == gmk
    assert {e.member for e in lan.of(ALICE, MemberKeyed)} == {BOB, CAROL}
    assert all(e.seconds < 0.2 for e in lan.of(ALICE, MemberKeyed))
    for uri in (BOB, CAROL):
        (event,) = lan.of(uri, GroupKeyed)
        assert event.role == Role.MEMBER and event.info.manager == ALICE and event.info.name == "rescue"
        assert event.key.rand == lan.engines[ALICE].groups[info.uri].key.rand  # type: ignore[union-attr]
    assert info.uri.startswith("sip:adhoc.rescue.") and info.uri.endswith(DOMAIN)
    assert info.media_host.startswith("239.255.") and info.media_port % 2 == 0
    assert not any(lan.of(u, Refused) for u in lan.engines)


def test_keying_many_members_is_spread_over_turns_so_a_talker_is_not_held_up(world: World) -> None:
    """Each I_MESSAGE costs ~3 ms of SAKKE + ECCSI: at most ``builds_per_turn`` per call, the rest 10 ms later."""
    members = [f"sip:m{i}{DOMAIN}" for i in range(10)]
    lan = start(world, ALICE, *members)
    alice = lan.engines[ALICE]
    info = alice.create("rescue", members, lan.now)

    def deliveries_sent() -> int:
        count = sum(u == ALICE and isinstance(Envelope.parse(d).body, KeyDelivery) for u, d, _ in lan.sent)
        lan.sent.clear()
        return count

    lan.deliver()
    assert deliveries_sent() == alice.config.builds_per_turn == 3
    assert alice.next_deadline() == pytest.approx(lan.now + alice.config.build_spacing)
    lan.run(0.01, step=0.01)
    assert deliveries_sent() == 3
    lan.run(0.5, step=0.01)
    assert all(keyed(lan, m, info.uri) == keyed(lan, ALICE, info.uri) is not None for m in members)
    assert max(e.seconds for e in lan.of(ALICE, MemberKeyed)) < 0.05
    # a rekey of the nine others is spread the same way
    lan.sent.clear()
    alice.remove_member(info.uri, members[0], lan.now)
    lan.deliver()
    assert deliveries_sent() == 3


def test_a_member_not_yet_on_the_lan_is_probed_for_and_keyed_when_it_appears(world: World) -> None:
    lan = start(world, ALICE, BOB)
    info = lan.engines[ALICE].create("late", [BOB, CAROL], lan.now)
    lan.run(2.0)
    assert keyed(lan, BOB, info.uri) is not None
    assert any(to == MULTICAST and uri == ALICE for uri, _, to in lan.sent)
    lan.add(CAROL)
    lan.run(1.5)
    assert keyed(lan, CAROL, info.uri) == keyed(lan, ALICE, info.uri)


def test_lost_datagrams_are_retransmitted_until_acknowledged(world: World) -> None:
    lan = start(world, ALICE, BOB, CAROL)
    # lose the first three key deliveries and the first ack
    lost = {"key": 3, "ack": 1}

    def drop(sender: str, data: bytes, to: tuple[str, int]) -> bool:
        kind = "key" if sender == ALICE and to != MULTICAST else "ack" if to == lan.addresses[ALICE] else None
        if kind is not None and lost[kind] > 0 and (kind == "ack" or b"PTTA" in data):
            lost[kind] -= 1
            return True
        return False

    lan.drop = drop
    info = lan.engines[ALICE].create("lossy", [BOB, CAROL], lan.now)
    lan.run(4.0)
    assert keyed(lan, BOB, info.uri) is not None and keyed(lan, CAROL, info.uri) is not None
    assert lan.engines[ALICE].groups[info.uri].keyed(BOB) and lan.engines[ALICE].groups[info.uri].keyed(CAROL)
    deliveries = [d for u, d, to in lan.sent if u == ALICE and to != MULTICAST]
    assert len(deliveries) >= 5 and len(set(deliveries)) == len(deliveries)  # each retransmission freshly sealed


def test_heavy_loss_still_keys_everyone(world: World) -> None:
    lan = start(world, ALICE, BOB, CAROL, DAVE, loss=0.4, seed=7)
    info = lan.engines[ALICE].create("storm", [BOB, CAROL, DAVE], lan.now)
    lan.run(20.0)
    gmk = keyed(lan, ALICE, info.uri)
    assert all(keyed(lan, u, info.uri) == gmk for u in (BOB, CAROL, DAVE))
    assert all(lan.engines[ALICE].groups[info.uri].keyed(u) for u in (BOB, CAROL, DAVE))


def test_policy_refuses_managers_it_does_not_trust(world: World) -> None:
    lan = start(world, ALICE, CAROL)
    lan.add(BOB, accept=lambda sender, info: sender == CAROL)
    lan.run(0.1)
    info = lan.engines[ALICE].create("uninvited", [BOB], lan.now)
    lan.run(1.0)
    assert keyed(lan, BOB, info.uri) is None
    assert any("policy" in e.reason for e in lan.of(BOB, Refused))
    info = lan.engines[CAROL].create("welcome", [BOB], lan.now)
    lan.run(1.0)
    assert keyed(lan, BOB, info.uri) is not None


def test_untrusted_domain_forged_and_unsigned_keys_are_refused(world: World, other_world: World) -> None:
    lan = start(world, ALICE, BOB)
    bob = lan.engines[BOB]
    key = make_group_key()
    info = GroupInfo("sip:adhoc.x.000000@example.org", "x", ALICE, 1, "239.255.1.1", 20000, key.gmk_id, (ALICE, BOB))

    def i_message(signer: IdentityKeys) -> bytes:
        return build_i_message(
            initiator=signer, responder_uri=BOB, key=key.gmk, key_id=key.gmk_id, now=lan.now, rand=key.rand
        )

    alice_keys = world.keys(ALICE, lan.now)
    mallory_keys = world.keys("sip:mallory@example.org", lan.now)
    stranger = other_world.keys(ALICE, lan.now)  # "alice" keyed by a KMS we do not trust
    genuine = i_message(alice_keys)
    unsigned = genuine[:-129] + bytes(129)
    cases = {
        "untrusted KMS": seal(stranger, KeyDelivery(info, i_message(stranger)), lan.now),
        "I_MESSAGE signed by another": seal(alice_keys, KeyDelivery(info, i_message(mallory_keys)), lan.now),
        "envelope by another": seal(mallory_keys, KeyDelivery(info, genuine), lan.now),
        "unsigned I_MESSAGE": seal(alice_keys, KeyDelivery(info, unsigned), lan.now),
        "garbage": b"PTTA" + bytes(200),
        "empty": b"",
    }
    for name, data in cases.items():
        before = len(bob.events())
        bob.datagram(data, lan.addresses[ALICE], lan.now)
        refused = [e for e in bob.events() if isinstance(e, Refused)]
        assert refused and not bob.groups, (name, before)
    # the genuine message, once: accepted; replayed: dropped as a duplicate, counted, nothing to report (the
    # copies of a Leave and multicast looped twice are ordinary in a healthy group)
    data = seal(alice_keys, KeyDelivery(info, genuine), lan.now)
    bob.datagram(data, lan.addresses[ALICE], lan.now)
    assert bob.groups[info.uri].key is not None and bob.groups[info.uri].key.gmk == key.gmk  # type: ignore[union-attr]
    bob.events()
    refusals, duplicates = bob.stats["refused"], bob.stats["duplicate"]
    bob.datagram(data, lan.addresses[ALICE], lan.now)
    assert not bob.events() and bob.stats["duplicate"] == duplicates + 1 and bob.stats["refused"] == refusals


def test_a_key_whose_description_names_another_gmk_is_refused(world: World) -> None:
    lan = start(world, ALICE, BOB)
    key, other = make_group_key(), make_group_key()
    info = GroupInfo("sip:adhoc.y.000000@example.org", "y", ALICE, 1, "239.255.1.1", 20000, other.gmk_id, (ALICE, BOB))
    message = build_i_message(
        initiator=world.keys(ALICE, lan.now), responder_uri=BOB, key=key.gmk, key_id=key.gmk_id, now=lan.now
    )
    lan.engines[BOB].datagram(seal(world.keys(ALICE, lan.now), KeyDelivery(info, message), lan.now), ("x", 1), lan.now)
    assert not lan.engines[BOB].groups


def test_add_gives_the_current_key_and_remove_rekeys_without_the_removed(world: World) -> None:
    lan = start(world, ALICE, BOB, CAROL, DAVE)
    alice = lan.engines[ALICE]
    info = alice.create("ops", [BOB, CAROL], lan.now)
    lan.run(0.5)
    first = keyed(lan, ALICE, info.uri)
    alice.add_member(info.uri, DAVE, lan.now)
    lan.run(0.5)
    assert keyed(lan, DAVE, info.uri) == first
    assert lan.engines[BOB].groups[info.uri].info.has_member(DAVE)  # the others learnt the new member list
    assert any(isinstance(e, GroupUpdated) for e in lan.events[BOB])
    with pytest.raises(AdhocError):
        alice.add_member(info.uri, DAVE, lan.now)
    with pytest.raises(AdhocError):
        lan.engines[BOB].remove_member(info.uri, CAROL, lan.now)  # only the manager may

    alice.remove_member(info.uri, CAROL, lan.now)
    lan.run(1.0)
    second = keyed(lan, ALICE, info.uri)
    assert second is not None and second != first
    assert keyed(lan, BOB, info.uri) == second and keyed(lan, DAVE, info.uri) == second
    assert info.uri not in lan.engines[CAROL].groups  # told it was removed, and it holds no new key
    assert any(isinstance(e, GroupRemoved) for e in lan.events[CAROL])
    assert not any(isinstance(e, GroupKeyed) and e.key.gmk == second for e in lan.events[CAROL])
    # the removed member's held keys never include the new GMK, even when it asks again
    lan.run(6.0)
    assert info.uri not in lan.engines[CAROL].groups


def test_a_member_leaving_is_rekeyed_out(world: World) -> None:
    lan = start(world, ALICE, BOB, CAROL)
    info = lan.engines[ALICE].create("ops", [BOB, CAROL], lan.now)
    lan.run(0.5)
    first = keyed(lan, ALICE, info.uri)
    lan.engines[CAROL].leave(info.uri, lan.now)
    lan.run(1.0)
    assert keyed(lan, BOB, info.uri) not in (None, first)
    assert not lan.engines[ALICE].groups[info.uri].info.has_member(CAROL)


def test_the_group_survives_its_creator_leaving(world: World) -> None:
    lan = start(world, ALICE, BOB, CAROL, DAVE)
    info = lan.engines[ALICE].create("survive", [BOB, CAROL, DAVE], lan.now)
    lan.run(0.5)
    first = keyed(lan, BOB, info.uri)
    lan.engines[ALICE].leave(info.uri, lan.now)
    lan.deliver()
    lan.connected.discard(ALICE)
    lan.run(2.0)
    bob_group = lan.engines[BOB].groups[info.uri]
    assert bob_group.role == Role.MANAGER and bob_group.info.manager == BOB  # the first member took over
    assert bob_group.info.members == (BOB, CAROL, DAVE) and bob_group.info.revision > info.revision
    second = keyed(lan, BOB, info.uri)
    assert second not in (None, first) and keyed(lan, CAROL, info.uri) == second == keyed(lan, DAVE, info.uri)
    assert lan.engines[CAROL].groups[info.uri].info.manager == BOB
    # and the new manager can manage
    lan.engines[BOB].remove_member(info.uri, DAVE, lan.now)
    lan.run(1.0)
    assert info.uri not in lan.engines[DAVE].groups


def test_a_silent_manager_is_replaced_and_rejoins_as_a_member(world: World) -> None:
    config = AdhocConfig(manager_timeout=5.0)
    lan = start(world, ALICE, BOB, CAROL, config=config)
    info = lan.engines[ALICE].create("silent", [BOB, CAROL], lan.now)
    lan.run(0.5)
    lan.connected.discard(ALICE)  # link down: no Leave
    lan.run(8.0)
    assert lan.engines[BOB].groups[info.uri].role == Role.MANAGER
    second = keyed(lan, BOB, info.uri)
    assert keyed(lan, CAROL, info.uri) == second
    lan.connected.add(ALICE)
    lan.run(3.0)
    alice_group = lan.engines[ALICE].groups[info.uri]
    assert alice_group.role == Role.MEMBER and alice_group.info.manager == BOB
    assert keyed(lan, ALICE, info.uri) == second


def test_a_member_that_restarts_gets_the_key_again(world: World) -> None:
    lan = start(world, ALICE, BOB, CAROL)
    info = lan.engines[ALICE].create("restart", [BOB, CAROL], lan.now)
    lan.run(0.5)
    gmk = keyed(lan, ALICE, info.uri)
    lan.connected.discard(CAROL)
    lan.run(10.0)  # carol is away past the peer timeout
    lan.add(CAROL)  # a fresh process: no state at all
    lan.run(1.0)
    assert keyed(lan, CAROL, info.uri) == gmk


def test_removed_member_announcement_cannot_be_forged_by_a_non_member(world: World) -> None:
    lan = start(world, ALICE, BOB)
    info = lan.engines[ALICE].create("guarded", [BOB], lan.now)
    lan.run(0.5)
    from ptt.adhoc.messages import GroupAnnouncement

    mallory = world.keys("sip:mallory@example.org", lan.now)
    forged = GroupInfo(info.uri, "guarded", mallory.uri, 99, info.media_host, info.media_port, info.gmk_id,
                       (mallory.uri,))  # fmt: skip
    lan.engines[BOB].datagram(seal(mallory, GroupAnnouncement(forged), lan.now), ("10.9.9.9", 1), lan.now)
    assert info.uri in lan.engines[BOB].groups and lan.engines[BOB].groups[info.uri].info.manager == ALICE


def test_commands_refuse_bad_input(world: World) -> None:
    lan = start(world, ALICE)
    alice = lan.engines[ALICE]
    with pytest.raises(AdhocError):
        alice.create("x", ["not a uri"], lan.now)
    with pytest.raises(AdhocError):
        alice.leave("sip:nope@example.org", lan.now)
    with pytest.raises(AdhocError):
        alice.find("nope")
    info = alice.create("solo", [], lan.now)
    with pytest.raises(AdhocError):
        alice.remove_member(info.uri, ALICE, lan.now)
    assert alice.find("solo").info == info


PARTNER_BOB, PARTNER_ERIN = "sip:bob@partner.org", "sip:erin@ops.partner.org"


def test_members_of_a_partner_domain_our_kms_vouches_for_are_keyed_both_ways(world: World, other_world: World) -> None:
    """Alice (example.org) and Bob (partner.org, keyed by kms.partner.org): each trusts the other's KMS for its
    users' domains only. A group of either manager keys both; SAKKE goes under the member's own KMS."""
    partner = World(replace(other_world.domain, kms_uri="kms.partner.org"), other_world.master)
    ours = KmsTrust(world.domain, {"kms.partner.org": (partner.domain, ("partner.org",))})
    theirs = KmsTrust(partner.domain, {world.domain.kms_uri: (world.domain, ("example.org",))})
    lan = Lan(world)
    for uri in (ALICE, CAROL):
        lan.add(uri, trust=ours)
    for uri in (PARTNER_BOB, PARTNER_ERIN):
        lan.add(uri, world=partner, trust=theirs)
    lan.add(DAVE)  # trusts only example.org: partner users' datagrams are refused, and it is not in the group
    lan.run(0.1)
    info = lan.engines[ALICE].create("joint", [PARTNER_BOB, PARTNER_ERIN, CAROL], lan.now)
    lan.run(1.0)
    gmk = keyed(lan, ALICE, info.uri)
    assert gmk is not None and all(keyed(lan, u, info.uri) == gmk for u in (PARTNER_BOB, PARTNER_ERIN, CAROL))
    assert any("untrusted" in e.reason.lower() or "kms" in e.reason.lower() for e in lan.of(DAVE, Refused))
    # the partner's member manages a group of its own with Alice in it
    joint = lan.engines[PARTNER_BOB].create("return", [ALICE], lan.now)
    lan.run(1.0)
    assert keyed(lan, ALICE, joint.uri) == keyed(lan, PARTNER_BOB, joint.uri) is not None
    assert not any(lan.of(u, Refused) for u in (ALICE, CAROL, PARTNER_BOB, PARTNER_ERIN))


def test_a_partner_kms_cannot_speak_for_our_users(world: World, other_world: World) -> None:
    """kms.partner.org can issue keys for any URI; datagrams it vouches for as sip:carol@example.org are refused."""
    partner = World(replace(other_world.domain, kms_uri="kms.partner.org"), other_world.master)
    ours = KmsTrust(world.domain, {"kms.partner.org": (partner.domain, ("partner.org",))})
    lan = Lan(world)
    lan.add(ALICE, trust=ours)
    lan.add(BOB, trust=ours)
    lan.run(0.1)
    fake_carol = partner.keys(CAROL, lan.now)  # the partner KMS's keys for *our* user
    key = make_group_key()
    info = GroupInfo("sip:adhoc.x.000000@example.org", "x", CAROL, 1, "239.255.1.1", 20000, key.gmk_id, (CAROL, BOB))
    i_message = build_i_message(
        initiator=fake_carol, responder_uri=BOB, key=key.gmk, key_id=key.gmk_id, now=lan.now, rand=key.rand
    )
    lan.engines[BOB].datagram(seal(fake_carol, KeyDelivery(info, i_message), lan.now), ("10.0.0.9", 9), lan.now)
    (refused,) = lan.engines[BOB].events()
    assert isinstance(refused, Refused) and "does not speak for" in refused.reason
    assert keyed(lan, BOB, info.uri) is None


def test_a_group_carries_on_across_a_key_period_boundary(world: World) -> None:
    """Keys built and signed in period P and delivered in P+1 still open (members hold both periods' keys); after
    the boundary the manager signs and encrypts under P+1 (the next period's keys, provisioned ahead)."""
    from ptt.ts33180 import period_bounds

    period = world.domain.period_number(NOW)
    _, boundary = period_bounds(period, world.domain.key_period, world.domain.key_period_offset)
    lan = Lan(world, config=AdhocConfig(rekey_each_period=False))  # the GMK of period P must reach them in P+1
    lan.now = boundary - 0.5
    for uri in (ALICE, BOB, CAROL):
        lan.add(uri)
    lan.run(0.1)
    info = lan.engines[ALICE].create("midnight", [BOB, CAROL], lan.now)
    lan.drop = lambda sender, data, to: lan.now < boundary and to != MULTICAST  # first copies lost before midnight
    lan.run(1.5)
    gmk = keyed(lan, ALICE, info.uri)
    assert gmk is not None and keyed(lan, BOB, info.uri) == gmk and keyed(lan, CAROL, info.uri) == gmk
    assert lan.now > boundary and not any(lan.of(u, Refused) for u in (ALICE, BOB, CAROL))
    lan.engines[ALICE].remove_member(info.uri, CAROL, lan.now)  # a rekey under the new period's keys
    lan.run(0.5)
    assert keyed(lan, BOB, info.uri) == keyed(lan, ALICE, info.uri) not in (None, gmk)
    assert world.domain.period_number(lan.now) == period + 1


def test_the_manager_rekeys_when_a_new_key_period_begins(world: World) -> None:
    from ptt.ts33180 import period_bounds

    _, boundary = period_bounds(world.domain.period_number(NOW), world.domain.key_period, 0)
    lan = Lan(world)
    lan.now = boundary - 5.0
    for uri in (ALICE, BOB, CAROL):
        lan.add(uri)
    lan.run(0.1)
    info = lan.engines[ALICE].create("night shift", [BOB, CAROL], lan.now)
    lan.run(1.0)
    before = keyed(lan, ALICE, info.uri)
    assert before is not None and keyed(lan, BOB, info.uri) == keyed(lan, CAROL, info.uri) == before
    lan.run(3.0)
    assert keyed(lan, ALICE, info.uri) == before  # same period: no change
    lan.run(3.0)  # midnight passes: within one tick (≤ a Hello interval) a fresh GMK reaches everyone
    after = keyed(lan, ALICE, info.uri)
    assert after not in (None, before) and keyed(lan, BOB, info.uri) == keyed(lan, CAROL, info.uri) == after
    group = lan.engines[ALICE].groups[info.uri]
    assert group.info.revision == 2 and group.info.members == info.members
    lan.run(5.0)
    assert lan.engines[ALICE].groups[info.uri].info.revision == 2  # once per period, not at every tick
