"""Voice messages in the group store (schema 6) on SQLite and PostgreSQL, and the server's store-thread side of
deferred delivery (``server.voicemessages``: files, fetching, delivered/played, the pushes at login, retention),
run here without a reactor."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ptt.groupinfo import Refused
from ptt.mikey.imessage import replay_key
from ptt.voicemessage import seal_voice, stored_max_age
from ptt.voicemessage_upload import Upload, decode_packets
from server.groups.mediablobs import MediaBlobs
from server.groups.store import SCHEMA_VERSION, GroupStore
from server.groups.voicemessages import MessageLimits, MessageRefused
from server.voicemessages import VoiceMessages
from tests.identities import keys_for, make_world
from tests.postgres import dump

DATA_KEY = bytes(range(32))
NOW = 1_760_000_000.0
ALICE, BOB, CAROL = "sip:alice@example.org", "sip:bob@example.org", "sip:carol@example.org"


@pytest.fixture
def db(database_url: str) -> Iterator[GroupStore]:
    s = GroupStore(database_url, DATA_KEY)
    yield s
    s.close()


def add(db: GroupStore, sender: str = ALICE, to: str = BOB, digest: bytes = b"d" * 32, **kw: Any) -> Any:
    values: dict[str, Any] = dict(
        sender=sender,
        addressee=to,
        digest=digest,
        imessage=b"imessage",
        sent_at=NOW,
        expires_at=NOW + 1000,
        packets=50,
        octets=5000,
        seconds=1.0,
        path="x/y.pttr",
        now=NOW + 1,
    )
    values.update(kw)
    return db.add_voice_message(**values)


def test_messages_are_indexed_once_and_mailboxes_are_bounded(db: GroupStore) -> None:
    assert db.schema_version() == SCHEMA_VERSION == 7
    first = add(db)
    assert (first.sender, first.addressee, first.state, first.sender_told) == (ALICE, BOB, 0, 0)
    assert db.voice_message(first.id) == first and db.voice_message(first.id + 100) is None
    with pytest.raises(MessageRefused) as refused:
        add(db)  # the same I_MESSAGE again
    assert refused.value.code == 409
    limits = MessageLimits(waiting_per_addressee=3, per_pair=2, per_sender=4)
    add(db, digest=b"e" * 32, limits=limits)
    with pytest.raises(MessageRefused, match="too many unplayed to") as refused:
        add(db, digest=b"f" * 32, limits=limits)
    assert refused.value.code == 429
    add(db, sender=CAROL, digest=b"g" * 32, limits=limits)
    with pytest.raises(MessageRefused, match="mailbox is full"):
        add(db, sender="sip:dave@example.org", digest=b"h" * 32, limits=limits)
    db.mark_voice_message(first.id, BOB, 2, now=NOW + 5)  # a played message no longer counts
    add(db, sender="sip:dave@example.org", digest=b"h" * 32, limits=limits)
    assert [m.sender for m in db.inbox(BOB, now=NOW)] == [ALICE, ALICE, CAROL, "sip:dave@example.org"]
    assert db.inbox(BOB, now=NOW + 1000) == [] and db.inbox(ALICE, now=NOW) == []
    assert [m.sender for m in db.inbox(BOB, now=NOW, limit=2)] == [CAROL, "sip:dave@example.org"]  # the newest


def test_delivered_and_played_are_the_addressees_to_set_and_the_sender_is_told_once(db: GroupStore) -> None:
    message = add(db)
    with pytest.raises(KeyError):
        db.mark_voice_message(message.id, CAROL, 1, now=NOW + 2)
    assert db.untold(ALICE) == []
    delivered = db.mark_voice_message(message.id, BOB, 1, now=NOW + 2)
    assert delivered.state == 1 and delivered.status()["state"] == "delivered"
    assert db.mark_voice_message(message.id, BOB, 1, now=NOW + 9).delivered_at == NOW + 2  # the first time counts
    assert [m.id for m in db.untold(ALICE)] == [message.id]
    db.mark_told(message.id, 1)
    assert db.untold(ALICE) == []
    played = db.mark_voice_message(message.id, BOB, 2, now=NOW + 3)
    assert played.state == 2 and played.notice()["state"] == "played"
    assert [m.state for m in db.untold(ALICE)] == [2]
    db.mark_told(message.id, 2)
    db.mark_told(message.id, 1)  # never goes back
    assert db.untold(ALICE) == [] and db.voice_message(message.id).sender_told == 2  # type: ignore[union-attr]
    other = add(db, digest=b"p" * 32)
    assert db.mark_voice_message(other.id, BOB, 2, now=NOW + 4).delivered_at == NOW + 4  # played implies delivered


def test_expired_messages_are_found_and_deleted(db: GroupStore) -> None:
    old = add(db, expires_at=NOW + 10)
    kept = add(db, digest=b"k" * 32, expires_at=NOW + 100)
    assert [m.id for m in db.expired_voice_messages(NOW + 50)] == [old.id]
    db.delete_voice_messages([old.id], now=NOW + 50)
    assert db.voice_message(old.id) is None and db.voice_message(kept.id) is not None
    assert db.audit_log(1)[0].event == "voice-message-purge"


# --- the server's store-thread side --------------------------------------------------------------------------


class Reactor:
    def seconds(self) -> float:
        return NOW

    def callFromThread(self, f: Any, *args: Any) -> None:
        f(*args)


class InlinePool:
    """A store thread pool that runs the work at once (this test is its only thread)."""

    def callInThreadWithCallback(self, on_result: Any, f: Any, *args: Any) -> None:
        try:
            result = f(*args)
        except Exception as exc:  # as a real pool: the failure goes to the Deferred
            on_result(False, exc)
        else:
            on_result(True, result)


@pytest.fixture(scope="module")
def world() -> Any:
    return make_world()


@pytest.fixture
def service(db: GroupStore, world: Any, tmp_path: Path) -> tuple[VoiceMessages, list[tuple[str, dict[str, Any]]]]:
    pushed: list[tuple[str, dict[str, Any]]] = []

    def push(uri: str, message: dict[str, Any]) -> int:
        pushed.append((uri, message))
        return 1 if uri == ALICE else 0  # Alice is online, nobody else

    vm = VoiceMessages(
        Reactor(),
        db,
        tmp_path / "messages",
        InlinePool(),
        domain=world[0],
        verify=None,
        online=lambda uri: uri == ALICE,
        push=push,
    )
    return vm, pushed


def stored_upload(world: Any, now: float) -> Upload:
    sealed = seal_voice(keys_for(world, ALICE, now), BOB, [b"\x01" * 60] * 30, now=now)
    upload = Upload(ALICE, "up:" + "0" * 16, BOB, sealed.imessage, replay_key(sealed.imessage)[0], 30, now)
    upload.packets, upload.octets = sealed.packets, sum(len(p) for _, p in sealed.packets)
    return upload


def test_a_stored_message_is_ciphertext_in_a_private_file_fetched_only_by_its_addressee(
    database_url: str, db: GroupStore, world: Any, service: Any
) -> None:
    vm, pushed = service
    now = NOW
    upload = stored_upload(world, now)
    record, recipients = vm._store(upload, now)
    assert recipients == [BOB]
    assert record.expires_at == now + stored_max_age(world[0]) and record.seconds == 0.6
    if vm.blobs.shared is None:  # one host: a file of its own, 0600
        assert stat.S_IMODE(os.stat(vm.blobs.path_of(record.path)).st_mode) == 0o600
    else:  # several nodes: in the shared store, so any node serves the fetch
        assert record.path.startswith("shared:") and not any(vm.blobs.directory.iterdir())
    assert b"\x01" * 60 not in vm.blobs.get(record.path)
    assert b"\x01" * 60 not in dump(database_url)
    for who, number in ((CAROL, record.id), (ALICE, record.id), (BOB, record.id + 1)):
        with pytest.raises(Refused) as refused:
            vm._fetch(who, number, 0, now)
        assert refused.value.code == 404 and str(refused.value) == f"no voice message {number} for {who}"
    with pytest.raises(Refused):
        vm._played(CAROL, record.id, 0, now)
    with pytest.raises(Refused):  # expired: gone alike
        vm._fetch(BOB, record.id, 0, record.expires_at)

    assert vm.login_pushes(BOB, now) == [record.notice()]
    reply = vm._fetch(BOB, record.id, 0, now + 1)
    assert reply["from"] == ALICE and reply["total"] == 30 and decode_packets(reply["packets"]) == upload.packets
    assert pushed == [(ALICE, record.status() | {"state": "delivered"})]  # Alice is online: told at once
    assert "imessage" not in vm._fetch(BOB, record.id, 29, now + 2)  # only the first chunk carries it
    assert len(pushed) == 1  # delivered once
    vm._played(BOB, record.id, 0, now + 3)
    assert pushed[-1][1]["state"] == "played" and vm.login_pushes(BOB, now) == []  # played: not announced again
    assert vm.login_pushes(ALICE, now) == []  # told of both already


def test_a_sender_offline_is_told_at_its_login_and_retention_deletes_the_file(
    db: GroupStore, world: Any, service: Any
) -> None:
    vm, _ = service
    vm.online = lambda uri: False
    vm.push = lambda uri, message: 0  # nobody online
    record, _ = vm._store(stored_upload(world, NOW), NOW)
    vm._fetch(BOB, record.id, 0, NOW + 1)
    vm._played(BOB, record.id, 0, NOW + 2)
    assert vm.login_pushes(ALICE, NOW + 3) == [db.voice_message(record.id).status()]  # type: ignore[union-attr]
    assert vm.login_pushes(ALICE, NOW + 4) == []  # told
    assert vm.purge(record.expires_at - 1) == 0 and stored(vm.blobs, record.path)
    assert vm.purge(record.expires_at) == 1 and not stored(vm.blobs, record.path)
    assert db.voice_message(record.id) is None


def test_an_index_entry_pointing_outside_the_directory_is_refused(db: GroupStore, service: Any) -> None:
    vm, _ = service
    record = add(db, path="../../etc/passwd", expires_at=NOW + 10**9)
    with pytest.raises(Refused) as refused:
        vm._fetch(BOB, record.id, 0, NOW)
    assert refused.value.code == 500


# --- the whole request path, with the reactor's parts inline --------------------------------------------------


def outcome(d: Any) -> Any:
    """The result of an already fired Deferred, or the Refused it failed with."""
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred did not fire"
    if hasattr(box[0], "value"):
        assert isinstance(box[0].value, Refused), box[0].getTraceback()
        return box[0].value
    return box[0]


def send(vm: VoiceMessages, sender: str, to: str, imessage: bytes, packets: Any, now: float) -> Any:
    from ptt.control import b64
    from ptt.voicemessage_upload import encode_packets

    upload = "up:" + os.urandom(8).hex()
    half = len(packets) // 2
    first = {"type": "message_send", "upload": upload, "offset": 0, "packets": encode_packets(packets[:half]),
             "to": to, "total": len(packets)}  # fmt: skip
    if imessage:  # none for a message to a group
        first["imessage"] = b64(imessage)
    reply = outcome(vm.handle(sender, first, now))
    if isinstance(reply, Refused):
        return reply
    assert reply == {"type": "message_ack", "upload": upload, "received": half}
    rest = {"type": "message_send", "upload": upload, "offset": half, "packets": encode_packets(packets[half:])}
    return outcome(vm.handle(sender, rest, now))


def test_uploads_are_checked_stored_announced_and_fetched_only_by_the_addressee(
    db: GroupStore, world: Any, service: Any
) -> None:
    from twisted.internet import defer

    vm, pushed = service
    vm.verify = lambda f, *args: defer.succeed(f(*args))  # the crypto pool, inline
    vm.online = lambda uri: uri in (ALICE, BOB)
    sealed = seal_voice(keys_for(world, ALICE, NOW), BOB, [b"\x02" * 60] * 30, now=NOW)
    reply = send(vm, ALICE, BOB, sealed.imessage, sealed.packets, NOW + 1)
    number = reply["message"]
    assert reply["received"] == 30 and pushed[-1] == (BOB, db.voice_message(number).notice())  # type: ignore[union-attr]

    refusals = [
        (ALICE, BOB, sealed.imessage, 409),  # the same I_MESSAGE again
        (CAROL, BOB, sealed.imessage, 403),  # Alice's, uploaded as Carol's
        (ALICE, BOB, sealed.imessage[:-5] + bytes([sealed.imessage[-5] ^ 4]) + sealed.imessage[-4:], 403),  # forged
    ]
    nobody = seal_voice(keys_for(world, ALICE, NOW), "sip:nobody@example.org", [b"\x02" * 60] * 3, now=NOW)
    refusals.append((ALICE, "sip:nobody@example.org", nobody.imessage, 404))  # no such user here
    for sender, to, imessage, code in refusals:
        refused = send(vm, sender, to, imessage, sealed.packets, NOW + 2)
        assert isinstance(refused, Refused) and refused.code == code, (code, refused)
    assert "signature" in str(send(vm, ALICE, BOB, refusals[2][2], sealed.packets, NOW + 3))

    bad = {"type": "message_send", "upload": "up:" + "1" * 16, "offset": 0, "packets": [["x"]]}
    assert outcome(vm.handle(ALICE, bad, NOW + 4)).code == 400
    for message in ({"type": "message_fetch", "message": "1"}, {"type": "message_played", "message": -1}):
        with pytest.raises(Refused):
            vm.handle(BOB, message, NOW + 4)
    assert outcome(vm.handle(CAROL, {"type": "message_fetch", "message": number}, NOW + 5)).code == 404
    assert outcome(vm.handle(BOB, {"type": "message_list"}, NOW + 5))["messages"][0]["message"] == number
    data = outcome(vm.handle(BOB, {"type": "message_fetch", "message": number}, NOW + 6))
    assert data["from"] == ALICE and decode_packets(data["packets"]) == sealed.packets
    assert pushed[-1] == (ALICE, {"type": "message_status", "message": number, "to": BOB, "state": "delivered"})
    assert outcome(vm.handle(BOB, {"type": "message_played", "message": number}, NOW + 7))["message"] == number
    assert pushed[-1][1]["state"] == "played" and vm.stats["stored"] == 1 and vm.stats["refused"] >= 5


# --- to a group ---------------------------------------------------------------------------------------------------

FIRE = "sip:fire@example.org"


def fire_group(db: GroupStore) -> Any:
    from ptt.groupkeys import make_group_key

    db.create_group(FIRE, "Fire", created_by="admin", now=NOW - 100)
    for uri in (ALICE, BOB):
        db.add_member(FIRE, uri, now=NOW - 100)
    key = make_group_key()
    db.set_active_key(FIRE, key, 1, now=NOW - 100)
    return key


def test_a_group_message_is_for_the_members_of_the_time_each_with_a_receipt(db: GroupStore) -> None:
    fire_group(db)
    message = add(db, to=FIRE, to_group=True, imessage=b"")
    db.add_member(FIRE, CAROL, now=NOW + 5)  # joined after it was stored
    assert [r.message.id for r in db.group_inbox(BOB, now=NOW + 10)] == [message.id]
    assert db.group_inbox(ALICE, now=NOW + 10) == [] and db.group_inbox(CAROL, now=NOW + 10) == []  # sender, late
    assert db.group_receipt(message.id, CAROL, now=NOW + 10) is None
    assert db.group_inbox(BOB, now=message.expires_at) == []
    assert db.inbox(FIRE, now=NOW) == []  # never a user's mailbox
    db.mark_group_receipt(message.id, BOB, 1, now=NOW + 20)
    db.mark_group_receipt(message.id, BOB, 1, now=NOW + 25)
    receipt = db.group_receipt(message.id, BOB, now=NOW + 30)
    assert receipt is not None and receipt.state == 1 and receipt.delivered_at == NOW + 20
    assert receipt.status() == {"type": "message_status", "message": message.id, "to": BOB, "group": FIRE,
                                "state": "delivered"}  # fmt: skip
    assert [(r.member, r.state) for r in db.untold_receipts(ALICE)] == [(BOB, 1)]
    db.mark_receipt_told(message.id, BOB, 1)
    db.mark_group_receipt(message.id, BOB, 2, now=NOW + 40)
    assert [(r.member, r.state) for r in db.untold_receipts(ALICE)] == [(BOB, 2)]
    db.mark_receipt_told(message.id, BOB, 2)
    assert db.untold_receipts(ALICE) == [] and db.untold(ALICE) == []
    limits = MessageLimits(per_group=2, per_sender_group=1)
    with pytest.raises(MessageRefused, match="too many to it sent"):
        add(db, to=FIRE, to_group=True, digest=b"g" * 32, limits=limits)
    add(db, sender=BOB, to=FIRE, to_group=True, digest=b"h" * 32, limits=limits)
    with pytest.raises(MessageRefused, match="holds too many"):
        add(db, sender=CAROL, to=FIRE, to_group=True, digest=b"i" * 32, limits=limits)
    db.delete_voice_messages([message.id], now=NOW + 50)  # its receipts go with it
    assert db.untold_receipts(ALICE) == [] and db.group_receipt(message.id, BOB, now=NOW) is None


def test_group_uploads_are_for_members_under_the_current_gmk(db: GroupStore, world: Any, service: Any) -> None:
    from twisted.internet import defer

    from ptt.groupkeys import make_group_key
    from ptt.voicemessage_group import seal_group_voice

    key = fire_group(db)
    vm, pushed = service
    vm.verify = lambda f, *args: defer.succeed(f(*args))
    packets = seal_group_voice(key, ALICE, [b"\x03" * 60] * 20)
    reply = send(vm, ALICE, FIRE, b"", packets, NOW)
    number = reply["message"]
    assert pushed[-1] == (BOB, db.voice_message(number).notice(0))  # type: ignore[union-attr]  # not Alice
    assert send(vm, ALICE, FIRE, b"", packets, NOW).code == 409  # the same packets again
    assert send(vm, CAROL, FIRE, b"", seal_group_voice(key, CAROL, [b"\x03" * 60] * 4), NOW).code == 404
    old = send(vm, ALICE, FIRE, b"", seal_group_voice(make_group_key(), ALICE, [b"\x03" * 60] * 4), NOW)
    assert old.code == 403 and "current GMK" in str(old)
    assert outcome(vm.handle(CAROL, {"type": "message_fetch", "message": number}, NOW + 1)).code == 404
    data = outcome(vm.handle(BOB, {"type": "message_fetch", "message": number}, NOW + 1))
    assert data["group"] == FIRE and "imessage" not in data and decode_packets(data["packets"]) == packets
    assert pushed[-1] == (ALICE, {"type": "message_status", "message": number, "to": BOB, "group": FIRE,
                                  "state": "delivered"})  # fmt: skip
    outcome(vm.handle(BOB, {"type": "message_played", "message": number}, NOW + 2))
    assert pushed[-1][1]["state"] == "played"
    assert vm.login_pushes(BOB, NOW + 3) == []  # played: not announced again
    inbox = outcome(vm.handle(BOB, {"type": "message_list"}, NOW + 3))["messages"]
    assert [(m["message"], m["group"], m["state"]) for m in inbox] == [(number, FIRE, "played")]


def stored(blobs: MediaBlobs, ref: str) -> bool:
    try:
        blobs.get(ref)
    except FileNotFoundError:
        return False
    return True
