"""PttSession's handling of pushed group keys: only the group identity may key a group; GMK changes are tracked."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet import defer, task

from client.keystore import Keystore
from client.session import PttSession, ServerInfo
from ptt.crypto import kms
from ptt.groupkeys import build_gmk_messages, make_group_key
from ptt.kmsformat.enrolment import Enrolment
from ptt.kmsformat.model import KmsCertificate, KmsKeySet
from ptt.mikey.imessage import IdentityKeys, KmsDomain
from ptt.ts33180 import period_bounds
from server.kms.material import certificate_pem, make_self_signed

GROUP = "sip:fire@groups.example.org"
ALICE = "sip:alice@example.org"
BOB = "sip:bob@example.org"
NOW = 1_790_000_000.0


@pytest.fixture(scope="module")
def world() -> tuple[KmsDomain, kms.MasterSecrets, Enrolment]:
    master = kms.generate_master_secrets()
    certificate = KmsCertificate("kms.example.org", 2592000, 0, master.z_public, master.kpak)
    _, cert = make_self_signed("kms", san_dns=["localhost"], san_ips=["127.0.0.1"])
    pem = certificate_pem(cert)
    enrolment = Enrolment("kms.example.org", "https://127.0.0.1:8443", pem, pem, certificate)
    return certificate.domain(), master, enrolment


def identity(world: tuple[KmsDomain, kms.MasterSecrets, Enrolment], uri: str) -> IdentityKeys:
    domain, master, _ = world
    period = domain.period_number(NOW)
    keys = kms.derive_user_keys(domain.uid(uri, period), master)
    return IdentityKeys(uri, domain, period, keys.ssk, keys.pvt, keys.rsk)


def session_for(world: tuple[KmsDomain, kms.MasterSecrets, Enrolment], uri: str, tmp_path: Path) -> PttSession:
    domain, _, enrolment = world
    keystore = Keystore(tmp_path / f"{uri}.ks", b"pass")
    keystore.enrolment = enrolment
    me = identity(world, uri)
    start, end = period_bounds(me.period_no, domain.key_period, domain.key_period_offset)

    keystore.add(
        [
            KmsKeySet(
                domain.kms_uri,
                uri,
                me.uid,
                me.period_no,
                me.rsk,
                me.ssk,
                me.pvt,
                datetime.fromtimestamp(start, UTC),
                datetime.fromtimestamp(end, UTC),
            )
        ],
        datetime.fromtimestamp(NOW, UTC),
        uri,
    )
    clock = task.Clock()
    clock.advance(NOW)
    server = ServerInfo("127.0.0.1", 1, b"", "sip:ptt-server@example.org")
    return PttSession(clock, keystore, uri, server, crypto=defer.maybeDeferred)  # inline: deterministic tests


def test_group_key_from_the_group_identity_is_taken(
    world: tuple[KmsDomain, kms.MasterSecrets, Enrolment], tmp_path: Path
) -> None:
    session = session_for(world, ALICE, tmp_path)
    key = make_group_key()
    message = build_gmk_messages(identity(world, GROUP), key, [ALICE], now=NOW)[ALICE]
    session.on_imessage(GROUP, key.gmk_id, message)
    state = session.groups[GROUP]
    assert [k.gmk_id for k in state.keys] == [key.gmk_id] and state.key == key and state.sender is not None
    session.on_imessage(GROUP, key.gmk_id, message)  # pushed again at the next login: ignored, not an error
    assert session.stats["imessage_bad"] == 0
    newer = make_group_key()
    session.on_imessage(
        GROUP, newer.gmk_id, build_gmk_messages(identity(world, GROUP), newer, [ALICE], now=NOW + 1)[ALICE]
    )
    assert [k.gmk_id for k in session.groups[GROUP].keys] == [key.gmk_id, newer.gmk_id]  # old kept for late packets


def test_group_key_signed_by_a_non_manager_is_refused(
    world: tuple[KmsDomain, kms.MasterSecrets, Enrolment], tmp_path: Path
) -> None:
    session = session_for(world, ALICE, tmp_path)
    key = make_group_key()
    forged = build_gmk_messages(identity(world, BOB), key, [ALICE], now=NOW)[ALICE]  # Bob signs a "GMK" for the group
    session.on_imessage(GROUP, key.gmk_id, forged)
    assert session.stats["imessage_bad"] == 1
    assert GROUP not in session.groups or not session.groups[GROUP].keys


def test_group_key_for_someone_else_is_refused(
    world: tuple[KmsDomain, kms.MasterSecrets, Enrolment], tmp_path: Path
) -> None:
    session = session_for(world, ALICE, tmp_path)
    key = make_group_key()
    for_bob = build_gmk_messages(identity(world, GROUP), key, [BOB], now=NOW)[BOB]
    session.on_imessage(GROUP, key.gmk_id, for_bob)
    assert session.stats["imessage_bad"] == 1
    garbage = b"\x01\x1a" + bytes(40)
    session.on_imessage(GROUP, bytes(4), garbage)
    assert session.stats["imessage_bad"] == 2


def test_media_under_a_gmk_not_yet_received_waits_for_it(
    world: tuple[KmsDomain, kms.MasterSecrets, Enrolment], tmp_path: Path
) -> None:
    """A rekey mid-burst: packets under the new GMK that overtake its I_MESSAGE are kept and played once it lands."""
    import struct

    from ptt.srtp import SrtpSender

    session = session_for(world, ALICE, tmp_path)
    old, new = make_group_key(), make_group_key()
    group_keys = identity(world, GROUP)
    session.on_imessage(GROUP, old.gmk_id, build_gmk_messages(group_keys, old, [ALICE], now=NOW)[ALICE])
    state = session.groups[GROUP]
    state.joined = True
    heard: list[bytes] = []
    session.media_listener = lambda group, mki, rtp: heard.append(rtp)
    sender = SrtpSender(new, BOB)
    packet = sender.protect(struct.pack(">BBHII", 0x80, 96, 7, 960, 1) + b"voice")
    state.relay = ("127.0.0.1", 1)  # what the join reply named
    session._datagram(GROUP, packet, ("127.0.0.1", 1))
    assert heard == [] and len(state.pending) == 1
    session.on_imessage(GROUP, new.gmk_id, build_gmk_messages(group_keys, new, [ALICE], now=NOW + 1)[ALICE])
    assert len(heard) == 1 and heard[0].endswith(b"voice") and len(state.pending) == 0
    assert state.sender is not None and state.sender.mki[:4] == old.gmk_id  # still sending under the old GMK
    session.reactor.advance(0.5)
    assert state.sender.mki[:4] == new.gmk_id  # switched after the grace delay


def test_group_keys_are_opened_off_the_reactor_one_at_a_time_in_order(
    world: tuple[KmsDomain, kms.MasterSecrets, Enrolment], tmp_path: Path
) -> None:
    """The ~10 ms of ECCSI + SAKKE run through the session's crypto runner (a thread in the app); keys install on
    the reactor in the order their I_MESSAGEs came, and a runner failure that is not bad input is logged, not raised."""
    calls: list[tuple[defer.Deferred[Any], Any]] = []

    def runner(f: Any, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        calls.append((d, lambda: f(*args, **kwargs)))
        return d

    session = session_for(world, ALICE, tmp_path)
    session._crypto = runner
    group_keys = identity(world, GROUP)
    first, second = make_group_key(), make_group_key()
    done = [
        session.on_imessage(GROUP, k.gmk_id, build_gmk_messages(group_keys, k, [ALICE], now=NOW + i)[ALICE])
        for i, k in enumerate((first, second))
    ]
    settled = session.keys_settled()
    assert len(calls) == 1 and GROUP not in session.groups  # the second waits for the first
    d, work = calls.pop()
    d.callback(work())
    assert [k.gmk_id for k in session.groups[GROUP].keys] == [first.gmk_id] and done[0].called
    assert len(calls) == 1 and not settled.called
    d, _ = calls.pop()
    d.errback(RuntimeError("bug in the crypto"))
    assert done[1].called and settled.called and session.stats["imessage_bad"] == 1
    assert [k.gmk_id for k in session.groups[GROUP].keys] == [first.gmk_id]


def test_status_line_names_the_group_as_the_dispatcher_named_it(
    world: tuple[KmsDomain, kms.MasterSecrets, Enrolment], tmp_path: Path
) -> None:
    from types import SimpleNamespace

    from client.app import Client

    session = session_for(world, ALICE, tmp_path)
    session.on_groups([{"uri": GROUP, "name": "Fire crew 2"}, {"uri": "sip:ems@groups.example.org"}])
    voice: Any = SimpleNamespace(engine=SimpleNamespace(level=-30.0, status="ok"))
    client = Client(session.reactor, session, voice, [GROUP, "sip:ems@groups.example.org"], quiet=True)
    assert f"Fire crew 2 ({GROUP}) floor:idle talking:-" in client.status_line()
    client.selected = "sip:ems@groups.example.org"  # no name given: the URI alone
    assert "] sip:ems@groups.example.org floor:idle" in client.status_line()


class FakeClient:
    """What PttKey drives: Client.press (a toggle) and Client.release."""

    def __init__(self) -> None:
        self.want_talk = False
        self.calls: list[str] = []

    def press(self) -> None:
        self.calls.append("release" if self.want_talk else "press")
        self.want_talk = not self.want_talk

    def release(self) -> None:
        self.calls.append("release")
        self.want_talk = False


def space_at(times: list[float]) -> tuple[task.Clock, FakeClient, Any]:
    from client.app_keys import PttKey

    clock, client = task.Clock(), FakeClient()
    key = PttKey(clock, cast(Any, client))
    for t in times:
        clock.advance(t - clock.seconds())
        key.space()
    return clock, client, key


def test_ptt_key_held_talks_until_its_auto_repeat_stops() -> None:
    repeats = [0.0] + [0.5 + 0.033 * n for n in range(60)]  # pressed at 0, auto-repeat from 0.5 s, let go ~2.5 s
    clock, client, key = space_at(repeats)
    assert client.calls == ["press"] and key.held
    clock.advance(0.2)
    assert client.calls == ["press"]  # a repeat may still come
    clock.advance(0.1)
    assert client.calls == ["press", "release"] and not key.held and not client.want_talk


def test_ptt_key_tapped_toggles() -> None:
    clock, client, key = space_at([0.0, 4.0])
    assert client.calls == ["press", "release"]
    clock.advance(5.0)
    assert client.calls == ["press", "release"] and not key.held


def test_ptt_key_hold_after_the_floor_was_denied_sends_no_release() -> None:
    clock, client, _ = space_at([0.0, 0.6, 0.64])
    client.want_talk = False  # the floor was denied while the key is held
    clock.advance(1.0)
    assert client.calls == ["press"]


def test_ptt_key_quick_second_tap_still_stops() -> None:
    clock, client, _ = space_at([0.0, 0.4])  # tap, tap again at once
    clock.advance(0.3)
    assert client.calls == ["press", "release"]


def test_floor_participant_per_joined_group_with_its_timer_on_the_reactor(
    world: tuple[KmsDomain, kms.MasterSecrets, Enrolment], tmp_path: Path
) -> None:
    """Floor Request retransmitted by T101 on the session's clock, Floor Granted over SRTCP, release and its Ack."""
    import contextlib
    import os
    from types import SimpleNamespace

    from ptt.control import b64
    from ptt.floor.events import FloorEventKind
    from ptt.floor.messages import FloorMessage, Source, Subtype, parse_rtcp
    from ptt.srtcp import CskKeys, SrtcpChannel, SrtcpError

    session = session_for(world, ALICE, tmp_path)
    clock = cast(task.Clock, session.reactor)
    csk = CskKeys(os.urandom(16), b"\x03" + os.urandom(3), os.urandom(16))
    session.csk, session.floor_channel, server = csk, SrtcpChannel(csk), SrtcpChannel(csk)
    relay = ("127.0.0.1", 9)
    reply = {"token": b64(b"t" * 8), "relay": {"host": relay[0], "port": relay[1]}}
    session.control = cast(Any, SimpleNamespace(join=lambda group, ssrc: defer.succeed(reply), leave=lambda g: None))
    to_server: list[FloorMessage] = []

    def write(data: bytes, addr: Any) -> None:
        with contextlib.suppress(SrtcpError):  # not SRTCP: the relay binding (PTTJ) keepalive
            to_server.extend(parse_rtcp(server.unprotect(data)))

    port = SimpleNamespace(write=write, stopListening=lambda: None)
    clock.listenUDP = lambda number, protocol, interface="": port  # type: ignore[attr-defined]
    session.join(GROUP)
    state = session.groups[GROUP]
    events: list[FloorEventKind] = []
    session.floor_listener = lambda group, event: events.append(event.kind)

    def from_server(message: FloorMessage) -> None:
        session._datagram(GROUP, server.protect(bytes(message)), relay)

    from_server(FloorMessage(Subtype.IDLE, 0x50545453, sequence=0))
    assert state.floor == "idle" and events == [FloorEventKind.IDLE]
    session.request_floor(GROUP)
    assert state.floor == "requested" and [m.subtype for m in to_server] == [Subtype.REQUEST]
    clock.advance(0.5)  # T101: the request again
    assert [m.subtype for m in to_server] == [Subtype.REQUEST] * 2
    from_server(FloorMessage(Subtype.GRANTED, 0x50545453, duration=30, ack_required=True))
    assert (state.floor, state.talker, state.talk_limit) == ("granted", ALICE, 30)
    assert events[-1] == FloorEventKind.GRANTED
    assert (to_server[-1].subtype, to_server[-1].message_type) == (Subtype.ACK, Subtype.GRANTED)
    clock.advance(5.0)
    assert len(to_server) == 3  # T101 stopped
    session.release_floor(GROUP)
    assert state.floor == "releasing" and to_server[-1].subtype == Subtype.RELEASE
    ack = FloorMessage(
        Subtype.ACK, 0x50545453, message_type=int(Subtype.RELEASE), source=int(Source.CONTROLLING_FUNCTION)
    )
    from_server(ack)
    assert state.floor == "idle" and state.floor_timer is None
    session.leave(GROUP)
    assert state.participant is None and state.floor == "idle"


def test_join_binds_with_authenticated_pttj_and_every_keepalive_is_fresh(
    world: tuple[KmsDomain, kms.MasterSecrets, Enrolment], tmp_path: Path
) -> None:
    """The session's PTTJ packets, as the relay core sees them: the first binds, each keepalive is accepted once
    (a fresh counter), a copy of any of them is refused from anywhere."""
    import os
    from types import SimpleNamespace

    from ptt.control import b64
    from ptt.relaycore import Binding, RelayCore, binding_key
    from ptt.srtcp import CskKeys

    session = session_for(world, ALICE, tmp_path)
    clock = cast(task.Clock, session.reactor)
    csk = CskKeys(os.urandom(16), b"\x03" + os.urandom(3), os.urandom(16))
    session.csk = csk
    binding_id = os.urandom(8)
    replies = [{"token": b64(binding_id), "relay": {"host": "127.0.0.1", "port": 9}}]
    ssrcs: list[int] = []

    def join(group: str, ssrc: int) -> defer.Deferred[dict[str, Any]]:
        ssrcs.append(ssrc)
        return defer.succeed(replies[0])

    session.control = cast(Any, SimpleNamespace(join=join, leave=lambda g: None))
    sent: list[bytes] = []
    port = SimpleNamespace(write=lambda data, addr: sent.append(data), stopListening=lambda: None)
    clock.listenUDP = lambda number, protocol, interface="": port  # type: ignore[attr-defined]
    session.join(GROUP)
    relay = RelayCore()
    relay.expect(binding_id, Binding(GROUP, ALICE, ssrcs[0]), binding_key(csk.csk, binding_id), clock.seconds())
    home, elsewhere = ("198.51.100.7", 4000), ("203.0.113.66", 4000)
    assert len(sent) == 1 and sent[0][8:20] == b"PTTJ" + binding_id
    assert relay.handle_rtcp(sent[0], home, clock.seconds()).kind == "joined"
    for _ in range(3):
        clock.advance(5.0)  # KEEPALIVE
    assert len(sent) == 4 and len(set(sent)) == 4
    for packet in sent[1:]:
        assert relay.handle_rtcp(packet, home, clock.seconds()).kind == "keepalive"
    for packet in sent:  # every one of them, sniffed and replayed
        assert relay.handle_rtcp(packet, elsewhere, clock.seconds()).kind == "refused"
    assert relay.address_of(GROUP, ALICE) == home and relay.stats["dropped_join_replay"] == 4

    session.leave(GROUP)
    clock.advance(5.0)
    assert len(sent) == 4  # no keepalives after leaving
    replies[0] = {"token": b64(b"too long binding id"), "relay": {"host": "127.0.0.1", "port": 9}}
    failures: list[Any] = []
    session.join(GROUP).addErrback(failures.append)
    assert failures and "binding ID" in str(failures[0].value)
    session.control = None
    session.stop()
    assert not clock.getDelayedCalls()
