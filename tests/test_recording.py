"""Recording (issue 17) without processes: the relay's burst tap, the stored burst format, the store's index, key
archive and retention, the writer thread, the replay requests' access rules."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ptt.groupkeys import GroupKey, make_group_key
from ptt.recording import BurstTap, RecordingFormatError, encode_burst, gmk_id_of, parse_burst
from ptt.relaycore import RelayCore
from ptt.srtp import SrtpSender
from server.groups.manager import GroupManager, MemberSpec
from server.groups.store import SCHEMA_VERSION, GroupStore, InvalidValue
from server.recorder import Recorder
from tests.test_group_manager import ALICE, BOB, CAROL, DAVE, GROUP, NOW, KmsWorld, Pushes
from tests.test_group_manager import cheap_passwords as cheap_passwords
from tests.test_group_manager import db as db
from tests.test_group_manager import manager as manager
from tests.test_group_manager import pushes as pushes
from tests.test_group_manager import world as world
from tests.test_relaycore import PLENTY, T0, Group


def srtp_packet(key: GroupKey, seq: int = 1, sender: str = ALICE) -> bytes:
    rtp = bytes([0x80, 111]) + seq.to_bytes(2, "big") + (seq * 960).to_bytes(4, "big") + (0x1234).to_bytes(4, "big")
    return SrtpSender(key, sender).protect(rtp + b"\x11" * 60)


# --- the tap and the format ------------------------------------------------------------------------------------


def test_the_tap_cuts_bursts_at_a_talker_change_at_silence_and_at_its_size_limit() -> None:
    tap = BurstTap(max_packets=5, idle_gap=2.0)
    key = make_group_key()
    for i in range(3):
        tap.packet("g", "alice", 1, srtp_packet(key, i + 1), 10.0 + i * 0.02)
    tap.packet("g", "bob", 2, b"\x80" * 40, 10.1)  # bob's packet: alice's burst is complete
    assert [b.talker for b in tap.completed] == ["alice"]
    alice = tap.completed[0]
    assert len(alice.packets) == 3 and alice.gmk_ids == [key.gmk_id] and alice.started == 10.0
    assert alice.ended == pytest.approx(10.04)
    tap.sweep(11.0)
    assert len(tap.completed) == 1  # bob spoke 0.9 s ago: still open
    tap.sweep(12.2)
    assert [b.talker for b in tap.completed] == ["alice", "bob"]
    for i in range(7):
        tap.packet("g", "carol", 3, b"\x80" * 40, 20.0 + i * 0.02)
    assert [len(b.packets) for b in tap.completed[2:]] == [5]  # cut at 5; the rest is the next burst, still open
    tap.talker_changed("g")
    assert [len(b.packets) for b in tap.completed[2:]] == [5, 2]


def test_a_stored_burst_round_trips_and_malformed_ones_are_refused() -> None:
    packets = [(0.0, b"a" * 100), (0.02, b"b" * 90), (61.5, b"c")]
    data = encode_burst(packets)
    assert parse_burst(data) == packets
    for bad in (b"", b"XXXX" + data[4:], data[:-1], data + b"\0", data[:4] + b"\x02" + data[5:]):
        with pytest.raises(RecordingFormatError):
            parse_burst(bad)
    with pytest.raises(RecordingFormatError):
        encode_burst([(0.0, b"x" * 2000)])


def test_the_gmk_id_comes_from_the_mki() -> None:
    key = make_group_key()
    assert gmk_id_of(srtp_packet(key)) == key.gmk_id
    assert gmk_id_of(b"\x80" * 20) is None


def test_the_relay_records_only_the_talker_of_recorded_groups_even_with_nobody_listening() -> None:
    core = RelayCore(PLENTY)
    recorded, other = Group(core, "rec", 2), Group(core, "plain", 2, base=10)
    core.set_recording("rec", True)
    recorded.join(0)  # only the talker is bound: nobody to forward to, still recorded
    other.join_all()
    core.set_talker("rec", recorded.bindings[0].ssrc)
    core.set_talker("plain", other.bindings[0].ssrc)
    for n in range(4):
        recorded.send(0, T0 + 1 + n * 0.02)
        other.send(0, T0 + 1 + n * 0.02)
    other.send(1, T0 + 2)  # not the talker: dropped, not recorded either
    assert core.tap.open_groups() == ["rec"]
    core.set_talker("rec", None)
    [burst] = core.tap.completed
    assert (burst.group, burst.talker, burst.ssrc, len(burst.packets)) == ("rec", "rec-m0", 0x1000, 4)
    core.set_recording("rec", False)
    core.set_talker("rec", recorded.bindings[0].ssrc)
    recorded.send(0, T0 + 5)
    assert core.tap.open_groups() == []


# --- the store ---------------------------------------------------------------------------------------------------


def test_recording_rekeys_keeps_no_gmk_and_archives_each_members_messages(
    db: GroupStore, manager: GroupManager, world: KmsWorld, pushes: Pushes
) -> None:
    assert db.schema_version() == SCHEMA_VERSION >= 5  # recording came in schema 5 (voice messages: 6)
    manager.create_group(GROUP, "Fire", [MemberSpec(ALICE), MemberSpec(BOB)], created_by="admin", now=NOW)
    before = db.key_info(GROUP)
    assert db.active_key(GROUP) is not None  # an unrecorded group's GMK is kept (sealed) for additions
    with pytest.raises(InvalidValue):
        manager.set_recording(GROUP, 0, by="admin", now=NOW)
    info = manager.set_recording(GROUP, 30, by="admin", now=NOW + 1)
    assert info is not None and before is not None and info.gmk_id != before.gmk_id
    assert db.active_key(GROUP) is None  # the server cannot open a recorded burst
    assert db.group(GROUP).recording_days == 30  # type: ignore[union-attr]
    archived = db.archived_keys(GROUP, ALICE)
    assert {k.gmk_id for k in archived} == {before.gmk_id, info.gmk_id}
    key = world.receive(ALICE, archived[-1].data, now=NOW + 1)
    assert key.key_id == info.gmk_id
    # adding a member rekeys: the newcomer holds nothing recorded before it came
    manager.add_member(GROUP, MemberSpec(CAROL), by="admin", now=NOW + 10)
    assert {k.gmk_id for k in db.archived_keys(GROUP, CAROL)} == {db.key_info(GROUP).gmk_id}  # type: ignore[union-attr]
    assert len(db.archived_keys(GROUP, ALICE)) == 3
    # a removed member keeps what it had, gets nothing new
    manager.remove_member(GROUP, BOB, by="admin", now=NOW + 20)
    assert len(db.archived_keys(GROUP, BOB)) == 3 and len(db.archived_keys(GROUP, ALICE)) == 4
    audit = [r.detail for r in db.audit_log(50) if r.event == "recording"]
    assert audit == [f"{GROUP}: recording on, kept 30 days"]


def test_replay_access_follows_the_archived_keys_and_retention_deletes(db: GroupStore, manager: GroupManager) -> None:
    manager.create_group(GROUP, "Fire", [MemberSpec(ALICE), MemberSpec(BOB)], created_by="admin", now=NOW)
    manager.set_recording(GROUP, 1, by="admin", now=NOW)
    first = db.key_info(GROUP)
    assert first is not None
    b1 = db.add_burst(GROUP, ALICE, 1, NOW + 5, NOW + 7, [first.gmk_id], 100, 9000, "x/1.pttr")
    manager.add_member(GROUP, MemberSpec(DAVE), by="admin", now=NOW + 10)
    manager.remove_member(GROUP, BOB, by="admin", now=NOW + 20)
    third = db.key_info(GROUP)
    assert third is not None and b1 is not None
    b3 = db.add_burst(GROUP, ALICE, 1, NOW + 30, NOW + 31, [third.gmk_id], 50, 4500, "x/3.pttr")
    assert b3 is not None
    burst1, burst3 = db.burst(b1), db.burst(b3)
    assert burst1 is not None and burst3 is not None
    assert db.replayable(ALICE, burst1) and db.replayable(ALICE, burst3)
    assert db.replayable(BOB, burst1) and not db.replayable(BOB, burst3)  # removed before burst 3
    assert not db.replayable(DAVE, burst1) and db.replayable(DAVE, burst3)  # joined after burst 1
    assert not db.replayable(CAROL, burst1) and not db.was_member(GROUP, CAROL)
    assert [b.id for b in db.bursts(GROUP)] == [b1, b3]
    assert db.expired_bursts(NOW + 86400) == []
    expired = db.expired_bursts(NOW + 86400 + 10)
    assert [b.id for b in expired] == [b1]
    db.delete_bursts(expired, now=NOW + 86400 + 10)
    assert [b.id for b in db.bursts(GROUP)] == [b3]
    assert first.gmk_id not in {k.gmk_id for k in db.archived_keys(GROUP, ALICE)}  # its key goes with it


# --- the writer ---------------------------------------------------------------------------------------------------


@pytest.fixture
def recorder(db: GroupStore, tmp_path: Path) -> Iterator[Recorder]:
    r = Recorder(db, tmp_path / "recordings", queue_limit=2)
    yield r
    r.stop()


def test_the_writer_stores_files_and_index_and_purges(
    db: GroupStore, manager: GroupManager, recorder: Recorder
) -> None:
    manager.create_group(GROUP, "Fire", [MemberSpec(ALICE)], created_by="admin", now=NOW)
    manager.set_recording(GROUP, 1, by="admin", now=NOW)
    tap = BurstTap()
    key = make_group_key()
    for i in range(10):
        tap.packet(GROUP, ALICE, 7, srtp_packet(key, i + 1), NOW + i * 0.02)
    tap.flush()
    recorder.submit(tap.completed)
    assert recorder.wait_idle()
    [burst] = db.bursts(GROUP)
    assert (burst.talker, burst.packets, burst.gmk_ids) == (ALICE, 10, [key.gmk_id])
    if recorder.blobs.shared is None:  # one host: a file of its own, 0600
        assert recorder.blobs.path_of(burst.path).stat().st_mode & 0o777 == 0o600
    else:  # several nodes: in the shared store, so any node serves a replay
        assert burst.path.startswith("shared:") and not any(recorder.directory.iterdir())
    assert [p for _, p in recorder.read(burst)] == [p for _, p in tap.completed[0].packets]
    recorder.purge(NOW + 2 * 86400)
    assert recorder.wait_idle()
    assert db.bursts(GROUP) == [] and recorder.stats["purged"] == 1
    with pytest.raises(FileNotFoundError):
        recorder.read_octets(burst)


def test_a_full_queue_drops_counts_and_never_blocks(
    db: GroupStore, manager: GroupManager, recorder: Recorder, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    manager.create_group(GROUP, "Fire", [MemberSpec(ALICE)], created_by="admin", now=NOW)
    release = threading.Event()
    original = db.add_burst

    def slow(*args: Any) -> Any:
        release.wait(10)
        return original(*args)

    monkeypatch.setattr(db, "add_burst", slow)
    tap = BurstTap(max_packets=1)
    for i in range(20):
        tap.packet(GROUP, ALICE, 7, b"\x80" * 40, NOW + i)
    started = time.perf_counter()
    recorder.submit(tap.completed)
    assert time.perf_counter() - started < 0.5
    assert recorder.stats["dropped_full"] >= 16
    assert sum("write queue full" in r.message for r in caplog.records) == 1  # one line, with the count
    release.set()
    assert recorder.wait_idle()
    assert recorder.stats["stored"] + recorder.stats["dropped_full"] == 20


def test_history_requests_check_their_input_and_chunk_a_burst(
    db: GroupStore, manager: GroupManager, recorder: Recorder
) -> None:
    from ptt.groupinfo import Refused
    from server.history import CHUNK_OCTETS, HistoryRequests

    manager.create_group(GROUP, "Fire", [MemberSpec(ALICE), MemberSpec(BOB)], created_by="admin", now=NOW)
    manager.set_recording(GROUP, 1, by="admin", now=NOW)
    info = db.key_info(GROUP)
    assert info is not None
    tap = BurstTap()
    big = bytes([0x80, 111]) + bytes(10) + b"\x22" * 1000 + info.gmk_id + bytes(4)  # 1020 octets, MKI = the GMK
    for i in range(300):
        tap.packet(GROUP, ALICE, 7, big, NOW + 1 + i * 0.02)
    tap.flush()
    recorder.submit(tap.completed)
    assert recorder.wait_idle()
    history = HistoryRequests(None, db, recorder, None)
    for bad in ({"limit": 0}, {"limit": "5"}, {"burst": -1}, {"burst": 1, "offset": -2}):
        kind = "history" if "limit" in bad else "history_fetch"
        with pytest.raises(Refused) as refused:
            history.handle(ALICE, {"type": kind, "group": GROUP, **bad}, NOW)
        assert refused.value.code == 400
    [meta] = history._list(ALICE, GROUP, 10)["bursts"]
    first = history._fetch(ALICE, GROUP, meta["id"], 0)
    assert first["total"] == 300 and len(first["keys"]) == 1 and len(first["packets"]) == CHUNK_OCTETS // 1020
    second = history._fetch(ALICE, GROUP, meta["id"], len(first["packets"]))
    assert "keys" not in second and second["offset"] == len(first["packets"])
    with pytest.raises(Refused) as refused:
        history._fetch(CAROL, GROUP, meta["id"], 0)  # never a member: the same 404 as a missing burst
    assert refused.value.code == 404
    with pytest.raises(Refused):
        history._fetch(ALICE, GROUP, meta["id"] + 1, 0)
    with pytest.raises(Refused):
        history._list(CAROL, GROUP, 10)
    codes = []
    for _ in range(120):  # the rate limit comes first: over it, 429 before the request is even looked at
        with pytest.raises(Refused) as refused:
            history.handle(ALICE, {"type": "history", "group": GROUP, "limit": 0}, NOW)
        codes.append(refused.value.code)
    assert set(codes[:90]) == {400} and codes[-1] == 429
