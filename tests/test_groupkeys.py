"""GMK distribution: one signed, encrypted I_MESSAGE per member, in-process and on the process pool."""

from __future__ import annotations

import time

import pytest

from ptt.crypto import kms
from ptt.groupkeys import GroupKey, build_gmk_messages, make_group_key
from ptt.mikey.errors import DecryptionFailed, WrongRecipient
from ptt.mikey.imessage import IdentityKeys, KmsDomain, ReplayCache, receive_i_message
from ptt.mikey.message import MikeyMessage
from ptt.mikey.payloads import Rand
from ptt.ts33180 import KeyPurpose, group_srtp_keys, new_key_id
from server import demo
from server.keydistribution import GroupKeyDistributor

GROUP = "sip:fire-ops@example.org"
MEMBERS = ["sip:alice@example.org", "sip:bob@example.org", "sip:carol@example.org"]
NOW = 1_790_000_000.0


@pytest.fixture(scope="module")
def world() -> tuple[KmsDomain, dict[str, IdentityKeys]]:
    master = kms.generate_master_secrets()
    domain = KmsDomain("kms.example.org", master.kpak, master.z_public)
    period = domain.period_number(NOW)
    keys = {}
    for uri in [GROUP, *MEMBERS]:
        material = kms.issue_user_keys(domain.uid(uri, period), master)
        keys[uri] = IdentityKeys(uri, domain, period, material.ssk, material.pvt, material.rsk)
    return domain, keys


def _receive(domain: KmsDomain, member: IdentityKeys, message: bytes) -> bytes:
    received = receive_i_message(
        message,
        responder=member,
        expected_initiators=GROUP,
        trusted_kms={domain.kms_uri: domain},
        now=NOW + 1,
        replay_cache=ReplayCache(),
    )
    assert received.purpose == KeyPurpose.GMK
    return received.key


def test_every_member_gets_the_same_gmk(world: tuple[KmsDomain, dict[str, IdentityKeys]]) -> None:
    domain, keys = world
    group_key = make_group_key()
    messages = build_gmk_messages(keys[GROUP], group_key, MEMBERS, now=NOW)
    assert sorted(messages) == sorted(MEMBERS)
    for uri in MEMBERS:
        assert _receive(domain, keys[uri], messages[uri]) == group_key.gmk
    rands = {MikeyMessage.parse(m).find(Rand).rand for m in messages.values()}  # type: ignore[union-attr]
    assert rands == {group_key.rand}  # one RAND per GMK: every member derives the same SRTP keys
    # each member's message is its own: Bob cannot use Alice's
    with pytest.raises((WrongRecipient, DecryptionFailed)):
        _receive(domain, keys["sip:bob@example.org"], messages["sip:alice@example.org"])


def test_members_derive_distinct_srtp_keys_per_sender() -> None:
    group_key = make_group_key()
    rand = bytes(16)
    per_sender = {uri: group_srtp_keys(group_key.gmk, group_key.gmk_id, group_key.guk_id(uri), rand) for uri in MEMBERS}
    assert len({k.master_key for k in per_sender.values()}) == len(MEMBERS)
    assert all(k.mki[:4] == group_key.gmk_id for k in per_sender.values())


def test_group_key_validation() -> None:
    with pytest.raises(ValueError):
        GroupKey(gmk=bytes(15), gmk_id=new_key_id(KeyPurpose.GMK))
    with pytest.raises(ValueError):
        GroupKey(gmk=bytes(16), gmk_id=new_key_id(KeyPurpose.CSK))
    key = make_group_key()
    assert key.gmk.hex() not in repr(key)


def test_process_pool_distribution(world: tuple[KmsDomain, dict[str, IdentityKeys]]) -> None:
    domain, keys = world
    group_key = make_group_key()
    members = [f"sip:user{i}@example.org" for i in range(12)] + MEMBERS
    with GroupKeyDistributor(workers=2, domains=[domain]) as distributor:
        messages = distributor.distribute(keys[GROUP], group_key, members, now=NOW)
    assert sorted(messages) == sorted(members)
    for uri in MEMBERS:
        assert _receive(domain, keys[uri], messages[uri]) == group_key.gmk


def test_demo_runs_and_prints_no_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.time()
    assert demo.main(["--member", "sip:alice@example.org", "--member", "sip:dave@example.org"]) == 0
    out = capsys.readouterr().out
    assert "SRTP key ID (MKI)" in out
    assert "all members hold the same GMK: yes" in out
    assert time.time() - started < 60
