"""The group call's Twisted shell (server.callshell): cheap checks before the worker pool, results installed on
the reactor, committed group changes applied, the floor timer armed on the reactor's clock."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from ptt.groupcall import GroupCall
from ptt.groupinfo import Refused, RelayAddress
from ptt.mikey.imessage import IdentityKeys, build_i_message
from ptt.relaycore import RelayCore
from ptt.ts33180 import KeyPurpose, new_key_id
from server.callshell import CallShell
from server.groups.manager import GroupChange
from server.groups.store import GroupRecord, MemberRecord
from tests import identities

SERVER = "sip:ptt-server@example.org"
ALICE = "sip:alice@example.org"
GROUP = "sip:fire@groups.example.org"

NOW = 1_790_000_000.0


@pytest.fixture(scope="module")
def world() -> identities.World:
    return identities.make_world()


def keys_for(world: identities.World, uri: str, now: float = NOW) -> IdentityKeys:
    return identities.keys_for(world, uri, now)


class InlinePool:
    """Runs the worker functions at once, in this process, counting them (the real pool is tested end to end)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def run(self, function: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        self.calls.append(function.__name__)
        return defer.maybeDeferred(function, *args)


class Push:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.connected: set[str] = set()

    def push(self, uri: str, message: dict[str, Any]) -> int:
        self.sent.append((uri, message))
        return 1

    def online(self, uri: str) -> bool:
        return uri in self.connected


def make_shell(world: identities.World) -> tuple[CallShell, InlinePool, MemoryReactorClock]:
    domain, _ = world
    reactor = MemoryReactorClock()
    reactor.advance(NOW)
    pool = InlinePool()
    shell = CallShell(
        reactor,
        GroupCall(RelayCore(), RelayAddress("127.0.0.1", 8446)),
        server_uri=SERVER,
        domain=domain,
        server_keys=lambda: [keys_for(world, SERVER)],
        manager=None,  # type: ignore[arg-type]
        pool=pool,  # type: ignore[arg-type]
        store_pool=None,
    )
    shell.control = Push()
    return shell, pool, reactor


def csk_message(world: identities.World, purpose: KeyPurpose = KeyPurpose.CSK) -> bytes:
    return build_i_message(
        initiator=keys_for(world, ALICE),
        responder_uri=SERVER,
        key=os.urandom(16),
        key_id=new_key_id(purpose),
        now=NOW,
        rand=os.urandom(16),
    )


def result_of(d: defer.Deferred[Any]) -> Any:
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    return box[0]


def test_a_csk_is_opened_in_the_pool_and_a_replay_refused_before_it(world: identities.World) -> None:
    shell, pool, _ = make_shell(world)
    message = csk_message(world)
    csk_id = result_of(shell.on_csk(ALICE, message, NOW))
    assert isinstance(csk_id, str) and len(csk_id) == 8
    assert pool.calls == ["open_csk"]
    with pytest.raises(Refused) as refused:
        shell.on_csk(ALICE, message, NOW + 1)
    assert refused.value.code == 403 and "already received" in str(refused.value)
    assert pool.calls == ["open_csk"]  # no second expensive check


def test_cheap_refusals_never_reach_the_pool(world: identities.World) -> None:
    shell, pool, _ = make_shell(world)
    for data, code in ((bytes(5000), 413), (b"\x01\x00garbage", 400)):
        with pytest.raises(Refused) as refused:
            shell.on_csk(ALICE, data, NOW)
        assert refused.value.code == code
    with pytest.raises(Refused) as refused:
        shell.on_csk(ALICE, csk_message(world), NOW + 400)  # outside the ±300 s window
    assert refused.value.code == 403
    assert pool.calls == []


def test_a_csk_that_fails_in_the_pool_is_a_clear_refusal(world: identities.World) -> None:
    shell, _, _ = make_shell(world)
    failure = result_of(shell.on_csk(ALICE, csk_message(world, KeyPurpose.GMK), NOW))
    assert isinstance(failure.value, Refused) and failure.value.code == 403 and "expected a CSK" in str(failure.value)
    signed_by_someone_else = csk_message(world)
    failure = result_of(shell.on_csk("sip:mallory@example.org", signed_by_someone_else, NOW))
    assert isinstance(failure.value, Refused) and failure.value.code == 403


def test_a_login_is_checked_cheaply_then_verified_in_the_pool(world: identities.World) -> None:
    from ptt.control import AuthError, make_auth

    shell, pool, _ = make_shell(world)
    nonce = os.urandom(32)
    auth = make_auth(keys_for(world, ALICE), nonce, SERVER)
    assert result_of(shell.verify_login(auth, nonce, NOW)).uri == ALICE
    assert pool.calls == ["verify_login"]
    with pytest.raises(AuthError):
        shell.verify_login({**auth, "period_no": auth["period_no"] + 5}, nonce, NOW)  # wrong period: no pool work
    assert pool.calls == ["verify_login"]
    failure = result_of(shell.verify_login(auth, os.urandom(32), NOW))  # another challenge
    assert failure.check(AuthError)


def test_group_changes_reach_the_call_and_pushes_only_online_members(
    world: identities.World,
) -> None:
    shell, _, _ = make_shell(world)
    record = GroupRecord(GROUP, "fire", NOW, "admin", 30.0)
    members = [
        MemberRecord(GROUP, ALICE, 0, "member", NOW),
        MemberRecord(GROUP, "sip:bob@example.org", 0, "member", NOW),
    ]
    push = shell.control
    assert isinstance(push, Push)
    push.connected.add(ALICE)
    shell.group_changed(GroupChange(GROUP, record, members, bytes(4), {m.uri: b"m" for m in members}))
    assert shell.call.members(GROUP) == [ALICE, "sip:bob@example.org"]
    assert [(uri, m["type"]) for uri, m in push.sent] == [(ALICE, "imessage"), (ALICE, "groups")]
    shell.group_changed(GroupChange(GROUP, None, []))
    assert shell.call.members(GROUP) == []
