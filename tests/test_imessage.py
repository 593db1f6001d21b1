"""I_MESSAGE build and receive: the vendor vectors, interop of our builder, round trips and every rejection path.

The vendor part uses the four Streamwide I_MESSAGEs (tests/vectors/streamwide_imessage_decoded.json, with every
user's keys and the KMS public keys). The rest runs against a fresh KMS (module-scoped fixture: master secrets and
the fixed-base tables cost ~0.3 s per worker). Messages are altered and then re-signed with the sender's real keys
when a test needs to get past the signature and reach a later check.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest

from ptt.crypto import eccsi, kms
from ptt.crypto.params import P256
from ptt.mikey.errors import (
    BadSignature,
    DecryptionFailed,
    KeyParametersError,
    MalformedMessage,
    MikeyError,
    OutsideTimeWindow,
    Replayed,
    UnexpectedInitiator,
    UnknownKms,
    WrongRecipient,
)
from ptt.mikey.imessage import (
    DEFAULT_MAX_AGE,
    DEFAULT_SECURITY_POLICY,
    DEFAULT_WINDOW,
    MAX_CLOCK_SKEW,
    IdentityKeys,
    KmsDomain,
    ReceivedKey,
    ReplayCache,
    build_i_message,
    receive_i_message,
)
from ptt.mikey.keyparams import KeyParameters, KeyStatus, KeyType, ProtectedKeyParameters, protect, unprotect
from ptt.mikey.message import MikeyMessage
from ptt.mikey.payloads import (
    DataType,
    GeneralExt,
    GenericIdEntry,
    Hdr,
    Idr,
    IdRole,
    Payload,
    PrfFunc,
    Rand,
    Sakke,
    SignatureType,
    Sp,
    T,
    TsType,
)
from ptt.ts33180 import CsId, KeyPurpose, guk_id, new_key_id
from tests.vectorfiles import load

SIG_LEN = eccsi.SIGNATURE_LENGTH  # r (32) || s (32) || PVT (65)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def message_time(data: bytes) -> float:
    timestamp = MikeyMessage.parse(data).find(T)
    assert timestamp is not None
    return timestamp.unix_time()


def carried_key_parameters(data: bytes, key: bytes) -> KeyParameters:
    """The protected key parameters of an I_MESSAGE, decrypted with ``key``."""
    ext = MikeyMessage.parse(data).find(GeneralExt)
    assert ext is not None
    carried = ext.key_parameters()
    assert isinstance(carried, ProtectedKeyParameters)
    return unprotect(carried, key)


def policy(received: ReceivedKey) -> Sp:
    """The received SP with its chaining field cleared, comparable with DEFAULT_SECURITY_POLICY."""
    assert received.security_policy is not None
    return received.security_policy.with_next(0)


def resign(hdr: Hdr, payloads: list[Payload], signer: IdentityKeys) -> bytes:
    """A message of ``hdr`` and ``payloads`` (re-chained), validly ECCSI-signed by ``signer``."""
    message = MikeyMessage.build(hdr, payloads)
    signature = eccsi.sign(message.octets_to_sign(), signer.uid, signer.ssk, signer.pvt, signer.domain.kpak)
    return bytes(message.with_signature(signature))


Edit = Callable[[Hdr, list[Payload]], tuple[Hdr, list[Payload]]]


def altered(data: bytes, signer: IdentityKeys, edit: Edit) -> bytes:
    """``data`` without its signature, changed by ``edit``, then re-signed by ``signer``."""
    unsigned = MikeyMessage.parse(data).unsigned()
    hdr, payloads = edit(unsigned.hdr, list(unsigned.payloads))
    return resign(hdr, payloads, signer)


# --- the vendor vectors ---------------------------------------------------------------------------------------

VENDOR: dict[str, Any] = load("streamwide_imessage_decoded.json")
VENDOR_VECTORS: list[dict[str, Any]] = VENDOR["imessages"]
VENDOR_BY_NAME = {v["name"]: v for v in VENDOR_VECTORS}
LEGACY_NAME = "GMK (legacy format for IWF)"
LEGACY_CSB_ID = h("048209a7")  # the legacy message carries no GMK-ID: its key ID is the CSB ID
_KMS = VENDOR["kms"]
VENDOR_DOMAIN = KmsDomain(
    _KMS["KmsUri"], h(_KMS["PubAuthKey"]), h(_KMS["PubEncKey"]), _KMS["UserKeyPeriod"], _KMS["UserKeyOffset"]
)
VENDOR_TRUST = {VENDOR_DOMAIN.kms_uri: VENDOR_DOMAIN}
VENDOR_KEYS = {
    uri: IdentityKeys(uri, VENDOR_DOMAIN, user["KeyPeriodNo"], h(user["SSK"]), h(user["PVT"]), h(user["RSK"]))
    for uri, user in VENDOR["users"].items()
}
VENDOR_GMS = "gms@streamwide.com"
VENDOR_ALICE = "sip:alice@streamwide.com"


def receive_vendor(vector: dict[str, Any], data: bytes | None = None, cache: ReplayCache | None = None) -> ReceivedKey:
    message = h(vector["imessage_hex"])
    return receive_i_message(
        message if data is None else data,
        responder=VENDOR_KEYS[vector["responder_uri"]],
        expected_initiators=vector["initiator_uri"],
        trusted_kms=VENDOR_TRUST,
        now=message_time(message) + 5,
        replay_cache=ReplayCache() if cache is None else cache,
    )


def test_vendor_users_keys_have_the_listed_uids() -> None:
    for uri, keys in VENDOR_KEYS.items():
        assert keys.uid == h(VENDOR["users"][uri]["UID"]), uri


@pytest.mark.parametrize("vector", VENDOR_VECTORS, ids=lambda v: v["name"])
def test_vendor_i_message_is_received(vector: dict[str, Any]) -> None:
    data = h(vector["imessage_hex"])
    assert len(data) == vector["imessage_length"]
    assert bytes(MikeyMessage.parse(data)) == data

    got = receive_vendor(vector)

    legacy = vector["name"] == LEGACY_NAME
    purpose = KeyPurpose[vector["key_type"]]
    key_id = LEGACY_CSB_ID if legacy else h(vector["key_id"])
    assert got.key == h(vector["key"])
    assert got.rand == h(vector["rand"])
    assert got.key_id == key_id
    assert got.purpose == purpose
    if purpose == KeyPurpose.GMK and not legacy:
        assert got.csb_id == h(vector["guk_id"]) == guk_id(got.key, key_id, vector["responder_uri"])
        assert got.cs_id == CsId.GROUP_CALL
    else:
        assert got.csb_id == key_id
        assert got.cs_id == (CsId.CSK_SRTCP if purpose == KeyPurpose.CSK else None)
    assert got.initiator_uri == vector["initiator_uri"]
    assert got.responder_uri == vector["responder_uri"]
    assert got.initiator_uid == h(VENDOR["users"][vector["initiator_uri"]]["UID"])
    assert got.responder_uid == h(VENDOR["users"][vector["responder_uri"]]["UID"])
    assert got.initiator_kms == got.responder_kms == VENDOR_DOMAIN.kms_uri
    assert got.timestamp == message_time(data)

    params = got.key_parameters
    assert params is not None
    assert params.key_type == int(purpose)
    assert params.status == KeyStatus.NOT_REVOKED
    assert not got.revoked
    if purpose == KeyPurpose.GMK and not legacy:
        assert params.key_type == KeyType.GMK
        assert params.group_ids == ()
    assert policy(got) == DEFAULT_SECURITY_POLICY
    assert vector["key"] not in repr(got)


# --- our builder against the vendor's GMK ---------------------------------------------------------------------


def test_our_gmk_i_message_matches_the_vendor_byte_for_byte() -> None:
    vector = VENDOR_BY_NAME["GMK"]
    vendor_bytes = h(vector["imessage_hex"])
    key, key_id, now = h(vector["key"]), h(vector["key_id"]), message_time(vendor_bytes)
    ours_bytes = build_i_message(
        initiator=VENDOR_KEYS[VENDOR_GMS],
        responder_uri=VENDOR_ALICE,
        key=key,
        key_id=key_id,
        now=now,
        rand=h(vector["rand"]),
    )
    ours, vendor = MikeyMessage.parse(ours_bytes), MikeyMessage.parse(vendor_bytes)

    assert bytes(ours.hdr) == bytes(vendor.hdr)
    assert [type(p) for p in ours.payloads] == [type(p) for p in vendor.payloads]
    for kind in (T, Rand, Sp, Sakke):
        assert bytes(ours.find_all(kind)[0]) == bytes(vendor.find_all(kind)[0]), kind.__name__
    assert [bytes(p) for p in ours.idrs()] == [bytes(p) for p in vendor.idrs()]
    assert [p.role for p in ours.idrs()] == [8, 9, 6, 7]
    sakke_at = vector["sakke_payload_offset"]
    assert ours_bytes[:sakke_at] == vendor_bytes[:sakke_at]  # HDR .. SP: one contiguous identical prefix
    assert ours_bytes != vendor_bytes  # the key parameters' IV and the ECCSI signature are random

    got = receive_i_message(
        ours_bytes,
        responder=VENDOR_KEYS[VENDOR_ALICE],
        expected_initiators=VENDOR_GMS,
        trusted_kms=VENDOR_TRUST,
        now=now + 1,
        replay_cache=ReplayCache(),
    )
    assert (got.key, got.key_id, got.csb_id, got.rand) == (key, key_id, h(vector["guk_id"]), h(vector["rand"]))
    assert carried_key_parameters(ours_bytes, key) == carried_key_parameters(vendor_bytes, key)
    assert got.key_parameters == receive_vendor(vector).key_parameters


# --- a fresh KMS ----------------------------------------------------------------------------------------------

NOW = 1_760_000_000.0  # a week into a 30-day key period: NOW ± the window stays inside it
KMS_URI = "kms.example.org"
PARTNER_KMS_URI = "kms.partner.example.net"
GROUP = "sip:fire-ops@example.org"
ALICE = "sip:alice@example.org"
BOB = "sip:bob@example.org"
CAROL = "sip:carol@example.org"
MEMBERS = (ALICE, BOB, CAROL)
DISPATCH = "sip:dispatch@partner.example.net"


@dataclass(frozen=True)
class Sent:
    data: bytes
    key: bytes
    key_id: bytes
    rand: bytes


@dataclass(frozen=True)
class World:
    domain: KmsDomain
    partner_domain: KmsDomain  # another KMS our KMS vouches for
    impostor_domain: KmsDomain  # other master secrets under our KMS's URI
    period: int
    keys: dict[str, IdentityKeys]  # GROUP and MEMBERS, current period
    alice_next: IdentityKeys  # Alice's keys for the next period
    dispatch: IdentityKeys  # signing keys in the partner domain
    impostor_group: IdentityKeys  # GROUP's signing keys from the impostor master secrets

    @property
    def trust(self) -> dict[str, KmsDomain]:
        return {KMS_URI: self.domain, PARTNER_KMS_URI: self.partner_domain}

    def send(
        self,
        initiator: str | IdentityKeys,
        responder: str,
        purpose: KeyPurpose = KeyPurpose.GMK,
        *,
        now: float = NOW,
        **options: Any,
    ) -> Sent:
        keys = self.keys[initiator] if isinstance(initiator, str) else initiator
        key, key_id, rand = os.urandom(16), new_key_id(purpose), os.urandom(16)
        data = build_i_message(
            initiator=keys, responder_uri=responder, key=key, key_id=key_id, now=now, rand=rand, **options
        )
        return Sent(data, key, key_id, rand)

    def receive(
        self,
        data: bytes,
        responder: str | IdentityKeys | Sequence[IdentityKeys] = ALICE,
        initiators: str | Iterable[str] = GROUP,
        *,
        now: float = NOW,
        cache: ReplayCache | None = None,
        trust: dict[str, KmsDomain] | None = None,
        max_age: float = DEFAULT_MAX_AGE,
        max_skew: float = MAX_CLOCK_SKEW,
    ) -> ReceivedKey:
        return receive_i_message(
            data,
            responder=self.keys[responder] if isinstance(responder, str) else responder,
            expected_initiators=initiators,
            trusted_kms=self.trust if trust is None else trust,
            now=now,
            replay_cache=ReplayCache() if cache is None else cache,
            max_age=max_age,
            max_skew=max_skew,
        )


def _identity(uri: str, domain: KmsDomain, master: kms.MasterSecrets, period: int) -> IdentityKeys:
    material = kms.issue_user_keys(domain.uid(uri, period), master)
    return IdentityKeys(uri, domain, period, material.ssk, material.pvt, material.rsk)


def _signer(uri: str, domain: KmsDomain, master: kms.MasterSecrets, period: int) -> IdentityKeys:
    ssk, pvt = kms.issue_signing_key(domain.uid(uri, period), master)
    return IdentityKeys(uri, domain, period, ssk, pvt)


@pytest.fixture(scope="module")
def world() -> World:
    master = kms.generate_master_secrets()
    domain = KmsDomain(KMS_URI, master.kpak, master.z_public)
    partner_master = kms.generate_master_secrets()
    partner_domain = KmsDomain(PARTNER_KMS_URI, partner_master.kpak, partner_master.z_public)
    impostor_master = kms.generate_master_secrets()
    impostor_domain = KmsDomain(KMS_URI, impostor_master.kpak, impostor_master.z_public)
    period = domain.period_number(NOW)
    return World(
        domain=domain,
        partner_domain=partner_domain,
        impostor_domain=impostor_domain,
        period=period,
        keys={uri: _identity(uri, domain, master, period) for uri in (GROUP, *MEMBERS)},
        alice_next=_identity(ALICE, domain, master, period + 1),
        dispatch=_signer(DISPATCH, partner_domain, partner_master, period),
        impostor_group=_signer(GROUP, impostor_domain, impostor_master, period),
    )


# --- round trips ----------------------------------------------------------------------------------------------


def test_gmk_from_the_group_reaches_every_member(world: World) -> None:
    key, key_id = os.urandom(16), new_key_id(KeyPurpose.GMK)
    guk_ids = set()
    for member in MEMBERS:
        rand = os.urandom(16)
        data = build_i_message(
            initiator=world.keys[GROUP], responder_uri=member, key=key, key_id=key_id, now=NOW, rand=rand
        )
        got = world.receive(data, member)
        assert (got.key, got.key_id, got.rand, got.purpose) == (key, key_id, rand, KeyPurpose.GMK)
        assert got.csb_id == guk_id(key, key_id, member)
        assert got.cs_id == CsId.GROUP_CALL
        assert (got.initiator_uri, got.responder_uri) == (GROUP, member)
        assert (got.initiator_uid, got.responder_uid) == (world.keys[GROUP].uid, world.keys[member].uid)
        assert got.initiator_kms == got.responder_kms == KMS_URI
        assert got.timestamp == NOW
        assert got.key_parameters == KeyParameters(KeyType.GMK, KeyStatus.NOT_REVOKED, group_ids=())
        assert not got.revoked
        assert policy(got) == DEFAULT_SECURITY_POLICY
        guk_ids.add(got.csb_id)
    assert len(guk_ids) == len(MEMBERS)


def test_csk_from_a_member_to_the_group_identity(world: World) -> None:
    sent = world.send(ALICE, GROUP, KeyPurpose.CSK)
    got = world.receive(sent.data, GROUP, MEMBERS)
    assert (got.key, got.key_id, got.rand, got.purpose) == (sent.key, sent.key_id, sent.rand, KeyPurpose.CSK)
    assert got.csb_id == sent.key_id
    assert got.cs_id == CsId.CSK_SRTCP
    assert (got.initiator_uri, got.responder_uri) == (ALICE, GROUP)
    assert got.key_parameters == KeyParameters(KeyType.CSK, KeyStatus.NOT_REVOKED, group_ids=None)
    assert policy(got) == DEFAULT_SECURITY_POLICY


def test_pck_between_two_users(world: World) -> None:
    sent = world.send(ALICE, BOB, KeyPurpose.PCK)
    got = world.receive(sent.data, BOB, ALICE)
    assert (got.key, got.key_id, got.rand, got.purpose) == (sent.key, sent.key_id, sent.rand, KeyPurpose.PCK)
    assert got.csb_id == sent.key_id
    assert got.cs_id is None
    assert (got.initiator_uri, got.responder_uri) == (ALICE, BOB)
    assert got.key_parameters == KeyParameters(KeyType.PCK, KeyStatus.NOT_REVOKED, group_ids=None)
    assert policy(got) == DEFAULT_SECURITY_POLICY


def test_without_security_policy_and_with_revoked_status(world: World) -> None:
    revoked = KeyParameters(KeyType.GMK, status=0, text=b"stood down", group_ids=())
    sent = world.send(GROUP, ALICE, security_policy=None, key_parameters=revoked)
    got = world.receive(sent.data)
    assert got.security_policy is None
    assert not MikeyMessage.parse(sent.data).find_all(Sp)
    assert got.key_parameters == revoked
    assert got.revoked


def test_holder_of_two_periods_uses_the_addressed_one(world: World) -> None:
    current, upcoming = world.keys[ALICE], world.alice_next
    assert current.uid != upcoming.uid
    for_now = world.send(GROUP, ALICE)
    got = world.receive(for_now.data, [upcoming, current])
    assert (got.key, got.responder_uid) == (for_now.key, current.uid)

    for_next = world.send(GROUP, ALICE, responder_period_no=world.period + 1)
    got = world.receive(for_next.data, [current, upcoming])
    assert (got.key, got.responder_uid) == (for_next.key, upcoming.uid)
    assert got.csb_id == guk_id(for_next.key, for_next.key_id, ALICE)
    with pytest.raises(WrongRecipient):
        world.receive(for_next.data, current)


def test_initiator_of_a_partner_kms(world: World) -> None:
    sent = world.send(world.dispatch, ALICE, KeyPurpose.PCK, responder_domain=world.domain)
    got = world.receive(sent.data, ALICE, DISPATCH)
    assert got.key == sent.key
    assert (got.initiator_kms, got.responder_kms) == (PARTNER_KMS_URI, KMS_URI)
    with pytest.raises(UnknownKms):
        world.receive(sent.data, ALICE, DISPATCH, trust={KMS_URI: world.domain})


def test_resigning_an_unmodified_message_keeps_it_valid(world: World) -> None:
    # The tampering tests below rely on `altered` producing valid messages apart from their edit.
    sent = world.send(GROUP, ALICE)
    data = altered(sent.data, world.keys[GROUP], lambda hdr, payloads: (hdr, payloads))
    assert data[:-SIG_LEN] == sent.data[:-SIG_LEN]
    assert world.receive(data).key == sent.key


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"key": bytes(15)}, "key must be"),
        ({"now": NOW + 40 * 86400}, "key period"),
        ({"initiator": "unsigned"}, "signing key"),
        ({"key_id": bytes(3)}, "key ID must be"),
    ],
)
def test_builder_refuses_bad_input(world: World, change: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "initiator": world.keys[GROUP],
        "responder_uri": ALICE,
        "key": bytes(16),
        "key_id": bytes(4),
        "now": NOW,
    }
    args.update(change)
    if args["initiator"] == "unsigned":
        args["initiator"] = IdentityKeys(GROUP, world.domain, world.period, rsk=world.keys[GROUP].rsk)
    with pytest.raises(ValueError, match=message):
        build_i_message(**args)


# --- rejections -----------------------------------------------------------------------------------------------


def test_message_for_alice_given_to_bob(world: World) -> None:
    sent = world.send(GROUP, ALICE)
    with pytest.raises(WrongRecipient):
        world.receive(sent.data, BOB)
    with pytest.raises(WrongRecipient):
        world.receive(sent.data, [world.keys[BOB], world.keys[CAROL]])
    assert world.receive(sent.data, ALICE).key == sent.key


def test_addressed_period_without_a_decryption_key(world: World) -> None:
    sent = world.send(GROUP, ALICE)
    signing_only = IdentityKeys(ALICE, world.domain, world.period, world.keys[ALICE].ssk, world.keys[ALICE].pvt)
    with pytest.raises(WrongRecipient):
        world.receive(sent.data, signing_only)


def test_responder_kms_mismatch(world: World) -> None:
    # Same responder UID, but the responder's KMS IDR names another KMS (validly re-signed by the group).
    sent = world.send(GROUP, ALICE)

    def other_kms(hdr: Hdr, payloads: list[Payload]) -> tuple[Hdr, list[Payload]]:
        return hdr, [
            replace(p, data=PARTNER_KMS_URI.encode()) if isinstance(p, Idr) and p.role == IdRole.RESPONDER_KMS else p
            for p in payloads
        ]

    data = altered(sent.data, world.keys[GROUP], other_kms)
    assert MikeyMessage.parse(data).idrs(IdRole.RESPONDER_UID)[0].data == world.keys[ALICE].uid
    with pytest.raises(WrongRecipient):
        world.receive(data)


def test_unknown_initiator_kms(world: World) -> None:
    sent = world.send(GROUP, ALICE)
    with pytest.raises(UnknownKms):
        world.receive(sent.data, trust={PARTNER_KMS_URI: world.partner_domain})
    with pytest.raises(UnknownKms):
        world.receive(sent.data, trust={})


@pytest.mark.parametrize("offset", [-DEFAULT_WINDOW - 1, DEFAULT_WINDOW + 1, -86400.0, 86400.0])
def test_outside_the_time_window(world: World, offset: float) -> None:
    sent = world.send(GROUP, ALICE)
    with pytest.raises(OutsideTimeWindow):
        world.receive(sent.data, now=NOW + offset)


@pytest.mark.parametrize("offset", [-DEFAULT_WINDOW, DEFAULT_WINDOW])
def test_edges_of_the_time_window_are_accepted(world: World, offset: float) -> None:
    sent = world.send(GROUP, ALICE)
    assert world.receive(sent.data, now=NOW + offset).key == sent.key


def test_narrower_window(world: World) -> None:
    sent = world.send(GROUP, ALICE)
    with pytest.raises(OutsideTimeWindow):
        world.receive(sent.data, now=NOW + 11, max_age=10)
    assert world.receive(sent.data, now=NOW + 9, max_age=10).key == sent.key
    with pytest.raises(OutsideTimeWindow):
        world.receive(sent.data, now=NOW - 11, max_skew=10)
    assert world.receive(sent.data, now=NOW - 9, max_skew=10).key == sent.key


def test_the_default_window_is_five_minutes_each_way() -> None:
    assert DEFAULT_WINDOW == DEFAULT_MAX_AGE == 300.0
    assert MAX_CLOCK_SKEW == 300.0  # RFC 3830 §5.4: an allowable clock skew of minutes, not days


STORED = 30 * 86400.0 + 3600.0  # a client's allowance for stored GMKs: one key period and an hour


def test_a_message_dated_20_days_ahead_is_refused_even_where_stored_messages_are_accepted(world: World) -> None:
    sent = world.send(GROUP, ALICE, now=NOW + 20 * 86400.0)  # a sender whose clock (or intent) is 20 days ahead
    with pytest.raises(OutsideTimeWindow, match="ahead"):
        world.receive(sent.data, now=NOW, max_age=STORED)
    with pytest.raises(OutsideTimeWindow):
        world.receive(sent.data, now=NOW)


@pytest.mark.parametrize("ahead", [60.0, 240.0, MAX_CLOCK_SKEW])
def test_a_message_a_few_minutes_ahead_is_accepted(world: World, ahead: float) -> None:
    sent = world.send(GROUP, ALICE, now=NOW + ahead)
    assert world.receive(sent.data, now=NOW).key == sent.key
    assert world.receive(sent.data, now=NOW, max_age=STORED).key == sent.key


@pytest.mark.parametrize("ahead", [MAX_CLOCK_SKEW + 1, 3600.0])
def test_a_message_more_than_the_skew_ahead_is_refused(world: World, ahead: float) -> None:
    sent = world.send(GROUP, ALICE, now=NOW + ahead)
    with pytest.raises(OutsideTimeWindow):
        world.receive(sent.data, now=NOW, max_age=STORED)


def test_a_stored_message_20_days_old_is_accepted_where_stored_messages_are(world: World) -> None:
    sent = world.send(GROUP, ALICE)  # kept by the server for a member offline for 20 days
    later = NOW + 20 * 86400.0
    with pytest.raises(OutsideTimeWindow, match="old"):
        world.receive(sent.data, now=later)  # not where only direct delivery is expected
    cache = ReplayCache()
    assert world.receive(sent.data, now=later, max_age=STORED, cache=cache).key == sent.key
    with pytest.raises(Replayed):  # the cache keeps it for as long as the window would take it
        world.receive(sent.data, now=NOW + STORED - 1, max_age=STORED, cache=cache)


def test_the_edges_of_a_stored_message_window(world: World) -> None:
    sent = world.send(GROUP, ALICE)
    assert world.receive(sent.data, now=NOW + STORED, max_age=STORED).key == sent.key
    with pytest.raises(OutsideTimeWindow):
        world.receive(sent.data, now=NOW + STORED + 1, max_age=STORED)


def test_replay_is_refused(world: World) -> None:
    sent = world.send(GROUP, ALICE)
    cache = ReplayCache()
    assert world.receive(sent.data, cache=cache).key == sent.key
    assert len(cache) == 1
    with pytest.raises(Replayed):
        world.receive(sent.data, cache=cache, now=NOW + 1)
    assert world.receive(sent.data).key == sent.key  # another receiver's cache has not seen it


def _malleated(data: bytes) -> bytes:
    """The same message with the ECCSI s replaced by q - s: a different signature that also verifies."""
    signature = data[-SIG_LEN:]
    s = int.from_bytes(signature[32:64], "big")
    return data[:-SIG_LEN] + signature[:32] + (int(P256.q) - s).to_bytes(32, "big") + signature[64:]


def test_malleated_signature_is_still_a_replay(world: World) -> None:
    sent = world.send(GROUP, ALICE)
    variant = _malleated(sent.data)
    group = world.keys[GROUP]
    assert variant != sent.data
    assert eccsi.verify(variant[:-SIG_LEN], variant[-SIG_LEN:], group.uid, world.domain.kpak)
    assert world.receive(variant).key == sent.key  # on its own the variant is accepted

    for first, second in ((sent.data, variant), (variant, sent.data)):
        cache = ReplayCache()
        world.receive(first, cache=cache)
        with pytest.raises(Replayed):
            world.receive(second, cache=cache)


def test_replay_of_a_message_evicted_from_a_full_cache(world: World) -> None:
    cache = ReplayCache(capacity=1)
    first, second = world.send(GROUP, ALICE), world.send(GROUP, ALICE)
    world.receive(first.data, cache=cache)
    world.receive(second.data, cache=cache)  # evicts the first
    assert len(cache) == 1
    with pytest.raises(Replayed):
        world.receive(first.data, cache=cache)
    later = world.send(GROUP, ALICE, now=NOW + 1)
    assert world.receive(later.data, cache=cache, now=NOW + 1).key == later.key


def test_gmk_signed_by_a_member_is_not_from_the_group(world: World) -> None:
    forged = world.send(BOB, ALICE)
    with pytest.raises(UnexpectedInitiator):
        world.receive(forged.data, ALICE, GROUP)
    assert world.receive(forged.data, ALICE, [GROUP, BOB]).key == forged.key  # only the initiator was wrong

    def claim_group(hdr: Hdr, payloads: list[Payload]) -> tuple[Hdr, list[Payload]]:
        return hdr, [
            replace(p, data=world.keys[GROUP].uid) if isinstance(p, Idr) and p.role == IdRole.INITIATOR_UID else p
            for p in payloads
        ]

    with pytest.raises(BadSignature):
        world.receive(altered(forged.data, world.keys[BOB], claim_group), ALICE, GROUP)


def test_transplanted_signature(world: World) -> None:
    donor, target = world.send(GROUP, ALICE), world.send(GROUP, ALICE)
    with pytest.raises(BadSignature):
        world.receive(target.data[:-SIG_LEN] + donor.data[-SIG_LEN:])


def test_signed_under_another_kms_with_the_same_uri(world: World) -> None:
    impostor = world.impostor_group
    assert impostor.uid == world.keys[GROUP].uid and impostor.domain.kpak != world.domain.kpak
    sent = world.send(impostor, ALICE, responder_domain=world.domain)
    with pytest.raises(BadSignature):
        world.receive(sent.data)
    # Only the KPAK tells the two apart: a receiver trusting the impostor's KPAK would take the key.
    assert world.receive(sent.data, trust={KMS_URI: world.impostor_domain}).key == sent.key


def test_wrong_rsk_fails_decryption(world: World) -> None:
    sent = world.send(GROUP, ALICE)
    alice_with_bobs_rsk = IdentityKeys(ALICE, world.domain, world.period, rsk=world.keys[BOB].rsk)
    assert alice_with_bobs_rsk.uid == world.keys[ALICE].uid
    with pytest.raises(DecryptionFailed):
        world.receive(sent.data, alice_with_bobs_rsk)


def _with_ids(csb_id: bytes, spi: bytes) -> Edit:
    def edit(hdr: Hdr, payloads: list[Payload]) -> tuple[Hdr, list[Payload]]:
        entry = hdr.cs_map[0]
        assert isinstance(entry, GenericIdEntry)
        return replace(hdr, csb_id=int.from_bytes(csb_id, "big"), cs_map=(replace(entry, spi=spi),)), payloads

    return edit


def test_tampered_guk_id(world: World) -> None:
    sent = world.send(GROUP, ALICE)
    group, own = world.keys[GROUP], guk_id(sent.key, sent.key_id, ALICE)
    bobs = guk_id(sent.key, sent.key_id, BOB)
    # Bob's GUK-ID in both places: consistent, but not Alice's
    with pytest.raises(WrongRecipient):
        world.receive(altered(sent.data, group, _with_ids(bobs, sent.key_id + bobs)))
    # only the HDR's CSB ID, or only the SPI's GUK-ID half, changed: inconsistent
    with pytest.raises(MalformedMessage):
        world.receive(altered(sent.data, group, _with_ids(bobs, sent.key_id + own)))
    with pytest.raises(MalformedMessage):
        world.receive(altered(sent.data, group, _with_ids(own, sent.key_id + bobs)))


def test_tampered_csk_csb_id(world: World) -> None:
    # A CSK's CSB ID is its CSK-ID, which the GENERIC-ID SPI also carries: the two must agree.
    sent = world.send(ALICE, GROUP, KeyPurpose.CSK)
    other = new_key_id(KeyPurpose.CSK)
    with pytest.raises(MalformedMessage):
        world.receive(altered(sent.data, world.keys[ALICE], _with_ids(other, sent.key_id)), GROUP, ALICE)
    with pytest.raises(MalformedMessage):
        world.receive(altered(sent.data, world.keys[ALICE], _with_ids(sent.key_id, other)), GROUP, ALICE)


def test_key_type_contradicting_the_key_id(world: World) -> None:
    sent = world.send(GROUP, ALICE, key_parameters=KeyParameters(KeyType.CSK, group_ids=()))
    with pytest.raises(KeyParametersError):
        world.receive(sent.data)


def test_key_parameters_protected_under_another_key(world: World) -> None:
    sent = world.send(GROUP, ALICE)
    csb_id = int.from_bytes(guk_id(sent.key, sent.key_id, ALICE), "big")
    wrong = protect(KeyParameters(KeyType.GMK, group_ids=()), os.urandom(16), csb_id)

    def swap(hdr: Hdr, payloads: list[Payload]) -> tuple[Hdr, list[Payload]]:
        return hdr, [replace(p, data=bytes(wrong)) if isinstance(p, GeneralExt) else p for p in payloads]

    with pytest.raises(KeyParametersError):
        world.receive(altered(sent.data, world.keys[GROUP], swap))


def _is(p: Payload, kind: type[Payload], role: int | None) -> bool:
    return isinstance(p, kind) and (role is None or (isinstance(p, Idr) and p.role == role))


def _drop(kind: type[Payload], role: int | None = None) -> Edit:
    def edit(hdr: Hdr, payloads: list[Payload]) -> tuple[Hdr, list[Payload]]:
        kept = [p for p in payloads if not _is(p, kind, role)]
        assert len(kept) == len(payloads) - 1
        return hdr, kept

    return edit


def _double(kind: type[Payload], role: int | None = None) -> Edit:
    def edit(hdr: Hdr, payloads: list[Payload]) -> tuple[Hdr, list[Payload]]:
        at = next(i for i, p in enumerate(payloads) if _is(p, kind, role))
        return hdr, [*payloads[: at + 1], payloads[at], *payloads[at + 1 :]]

    return edit


def _header(**fields: Any) -> Edit:
    return lambda hdr, payloads: (replace(hdr, **fields), payloads)


def _counter_time(hdr: Hdr, payloads: list[Payload]) -> tuple[Hdr, list[Payload]]:
    return hdr, [T(TsType.COUNTER, 1) if isinstance(p, T) else p for p in payloads]


def _short_spi(hdr: Hdr, payloads: list[Payload]) -> tuple[Hdr, list[Payload]]:
    entry = hdr.cs_map[0]
    assert isinstance(entry, GenericIdEntry)
    return replace(hdr, cs_map=(replace(entry, spi=entry.spi[:5]),)), payloads


MALFORMING_EDITS: dict[str, Edit] = {
    "data type PK-INIT": _header(data_type=DataType.PK_INIT),
    "data type SAKKE response": _header(data_type=DataType.SAKKE_RESP),
    "PRF MIKEY-1": _header(prf_func=PrfFunc.MIKEY_1),
    "no RAND": _drop(Rand),
    "two RAND": _double(Rand),
    "no T": _drop(T),
    "two T": _double(T),
    "counter T": _counter_time,
    "no SAKKE": _drop(Sakke),
    "two SAKKE": _double(Sakke),
    "two key parameters": _double(GeneralExt),
    "SPI of 5 octets": _short_spi,
    **{f"no IDR {role.name}": _drop(Idr, role) for role in map(IdRole, (8, 9, 6, 7))},
    "two IDR RESPONDER_UID": _double(Idr, IdRole.RESPONDER_UID),
}


@pytest.mark.parametrize("edit", MALFORMING_EDITS.values(), ids=MALFORMING_EDITS.keys())
def test_malformed_message_even_when_validly_signed(world: World, edit: Edit) -> None:
    sent = world.send(GROUP, ALICE)
    with pytest.raises(MalformedMessage):
        world.receive(altered(sent.data, world.keys[GROUP], edit))


def test_unsigned_or_wrongly_signed_structure(world: World) -> None:
    sent = world.send(GROUP, ALICE)
    unsigned = MikeyMessage.parse(sent.data).unsigned()
    signature = MikeyMessage.parse(sent.data).sign
    assert signature is not None
    for data in (
        bytes(unsigned),
        bytes(unsigned.with_signature(signature.signature, SignatureType.RSA_PSS)),
        bytes(unsigned.with_signature(signature.signature[:-1])),
        b"",
        sent.data[:-1],
        sent.data + b"\x00",
    ):
        with pytest.raises(MalformedMessage):
            world.receive(data)


# --- every single-bit flip of the vendor GMK ------------------------------------------------------------------


def _regions(data: bytes) -> dict[str, tuple[int, int]]:
    """Octet ranges of the HDR and each payload, named (IDRs by role)."""
    message = MikeyMessage.parse(data)
    regions = {"HDR": (0, len(bytes(message.hdr)))}
    at = regions["HDR"][1]
    for p in message.payloads:
        name = f"IDR-{IdRole(p.role).name}" if isinstance(p, Idr) else type(p).__name__
        regions[name] = (at, at + len(bytes(p)))
        at += len(bytes(p))
    return regions


FLIP_DATA = h(VENDOR_BY_NAME["GMK"]["imessage_hex"])
FLIP_REGIONS = _regions(FLIP_DATA)


def test_flip_regions_cover_the_message() -> None:
    bounds = sorted(FLIP_REGIONS.values())
    assert bounds[0][0] == 0 and bounds[-1][1] == len(FLIP_DATA)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    assert len(FLIP_REGIONS) == 11  # HDR, T, RAND, 4 IDR, SP, SAKKE, GENERAL-EXT, SIGN


@pytest.mark.parametrize("region", FLIP_REGIONS)
def test_every_bit_flip_is_rejected(region: str) -> None:
    vector = VENDOR_BY_NAME["GMK"]
    receive_vendor(vector, FLIP_DATA)  # unflipped: accepted
    start, end = FLIP_REGIONS[region]
    refused: Counter[str] = Counter()
    wrong: list[str] = []
    for bit in range(start * 8, end * 8):
        flipped = bytearray(FLIP_DATA)
        flipped[bit // 8] ^= 0x80 >> (bit % 8)
        try:
            got = receive_vendor(vector, bytes(flipped))
        except MikeyError as exc:
            refused[type(exc).__name__] += 1
        except Exception as exc:  # anything but a MikeyError is a failure to report
            wrong.append(f"bit {bit}: {type(exc).__name__}: {exc}")
        else:
            wrong.append(f"bit {bit}: accepted (key ID {got.key_id.hex()})")
    assert not wrong, "\n".join(wrong[:20])
    assert sum(refused.values()) == (end - start) * 8
    assert refused["BadSignature"] > 0  # in every region, some flips get as far as the signature check


# --- ReplayCache ----------------------------------------------------------------------------------------------


def test_replay_cache_remembers_and_counts() -> None:
    cache = ReplayCache()
    assert len(cache) == 0
    cache.check_and_remember(b"a", 1000.0, 1300.0)
    cache.check_and_remember(b"b", 1000.0, 1300.0)
    assert len(cache) == 2
    with pytest.raises(Replayed):
        cache.check_and_remember(b"a", 1000.0, 1300.0)
    assert len(cache) == 2


def test_replay_cache_overflow_raises_the_floor() -> None:
    cache = ReplayCache(capacity=2)
    for i, digest in enumerate((b"a", b"b", b"c")):
        cache.check_and_remember(digest, 1000.0 + i, 1300.0 + i)
    assert len(cache) == 2  # "a" (t=1000) evicted
    with pytest.raises(Replayed):
        cache.check_and_remember(b"a", 1000.0, 1300.0)  # forgotten, but not newer than the floor
    with pytest.raises(Replayed):
        cache.check_and_remember(b"older", 999.0, 1299.0)  # never seen, but older than an evicted entry
    assert len(cache) == 2
    with pytest.raises(Replayed):
        cache.check_and_remember(b"b", 1001.0, 1301.0)  # still remembered
    # Newer than everything evicted: accepted (and it evicts "b", raising the floor to 1001).
    cache.check_and_remember(b"d", 1000.5, 1300.5)
    with pytest.raises(Replayed):
        cache.check_and_remember(b"b", 1001.0, 1301.0)
    cache.check_and_remember(b"e", 1001.5, 1301.5)
    assert len(cache) == 2


def test_replay_cache_forgets_expired_entries() -> None:
    cache = ReplayCache()
    cache.check_and_remember(b"a", 1000.0, 1300.0)
    cache.check_and_remember(b"b", 1100.0, 1400.0)
    cache.forget_expired(1300.0)  # "a" expires at 1300: still kept
    assert len(cache) == 2
    cache.forget_expired(1300.5)
    assert len(cache) == 1
    with pytest.raises(Replayed):
        cache.check_and_remember(b"b", 1100.0, 1400.0)
    cache.check_and_remember(b"a", 1000.0, 1300.0)  # dropped (a receiver's time window refuses it by now)
    cache.forget_expired(2000.0)
    assert len(cache) == 0


def test_replay_cache_sweep_is_rate_limited() -> None:
    cache = ReplayCache()
    cache.check_and_remember(b"a", 1000.0, 1300.0)
    cache.sweep(1400.0)  # first sweep runs
    assert len(cache) == 0
    cache.check_and_remember(b"b", 1390.0, 1401.0)
    cache.sweep(1410.0)  # within 30 s of the last sweep: nothing dropped yet
    assert len(cache) == 1
    cache.sweep(1431.0)
    assert len(cache) == 0


def test_replay_cache_snapshot_round_trip() -> None:
    cache = ReplayCache(capacity=2)
    for i, digest in enumerate((b"a" * 32, b"b" * 32, b"c" * 32)):
        cache.check_and_remember(digest, 1000.0 + i, 1300.0 + i)  # "a" overflows: floor 1000
    restored = ReplayCache.restore(cache.snapshot(), 1100.0, capacity=2)
    assert len(restored) == 2
    for digest, timestamp in ((b"a" * 32, 1000.0), (b"b" * 32, 1001.0), (b"c" * 32, 1002.0), (b"z" * 32, 999.0)):
        assert restored.seen(digest, timestamp)
    assert not restored.seen(b"d" * 32, 1003.0)
    assert len(ReplayCache.restore(cache.snapshot(), 1301.5)) == 1  # expired entries are not restored
    smaller = ReplayCache.restore(cache.snapshot(), 1100.0, capacity=1)  # more than fits: the oldest raise the floor
    assert len(smaller) == 1 and smaller.seen(b"q" * 32, 1001.0) and not smaller.seen(b"q" * 32, 1001.5)


@pytest.mark.parametrize(
    "snapshot",
    [
        None,
        [],
        {"version": 2, "entries": []},
        {"version": 1},
        {"version": 1, "entries": [["zz", 1.0, 2.0]]},
        {"version": 1, "entries": [["aa", 1.0, 2.0]]},
        {"version": 1, "entries": [["aa" * 32, "1", 2.0]]},
        {"version": 1, "entries": [["aa" * 32, 1.0]]},
        {"version": 1, "entries": [], "floor": float("nan")},
        {"version": 1, "entries": [["aa" * 32, True, 2.0]]},
    ],
)
def test_replay_cache_restore_refuses_what_is_not_a_snapshot(snapshot: Any) -> None:
    with pytest.raises(ValueError):
        ReplayCache.restore(snapshot, 0.0)
