"""client.keystore_watch on a memory reactor: a running client re-reads its keystore file when ``provision --watch``
rewrites it (and only then), puts the new key sets into the live keystore, keeps its keys when the file is bad,
acts once just after each key-period boundary, logs in again when the current period's keys came late, and
records where each GMK came from and which GMK the media heard was under."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from client.keystore import Keystore, StoredKeySet
from client.keystore_watch import KeystoreWatch, KeyUse, watch_session
from ptt.keyrollover import BOUNDARY_DELAY, POLL_INTERVAL, KeyOrigin, Reloaded, period_start
from ptt.kmsformat.enrolment import Enrolment
from ptt.kmsformat.model import KmsCertificate
from server.kms.material import certificate_pem, make_self_signed
from tests import identities

URI = "sip:alice@example.org"
PERIOD = 60


def inline(f: Any, *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(f, *args)


@pytest.fixture(scope="module")
def enrolment() -> Enrolment:
    domain, master = identities.make_world()
    certificate = KmsCertificate(domain.kms_uri, PERIOD, 0, master.z_public, master.kpak)
    _, cert = make_self_signed("kms", san_dns=["localhost"], san_ips=["127.0.0.1"])
    pem = certificate_pem(cert)
    return Enrolment(domain.kms_uri, "https://127.0.0.1:8443", pem, pem, certificate)


def store(path: Path, enrolment: Enrolment, periods: list[int]) -> Keystore:
    """What ``provision`` writes: the keystore file holding ``periods`` (key material is never used here)."""
    keystore = Keystore(path, b"pass")
    keystore.enrolment = enrolment
    for p in periods:
        keystore.key_sets[(URI, p)] = StoredKeySet(URI, p, b"u", b"s%d" % p, b"v", b"r", None, None)
    keystore.save()
    return keystore


@pytest.fixture
def clock(enrolment: Enrolment) -> MemoryReactorClock:
    reactor = MemoryReactorClock()
    domain = enrolment.certificate.domain()
    reactor.advance(period_start(domain, domain.period_number(1.9e9)) + 10)  # 10 s into a period
    return reactor


def period(clock: MemoryReactorClock, enrolment: Enrolment) -> int:
    return enrolment.certificate.domain().period_number(clock.seconds())


def test_a_rewritten_keystore_is_read_once_into_the_live_one(
    clock: MemoryReactorClock, enrolment: Enrolment, tmp_path: Path
) -> None:
    p = period(clock, enrolment)
    path = tmp_path / "alice.ks"
    live = Keystore.open(store(path, enrolment, [p, p + 1]).path, b"pass")
    watch = KeystoreWatch(clock, live, URI, load=inline)
    seen: list[Reloaded] = []
    watch.reloaded_listeners.append(seen.append)
    watch.start()
    assert watch.reloads == 1 and not seen[0].changed  # read once at start: it may have changed since opened
    for _ in range(3):
        clock.advance(POLL_INTERVAL)
    assert watch.reloads == 1  # unchanged: a stat per poll, not a read

    store(path, enrolment, [p, p + 1, p + 2])  # provision --watch renewed
    clock.advance(POLL_INTERVAL)
    assert watch.reloads == 2 and seen[-1].added == (p + 2,)
    assert live.periods(URI) == [p, p + 1, p + 2]
    keys = live.identity_keys(URI, p + 2)
    assert keys is not None and keys.ssk == b"s%d" % (p + 2)
    watch.stop()
    assert not clock.getDelayedCalls()


def test_a_bad_file_keeps_the_keys_held(
    clock: MemoryReactorClock, enrolment: Enrolment, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = period(clock, enrolment)
    path = tmp_path / "alice.ks"
    live = Keystore.open(store(path, enrolment, [p, p + 1]).path, b"pass")
    watch = KeystoreWatch(clock, live, URI, load=inline).start()
    path.write_bytes(b"not a keystore at all")
    with caplog.at_level(logging.WARNING, "ptt.client.keys"):
        clock.advance(POLL_INTERVAL)
        clock.advance(POLL_INTERVAL)  # the same bad file: not read again
    assert [r.message for r in caplog.records if "not reloaded" in r.message] and len(caplog.records) == 1
    assert live.periods(URI) == [p, p + 1]
    store(path, enrolment, [p + 1, p + 2])  # a good file again
    clock.advance(POLL_INTERVAL)
    assert live.periods(URI) == [p + 1, p + 2]
    watch.stop()


def test_each_boundary_is_acted_on_once_and_missing_keys_are_said(
    clock: MemoryReactorClock, enrolment: Enrolment, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = period(clock, enrolment)
    path = tmp_path / "alice.ks"
    live = Keystore.open(store(path, enrolment, [p, p + 1]).path, b"pass")
    watch = KeystoreWatch(clock, live, URI, load=inline)
    boundaries: list[tuple[int, float]] = []
    watch.boundary_listeners.append(lambda n: boundaries.append((n, clock.seconds())))
    watch.start()
    with caplog.at_level(logging.INFO, "ptt.client.keys"):
        for _ in range(int(2 * PERIOD / POLL_INTERVAL) + 1):
            clock.advance(POLL_INTERVAL)
    domain = enrolment.certificate.domain()
    assert [n for n, _ in boundaries] == [p + 1, p + 2]
    for n, when in boundaries:  # the memory clock jumps by POLL_INTERVAL: the timer is due within that step
        assert period_start(domain, n) + BOUNDARY_DELAY <= when < period_start(domain, n) + BOUNDARY_DELAY + 2
    messages = [r.message for r in caplog.records]
    assert any(f"key period {p + 1}: signing" in m for m in messages)
    assert any(f"key period {p + 2} began without its keys" in m for m in messages)
    watch.stop()


def test_an_on_network_session_logs_in_again_when_keys_came_late(
    clock: MemoryReactorClock, enrolment: Enrolment, tmp_path: Path
) -> None:
    p = period(clock, enrolment)
    path = tmp_path / "alice.ks"
    live = Keystore.open(store(path, enrolment, [p - 1]).path, b"pass")  # the current period's keys missing
    dropped: list[bool] = []
    heard: list[bytes] = []
    warmed: list[bool] = []  # the pairing lines of the new RSKs built at each reload (client.rsklines)
    session = SimpleNamespace(
        reactor=clock, keystore=live, uri=URI, key_use=KeyUse(), warm_rsk_lines=lambda: warmed.append(True),
        control=SimpleNamespace(link=SimpleNamespace(loseConnection=lambda: dropped.append(True))),
        media_listener=lambda group, mki, rtp: heard.append(mki),
    )  # fmt: skip
    watch = watch_session(session, load=inline)  # type: ignore[arg-type]
    assert not dropped  # the start-up read brought nothing new
    store(path, enrolment, [p, p + 1])
    clock.advance(POLL_INTERVAL)
    assert dropped == [True] and len(warmed) == 2  # at the start-up read and now
    store(path, enrolment, [p, p + 1, p + 2])  # an ordinary renewal: nothing to catch up on
    clock.advance(POLL_INTERVAL)
    assert dropped == [True] and len(warmed) == 3
    # the media listener is wrapped: the GMK-ID (first four octets of the MKI) of what is heard is counted
    session.media_listener("g", b"\x01\x02\x03\x04\x00\x00\x00\x07", b"rtp")
    session.media_listener("g", b"\x01\x02\x03\x04\x00\x00\x00\x08", b"rtp")
    session.key_use.origin(b"\x01\x02\x03\x04", KeyOrigin("sip:fire@example.org", p, p, clock.seconds()))
    report = session.key_use.report()
    assert heard and report["media_keys"]["01020304"]["packets"] == 2
    assert report["key_origins"]["01020304"]["signed_period"] == p
    watch.stop()
