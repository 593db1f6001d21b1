"""Voice messages without I/O (deferred delivery, issue 17): sealing and opening, the server's upload checks, the
signature check, the chunked upload's assembly and its limits, the client's chunking."""

from __future__ import annotations

from typing import Any

import pytest

from client.voicemessages import chunks
from ptt.mikey.errors import OutsideTimeWindow, Replayed, UnexpectedInitiator, WrongRecipient
from ptt.mikey.imessage import ReplayCache, replay_key
from ptt.rtp import RtpPacket
from ptt.voicemessage import (
    MAX_PACKETS,
    UPLOAD_WINDOW,
    UploadRefused,
    check_upload,
    open_voice,
    seal_voice,
    sender_signature_valid,
    stored_max_age,
)
from ptt.voicemessage_upload import IDLE, UploadTable, decode_packets, encode_packets, is_upload_id
from tests.identities import keys_for, make_world

NOW = 1_760_000_000.0
ALICE, BOB, CAROL = "sip:alice@example.org", "sip:bob@example.org", "sip:carol@example.org"
FRAMES = [bytes([i % 251]) * 60 for i in range(40)]  # stand-ins for 40 Opus frames (0.8 s)


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    w = make_world()
    return {"domain": w[0], "keys": {u: keys_for(w, u, NOW) for u in (ALICE, BOB, CAROL)}}


@pytest.fixture(scope="module")
def sealed(world: dict[str, Any]) -> Any:
    return seal_voice(world["keys"][ALICE], BOB, FRAMES, now=NOW)


def opened(
    world: dict[str, Any], imessage: bytes, packets: Any, *, to: str = BOB, sender: str = ALICE, **kw: Any
) -> Any:
    options: dict[str, Any] = {
        "now": NOW + 600,
        "replay_cache": ReplayCache(8),
        "max_age": stored_max_age(world["domain"]),
    }
    options.update(kw)
    return open_voice(
        imessage,
        packets,
        addressee=[world["keys"][to]],
        sender=sender,
        trusted_kms={world["domain"].kms_uri: world["domain"]},
        **options,
    )


def test_the_addressee_opens_the_speech_under_a_fresh_pck_of_the_caller_direction(world: Any, sealed: Any) -> None:
    assert len(sealed.packets) == 40 and [at for at, _ in sealed.packets[:3]] == [0.0, 0.02, 0.04]
    assert all(frame not in packet for frame, (_, packet) in zip(FRAMES, sealed.packets, strict=True))
    result = opened(world, sealed.imessage, sealed.packets)
    assert result.failed == 0 and result.received.caller_uri == ALICE and result.received.timestamp == NOW
    payloads = [RtpPacket.parse(rtp).payload for _, rtp in result.rtp]
    assert payloads == FRAMES
    assert RtpPacket.parse(result.rtp[0][1]).marker and not RtpPacket.parse(result.rtp[1][1]).marker
    other = seal_voice(world["keys"][ALICE], BOB, FRAMES[:3], now=NOW)
    assert other.key.pck != sealed.key.pck  # a fresh key per message
    mixed = opened(world, sealed.imessage, other.packets + sealed.packets[:2])
    assert mixed.failed == 3 and len(mixed.rtp) == 2  # packets under another PCK do not open


def test_only_the_addressee_opens_it_and_only_from_the_named_sender(world: Any, sealed: Any) -> None:
    with pytest.raises(WrongRecipient):
        opened(world, sealed.imessage, sealed.packets, to=CAROL)
    with pytest.raises(UnexpectedInitiator):
        opened(world, sealed.imessage, sealed.packets, sender=CAROL)  # the server names another sender


def test_a_stored_message_opens_up_to_a_key_period_old_and_only_once_per_cache(world: Any, sealed: Any) -> None:
    domain = world["domain"]
    late = NOW + stored_max_age(domain) - 1
    assert opened(world, sealed.imessage, sealed.packets, now=late).failed == 0
    with pytest.raises(OutsideTimeWindow):
        opened(world, sealed.imessage, sealed.packets, now=NOW + stored_max_age(domain) + 1)
    cache = ReplayCache(8)
    opened(world, sealed.imessage, sealed.packets, replay_cache=cache)
    with pytest.raises(Replayed):
        opened(world, sealed.imessage, sealed.packets, replay_cache=cache)


def test_the_server_checks_the_parties_and_the_time_before_any_signature(world: Any, sealed: Any) -> None:
    domain = world["domain"]
    checked = check_upload(sealed.imessage, ALICE, BOB, domain, NOW + 10)
    assert checked.digest == replay_key(sealed.imessage)[0] and checked.offer.pck_id == sealed.key.pck_id
    refusals = {
        "carol uploads alice's": (sealed.imessage, CAROL, BOB, NOW, 403, "WrongParties"),
        "to someone else": (sealed.imessage, ALICE, CAROL, NOW, 403, "WrongParties"),
        "to oneself": (sealed.imessage, ALICE, ALICE, NOW, 400, "oneself"),
        "old": (sealed.imessage, ALICE, BOB, NOW + UPLOAD_WINDOW + 1, 403, "OutsideTimeWindow"),
        "too large": (sealed.imessage + bytes(5000), ALICE, BOB, NOW, 413, "octets"),
        "not MIKEY": (b"\x01" * 100, ALICE, BOB, NOW, 403, "MalformedMessage"),
    }
    for name, (data, sender, to, now, code, text) in refusals.items():
        with pytest.raises(UploadRefused) as refused:
            check_upload(data, sender, to, domain, now)
        assert refused.value.code == code and text in str(refused.value), name


def test_the_sender_signature_check_refuses_any_altered_octet(world: Any, sealed: Any) -> None:
    domain = world["domain"]
    assert sender_signature_valid(sealed.imessage, domain)
    data = sealed.imessage
    for at in (len(data) - 20, len(data) - 129, 40):
        assert not sender_signature_valid(data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :], domain), at
    assert not sender_signature_valid(b"junk", domain)


def test_seal_refuses_an_empty_or_too_long_message(world: Any) -> None:
    for frames in ([], [b"x"] * (MAX_PACKETS + 1)):
        with pytest.raises(ValueError):
            seal_voice(world["keys"][ALICE], BOB, frames, now=NOW)


# --- the upload's assembly ---------------------------------------------------------------------------------------

UP, UP2, UP3 = "up:" + "0" * 16, "up:" + "1" * 16, "up:" + "2" * 16
PACKETS = [(i * 0.02, bytes([i]) * 100) for i in range(10)]


def test_an_upload_assembles_chunk_by_chunk_and_leaves_the_table_when_complete() -> None:
    table = UploadTable()
    table.begin(ALICE, UP, BOB, b"imsg", b"d" * 32, 10, NOW)
    entry = table.add(ALICE, UP, 0, PACKETS[:4], NOW)
    assert not entry.complete and len(table) == 1
    entry = table.add(ALICE, UP, 4, PACKETS[4:], NOW + 1)
    assert entry.complete and entry.octets == 1000 and entry.seconds == 0.2 and len(table) == 0
    assert entry.packets == PACKETS


@pytest.mark.parametrize(
    ("step", "code"),
    [
        (lambda t: t.add(ALICE, UP, 3, PACKETS[:2], NOW), 400),  # not where the last chunk ended
        (lambda t: t.add(ALICE, UP, 0, PACKETS + PACKETS[:1], NOW), 413),  # more than announced
        (lambda t: t.add(BOB, UP, 0, PACKETS, NOW), 404),  # another sender's upload
        (lambda t: t.add(ALICE, UP, 0, [PACKETS[3], PACKETS[1]], NOW), 400),  # offsets backwards
        (lambda t: t.begin(ALICE, UP, BOB, b"i", b"e" * 32, 5, NOW), 409),  # the same upload ID again
        (lambda t: t.begin(ALICE, UP2, BOB, b"i", b"d" * 32, 5, NOW), 409),  # the same I_MESSAGE
        (lambda t: t.begin(ALICE, "up:xyz", BOB, b"i", b"f" * 32, 5, NOW), 400),
        (lambda t: t.begin(ALICE, UP2, BOB, b"i", b"f" * 32, 0, NOW), 413),
        (lambda t: t.begin(ALICE, UP2, BOB, b"i", b"f" * 32, MAX_PACKETS + 1, NOW), 413),
        (lambda t: t.begin(ALICE, UP2, BOB, b"i", b"f" * 32, True, NOW), 413),
    ],
)
def test_upload_refusals(step: Any, code: int) -> None:
    table = UploadTable()
    table.begin(ALICE, UP, BOB, b"imsg", b"d" * 32, 10, NOW)
    with pytest.raises(UploadRefused) as refused:
        step(table)
    assert refused.value.code == code


def test_uploads_are_bounded_in_count_octets_and_time() -> None:
    table = UploadTable(max_octets=500)
    table.begin(ALICE, UP, BOB, b"i", b"a" * 32, 10, NOW)
    table.begin(ALICE, UP2, BOB, b"i", b"b" * 32, 10, NOW)
    with pytest.raises(UploadRefused) as refused:
        table.begin(ALICE, UP3, BOB, b"i", b"c" * 32, 10, NOW)
    assert refused.value.code == 429
    table.begin(CAROL, UP3, BOB, b"i", b"c" * 32, 10, NOW)  # the limit is per sender
    with pytest.raises(UploadRefused) as refused:
        table.add(ALICE, UP, 0, PACKETS[:6], NOW)  # 600 octets > 500
    assert refused.value.code == 413 and len(table) == 2  # and the upload is dropped
    table.add(ALICE, UP2, 0, PACKETS[:1], NOW + IDLE)
    stale = table.sweep(NOW + IDLE + 1)
    assert [u.upload for u in stale] == [UP3] and len(table) == 1


def test_chunk_packets_round_trip_and_bad_ones_are_refused_with_the_reason() -> None:
    assert decode_packets(encode_packets(PACKETS)) == PACKETS
    bad = {
        "not a list": {"a": 1},
        "each is": [[1]],
        "out of range": [[-5, "AAAAAAAAAAAAAAAA"]],
        "not base64": [[0, "!!!"]],
        "a packet of 3 octets": [[0, "AAAA"]],
        "[offset in ms": [[0.5, "AAAAAAAAAAAAAAAA"]],
    }
    for reason, items in bad.items():
        with pytest.raises(ValueError, match=reason.replace("[", r"\[")):
            decode_packets(items)
    assert is_upload_id(UP) and not is_upload_id("up:" + "G" * 16) and not is_upload_id(5)


def test_the_client_cuts_its_upload_into_bounded_chunks() -> None:
    packets = [(i * 0.02, bytes(100)) for i in range(25)]
    parts = chunks(packets, limit=1000)
    assert [len(p) for p in parts] == [10, 10, 5] and [x for p in parts for x in p] == packets
    assert chunks([(0.0, bytes(3000))], limit=1000) == [[(0.0, bytes(3000))]]  # never an empty chunk
    tiny = [(i * 0.02, bytes(12)) for i in range(2500)]  # DTX-sized packets: the count bounds the chunk
    assert [len(p) for p in chunks(tiny)] == [1000, 1000, 500]
    with pytest.raises(ValueError, match="more than 1000"):
        decode_packets(encode_packets(tiny))


# --- to a group, under its GMK ------------------------------------------------------------------------------------


def test_a_group_message_opens_under_the_gmk_and_only_as_its_named_senders() -> None:
    from ptt.groupkeys import make_group_key
    from ptt.voicemessage_group import check_group_keys, group_digest, open_group_voice, seal_group_voice

    key, other = make_group_key(), make_group_key()
    packets = seal_group_voice(key, ALICE, FRAMES)
    opened = open_group_voice(packets, [other, key], ALICE)
    assert opened.failed == 0 and [RtpPacket.parse(rtp).payload for _, rtp in opened.rtp] == FRAMES
    relabelled = open_group_voice(packets, [key], CAROL)  # the server names another sender: nothing opens
    assert relabelled.rtp == [] and relabelled.failed == len(FRAMES) and "sip:carol" in relabelled.reasons[0]
    assert open_group_voice(packets, [other], ALICE).rtp == []  # a member without that GMK
    check_group_keys(packets, [other.gmk_id, key.gmk_id])
    with pytest.raises(UploadRefused) as refused:
        check_group_keys(packets, [other.gmk_id])
    assert refused.value.code == 403
    again = seal_group_voice(key, ALICE, FRAMES)
    assert group_digest(packets) == group_digest(packets[:1]) != group_digest(again)  # a new message, a new digest
    with pytest.raises(UploadRefused):
        group_digest([])
