"""ptt.keyrollover: periods around a boundary, which keys sign, which periods are accepted, when an ad-hoc group is
rekeyed, when the keystore is re-read and what a reload brought, and the origin of an opened I_MESSAGE."""

from __future__ import annotations

import dataclasses
import os

import pytest

from ptt.keyrollover import (
    BOUNDARY_DELAY,
    FileStamp,
    KeystoreTracker,
    accepted_periods,
    key_origin,
    next_boundary,
    period_start,
    rekey_due,
    signing_period,
)
from ptt.mikey.errors import MikeyError
from ptt.mikey.identity import IdentityKeys
from ptt.mikey.imessage import ReplayCache, build_i_message, receive_i_message
from ptt.ts33180 import KeyPurpose, new_key_id
from tests.identities import World, make_world

PERIOD = 60


@pytest.fixture(scope="module")
def world() -> World:
    domain, master = make_world()
    return dataclasses.replace(domain, key_period=PERIOD), master


def at(world: World, period: int, offset: float) -> float:
    """A Unix time ``offset`` seconds into ``period``."""
    return period_start(world[0], period) + offset


def test_boundaries_follow_the_domain_period(world: World) -> None:
    domain = world[0]
    p = domain.period_number(1.9e9)
    start = period_start(domain, p)
    assert domain.period_number(start) == p and domain.period_number(start - 0.001) == p - 1
    assert next_boundary(domain, start) == start + PERIOD
    assert next_boundary(domain, start + PERIOD - 0.001) == start + PERIOD


def test_only_the_current_periods_keys_sign(world: World) -> None:
    domain = world[0]
    p = domain.period_number(1.9e9)
    assert signing_period(domain, [p - 1, p, p + 1], at(world, p, 1)) == p
    assert signing_period(domain, [p, p + 1], at(world, p + 1, 0)) == p + 1
    # the next period's keys are held but it is not their time; the current ones are missing: nothing signs
    assert signing_period(domain, [p - 1, p + 1], at(world, p, 30)) is None


def test_accepted_periods_widen_only_near_a_boundary(world: World) -> None:
    domain = world[0]
    p = domain.period_number(1.9e9)
    assert accepted_periods(domain, at(world, p, 30), grace=10) == (p,)
    assert accepted_periods(domain, at(world, p, 5), grace=10) == (p - 1, p)  # a peer's clock still before it
    assert accepted_periods(domain, at(world, p, 55), grace=10) == (p, p + 1)  # a peer's clock already past it
    # the default grace (300 s of clock skew) spans several of these short periods
    assert len(accepted_periods(domain, at(world, p, 30))) == 11


def test_an_adhoc_group_is_rekeyed_once_per_new_period_when_its_keys_are_held(world: World) -> None:
    domain = world[0]
    p = domain.period_number(1.9e9)
    made = at(world, p, 50)
    assert not rekey_due(domain, made, at(world, p, 59), [p, p + 1])  # same period
    assert rekey_due(domain, made, at(world, p + 1, 0), [p, p + 1])
    assert not rekey_due(domain, made, at(world, p + 1, 0), [p])  # new period but no keys for it (yet)
    assert not rekey_due(domain, at(world, p + 1, 0.2), at(world, p + 1, 3), [p, p + 1])  # rekeyed already


def test_the_tracker_reads_a_changed_file_once_and_says_what_it_brought(world: World) -> None:
    domain = world[0]
    p = domain.period_number(1.9e9)
    tracker = KeystoreTracker(domain, frozenset({p, p + 1}))
    first = FileStamp(1, 100, 500)
    assert tracker.should_load(first)
    tracker.loading = True
    assert not tracker.should_load(first)  # a read in progress is not started twice
    loaded = tracker.loaded(first, [p, p + 1], at(world, p, 10))
    assert not loaded.changed and loaded.has_current and loaded.has_next and not loaded.late
    assert not tracker.should_load(first) and not tracker.should_load(None)
    # the watcher stored the next period's keys (a new inode: the file is replaced atomically)
    second = FileStamp(2, 200, 700)
    assert tracker.should_load(second)
    loaded = tracker.loaded(second, [p, p + 1, p + 2], at(world, p + 1, 20))
    assert loaded.added == (p + 2,) and loaded.dropped == () and loaded.current == p + 1
    assert loaded.has_next and not loaded.late
    # past the boundary with the keys missing, then they arrive: late (what was keyed to them was not opened)
    tracker = KeystoreTracker(domain, frozenset({p, p + 1}))
    assert tracker.missing(at(world, p + 2, 30), grace=10) == (p + 2,)
    loaded = tracker.loaded(FileStamp(3, 300, 800), [p + 1, p + 2, p + 3], at(world, p + 2, 30))
    assert loaded.late and loaded.added == (p + 2, p + 3) and loaded.dropped == (p,)
    assert tracker.missing(at(world, p + 2, 30), grace=10) == ()


def test_each_boundary_is_acted_on_once(world: World) -> None:
    domain = world[0]
    p = domain.period_number(1.9e9)
    tracker = KeystoreTracker(domain, frozenset({p}))
    assert tracker.boundary(at(world, p, 10)) == p  # the baseline, taken at start
    assert tracker.next_wakeup(at(world, p, 10)) == period_start(domain, p + 1) + BOUNDARY_DELAY
    assert tracker.boundary(at(world, p, 59)) is None
    assert tracker.boundary(at(world, p + 1, BOUNDARY_DELAY)) == p + 1
    assert tracker.boundary(at(world, p + 1, 2)) is None  # a second timer in the same period


def _keys(world: World, uri: str, period: int) -> IdentityKeys:
    from ptt.crypto import kms

    domain, master = world
    material = kms.derive_user_keys(domain.uid(uri, period), master)
    return IdentityKeys(uri, domain, period, material.ssk, material.pvt, material.rsk)


def test_key_origin_names_the_signing_period_and_the_rsk_that_opened_it(world: World) -> None:
    domain = world[0]
    p = domain.period_number(1.9e9)
    now = at(world, p + 1, 2)  # just past a boundary: the member holds both periods' keys
    group, member = "sip:fire@example.org", "sip:bob@example.org"
    data = build_i_message(
        initiator=_keys(world, group, p + 1), responder_uri=member, key=os.urandom(16),
        key_id=new_key_id(KeyPurpose.GMK), now=now, rand=os.urandom(16),
    )  # fmt: skip
    held = [_keys(world, member, p), _keys(world, member, p + 1)]
    received = receive_i_message(
        data, responder=held, expected_initiators=group, trusted_kms={domain.kms_uri: domain}, now=now,
        replay_cache=ReplayCache(10),
    )  # fmt: skip
    origin = key_origin(received, held)
    assert (origin.signer, origin.signed_period, origin.rsk_period) == (group, p + 1, p + 1)
    assert origin.to_json()["signed_period"] == p + 1
    # opened with only the old period's keys it would not be: the new period's RSK is what opened it
    with pytest.raises(MikeyError):
        receive_i_message(
            data, responder=held[:1], expected_initiators=group, trusted_kms={domain.kms_uri: domain}, now=now,
            replay_cache=ReplayCache(10),
        )  # fmt: skip
