"""Ad-hoc signalling datagrams: the documented layout, round trips, seal/open, every refusal, limits and fuzz.

The expected octets are built here with ``struct`` from the layout in the module docstring, independently of the
encoder, so a change of either shows up as a mismatch.
"""

from __future__ import annotations

import dataclasses
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from ptt.adhoc.bodies import CallSignal
from ptt.adhoc.messages import (
    MAX_DATAGRAM,
    MAX_HELD,
    MAX_I_MESSAGE,
    MAX_MEMBERS,
    MAX_URI,
    AdhocAuthError,
    AdhocMessageError,
    BadAdhocSignature,
    Body,
    Envelope,
    GroupAnnouncement,
    GroupInfo,
    Hello,
    KeyAck,
    KeyDelivery,
    Leave,
    MalformedAdhocMessage,
    MessageType,
    Probe,
    ReplayedAdhocMessage,
    StaleAdhocMessage,
    UntrustedSender,
    open_envelope,
    seal,
)
from ptt.crypto import eccsi, kms
from ptt.crypto.params import P256
from ptt.mikey.imessage import IdentityKeys, KmsDomain, ReplayCache

KMS_URI = "kms.example.org"
ALICE = "sip:alice@example.org"
BOB = "sip:bob@example.org"
CAROL = "sip:carol@example.org"
GROUP_URI = "sip:adhoc.rescue.3f9a1c@example.org"
NAME = "Bergrettung Zürich, Équipe 3"  # non-ASCII on purpose
GMK_ID = bytes.fromhex("0a1b2c3d")
NOW = 1_790_000_000.25  # exactly representable, so NOW * 1000 is an integer
NOW_MS = 1_790_000_000_250
FAKE_SIGNATURE = bytes(range(129))

GROUP = GroupInfo(GROUP_URI, NAME, ALICE, 7, "239.1.2.3", 40000, GMK_ID, (ALICE, BOB, CAROL))
I_MESSAGE = bytes(range(256)) * 2 + b"\x01"


# --- the layout, written out with struct ---------------------------------------------------------------------------


def u16s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack(">H", len(raw)) + raw


def raw_group(
    *,
    uri: str | bytes = GROUP_URI,
    name: str | bytes = NAME,
    manager: str | bytes = ALICE,
    revision: int = 7,
    host: bytes = bytes([239, 1, 2, 3]),
    port: int = 40000,
    members: tuple[str | bytes, ...] = (ALICE, BOB, CAROL),
    count: int | None = None,
) -> bytes:
    name_raw = name.encode() if isinstance(name, str) else name
    return b"".join(
        [
            u16s(uri),
            bytes([len(name_raw)]) + name_raw,
            u16s(manager),
            struct.pack(">I", revision),
            host,
            struct.pack(">H", port),
            GMK_ID,
            struct.pack(">H", len(members) if count is None else count),
            *(u16s(m) for m in members),
        ]
    )


def raw_envelope(
    body: bytes,
    *,
    msg_type: int = MessageType.GROUP,
    magic: bytes = b"PTTA",
    version: int = 1,
    reserved: int = 0,
    time_ms: int = NOW_MS,
    sender: str | bytes = ALICE,
    sender_kms: str | bytes = KMS_URI,
    body_length: int | None = None,
    signature: bytes = FAKE_SIGNATURE,
) -> bytes:
    length = len(body) if body_length is None else body_length
    return b"".join(
        [
            magic,
            struct.pack(">BBHQ", version, msg_type, reserved, time_ms),
            u16s(sender),
            u16s(sender_kms),
            struct.pack(">H", length),
            body,
            signature,
        ]
    )


BODIES: list[tuple[Body, bytes]] = [
    (Hello(5004), struct.pack(">HH", 5004, 0)),
    (
        Hello(5004, ((GROUP_URI, GMK_ID), ("sip:adhoc.other@example.org", b"\x00\x00\x00\x01"))),
        struct.pack(">HH", 5004, 2) + u16s(GROUP_URI) + GMK_ID + u16s("sip:adhoc.other@example.org") + bytes(3) + b"\1",
    ),
    (Probe(), b"\x00\x00"),
    (Probe((BOB, CAROL)), b"\x00\x02" + u16s(BOB) + u16s(CAROL)),
    (GroupAnnouncement(GROUP), raw_group()),
    (KeyDelivery(GROUP, I_MESSAGE), raw_group() + u16s(I_MESSAGE)),
    (KeyAck(GROUP_URI, GMK_ID), u16s(GROUP_URI) + GMK_ID),
    (Leave(GROUP_URI, 7), u16s(GROUP_URI) + b"\x00\x00\x00\x07"),
    (
        CallSignal(b"\x01" * 8, 1, 1, BOB, 7000, I_MESSAGE),
        b"\x01" * 8 + b"\x01\x01" + u16s(BOB) + struct.pack(">H", 7000) + u16s(I_MESSAGE),
    ),
    (CallSignal(b"\x02" * 8, 5, 0, BOB), b"\x02" * 8 + b"\x05\x00" + u16s(BOB) + bytes(4)),
]
BODY_IDS = ["hello", "hello-held", "probe-all", "probe", "group", "key", "ack", "leave", "call-setup", "call-end"]
ALL_BODIES = [body for body, _ in BODIES]


# --- keys ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    domain: KmsDomain
    master: kms.MasterSecrets

    def keys(self, uri: str, now: float = NOW) -> IdentityKeys:
        period = self.domain.period_number(now)
        material = kms.derive_user_keys(self.domain.uid(uri, period), self.master)
        return IdentityKeys(uri, self.domain, period, material.ssk, material.pvt, material.rsk)

    @property
    def trust(self) -> dict[str, KmsDomain]:
        return {self.domain.kms_uri: self.domain}


def make_world(kms_uri: str = KMS_URI) -> World:
    master = kms.generate_master_secrets()
    return World(KmsDomain(kms_uri, master.kpak, master.z_public), master)


@pytest.fixture(scope="module")
def world() -> World:
    return make_world()


@pytest.fixture(scope="module")
def alice(world: World) -> IdentityKeys:
    return world.keys(ALICE)


@pytest.fixture(scope="module")
def bob(world: World) -> IdentityKeys:
    return world.keys(BOB)


def receive(world: World, data: bytes, *, now: float = NOW, cache: ReplayCache | None = None) -> Envelope:
    return open_envelope(data, trusted_kms=world.trust, now=now, replay_cache=ReplayCache() if cache is None else cache)


def signed_as(keys: IdentityKeys, envelope: Envelope) -> bytes:
    """``envelope`` signed with ``keys``, whoever it claims to be from."""
    octets = envelope.signed_octets()
    return octets + eccsi.sign(octets, keys.uid, keys.ssk, keys.pvt, keys.domain.kpak)


# --- layout and round trips ------------------------------------------------------------------------------------------


def test_a_small_datagram_octet_by_octet() -> None:
    envelope = Envelope("sip:a@x", "k", 0x0102030405060708, KeyAck("sip:g@x", GMK_ID), b"\xaa" * 129)
    expected = bytes.fromhex(
        "50545441 01 05 0000 0102030405060708"  # magic, version, type ACK, reserved, time_ms
        "0007 7369703a614078 0001 6b"  # sender "sip:a@x", KMS "k"
        "000d 0007 7369703a674078 0a1b2c3d"  # body length 13: group "sip:g@x", GMK-ID
    ) + (b"\xaa" * 129)
    assert bytes(envelope) == expected
    assert Envelope.parse(expected) == envelope


@pytest.mark.parametrize(("body", "octets"), BODIES, ids=BODY_IDS)
def test_body_layout_and_round_trip(body: Body, octets: bytes) -> None:
    assert bytes(body) == octets
    assert type(body).parse(octets) == body
    envelope = Envelope(ALICE, KMS_URI, NOW_MS, body, FAKE_SIGNATURE)
    data = bytes(envelope)
    assert data == raw_envelope(octets, msg_type=body.TYPE)
    parsed = Envelope.parse(data)
    assert parsed == envelope
    assert bytes(parsed) == data
    assert parsed.type == body.TYPE
    assert parsed.signed_octets() == data[:-129]


def test_message_types() -> None:
    assert [type(b).TYPE for b in ALL_BODIES] == [1, 1, 2, 2, 3, 4, 5, 6, 7, 7]
    assert {type(b).TYPE.name for b in ALL_BODIES} == {"HELLO", "PROBE", "GROUP", "KEY", "ACK", "LEAVE", "CALL"}


def test_encoding_needs_a_whole_signature() -> None:
    unsigned = Envelope(ALICE, KMS_URI, NOW_MS, Probe())
    assert unsigned.signature == b""
    assert unsigned.signed_octets() == raw_envelope(b"\x00\x00", msg_type=2, signature=b"")
    for signature in (b"", bytes(128), bytes(130)):
        with pytest.raises(ValueError, match="129 octets"):
            bytes(dataclasses.replace(unsigned, signature=signature))


def test_group_info_helpers_and_normalisation() -> None:
    assert GROUP.has_member(BOB) and GROUP.has_member(ALICE)
    assert not GROUP.has_member("sip:mallory@example.org")
    loose = GroupInfo(GROUP_URI, "", BOB, 0, "224.0.0.1", 1, bytearray(GMK_ID), [BOB])  # type: ignore[arg-type]
    assert loose.members == (BOB,) and type(loose.gmk_id) is bytes
    assert hash(loose) == hash(GroupInfo(GROUP_URI, "", BOB, 0, "224.0.0.1", 1, GMK_ID, (BOB,)))
    assert GroupInfo.parse(bytes(loose)) == loose


def test_error_hierarchy() -> None:
    assert issubclass(AdhocMessageError, ValueError)
    assert issubclass(MalformedAdhocMessage, AdhocMessageError)
    assert not issubclass(MalformedAdhocMessage, AdhocAuthError)
    for cls in (UntrustedSender, BadAdhocSignature, StaleAdhocMessage, ReplayedAdhocMessage):
        assert issubclass(cls, AdhocAuthError) and issubclass(cls, AdhocMessageError)


# --- seal and open ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", ALL_BODIES, ids=BODY_IDS)
def test_seal_and_open(world: World, alice: IdentityKeys, body: Body) -> None:
    data = seal(alice, body, NOW)
    envelope = receive(world, data, now=NOW + 2)
    assert envelope.body == body
    assert (envelope.sender, envelope.sender_kms, envelope.time_ms) == (ALICE, KMS_URI, NOW_MS)
    assert envelope.type == type(body).TYPE
    assert bytes(envelope) == data


def test_seal_refuses_keys_of_another_period_or_without_a_signing_key(world: World, alice: IdentityKeys) -> None:
    last_month = world.keys(ALICE, NOW - world.domain.key_period)
    with pytest.raises(ValueError, match="key period"):
        seal(last_month, Probe(), NOW)
    with pytest.raises(ValueError, match="signing key"):
        seal(dataclasses.replace(alice, ssk=b""), Probe(), NOW)
    with pytest.raises(ValueError):
        seal(alice, Probe(), float("nan"))


def test_unknown_kms_is_untrusted(world: World, alice: IdentityKeys) -> None:
    data = seal(alice, Probe(), NOW)
    for trusted in ({}, {"kms.other.org": world.domain}):
        with pytest.raises(UntrustedSender):
            open_envelope(data, trusted_kms=trusted, now=NOW, replay_cache=ReplayCache())


def test_keys_of_another_kms_using_a_trusted_name_do_not_verify(world: World) -> None:
    impostor = make_world()  # same KMS URI, other master secrets
    data = seal(impostor.keys(ALICE), Hello(5004), NOW)
    assert receive(impostor, data).sender == ALICE
    with pytest.raises(BadAdhocSignature):
        receive(world, data)


def test_a_user_cannot_sign_as_another(world: World, alice: IdentityKeys, bob: IdentityKeys) -> None:
    claim = Envelope(ALICE, KMS_URI, NOW_MS, Leave(GROUP_URI, 7))
    assert receive(world, signed_as(alice, claim)).sender == ALICE  # the helper signs correctly
    with pytest.raises(BadAdhocSignature):
        receive(world, signed_as(bob, claim))
    # Alice's key of the previous period is not her key for the datagram's time.
    with pytest.raises(BadAdhocSignature):
        receive(world, signed_as(world.keys(ALICE, NOW - world.domain.key_period), claim))


def test_a_signature_does_not_transplant(world: World, alice: IdentityKeys) -> None:
    leave = seal(alice, Leave(GROUP_URI, 7), NOW)
    ack = seal(alice, KeyAck(GROUP_URI, GMK_ID), NOW)
    with pytest.raises(BadAdhocSignature):
        receive(world, ack[:-129] + leave[-129:])


@pytest.mark.parametrize("r_or_s_bit", [0, 7, 100, 255, 256, 300, 511])
def test_signature_bit_flips(world: World, alice: IdentityKeys, r_or_s_bit: int) -> None:
    data = bytearray(seal(alice, Probe(), NOW))
    data[len(data) - 129 + r_or_s_bit // 8] ^= 0x80 >> (r_or_s_bit % 8)
    with pytest.raises(BadAdhocSignature):
        receive(world, bytes(data))


@pytest.mark.parametrize("offset", [-300.001, 300.001, -3600.0, 86400.0 * 365])
def test_outside_the_time_window(world: World, alice: IdentityKeys, offset: float) -> None:
    data = seal(alice, Probe(), NOW)
    with pytest.raises(StaleAdhocMessage):
        receive(world, data, now=NOW + offset)


@pytest.mark.parametrize("offset", [-300.0, 300.0, 0.0])
def test_edges_of_the_time_window_are_accepted(world: World, alice: IdentityKeys, offset: float) -> None:
    assert receive(world, seal(alice, Probe(), NOW), now=NOW + offset).time_ms == NOW_MS


def test_narrower_window(world: World, alice: IdentityKeys) -> None:
    data = seal(alice, Probe(), NOW)
    with pytest.raises(StaleAdhocMessage):
        open_envelope(data, trusted_kms=world.trust, now=NOW + 11, replay_cache=ReplayCache(), window=10)
    open_envelope(data, trusted_kms=world.trust, now=NOW + 9, replay_cache=ReplayCache(), window=10)


def test_replay_is_refused(world: World, alice: IdentityKeys) -> None:
    cache = ReplayCache()
    data = seal(alice, KeyAck(GROUP_URI, GMK_ID), NOW)
    receive(world, data, cache=cache)
    with pytest.raises(ReplayedAdhocMessage):
        receive(world, data, now=NOW + 5, cache=cache)
    # Sealing the same body again at the same millisecond gives the same signed octets: a replay too.
    again = seal(alice, KeyAck(GROUP_URI, GMK_ID), NOW)
    assert again != data and again[:-129] == data[:-129]
    with pytest.raises(ReplayedAdhocMessage):
        receive(world, again, cache=cache)
    # One millisecond later it is a new datagram.
    receive(world, seal(alice, KeyAck(GROUP_URI, GMK_ID), NOW + 0.001), cache=cache)


def test_malleated_signature_is_still_a_replay(world: World, alice: IdentityKeys) -> None:
    data = seal(alice, Leave(GROUP_URI, 7), NOW)
    signature = data[-129:]
    s = int.from_bytes(signature[32:64], "big")
    malleated = signature[:32] + (int(P256.q) - s).to_bytes(32, "big") + signature[64:]
    variant = data[:-129] + malleated
    assert variant != data
    assert eccsi.verify(data[:-129], malleated, alice.uid, world.domain.kpak)  # (r, q - s) verifies
    assert receive(world, variant).body == Leave(GROUP_URI, 7)  # on its own it is accepted
    cache = ReplayCache()
    receive(world, data, cache=cache)
    with pytest.raises(ReplayedAdhocMessage):
        receive(world, variant, cache=cache)


def test_replay_of_a_datagram_evicted_from_a_full_cache(world: World, alice: IdentityKeys) -> None:
    cache = ReplayCache(capacity=1)
    first = seal(alice, Probe(), NOW)
    receive(world, first, cache=cache)
    receive(world, seal(alice, Probe(), NOW + 1), now=NOW + 1, cache=cache)  # evicts the first
    with pytest.raises(ReplayedAdhocMessage, match="older"):
        receive(world, first, now=NOW + 1, cache=cache)


# --- truncation, bit flips, fuzz -----------------------------------------------------------------------------------


@pytest.mark.parametrize("body", ALL_BODIES, ids=BODY_IDS)
def test_truncation_at_every_offset_is_malformed(world: World, alice: IdentityKeys, body: Body) -> None:
    data = seal(alice, body, NOW)
    for end in range(len(data)):
        with pytest.raises(MalformedAdhocMessage):
            Envelope.parse(data[:end])
        with pytest.raises(MalformedAdhocMessage):
            receive(world, data[:end])
    with pytest.raises(MalformedAdhocMessage, match="trailing"):
        receive(world, data + b"\x00")


def test_every_single_bit_flip_is_rejected(world: World, alice: IdentityKeys) -> None:
    data = seal(alice, GroupAnnouncement(GROUP), NOW)
    receive(world, data)
    seen: dict[type[AdhocMessageError], int] = {}
    for bit in range(8 * len(data)):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 0x80 >> (bit % 8)
        with pytest.raises(AdhocMessageError) as refused:
            receive(world, bytes(flipped))  # a fresh cache: refused for the flip, not as a replay
        seen[type(refused.value)] = seen.get(type(refused.value), 0) + 1
        if bit >= 8 * (len(data) - 129):
            assert type(refused.value) is BadAdhocSignature, bit
    # Every kind of check is exercised: structure, time, trust, signature.
    assert set(seen) == {MalformedAdhocMessage, StaleAdhocMessage, UntrustedSender, BadAdhocSignature}, seen


FUZZ_COUNT = 20_000


def _mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        op = rng.randrange(9)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:  # flip bits
            data[min(pos, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and data:  # a special octet
            data[min(pos, len(data) - 1)] = rng.choice((0x00, 0x01, 0x7F, 0x80, 0xC0, 0xED, 0xFF, rng.randrange(256)))
        elif op == 2 and len(data) > 1:  # a 16-bit length field gone wrong
            value = rng.choice((0, 1, 0xFFFF, 0x8000, 1001, 257, rng.randrange(0x10000)))
            at = min(pos, len(data) - 2)
            data[at : at + 2] = value.to_bytes(2, "big")
        elif op == 3:  # insert
            data[pos:pos] = rng.randbytes(rng.choice((1, 2, 4, rng.randrange(1, 64))))
        elif op == 4:  # delete
            del data[pos : pos + rng.choice((1, 2, 4, rng.randrange(1, 64)))]
        elif op == 5:  # truncate
            del data[pos:]
        elif op == 6 and data:  # duplicate a slice
            start = rng.randrange(len(data))
            data[pos:pos] = data[start : start + rng.randrange(1, 40)]
        elif op == 7:  # splice with another seed
            other = rng.choice(seeds)
            data = data[:pos] + bytearray(other[rng.randrange(len(other)) :])
        else:  # random tail after a valid header
            data = data[:pos] + bytearray(rng.randbytes(rng.randrange(0, 200)))
    return bytes(data)


def test_fuzz_raises_only_adhoc_errors(world: World, alice: IdentityKeys) -> None:
    rng = random.Random(20240611)
    seeds = [seal(alice, body, NOW) for body in ALL_BODIES]
    cache = ReplayCache()
    outcomes: dict[str, int] = {}
    for i in range(FUZZ_COUNT):
        if i % 10 == 0:
            data = rng.randbytes(rng.randrange(0, 400))
            if i % 20 == 0:
                data = b"PTTA\x01" + bytes([rng.randrange(1, 7)]) + b"\x00\x00" + data
        else:
            data = _mutate(rng, seeds)
        try:
            parsed: Envelope | None = Envelope.parse(data)
        except MalformedAdhocMessage:
            parsed = None
        except Exception as exc:
            pytest.fail(f"parse raised {exc!r} for {data.hex()}")
        if parsed is not None:
            assert bytes(parsed) == data, data.hex()
        try:
            open_envelope(data, trusted_kms=world.trust, now=NOW, replay_cache=cache)
            outcome = "accepted"
        except AdhocMessageError as exc:
            outcome = type(exc).__name__
        except Exception as exc:
            pytest.fail(f"open_envelope raised {exc!r} for {data.hex()}")
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    # The mutations reach every check (a fuzzer that only hits the magic proves little).
    checks = (MalformedAdhocMessage, BadAdhocSignature, StaleAdhocMessage, UntrustedSender, ReplayedAdhocMessage)
    assert {cls.__name__ for cls in checks} <= set(outcomes), outcomes
    assert outcomes["BadAdhocSignature"] > 500, outcomes


# --- limits and invalid values -------------------------------------------------------------------------------------


def _group(**changes: object) -> GroupInfo:
    return dataclasses.replace(GROUP, **changes)  # type: ignore[arg-type]


def _members(n: int, length: int = 20) -> tuple[str, ...]:
    members = tuple(f"sip:m{i:04d}@" + "x" * (length - 10) for i in range(n))
    assert all(len(m) == length for m in members)
    return members


LONG_URI = "sip:" + "a" * (MAX_URI - 4)
assert len(LONG_URI) == MAX_URI

INVALID_VALUES: dict[str, Callable[[], object]] = {
    "too many members": lambda: _group(members=(ALICE, *_members(MAX_MEMBERS))),
    "too long member URI": lambda: _group(members=(ALICE, LONG_URI + "b")),
    "too long group URI": lambda: _group(uri=LONG_URI + "b"),
    "too long sender URI": lambda: Envelope(LONG_URI + "b", KMS_URI, NOW_MS, Probe()),
    "too long KMS URI": lambda: Envelope(ALICE, LONG_URI + "b", NOW_MS, Probe()),
    "too long name": lambda: _group(name="ü" * 128),
    "empty URI": lambda: KeyAck("", GMK_ID),
    "empty sender": lambda: Envelope("", KMS_URI, NOW_MS, Probe()),
    "unicast media host": lambda: _group(media_host="10.0.0.1"),
    "broadcast media host": lambda: _group(media_host="255.255.255.255"),
    "not an IPv4 address": lambda: _group(media_host="239.1.2"),
    "IPv6 media host": lambda: _group(media_host="ff02::1"),
    "leading zeros": lambda: _group(media_host="239.001.2.3"),
    "media port 0": lambda: _group(media_port=0),
    "media port too big": lambda: _group(media_port=65536),
    "hello port 0": lambda: Hello(0),
    "duplicate members": lambda: _group(members=(ALICE, BOB, ALICE)),
    "manager not a member": lambda: _group(manager="sip:dave@example.org"),
    "short GMK-ID": lambda: _group(gmk_id=b"\x01\x02\x03"),
    "long GMK-ID in ack": lambda: KeyAck(GROUP_URI, b"\x01\x02\x03\x04\x05"),
    "short GMK-ID in hello": lambda: Hello(1, ((GROUP_URI, b"\x01"),)),
    "too many held keys": lambda: Hello(1, tuple((f"sip:g{i}@x", GMK_ID) for i in range(MAX_HELD + 1))),
    "too many wanted": lambda: Probe(_members(MAX_MEMBERS + 1)),
    "empty I_MESSAGE": lambda: KeyDelivery(GROUP, b""),
    "too long I_MESSAGE": lambda: KeyDelivery(GROUP, bytes(MAX_I_MESSAGE + 1)),
    "negative revision": lambda: Leave(GROUP_URI, -1),
    "revision too big": lambda: _group(revision=1 << 32),
    "time too big": lambda: Envelope(ALICE, KMS_URI, 1 << 64, Probe()),
    "negative time": lambda: Envelope(ALICE, KMS_URI, -1, Probe()),
    "control character in URI": lambda: Probe(("sip:bob@example.org\r\nX: y",)),
    "escape in name": lambda: _group(name="\x1b[2Jhello"),
    "C1 control in name": lambda: _group(name="a\x85b"),
    "lone surrogate": lambda: KeyAck("sip:\udcff@x", GMK_ID),
}


@pytest.mark.parametrize("make", INVALID_VALUES.values(), ids=INVALID_VALUES.keys())
def test_invalid_values_are_refused_on_construction(make: Callable[[], object]) -> None:
    with pytest.raises(MalformedAdhocMessage):
        make()


def test_values_at_the_limits_are_accepted() -> None:
    big = _group(members=(ALICE, *_members(MAX_MEMBERS - 1)))
    assert GroupInfo.parse(bytes(big)) == big
    assert len(_group(name="ü" * 127 + "a").name.encode()) == 255
    long = _group(uri=LONG_URI, members=(ALICE, LONG_URI))
    assert GroupInfo.parse(bytes(long)) == long
    held = Hello(65535, tuple((f"sip:g{i}@x", GMK_ID) for i in range(MAX_HELD)))
    assert Hello.parse(bytes(held)) == held
    delivery = KeyDelivery(GROUP, bytes(MAX_I_MESSAGE))
    assert KeyDelivery.parse(bytes(delivery)) == delivery
    for host in ("224.0.0.0", "239.255.255.255"):
        assert _group(media_host=host).media_host == host
    assert Envelope(ALICE, KMS_URI, (1 << 64) - 1, Probe(), FAKE_SIGNATURE).time_ms == (1 << 64) - 1


def _key_body(**group: object) -> bytes:
    return raw_group(**group) + u16s(I_MESSAGE)  # type: ignore[arg-type]


WIRE_ERRORS: dict[str, tuple[bytes, str]] = {
    "bad magic": (raw_envelope(raw_group(), magic=b"PTTB"), "magic"),
    "version 0": (raw_envelope(raw_group(), version=0), "version 0"),
    "version 2": (raw_envelope(raw_group(), version=2), "version 2"),
    "type 0": (raw_envelope(raw_group(), msg_type=0), "type 0"),
    "type 8": (raw_envelope(raw_group(), msg_type=8), "type 8"),  # 7 is CALL (private calls)
    "octet after a call signal": (
        raw_envelope(bytes(8) + b"\x02\x00" + u16s(BOB) + bytes(4) + b"\x00", msg_type=7),
        "CALL: 1 trailing",
    ),
    "reserved": (raw_envelope(raw_group(), reserved=1), "reserved"),
    "reserved high bit": (raw_envelope(raw_group(), reserved=0x8000), "reserved"),
    "octet after the signature": (raw_envelope(raw_group()) + b"\x00", "trailing"),
    "short signature": (raw_envelope(raw_group(), signature=bytes(128)), "truncated signature"),
    "body length beyond the datagram": (raw_envelope(raw_group(), body_length=0xFFFF), "truncated body"),
    "octet after the group body": (raw_envelope(raw_group() + b"\x00"), "GroupInfo: 1 trailing"),
    "octet after a hello": (raw_envelope(struct.pack(">HH", 1, 0) + b"\x00", msg_type=1), "HELLO: 1 trailing"),
    "octet after a probe": (raw_envelope(b"\x00\x00\x00", msg_type=2), "PROBE: 1 trailing"),
    "octet after a key delivery": (raw_envelope(_key_body() + b"\x00", msg_type=4), "KEY: 1 trailing"),
    "octet after an ack": (raw_envelope(u16s(GROUP_URI) + GMK_ID + b"\x00", msg_type=5), "ACK: 1 trailing"),
    "octet after a leave": (raw_envelope(u16s(GROUP_URI) + bytes(5), msg_type=6), "LEAVE: 1 trailing"),
    "body shorter than its content": (raw_envelope(raw_group()[:-1]), "truncated"),
    "too many members": (raw_envelope(raw_group(count=MAX_MEMBERS + 1)), "more than 1000"),
    "too many held keys": (raw_envelope(struct.pack(">HH", 1, MAX_HELD + 1), msg_type=1), "more than 256"),
    "too many wanted": (raw_envelope(struct.pack(">H", MAX_MEMBERS + 1), msg_type=2), "more than 1000"),
    "too long sender URI": (raw_envelope(raw_group(), sender=LONG_URI + "b"), "more than 1024"),
    "too long member URI": (raw_envelope(raw_group(members=(ALICE, LONG_URI + "b"))), "more than 1024"),
    "empty sender URI": (raw_envelope(raw_group(), sender=""), "empty"),
    "unicast media host": (raw_envelope(raw_group(host=bytes([192, 168, 1, 1]))), "multicast"),
    "media port 0": (raw_envelope(raw_group(port=0)), "media port 0"),
    "hello port 0": (raw_envelope(struct.pack(">HH", 0, 0), msg_type=1), "port 0"),
    "duplicate members": (raw_envelope(raw_group(members=(ALICE, BOB, BOB))), "more than once"),
    "manager not a member": (raw_envelope(raw_group(members=(BOB, CAROL))), "manager"),
    "no members": (raw_envelope(raw_group(members=())), "manager"),
    "bad UTF-8 sender": (raw_envelope(raw_group(), sender=b"sip:\xff@x"), "UTF-8"),
    "bad UTF-8 KMS": (raw_envelope(raw_group(), sender_kms=b"kms.\xc0\xaf"), "UTF-8"),  # overlong "/"
    "bad UTF-8 name": (raw_envelope(raw_group(name=b"Team \xe2\x80")), "UTF-8"),  # cut in a character
    "bad UTF-8 member": (raw_envelope(raw_group(members=(ALICE, b"sip:\xed\xa0\x80@x"))), "UTF-8"),  # surrogate
    "bad UTF-8 group URI": (raw_envelope(u16s(b"sip:\x80") + GMK_ID, msg_type=5), "UTF-8"),
    "control character": (raw_envelope(u16s("sip:a\x00b") + GMK_ID, msg_type=5), "control"),
    "empty I_MESSAGE": (raw_envelope(raw_group() + b"\x00\x00", msg_type=4), "I_MESSAGE of 0"),
    "I_MESSAGE length beyond the body": (raw_envelope(raw_group() + b"\x00\x05abc", msg_type=4), "truncated"),
    "GroupInfo sent as a KEY": (raw_envelope(raw_group(), msg_type=4), "truncated I_MESSAGE length"),
    "KEY sent as a GROUP": (raw_envelope(_key_body(), msg_type=3), "trailing"),
    "over MAX_DATAGRAM": (raw_envelope(raw_group()) + bytes(MAX_DATAGRAM), "MAX_DATAGRAM"),
}


@pytest.mark.parametrize(("data", "reason"), WIRE_ERRORS.values(), ids=WIRE_ERRORS.keys())
def test_malformed_on_the_wire(world: World, data: bytes, reason: str) -> None:
    with pytest.raises(MalformedAdhocMessage, match=reason):
        Envelope.parse(data)
    with pytest.raises(MalformedAdhocMessage, match=reason):
        receive(world, data)


def test_the_raw_builders_make_valid_datagrams_by_default() -> None:
    # So each case above fails for its one change, not for a mistake in the builder.
    assert Envelope.parse(raw_envelope(raw_group())).body == GroupAnnouncement(GROUP)
    assert Envelope.parse(raw_envelope(_key_body(), msg_type=4)).body == KeyDelivery(GROUP, I_MESSAGE)


# --- size: the documented practical limit ------------------------------------------------------------------------


def _documented_key_delivery(members: tuple[str, ...]) -> Envelope:
    """The docstring's example: sender = manager (30 octets), KMS URI 20, group URI 40, name 32, I_MESSAGE 683."""
    kms_uri = "kms.rescue.ex.org.uk"
    group_uri = "sip:adhoc.rescue.3f9a1c@rescue.example.o"
    name = "Lawinenverschüttetensuche Teams"
    assert (len(kms_uri), len(group_uri), len(name.encode()), len(members[0])) == (20, 40, 32, 30)
    info = GroupInfo(group_uri, name, members[0], 1, "239.1.2.3", 5000, GMK_ID, members)
    return Envelope(members[0], kms_uri, NOW_MS, KeyDelivery(info, bytes(683)), FAKE_SIGNATURE)


def test_a_thousand_members_of_thirty_octets_fit() -> None:
    envelope = _documented_key_delivery(_members(MAX_MEMBERS, 30))
    data = bytes(envelope)
    assert len(data) == 1009 + MAX_MEMBERS * 32 == 33009
    assert Envelope.parse(data) == envelope


def test_the_datagram_limit_is_exact() -> None:
    # The example's fixed part is 1009 octets and the 30-octet manager takes 32 more: 999 members whose URIs
    # average just over 62 octets fill the datagram to MAX_DATAGRAM exactly (1000 URIs averaging 61.99 octets).
    manager = _members(1, 30)[0]
    others = [f"sip:m{i:04d}@" + "x" * (53 if i <= 23 else 52) for i in range(1, MAX_MEMBERS)]
    assert 1009 + 32 + sum(2 + len(m) for m in others) == MAX_DATAGRAM
    exact = _documented_key_delivery((manager, *others))
    data = bytes(exact)
    assert len(data) == MAX_DATAGRAM
    assert Envelope.parse(data) == exact
    others[-1] += "x"
    with pytest.raises(ValueError, match="65001 octets exceeds MAX_DATAGRAM"):
        bytes(_documented_key_delivery((manager, *others)))


def test_oversized_datagrams_are_refused(alice: IdentityKeys) -> None:
    members = (ALICE, *(f"sip:m{i:04d}@" + "x" * 60 for i in range(MAX_MEMBERS - 1)))
    huge = GroupAnnouncement(_group(members=members))
    with pytest.raises(ValueError, match="MAX_DATAGRAM"):
        bytes(Envelope(ALICE, KMS_URI, NOW_MS, huge, FAKE_SIGNATURE))
    with pytest.raises(ValueError, match="MAX_DATAGRAM"):
        seal(alice, huge, NOW)
