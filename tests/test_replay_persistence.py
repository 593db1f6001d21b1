"""Replay caches kept across restarts: the client's I_MESSAGE cache beside its keystore (``client.keystore``) and
the group server's CSK cache in its data directory (``server.replaystore``). A restarted receiver must refuse what
it accepted before it stopped, while the server's re-delivery of a group's current GMK at login still opens."""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.internet.testing import MemoryReactorClock

from client.keystore import REPLAY_SAVE_DELAY, DebouncedSave, Keystore, ReplayFile
from client.session import PttSession, ServerInfo
from ptt.groupcall import GroupCall
from ptt.groupinfo import Refused, RelayAddress
from ptt.groupkeys import GroupKey, build_gmk_messages, make_group_key
from ptt.kmsformat.enrolment import Enrolment
from ptt.kmsformat.model import KmsCertificate, KmsKeySet
from ptt.mikey.errors import Replayed
from ptt.mikey.imessage import ReplayCache, build_i_message
from ptt.relaycore import RelayCore
from ptt.ts33180 import KeyPurpose, new_key_id, period_bounds
from server.callshell import CallShell
from server.kms.material import certificate_pem, make_self_signed
from server.replaystore import CSK_REPLAY_FILE, csk_replay_path
from tests import identities

GROUP = "sip:fire@groups.example.org"
ALICE = "sip:alice@example.org"
SERVER = "sip:ptt-server@example.org"
NOW = 1_790_000_000.0


@pytest.fixture(scope="module")
def world() -> identities.World:
    return identities.make_world()


@pytest.fixture(scope="module")
def enrolment(world: identities.World) -> Enrolment:
    domain, master = world
    certificate = KmsCertificate(domain.kms_uri, domain.key_period, 0, master.z_public, master.kpak)
    _, cert = make_self_signed("kms", san_dns=["localhost"], san_ips=["127.0.0.1"])
    pem = certificate_pem(cert)
    return Enrolment(domain.kms_uri, "https://127.0.0.1:8443", pem, pem, certificate)


def keystore_for(world: identities.World, enrolment: Enrolment, path: Path) -> Keystore:
    domain, _ = world
    keystore = Keystore(path, b"pass")
    keystore.enrolment = enrolment
    me = identities.keys_for(world, ALICE, NOW)
    start, end = period_bounds(me.period_no, domain.key_period, domain.key_period_offset)
    key_set = KmsKeySet(
        domain.kms_uri,
        ALICE,
        me.uid,
        me.period_no,
        me.rsk,
        me.ssk,
        me.pvt,
        datetime.fromtimestamp(start, UTC),
        datetime.fromtimestamp(end, UTC),
    )
    keystore.add([key_set], datetime.fromtimestamp(NOW, UTC), ALICE)
    return keystore


def start_session(keystore: Keystore, now: float) -> tuple[PttSession, task.Clock]:
    """A client process starting: a new session (and reactor) over the keystore on disk."""
    clock = task.Clock()
    clock.advance(now)
    server = ServerInfo("127.0.0.1", 1, b"", SERVER)
    return PttSession(clock, keystore, ALICE, server, crypto=defer.maybeDeferred), clock


def gmk_message(world: identities.World, key: GroupKey, sent: float) -> bytes:
    return build_gmk_messages(identities.keys_for(world, GROUP, sent), key, [ALICE], now=sent)[ALICE]


def gmk_ids(session: PttSession) -> list[bytes]:
    state = session.groups.get(GROUP)
    return [] if state is None else [k.gmk_id for k in state.keys]


# --- the client -------------------------------------------------------------------------------------------------


def test_a_restarted_client_refuses_a_superseded_gmk_and_still_opens_the_current_one(
    world: identities.World, enrolment: Enrolment, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keystore = keystore_for(world, enrolment, tmp_path / "alice.ks")
    old_key, new_key = make_group_key(), make_group_key()
    old = gmk_message(world, old_key, NOW - 3 * 86400.0)  # stored for Alice while she was offline
    new = gmk_message(world, new_key, NOW + 10)  # the rekey that removed a member

    session, clock = start_session(keystore, NOW)
    session.on_imessage(GROUP, old_key.gmk_id, old)
    replay_file = keystore.replay_file(ALICE).path
    assert not replay_file.exists()  # saved a moment after the change, not at once
    clock.advance(20)
    session.on_imessage(GROUP, new_key.gmk_id, new)
    assert gmk_ids(session) == [old_key.gmk_id, new_key.gmk_id]
    clock.advance(REPLAY_SAVE_DELAY)
    assert replay_file.exists() and stat.S_IMODE(replay_file.stat().st_mode) == 0o600
    assert b"pass" not in replay_file.read_bytes() and new_key.gmk.hex().encode() not in replay_file.read_bytes()

    # The client restarts an hour later: the server hands it the group's current GMK at login, an attacker replays
    # the superseded one (whose key the removed member knows).
    restarted, _ = start_session(keystore, NOW + 3600)
    with caplog.at_level(logging.WARNING, logger="ptt.client.session"):
        restarted.on_imessage(GROUP, old_key.gmk_id, old)
    assert gmk_ids(restarted) == [] and restarted.stats["imessage_bad"] == 1
    assert "already received" in caplog.text
    restarted.on_imessage(GROUP, new_key.gmk_id, new)
    assert gmk_ids(restarted) == [new_key.gmk_id] and restarted.stats["imessage_bad"] == 1

    # The control: a client that lost the file (the behaviour before) takes the superseded key.
    replay_file.unlink()
    forgetful, _ = start_session(keystore, NOW + 3600)
    forgetful.on_imessage(GROUP, old_key.gmk_id, old)
    assert gmk_ids(forgetful) == [old_key.gmk_id]


def test_a_current_gmk_opened_again_after_a_restart_is_still_checked(
    world: identities.World, enrolment: Enrolment, tmp_path: Path
) -> None:
    """The re-delivery of the current message skips only the replay cache: the time window still applies."""
    keystore = keystore_for(world, enrolment, tmp_path / "alice.ks")
    key = make_group_key()
    message = gmk_message(world, key, NOW)
    session, clock = start_session(keystore, NOW)
    session.on_imessage(GROUP, key.gmk_id, message)
    clock.advance(REPLAY_SAVE_DELAY)
    too_late = NOW + session.stored_message_max_age() + 1
    restarted, _ = start_session(keystore, too_late)
    restarted.on_imessage(GROUP, key.gmk_id, message)
    assert gmk_ids(restarted) == [] and restarted.stats["imessage_bad"] == 1


def test_the_save_waits_for_the_key_being_opened(world: identities.World, enrolment: Enrolment, tmp_path: Path) -> None:
    """The cache changes in a crypto thread: a save due meanwhile runs only once that I_MESSAGE is done."""
    keystore = keystore_for(world, enrolment, tmp_path / "alice.ks")
    clock = task.Clock()
    clock.advance(NOW)
    jobs: list[tuple[defer.Deferred[Any], Callable[[], Any]]] = []

    def later(f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        jobs.append((d, lambda: f(*args, **kwargs)))
        return d

    session = PttSession(clock, keystore, ALICE, ServerInfo("127.0.0.1", 1, b"", SERVER), crypto=later)
    first, second = make_group_key(), make_group_key()
    session.on_imessage(GROUP, first.gmk_id, gmk_message(world, first, NOW))
    d, job = jobs.pop()
    d.callback(job())
    session.on_imessage(GROUP, second.gmk_id, gmk_message(world, second, NOW))  # in its "thread" now
    clock.advance(REPLAY_SAVE_DELAY)
    path = keystore.replay_file(ALICE).path
    assert not path.exists()  # the save waits for the lock
    d, job = jobs.pop()
    d.callback(job())
    assert path.exists()
    cache, current = ReplayFile(path).load(NOW)
    assert len(cache) == 2 and set(current) == {GROUP}


def test_replay_files_are_per_identity(world: identities.World, enrolment: Enrolment, tmp_path: Path) -> None:
    keystore = keystore_for(world, enrolment, tmp_path / "shared.ks")
    assert keystore.replay_file(ALICE).path != keystore.replay_file(GROUP).path
    assert keystore.replay_file(ALICE).path.parent == tmp_path


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"\xff\xfe", b"[]", b'{"cache": {"version": 1, "entries": [["zz", 1, 2]]}}', b'{"current": {"g": 5}}'],
)
def test_a_corrupt_replay_file_starts_empty_with_a_warning(
    content: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "replay.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="ptt.client.keystore"):
        cache, current = ReplayFile(path).load(NOW)
    assert len(cache) == 0 and current == {}
    assert "corrupt" in caplog.text


def test_a_corrupt_replay_file_does_not_stop_a_session(
    world: identities.World, enrolment: Enrolment, tmp_path: Path
) -> None:
    keystore = keystore_for(world, enrolment, tmp_path / "alice.ks")
    keystore.replay_file(ALICE).path.write_text("not json")
    session, clock = start_session(keystore, NOW)
    key = make_group_key()
    session.on_imessage(GROUP, key.gmk_id, gmk_message(world, key, NOW))
    assert gmk_ids(session) == [key.gmk_id]
    clock.advance(REPLAY_SAVE_DELAY)
    assert len(ReplayFile(keystore.replay_file(ALICE).path).load(NOW)[0]) == 1  # rewritten whole


def test_replay_file_round_trip_drops_what_expired(tmp_path: Path) -> None:
    cache = ReplayCache()
    cache.check_and_remember(b"a" * 32, NOW, NOW + 300)
    cache.check_and_remember(b"b" * 32, NOW, NOW + 86400)
    file = ReplayFile(tmp_path / "sub" / "replay.json")
    file.save(cache, {GROUP: (b"b" * 32, NOW + 86400), "sip:old@x": (b"a" * 32, NOW + 300)})
    document = json.loads(file.path.read_text())
    assert set(document) == {"cache", "current"}
    loaded, current = file.load(NOW + 301)
    assert len(loaded) == 1 and loaded.seen(b"b" * 32, NOW)
    with pytest.raises(Replayed):
        loaded.check_and_remember(b"b" * 32, NOW, NOW + 86400)
    assert current == {GROUP: (b"b" * 32, NOW + 86400)}
    assert file.load(NOW)[0].capacity > 0 and ReplayFile(tmp_path / "absent.json").load(NOW)[1] == {}


def test_debounced_save_writes_once_per_burst_and_flushes_at_shutdown(caplog: pytest.LogCaptureFixture) -> None:
    reactor = MemoryReactorClock()
    saves: list[float] = []
    saver = DebouncedSave(reactor, lambda: saves.append(reactor.seconds()), delay=1.0)
    for _ in range(5):
        saver.changed()
    reactor.advance(0.5)
    saver.changed()
    reactor.advance(0.5)
    assert saves == [1.0]
    saver.changed()
    assert saver.flush() is None and saves == [1.0, 1.0]  # flushed at once
    assert saver.flush() is None and saves == [1.0, 1.0]  # nothing pending: nothing written
    reactor.advance(5)
    assert saves == [1.0, 1.0]
    assert (saver.flush, (), {}) in reactor.triggers["before"]["shutdown"]

    def failing() -> None:
        raise OSError(28, "No space left on device")

    broken = DebouncedSave(reactor, failing)
    broken.changed()
    with caplog.at_level(logging.WARNING, logger="ptt.client.keystore"):
        reactor.advance(REPLAY_SAVE_DELAY)  # logged, not raised
    assert "No space left" in caplog.text


# --- the group server's CSK cache ---------------------------------------------------------------------------------


class _InlinePool:
    def run(self, function: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        return defer.maybeDeferred(function, *args)


def _shell(world: identities.World, data: Path, reactor: MemoryReactorClock) -> CallShell:
    domain, _ = world
    manager = SimpleNamespace(store=SimpleNamespace(path=data / "server.sqlite3"))  # where the data directory is
    return CallShell(
        reactor,
        GroupCall(RelayCore(), RelayAddress("127.0.0.1", 8446)),
        server_uri=SERVER,
        domain=domain,
        server_keys=lambda: [identities.keys_for(world, SERVER, NOW)],
        manager=manager,  # type: ignore[arg-type]
        pool=_InlinePool(),  # type: ignore[arg-type]
        store_pool=None,
    )


def _csk(world: identities.World) -> bytes:
    return build_i_message(
        initiator=identities.keys_for(world, ALICE, NOW),
        responder_uri=SERVER,
        key=os.urandom(16),
        key_id=new_key_id(KeyPurpose.CSK),
        now=NOW,
        rand=os.urandom(16),
    )


def _fired(d: defer.Deferred[Any]) -> Any:
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    return box[0]


def test_a_restarted_server_refuses_a_csk_it_took_before(world: identities.World, tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    reactor.advance(NOW)
    shell = _shell(world, tmp_path, reactor)
    message = _csk(world)
    assert isinstance(_fired(shell.on_csk(ALICE, message, NOW)), str)
    reactor.advance(REPLAY_SAVE_DELAY)
    path = tmp_path / CSK_REPLAY_FILE
    assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600

    restarted_reactor = MemoryReactorClock()
    restarted_reactor.advance(NOW + 60)
    restarted = _shell(world, tmp_path, restarted_reactor)
    with pytest.raises(Refused) as refused:
        restarted.on_csk(ALICE, message, NOW + 60)
    assert refused.value.code == 403 and "already received" in str(refused.value)
    assert isinstance(_fired(restarted.on_csk(ALICE, _csk(world), NOW + 60)), str)  # a fresh CSK is fine


def test_the_csk_cache_is_saved_before_the_reactor_shuts_down(world: identities.World, tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    reactor.advance(NOW)
    shell = _shell(world, tmp_path, reactor)
    _fired(shell.on_csk(ALICE, _csk(world), NOW))
    assert not (tmp_path / CSK_REPLAY_FILE).exists()
    for trigger, args, kwargs in reactor.triggers["before"]["shutdown"]:  # what the reactor runs at shutdown
        trigger(*args, **kwargs)
    assert len(ReplayFile(tmp_path / CSK_REPLAY_FILE).load(NOW)[0]) == 1


def test_csk_cache_path_follows_the_database() -> None:
    assert csk_replay_path(None) is None
    assert csk_replay_path(SimpleNamespace(store=SimpleNamespace(path=":memory:"))) is None
    found = csk_replay_path(SimpleNamespace(store=SimpleNamespace(path=Path("/srv/ptt/server.sqlite3"))))
    assert found == Path("/srv/ptt") / CSK_REPLAY_FILE


# --- the client's time window for group keys ---------------------------------------------------------------------


def test_the_client_takes_a_gmk_stored_20_days_but_not_one_dated_20_days_ahead(
    world: identities.World, enrolment: Enrolment, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keystore = keystore_for(world, enrolment, tmp_path / "alice.ks")
    later = NOW + 20 * 86400.0
    session, _ = start_session(keystore, NOW)
    ahead = make_group_key()
    with caplog.at_level(logging.WARNING, logger="ptt.client.session"):
        session.on_imessage(GROUP, ahead.gmk_id, gmk_message(world, ahead, later))  # the group's keys for then
    assert gmk_ids(session) == [] and session.stats["imessage_bad"] == 1
    assert "+1728000 s from now" in caplog.text and "300 s ahead" in caplog.text
    soon = make_group_key()
    session.on_imessage(GROUP, soon.gmk_id, gmk_message(world, soon, NOW + 240))  # 4 minutes of clock skew
    assert gmk_ids(session) == [soon.gmk_id]

    stored = make_group_key()
    message = gmk_message(world, stored, NOW)
    offline, _ = start_session(keystore, later)  # Alice comes back after 20 days (in the next key period)
    offline.on_imessage(GROUP, stored.gmk_id, message)
    assert gmk_ids(offline) == [stored.gmk_id]
    assert offline.stored_message_max_age() == world[0].key_period + 3600.0
