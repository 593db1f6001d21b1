"""The control channel: framing, ECCSI login, and the server and client shells over an in-memory connection."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from client.control import ControlClient, ControlError
from ptt.control import (
    MAX_FRAME,
    PERIOD_GRACE,
    Authenticated,
    AuthError,
    ControlProtocolError,
    FrameDecoder,
    b64,
    decode_body,
    encode_frame,
    make_auth,
    unb64,
    verify_auth,
)
from ptt.crypto import kms
from ptt.mikey.imessage import IdentityKeys, KmsDomain
from ptt.ratelimit import BucketTable
from server.control import (
    AUTH_TIMEOUT,
    CSK_BURST,
    JOIN_BURST,
    VERIFY_TIMEOUT,
    ControlServerFactory,
    ControlSession,
    RequestRefused,
)

SERVER = "sip:ptt-server@example.org"
ALICE = "sip:alice@example.org"
BOB = "sip:bob@example.org"
NOW = 1_790_000_000.0


@pytest.fixture(scope="module")
def world() -> tuple[KmsDomain, kms.MasterSecrets]:
    master = kms.generate_master_secrets()
    return KmsDomain("kms.example.org", master.kpak, master.z_public), master


def keys_for(world: tuple[KmsDomain, kms.MasterSecrets], uri: str, now: float = NOW) -> IdentityKeys:
    domain, master = world
    period = domain.period_number(now)
    material = kms.derive_user_keys(domain.uid(uri, period), master)
    return IdentityKeys(uri, domain, period, material.ssk, material.pvt, material.rsk)


# --- framing ---------------------------------------------------------------------------------------------------


def test_frames_round_trip_in_any_chunking() -> None:
    messages = [{"type": "ping", "id": i} for i in range(5)] + [{"type": "leave", "group": "sip:g@x"}]
    stream = b"".join(encode_frame(m) for m in messages)
    for size in (1, 3, 7, len(stream)):
        decoder = FrameDecoder()
        got: list[dict[str, Any]] = []
        for i in range(0, len(stream), size):
            got += decoder.feed(stream[i : i + size])
        assert got == messages


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"type": "nope"}',
        b'{"type": "join", "group": "g"}',
        b'{"type": "join", "group": "g", "ssrc": true}',
        b'{"type": "ping", "id": "1"}',
        b"\xff\xfe",
    ],
)
def test_bad_frames_are_refused(body: bytes) -> None:
    with pytest.raises(ControlProtocolError):
        FrameDecoder().feed(struct.pack(">I", len(body)) + body)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"[" * 50_000, "nested deeper than 8"),  # issue 12: was a RecursionError out of the frame parser
        (b'{"type": "ping", "id": ' + b"[" * 9 + b"]" * 9 + b"}", "nested deeper than 8"),
        (b'{"type": "ping", "id": 1, "id": 2}', "duplicate key"),
        (b'{"type": "ping", "id": NaN}', "NaN"),
        (b'{"type": "auth", "uri": "sip:\\ud800@x", "period_no": 1, "signature": ""}', "lone surrogate"),
        (b'{"type": "groups", "groups": [' + b"1," * 4096 + b"1]}", "more than 4096 items"),
    ],
)
def test_unbounded_json_is_refused_as_a_protocol_error(body: bytes, words: str) -> None:
    with pytest.raises(ControlProtocolError, match=words):
        decode_body(body)
    with pytest.raises(ControlProtocolError, match=words):
        FrameDecoder().feed(struct.pack(">I", len(body)) + body)


def test_oversized_frame_refused_before_buffering() -> None:
    with pytest.raises(ControlProtocolError):
        FrameDecoder().feed(struct.pack(">I", MAX_FRAME + 1))


# --- login -----------------------------------------------------------------------------------------------------


def test_auth_verifies(world: tuple[KmsDomain, kms.MasterSecrets]) -> None:
    domain, _ = world
    nonce = bytes(range(32))
    who = verify_auth(make_auth(keys_for(world, ALICE), nonce, SERVER), nonce, SERVER, domain, NOW)
    assert who.uri == ALICE


def test_auth_refusals(world: tuple[KmsDomain, kms.MasterSecrets]) -> None:
    domain, _ = world
    nonce = bytes(32)
    good = make_auth(keys_for(world, ALICE), nonce, SERVER)
    with pytest.raises(AuthError):  # another connection's nonce: a replayed login
        verify_auth(good, bytes([1]) * 32, SERVER, domain, NOW)
    with pytest.raises(AuthError):  # made for another server
        verify_auth(good, nonce, "sip:other@example.org", domain, NOW)
    with pytest.raises(AuthError):  # Bob's key claiming to be Alice
        verify_auth({**make_auth(keys_for(world, BOB), nonce, SERVER), "uri": ALICE}, nonce, SERVER, domain, NOW)
    with pytest.raises(AuthError):  # a period that is not the current one
        verify_auth({**good, "period_no": good["period_no"] + 1}, nonce, SERVER, domain, NOW)
    signature = bytearray(unb64(good["signature"], "signature"))
    signature[5] ^= 1
    with pytest.raises(AuthError):
        verify_auth({**good, "signature": b64(bytes(signature))}, nonce, SERVER, domain, NOW)
    other = KmsDomain("kms.example.org", kms.generate_master_secrets().kpak, domain.z)
    with pytest.raises(AuthError):  # keys from another KMS
        verify_auth(good, nonce, SERVER, other, NOW)


def test_previous_period_only_within_grace(world: tuple[KmsDomain, kms.MasterSecrets]) -> None:
    domain, _ = world
    start, _ = (domain.period_number(NOW) * domain.key_period + domain.key_period_offset, 0)
    boundary = float(start + domain.key_period) - 2208988800  # NTP → Unix
    old = keys_for(world, ALICE, boundary - 10)
    nonce = bytes(32)
    assert verify_auth(make_auth(old, nonce, SERVER), nonce, SERVER, domain, boundary + PERIOD_GRACE - 1).uri == ALICE
    with pytest.raises(AuthError):
        verify_auth(make_auth(old, nonce, SERVER), nonce, SERVER, domain, boundary + PERIOD_GRACE + 1)


# --- the shells over StringTransports ----------------------------------------------------------------------------


class Backend:
    server_uri = SERVER

    def __init__(self, domain: KmsDomain) -> None:
        self._domain = domain
        self.joined: list[tuple[str, str, int]] = []
        self.disconnected: list[str] = []

    def domain(self) -> KmsDomain:
        return self._domain

    def verify_login(self, message: dict[str, Any], nonce: bytes, now: float) -> Authenticated:
        return verify_auth(message, nonce, SERVER, self._domain, now)

    def welcome(self, uri: str) -> dict[str, Any]:
        return {"groups": [{"uri": "sip:fire@example.org", "name": "fire"}], "relay": {"host": "127.0.0.1", "port": 9}}

    def stored_imessages(self, uri: str) -> list[dict[str, Any]]:
        return [{"type": "imessage", "group": "sip:fire@example.org", "gmk_id": "0a0b0c0d", "data": b64(b"msg")}]

    def on_csk(self, uri: str, data: bytes, now: float) -> str:
        if data != b"csk":
            raise RequestRefused(403, "bad CSK")
        return "2ddd5bf0"

    def on_join(self, uri: str, group: str, ssrc: int, now: float) -> dict[str, Any]:
        self.joined.append((uri, group, ssrc))
        return {"type": "joined", "group": group, "token": b64(bytes(16)), "relay": {"host": "127.0.0.1", "port": 9}}

    def on_leave(self, uri: str, group: str, now: float) -> None:
        pass

    def on_call_message(self, uri: str, message: dict[str, Any], now: float) -> None:
        pass

    def on_emergency(self, uri: str, message: dict[str, Any], now: float) -> Any:
        return {"type": "emergency_ok", "group": message["group"]}

    def on_history(self, uri: str, message: dict[str, Any], now: float) -> Any:
        return {"type": "history_list", "group": message["group"], "bursts": []}

    def on_voice_message(self, uri: str, message: dict[str, Any], now: float) -> Any:
        return {"type": "message_inbox", "messages": []}

    def on_disconnected(self, uri: str, now: float) -> None:
        self.disconnected.append(uri)


class Handler:
    def __init__(self) -> None:
        self.imessages: list[tuple[str, bytes, bytes]] = []
        self.lost: list[str] = []

    def on_imessage(self, group: str, gmk_id: bytes, data: bytes) -> None:
        self.imessages.append((group, gmk_id, data))

    def on_groups(self, groups: list[dict[str, Any]]) -> None:
        pass

    def on_event(self, message: dict[str, Any]) -> None:
        pass

    def on_disconnected(self, reason: str) -> None:
        self.lost.append(reason)


def connect(world: tuple[KmsDomain, kms.MasterSecrets], uri: str = ALICE) -> tuple[Any, ...]:
    domain, _ = world
    clock = task.Clock()
    clock.advance(NOW)
    backend = Backend(domain)
    factory = ControlServerFactory(backend, clock)
    session = factory.buildProtocol(None)
    handler = Handler()
    client = ControlClient(lambda now: keys_for(world, uri, now), handler, clock)
    session.makeConnection(StringTransport())
    client.makeConnection(StringTransport())
    return clock, backend, factory, session, handler, client


def pump(session: ControlSession, client: ControlClient) -> None:
    for _ in range(10):
        to_client = session.link.value()
        session.link.clear()
        to_server = client.link.value()
        client.link.clear()
        if not to_client and not to_server:
            return
        client.dataReceived(to_client)
        session.dataReceived(to_server)


def test_login_welcome_and_stored_messages(world: tuple[KmsDomain, kms.MasterSecrets]) -> None:
    _, _, factory, session, handler, client = connect(world)
    pump(session, client)
    assert client.welcome.called and client.uri == ALICE and session.uri == ALICE
    assert client.relay == ("127.0.0.1", 9)
    assert handler.imessages == [("sip:fire@example.org", bytes.fromhex("0a0b0c0d"), b"msg")]
    assert factory.online(ALICE)


def test_requests_and_refusals(world: tuple[KmsDomain, kms.MasterSecrets]) -> None:
    _, backend, _, session, _, client = connect(world)
    pump(session, client)
    results: list[Any] = []
    client.join("sip:fire@example.org", 1234).addBoth(results.append)
    client.send_csk(b"nope").addBoth(results.append)
    client.send_csk(b"csk").addBoth(results.append)
    pump(session, client)
    assert results[0]["type"] == "joined"
    assert isinstance(results[1].value, ControlError) and results[1].value.code == 403
    assert results[2] == {"type": "csk_ok", "csk_id": "2ddd5bf0"}
    assert backend.joined == [(ALICE, "sip:fire@example.org", 1234)]


def test_bad_login_is_closed(world: tuple[KmsDomain, kms.MasterSecrets]) -> None:
    _, _, factory, session, _, client = connect(world)
    client.keys = lambda now: keys_for(world, BOB, now)
    client_uri_claim = ALICE
    challenge = session.link.value()
    session.link.clear()
    client.dataReceived(challenge)
    auth = client.link.value()
    client.link.clear()
    body = auth[4:].replace(BOB.encode(), client_uri_claim.encode())
    session.dataReceived(struct.pack(">I", len(body)) + body)
    assert session.uri is None and not factory.online(ALICE)
    assert session.link.disconnecting
    assert b"login refused" in session.link.value()


def test_silent_login_times_out_and_dead_session_closed(world: tuple[KmsDomain, kms.MasterSecrets]) -> None:
    clock, _, _, session, _, client = connect(world)
    clock.advance(11)
    assert session.link.disconnected or session.link.disconnecting
    clock, _, _, session, _, client = connect(world)
    pump(session, client)
    session.link.clear()
    clock.advance(20)  # first ping
    assert b"ping" in session.link.value()
    clock.advance(60)
    assert session.link.disconnected or session.link.disconnecting


def test_garbage_after_login_gets_an_error_not_a_crash(world: tuple[KmsDomain, kms.MasterSecrets]) -> None:
    _, _, _, session, _, client = connect(world)
    pump(session, client)
    session.link.clear()
    session.dataReceived(struct.pack(">I", 3) + b"{}x")
    assert b"bad message" in session.link.value()
    assert not session.link.disconnecting


def frames(session: ControlSession) -> list[dict[str, Any]]:
    decoder = FrameDecoder()
    out = decoder.feed(session.link.value())
    session.link.clear()
    return out


def test_frames_wait_in_order_while_the_login_is_verified(world: tuple[KmsDomain, kms.MasterSecrets]) -> None:
    _, backend, factory, session, _, _client = connect(world)
    pending: defer.Deferred[Authenticated] = defer.Deferred()
    checked: list[dict[str, Any]] = []

    def slow_verify(message: dict[str, Any], nonce: bytes, now: float) -> defer.Deferred[Authenticated]:
        checked.append(message)
        return pending

    backend.verify_login = slow_verify
    nonce = unb64(frames(session)[0]["nonce"], "nonce")
    auth = make_auth(keys_for(world, ALICE), nonce, SERVER)
    session.dataReceived(encode_frame(auth) + encode_frame({"type": "ping", "id": 7}))
    assert frames(session) == [] and factory.pending_logins == 1  # the ping waits behind the login
    pending.callback(verify_auth(checked[0], nonce, SERVER, backend.domain(), NOW))
    assert [f["type"] for f in frames(session)] == ["welcome", "imessage", "pong"]
    assert factory.pending_logins == 0


def test_a_login_checked_slowly_is_not_taken_for_a_silent_client(world: tuple[KmsDomain, kms.MasterSecrets]) -> None:
    """The 10 s login timer is the client's; a worker pool still starting (a restart on a loaded host) may take
    longer to check the signature, up to VERIFY_TIMEOUT, after which the client is told the server is busy."""
    for answered in (True, False):
        clock, backend, factory, session, _, _client = connect(world)
        pending: defer.Deferred[Authenticated] = defer.Deferred()
        checked: list[dict[str, Any]] = []

        def slow_verify(
            message: dict[str, Any], nonce: bytes, now: float, checked: list[dict[str, Any]] = checked
        ) -> defer.Deferred[Authenticated]:
            checked.append(message)
            return pending  # noqa: B023 (called within this iteration)

        backend.verify_login = slow_verify
        clock.advance(5)
        nonce = unb64(frames(session)[0]["nonce"], "nonce")
        session.dataReceived(encode_frame(make_auth(keys_for(world, ALICE), nonce, SERVER)))
        clock.advance(AUTH_TIMEOUT + 15)  # long past the client's 10 s: the check is still running
        assert not session.link.disconnecting and factory.pending_logins == 1
        if answered:
            pending.callback(verify_auth(checked[0], nonce, SERVER, backend.domain(), NOW))
            assert [f["type"] for f in frames(session)][:1] == ["welcome"] and session.uri == ALICE
            assert not session.link.disconnecting
        else:
            clock.advance(VERIFY_TIMEOUT)
            (busy,) = frames(session)
            assert (busy["type"], busy["code"]) == ("error", 503) and session.link.disconnecting


def test_csk_and_join_over_their_limits_get_429_and_one_log_line(
    world: tuple[KmsDomain, kms.MasterSecrets], caplog: pytest.LogCaptureFixture
) -> None:
    _, backend, _, session, _, client = connect(world)
    pump(session, client)
    session.link.clear()
    csk = {"type": "csk", "data": b64(b"csk")}
    session.dataReceived(b"".join(encode_frame(csk) for _ in range(CSK_BURST + 3)))
    replies = frames(session)
    assert [r["type"] for r in replies[:CSK_BURST]] == ["csk_ok"] * CSK_BURST
    assert all(r["type"] == "error" and r["code"] == 429 for r in replies[CSK_BURST:])
    assert "retry in" in replies[-1]["message"]
    assert len([r for r in caplog.records if "over its CSK limit" in r.getMessage()]) == 1
    join = {"type": "join", "group": "sip:fire@example.org", "ssrc": 5}
    session.dataReceived(b"".join(encode_frame(join) for _ in range(JOIN_BURST + 1)))
    assert frames(session)[-1]["code"] == 429
    assert len(backend.joined) == JOIN_BURST


def test_logins_from_one_address_over_the_limit_are_refused(world: tuple[KmsDomain, kms.MasterSecrets]) -> None:
    _clock, _backend, factory, session, _, client = connect(world)
    factory.login_buckets = BucketTable(1.0, 1)
    pump(session, client)
    assert session.uri == ALICE
    second = factory.buildProtocol(None)
    second.makeConnection(StringTransport())
    nonce = unb64(frames(second)[0]["nonce"], "nonce")
    second.dataReceived(encode_frame(make_auth(keys_for(world, ALICE), nonce, SERVER)))
    reply = frames(second)[0]
    assert reply["code"] == 429 and second.link.disconnecting and second.uri is None
