"""RSK pairing lines built when a key set arrives (client.rsklines) and the bounded line cache they go into."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import rsklines
from ptt.crypto import kms, pairing, sakke
from ptt.crypto.pairing import LINE_CACHE_SIZE, MillerLines, miller_lines
from ptt.groupkeys import build_gmk_messages, make_group_key
from ptt.kmsformat.enrolment import Enrolment
from ptt.kmsformat.model import KmsCertificate
from ptt.mikey.imessage import IdentityKeys, KmsDomain, ReplayCache, receive_i_message
from server.kms.material import certificate_pem, make_self_signed
from tests.test_session import ALICE, GROUP, NOW, identity, session_for

World = tuple[KmsDomain, kms.MasterSecrets]


@pytest.fixture(scope="module")
def world() -> World:
    master = kms.generate_master_secrets()
    return KmsDomain("kms.example.org", master.kpak, master.z_public, 2592000, 0), master


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    miller_lines.cache_clear()
    yield
    miller_lines.cache_clear()


def keys_of(world: World, uri: str, period: int) -> IdentityKeys:
    domain, master = world
    material = kms.derive_user_keys(domain.uid(uri, period), master)
    return IdentityKeys(uri, domain, period, material.ssk, material.pvt, material.rsk)


def test_warmed_lines_decrypt_as_cold_ones_and_the_decapsulation_builds_none(world: World) -> None:
    domain, _ = world
    period = domain.period_number(NOW) + 1  # the next key period's RSK, as at a rollover
    me = keys_of(world, ALICE, period)
    ssv = os.urandom(16)
    encapsulated = sakke.encapsulate(ssv, me.uid, domain.z)
    cold = sakke.decapsulate(encapsulated, me.uid, me.rsk, domain.z)
    miller_lines.cache_clear()

    assert rsklines.warm_keys([me]).result(timeout=30) == 1
    assert miller_lines.holds(me.rsk) and miller_lines.misses == 1
    assert sakke.decapsulate(encapsulated, me.uid, me.rsk, domain.z) == cold == ssv
    assert miller_lines.misses == 1 and miller_lines.hits >= 1  # the decapsulation used the warmed table
    assert rsklines.warm_keys([me]).result(timeout=30) == 0  # held already: nothing built again


def test_a_gmk_under_the_warmed_rsk_opens(world: World) -> None:
    domain, _ = world
    period = domain.period_number(NOW)
    me, group = keys_of(world, ALICE, period), keys_of(world, GROUP, period)
    rsklines.warm_keys([me]).result(timeout=30)
    misses = miller_lines.misses
    key = make_group_key()
    message = build_gmk_messages(group, key, [ALICE], now=NOW)[ALICE]
    received = receive_i_message(
        message,
        responder=[me],
        expected_initiators=GROUP,
        trusted_kms={domain.kms_uri: domain},
        now=NOW,
        replay_cache=ReplayCache(16),
    )
    assert received.key == key.gmk and miller_lines.misses == misses


def test_line_cache_is_a_bounded_lru(world: World) -> None:
    rsks = [keys_of(world, f"sip:user{i}@example.org", 1).rsk for i in range(LINE_CACHE_SIZE + 2)]
    first = miller_lines(rsks[0])
    for rsk in rsks[1:LINE_CACHE_SIZE]:
        miller_lines(rsk)
    assert len(miller_lines) == LINE_CACHE_SIZE
    assert miller_lines(rsks[0]) is first  # a hit, and now the most recently used
    miller_lines(rsks[LINE_CACHE_SIZE])  # evicts the least recently used: rsks[1]
    miller_lines(rsks[LINE_CACHE_SIZE + 1])  # then rsks[2]
    assert len(miller_lines) == LINE_CACHE_SIZE
    assert miller_lines.holds(rsks[0]) and not miller_lines.holds(rsks[1]) and not miller_lines.holds(rsks[2])


def test_warming_runs_off_the_calling_thread_and_returns_at_once(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    me = keys_of(world, ALICE, 5)
    release = threading.Event()
    builders: list[int] = []

    class Recording(MillerLines):
        def __init__(self, point: tuple[object, object]) -> None:
            builders.append(threading.get_ident())
            assert release.wait(30)
            super().__init__(point)

    monkeypatch.setattr(pairing, "MillerLines", Recording)
    future = rsklines.warm_keys([me])
    assert not future.done()  # returned while the table is still being built
    release.set()
    assert future.result(timeout=30) == 1
    assert builders and builders[0] != threading.get_ident()
    assert miller_lines.holds(me.rsk)


def test_warming_asks_for_at_most_what_the_cache_keeps(world: World) -> None:
    rsks = [keys_of(world, f"sip:user{i}@example.org", 2).rsk for i in range(LINE_CACHE_SIZE + 1)]
    assert rsklines.warm([*rsks, b""]).result(timeout=60) == LINE_CACHE_SIZE
    assert not miller_lines.holds(rsks[0]) and all(miller_lines.holds(r) for r in rsks[1:])


def test_a_malformed_rsk_is_skipped_not_raised() -> None:
    assert rsklines.warm([b"\x04" + bytes(256)]).result(timeout=30) == 0
    assert len(miller_lines) == 0


def test_a_session_warms_the_rsks_its_keystore_holds(tmp_path: Path) -> None:
    master = kms.generate_master_secrets()
    certificate = KmsCertificate("kms.example.org", 2592000, 0, master.z_public, master.kpak)
    _, cert = make_self_signed("kms", san_dns=["localhost"], san_ips=["127.0.0.1"])
    pem = certificate_pem(cert)
    world = certificate.domain(), master, Enrolment("kms.example.org", "https://127.0.0.1:8443", pem, pem, certificate)
    session = session_for(world, ALICE, tmp_path)
    me = identity(world, ALICE)
    session.warm_rsk_lines().result(timeout=30)
    assert miller_lines.holds(me.rsk)
    miller_lines.cache_clear()
    assert session.warm_rsk_lines().result(timeout=30) == 1 and miller_lines.holds(me.rsk)
