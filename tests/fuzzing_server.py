"""The server-side targets of ``tests.fuzzing``: control channel frames, the dispatcher API, floor control
RTCP and the relay's packet path."""

from __future__ import annotations

import atexit
import base64
import contextlib
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.fuzzing_base import Harness


def control_harness() -> Harness:
    from ptt.control import ControlProtocolError, FrameDecoder, check_message, encode_frame

    nonce = base64.b64encode(bytes(range(32))).decode()
    group = "sip:fire-ops@example.org"
    messages: list[dict[str, Any]] = [
        {"type": "challenge", "nonce": nonce, "server": "sip:ptt-server@example.org"},
        {"type": "auth", "uri": "sip:alice@example.org", "period_no": 690, "signature": "A" * 172},
        {
            "type": "welcome",
            "uri": "sip:alice@example.org",
            "groups": [{"uri": group, "name": "Fire ops", "priority": 100}],
            "relay": {"host": "192.0.2.1", "port": 5004},
        },
        {"type": "error", "code": 400, "message": "bad message: ünïcode"},
        {"type": "imessage", "group": group, "gmk_id": "0a1b2c3d", "data": base64.b64encode(bytes(683)).decode()},
        {"type": "groups", "groups": [group, "sip:police@example.org"]},
        {"type": "event", "group": group, "kind": "joined", "uri": "sip:bob@example.org"},
        {"type": "csk", "data": base64.b64encode(bytes(600)).decode()},
        {"type": "csk_ok", "csk_id": "12345678"},
        {"type": "join", "group": group, "ssrc": 4660},
        {"type": "joined", "group": group, "token": base64.b64encode(bytes(16)).decode(), "relay": {"port": 5004}},
        {"type": "leave", "group": group},
        {"type": "ping", "id": 7},
        {"type": "pong", "id": 7},
    ]
    frames = [encode_frame(m) for m in messages]
    seeds = [*frames, frames[2] + frames[12], frames[0][:10]]

    def run(data: bytes) -> bool:
        try:
            decoded = FrameDecoder().feed(data)
        except ControlProtocolError:
            return False
        for message in decoded:
            check_message(message)  # decoded messages are checked: this must hold again
        return True

    return Harness(seeds, run)


def dispatch_harness() -> Harness:
    from server.accounts import passwords
    from server.dispatch.api import DispatchApplication
    from server.dispatch.routes import ApiError
    from server.groups.manager import MemberSpec
    from server.groups.store import (
        DispatcherAccount,
        GroupError,
        GroupStore,
        MemberRecord,
        check_group_name,
        check_max_burst,
        check_priority,
        check_role,
        check_uri,
    )

    class Manager:
        """The value checks of ``GroupManager`` before any work, as the real one runs them."""

        def __init__(self, store: GroupStore) -> None:
            self.store = store

        # keyword arguments beyond the values checked (by, now, org ...) are the API's business, not the body's
        def create_group(self, uri: str, name: str, members: list[MemberSpec], **kwargs: Any) -> None:
            check_uri(uri, "group URI")
            check_group_name(name)
            check_max_burst(kwargs.get("max_burst", 30.0))
            for spec in members:
                spec.check()

        def add_member(self, group: str, spec: MemberSpec, **kwargs: Any) -> MemberRecord:
            spec.check()
            return MemberRecord(group, spec.uri, spec.priority, spec.role, 0.0)

        def update_member(self, group: str, uri: str, **kwargs: Any) -> MemberRecord:
            priority, role = kwargs.get("priority"), kwargs.get("role")
            if priority is not None:
                check_priority(priority)
            if role is not None:
                check_role(role)
            return MemberRecord(group, uri, priority or 100, role or "member", 0.0)

        def delete_group(self, *args: Any, **kwargs: Any) -> None:
            return None

        def remove_member(self, *args: Any, **kwargs: Any) -> None:
            return None

    class App(DispatchApplication):
        """Every login is an admin's (the request bodies are what is fuzzed, not the login)."""

        def _login(self, *args: Any, **kwargs: Any) -> DispatcherAccount:
            return DispatcherAccount("root", "admin", False)

    directory = tempfile.mkdtemp(prefix="ptt-fuzz-")
    atexit.register(shutil.rmtree, directory, True)
    store = GroupStore(Path(directory) / "groups.sqlite3", bytes(range(32)))  # a real, empty store
    cost, passwords.SCRYPT_N = passwords.SCRYPT_N, 2**8  # the account is created, never logged in with
    try:
        store.add_dispatcher("root", "fuzzing password", role="admin", now=0)
    finally:  # the tests that run after this in the same process expect the real cost
        passwords.SCRYPT_N = cost
    app = App(Manager(store), domain="example.org")  # type: ignore[arg-type]
    auth = "Basic " + base64.b64encode(b"root:secret").decode()
    members = "/api/groups/sip%3Afire-ops%40example.org/members"
    requests = [
        (
            b"POST /api/groups",
            b'{"uri": "sip:police@example.org", "name": "Police \\u00e9", "max_burst": 30.5, "members": '
            b'[{"uri": "sip:alice@example.org"}, {"uri": "sip:bob@example.org", "priority": 150, '
            b'"role": "dispatcher"}]}',
        ),
        (b"POST /api/groups", b'{"uri": "sip:x@example.org", "name": "x"}'),
        (b"POST " + members.encode(), b'{"uri": "sip:carol@example.org", "priority": 200, "role": "member"}'),
        (b"PATCH " + members.encode() + b"/sip%3Aalice%40example.org", b'{"priority": 10, "role": "dispatcher"}'),
        (b"PATCH " + members.encode() + b"/sip%3Aalice%40example.org", b'{"role": "member"}'),
        (b"GET /api/groups/sip%3Afire-ops%40example.org/alerts", b""),  # issue 16's routes
        (b"DELETE /api/groups/sip%3Afire-ops%40example.org/alerts/sip%3Abob%40example.org", b""),
        (b"PUT " + members.encode() + b"/sip%3Aalice%40example.org/broadcast", b""),
    ]
    seeds = [head + b"\n" + body for head, body in requests]

    def run(data: bytes) -> bool:
        head, _, body = data.partition(b"\n")
        method, _, path = head.decode("latin-1").partition(" ")
        reply = app.handle(method, path, auth, body, 1_790_000_000.0, peer="192.0.2.1")
        if reply.status == 500:  # handle logs and hides the cause: find it again for the report
            with contextlib.suppress(ApiError, GroupError):
                app._handle(method, path, auth, body, 1_790_000_000.0, "192.0.2.1")
            raise AssertionError(f"500 from the dispatcher API: {reply.body[:200]!r}")
        if b"Traceback" in reply.body:
            raise AssertionError("a traceback in the reply")
        return reply.status not in (400, 413)  # the body passed; a 404 after a create is the fake world's

    return Harness(seeds, run)


def floor_harness() -> Harness:
    from ptt.floor.messages import FloorMessage, FloorMessageError, parse_rtcp
    from tests.test_floor_messages import BYE, RR, SDES, SEEDS, SR

    seeds = [*SEEDS, RR + SEEDS[0], SR + SEEDS[3] + SDES, SEEDS[1] + BYE]

    def run(data: bytes) -> bool:
        try:
            messages = parse_rtcp(data)
        except FloorMessageError:
            return False
        for message in messages:
            again = FloorMessage.parse(bytes(message))  # what parses must re-encode, and read back the same
            if again != message:
                raise AssertionError(f"re-encoding changes the message: {message} → {again}")
        return True

    return Harness(seeds, run)


def _relay_member(core: Any, binding: Any, addr: tuple[str, int]) -> bytes | None:
    """Bind ``binding`` at ``addr`` the way the relay in this tree binds, and return its join packet (None if this
    harness knows neither join format: the fuzzer then runs with no bound member). Two formats are known: a bare
    16-octet token (``expect(token, binding, now)``, ``join_packet(ssrc, token)``) and an HMAC'd binding ID
    (``expect(binding_id, binding, key, now)``, ``JoinSigner(ssrc, binding_id, csk)``)."""
    from ptt import relaystate

    names: dict[str, Any] = vars(relaystate)  # untyped on purpose: the format in the tree may be either
    ident = bytes(range(1, 1 + names.get("BINDING_ID_LENGTH", names.get("TOKEN_LENGTH", 16))))
    join: bytes | None = None
    with contextlib.suppress(Exception):
        if "JoinSigner" in names:
            csk = bytes(range(100, 116))
            core.expect(ident, binding, names["binding_key"](csk, ident), 0.0)
            join = names["JoinSigner"](binding.ssrc, ident, csk).packet()
        else:
            core.expect(ident, binding, 0.0)
            join = names["join_packet"](binding.ssrc, ident)
        core.handle_rtcp(join, addr, 0.0)
    if core.address_of(binding.group, binding.member) is None:
        print("fuzzing: relay: no member could be bound; fuzzing without one", file=sys.stderr)
        return None
    return join


def relay_harness() -> Harness:
    """RelayCore.route and handle_rtcp as black boxes: they must never raise. One member is bound (by its join
    packet) and is the talker, so the member's paths are reached too; another address and a stranger send the same
    datagrams."""
    from ptt.relaycore import Binding, RelayConfig, RelayCore, RtcpResult

    config = RelayConfig(rate_packets_per_s=1e9, rate_burst=10**9, floor_packets_per_s=1e9, floor_burst=10**9)
    binding = Binding("sip:g@example.org", "sip:alice@example.org", 0x11223344)
    member_addr = ("192.0.2.1", 40000)
    addresses = [member_addr, ("192.0.2.2", 40001), ("198.51.100.7", 5000)]

    def new_core() -> tuple[RelayCore, bytes | None]:
        core = RelayCore(config)
        join = _relay_member(core, binding, member_addr)
        core.set_talker(binding.group, binding.ssrc)
        return core, join

    core, join = new_core()
    ssrc = binding.ssrc.to_bytes(4, "big")
    rtp = bytes((0x80, 0x60, 0, 1, 0, 0, 0, 0)) + ssrc + bytes(40)
    floor = bytes((0x80, 204, 0, 5)) + ssrc + bytes(range(16)) + b"\x80\x00\x00\x01" + b"\xaa" * 16
    pttj = bytes((0x80, 204, 0, 9)) + ssrc + b"PTTJ" + bytes(range(1, 33))  # join-shaped, whatever the format
    seeds = [rtp, floor, pttj] + ([join, join + rtp] if join is not None else [])
    state: dict[str, Any] = {"core": core, "n": 0}

    def run(data: bytes) -> bool:
        state["n"] += 1
        if state["n"] % 1000 == 0:
            state["core"] = new_core()[0]  # bounded state; a fresh binding now and then
        relay: RelayCore = state["core"]
        now = 1.0 + state["n"] * 1e-3
        for addr in addresses:
            result = relay.handle_rtcp(data, addr, now)
            if not isinstance(result, RtcpResult):
                raise AssertionError(f"handle_rtcp returned {result!r}")
            routed = relay.route(data, addr, now)
            if routed is not None and not isinstance(routed, list):
                raise AssertionError(f"route returned {routed!r}")
        return True

    return Harness(seeds, run)
