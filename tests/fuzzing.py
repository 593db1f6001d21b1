"""Mutation fuzzing of every parser of untrusted input, with one report per parser.

Each target builds real, valid samples (the same captures and vectors the unit tests build) and a ``run(data)`` that
returns True (accepted) or False (refused with the parser's own error); any other exception is a finding. Inputs are
mutated seeds: bit flips, octets set to edge values, truncation, insertion, deletion, duplication, splices of two
seeds, length-like fields set huge, and runs of nesting (``[``, ``{"a":``, ``<a>``) or hostile tokens. A run is
deterministic for its seed; a finding is printed with a one-line reproducer::

    .venv/bin/python -m tests.fuzzing [COUNT] [PARSER...]        # default 100 000 per parser, every parser
    .venv/bin/python -m tests.fuzzing --replay PARSER HEX         # one input again, with its traceback

``scripts/fuzz`` runs the first; ``tests/test_fuzz_parsers.py`` a short run of each in the normal suite.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Mutator = Callable[[random.Random, bytes, Sequence[bytes]], bytes]


@dataclass
class Harness:
    """``seeds``: valid inputs; ``run``: True accepted, False refused with the parser's own error (anything else
    raised is a finding); ``mutate``: the target's own mutation, if it has a better one than the generic ones."""

    seeds: list[bytes]
    run: Callable[[bytes], bool]
    mutate: Callable[[random.Random], bytes] | None = None


@dataclass
class Finding:
    data: bytes
    error: str
    trace: str


@dataclass
class Report:
    parser: str
    inputs: int = 0
    refused: int = 0
    accepted: int = 0
    other: int = 0
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)

    def add(self, other: Report) -> None:
        self.inputs += other.inputs
        self.refused += other.refused
        self.accepted += other.accepted
        self.other += other.other
        self.seconds = max(self.seconds, other.seconds)
        self.findings += other.findings[: max(0, 5 - len(self.findings))]


# --- generic mutators -----------------------------------------------------------------------------------------------

HOSTILE_TOKENS = [
    b"[" * 50_000,
    b'{"a":' * 2_000,
    b"<a>" * 2_000,
    b"[" * 40,
    b"<a>" * 30,
    b'"\\ud800"',
    b"NaN",
    b"-Infinity",
    b"1e999",
    b"9" * 5000,
    b"-0",
    b"null",
    b"true",
    b'"' + b"x" * 70_000 + b'"',
    b"\\u0000",
    b"\x00",
    b"\xff\xfe",
    b"\xed\xa0\x80",
    b"<!DOCTYPE a [<!ENTITY e 'x'>]>",
    b"&e;",
    b"&#0;",
    b"<![CDATA[x]]>",
    b"<!--c-->",
    b"<?pi x?>",
    b' xmlns:x="urn:x"',
    b' a="' + b"v" * 2000 + b'"',
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00\x00",
    b"\x7f\xff",
    b"\x80\x00",
]


def flip_bits(rng: random.Random, data: bytes, _: Sequence[bytes]) -> bytes:
    out = bytearray(data)
    for _flip in range(rng.randint(1, 4)):
        i = rng.randrange(len(out) * 8)
        out[i // 8] ^= 1 << (i % 8)
    return bytes(out)


def set_byte(rng: random.Random, data: bytes, _: Sequence[bytes]) -> bytes:
    out = bytearray(data)
    out[rng.randrange(len(out))] = rng.choice(
        [0, 1, 0x22, 0x2C, 0x3C, 0x5B, 0x7B, 0x7F, 0x80, 0xFF, rng.randrange(256)]
    )
    return bytes(out)


def truncate(rng: random.Random, data: bytes, _: Sequence[bytes]) -> bytes:
    return data[: rng.randrange(len(data))]


def insert(rng: random.Random, data: bytes, _: Sequence[bytes]) -> bytes:
    i = rng.randrange(len(data) + 1)
    return data[:i] + rng.randbytes(rng.randint(1, 8)) + data[i:]


def delete(rng: random.Random, data: bytes, _: Sequence[bytes]) -> bytes:
    i = rng.randrange(len(data))
    return data[:i] + data[i + rng.randint(1, 16) :]


def duplicate(rng: random.Random, data: bytes, _: Sequence[bytes]) -> bytes:
    a = rng.randrange(len(data))
    b = min(len(data), a + rng.randint(1, 300))
    at = rng.randrange(len(data) + 1)
    return data[:at] + data[a:b] * rng.choice([1, 1, 2, 10]) + data[at:]


def splice(rng: random.Random, data: bytes, seeds: Sequence[bytes]) -> bytes:
    other = rng.choice(seeds)
    return data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1) :]


def huge_length(rng: random.Random, data: bytes, _: Sequence[bytes]) -> bytes:
    """A 1-, 2- or 4-octet window (often a length field in binary formats) set to an edge value."""
    width = rng.choice([1, 2, 4])
    at = rng.randrange(max(1, len(data) - width + 1))
    top = (1 << (8 * width)) - 1
    value = rng.choice([0, top, top // 2 + 1, rng.randrange(top + 1), int.from_bytes(data[at : at + width]) + 1])
    return data[:at] + (value & top).to_bytes(width, "big") + data[at + width :]


def hostile_token(rng: random.Random, data: bytes, _: Sequence[bytes]) -> bytes:
    token = rng.choice(HOSTILE_TOKENS)
    at = rng.randrange(len(data) + 1)
    cut = rng.choice([0, 0, rng.randint(1, 8)])
    return data[:at] + token + data[at + cut :]


def nest(rng: random.Random, data: bytes, _: Sequence[bytes]) -> bytes:
    """Wrap a part of the input in many brackets or elements (balanced or not)."""
    opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}"), (b"<a>", b"</a>"), (b"[", b"")])
    depth = rng.choice([2, 10, 33, 300, 20_000])
    at = rng.randrange(len(data) + 1)
    end = rng.randrange(at, len(data) + 1)
    return data[:at] + opener * depth + data[at:end] + closer * depth + data[end:]


MUTATORS: list[Mutator] = [
    flip_bits,
    set_byte,
    truncate,
    insert,
    delete,
    duplicate,
    splice,
    huge_length,
    huge_length,
    hostile_token,
    nest,
]


def mutate(rng: random.Random, seeds: Sequence[bytes]) -> bytes:
    data = rng.choice(seeds)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        if not data:
            break
        data = rng.choice(MUTATORS)(rng, data, seeds)
    return data


# --- targets ---------------------------------------------------------------------------------------------------------


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


def kms_harness() -> Harness:
    from datetime import UTC, datetime

    from ptt.kmsformat.model import KmsFormatError, KmsRequest
    from ptt.kmsformat.signing import sign_response, verify_signed_response
    from ptt.kmsformat.validation import check_cert_cache, check_init, check_key_prov
    from ptt.kmsformat.xml import (
        certificate_to_xml,
        parse_certificate,
        parse_request,
        parse_response,
        request_to_xml,
        response_to_xml,
    )
    from tests.test_kmsformat import (
        ALICE,
        KMS_URI,
        NOW,
        ROUND_TRIP_RESPONSES,
        _cert,
        _full_cert,
        _make_identity,
    )
    from tests.vectorfiles import VECTORS

    signer = _make_identity("kms signer")
    responses = [make() for make in ROUND_TRIP_RESPONSES.values()]
    seeds = [response_to_xml(r) for r in responses]
    seeds += [sign_response(r, signer.key, signer.cert) for r in responses[:3]]
    seeds += [
        (VECTORS / n).read_bytes() for n in ("streamwide_kms_init_response.xml", "streamwide_kms_keyprov_response.xml")
    ]
    seeds += [
        request_to_xml(KmsRequest(ALICE, KMS_URI, NOW, f"https://{KMS_URI}/keymanagement/identity/v1/init")),
        request_to_xml(KmsRequest(ALICE, KMS_URI, NOW, "https://k/keyprov", client_id="c-7", device_id="d-9")),
        certificate_to_xml(_full_cert()),
    ]
    when = datetime(2025, 3, 14, 12, 0, 30, tzinfo=UTC)
    certificate = _cert()

    def run(data: bytes) -> bool:
        accepted = False
        for parse in (parse_request, parse_certificate):
            with contextlib.suppress(KmsFormatError):
                parse(data)
                accepted = True
        with contextlib.suppress(KmsFormatError):
            response = parse_response(data)
            accepted = True
            for check in (check_init, check_cert_cache):
                with contextlib.suppress(KmsFormatError):
                    check(response, expected_kms_uri=KMS_URI, expected_user_uri=ALICE, now=when)
            with contextlib.suppress(KmsFormatError):
                check_key_prov(response, certificate=certificate, expected_user_uri=ALICE, now=when)
        if b"Signature" in data:
            with contextlib.suppress(KmsFormatError):
                verify_signed_response(data, signer.cert, now=NOW)
                accepted = True
        return accepted

    return Harness(seeds, run)


def adhoc_harness() -> Harness:
    from ptt.adhoc.messages import AdhocMessageError, Envelope, open_envelope, seal
    from ptt.mikey.imessage import ReplayCache
    from tests.test_adhoc_messages import ALICE, ALL_BODIES, NOW, make_world

    world = make_world()
    alice = world.keys(ALICE)
    seeds = [seal(alice, body, NOW) for body in ALL_BODIES]
    originals = set(seeds)

    def run(data: bytes) -> bool:
        try:
            envelope = Envelope.parse(data)
        except AdhocMessageError:
            return False
        if bytes(envelope) != data:
            raise AssertionError("the envelope does not re-encode to the same octets")
        if data not in originals and data[:-129] in {s[:-129] for s in seeds}:
            return True  # a mutated signature over the seeds' octets: opening costs an ECCSI verify, done below
        try:
            open_envelope(data, trusted_kms=world.trust, now=NOW, replay_cache=ReplayCache())
        except AdhocMessageError:
            return False
        return True

    return Harness(seeds, run)


def mikey_harness() -> Harness:
    from tests import test_mikey_fuzz as mf

    def run(data: bytes) -> bool:
        return mf._check(data)

    return Harness([d for d, _ in mf.SEEDS], run, mutate=mf.mutate)


def idms_harness() -> Harness:
    from tests.fuzzing_idms import idms_harness as make

    def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
        return mutate(rng, [data])

    harness: Harness = make(mutate_bytes)
    return harness


def emergency_harness() -> Harness:
    from tests.fuzzing_calls import emergency_harness as make

    harness: Harness = make()
    return harness


def privatecall_harness() -> Harness:
    from tests.fuzzing_calls import privatecall_harness as make

    harness: Harness = make()
    return harness


def voicemessage_harness() -> Harness:
    from tests.fuzzing_calls import voicemessage_harness as make

    harness: Harness = make()
    return harness


TARGETS: dict[str, Callable[[], Harness]] = {
    "emergency": emergency_harness,
    "privatecall": privatecall_harness,
    "voicemessage": voicemessage_harness,
    "control": control_harness,
    "dispatch": dispatch_harness,
    "floor": floor_harness,
    "relay": relay_harness,
    "kms": kms_harness,
    "adhoc": adhoc_harness,
    "mikey": mikey_harness,
    "idms": idms_harness,
}


# --- running ---------------------------------------------------------------------------------------------------------


def fuzz(parser: str, count: int, seed: int = 1) -> Report:
    """``count`` mutated inputs through one parser, in this process."""
    import logging

    logging.disable(logging.CRITICAL)  # the dispatcher logs every refusal; findings are reported here
    try:
        return _fuzz(parser, count, seed)
    finally:  # tests that run after this in the same process read the logs
        logging.disable(logging.NOTSET)


def _fuzz(parser: str, count: int, seed: int) -> Report:
    harness = TARGETS[parser]()
    report = Report(parser)
    rng = random.Random(f"{parser}:{seed}")
    started = time.monotonic()
    for data in harness.seeds:  # every seed must be accepted, or the mutations start from nothing
        if not harness.run(data):
            raise AssertionError(f"{parser}: a seed is refused: {data[:80]!r}")
    for _ in range(count):
        data = harness.mutate(rng) if harness.mutate else mutate(rng, harness.seeds)
        report.inputs += 1
        try:
            if harness.run(data):
                report.accepted += 1
            else:
                report.refused += 1
        except Exception as exc:
            report.other += 1
            if len(report.findings) < 5:
                report.findings.append(Finding(data, f"{type(exc).__name__}: {exc}"[:300], traceback.format_exc()))
    report.seconds = time.monotonic() - started
    return report


def _fuzz_job(job: tuple[str, int, int]) -> Report:
    return fuzz(*job)


def fuzz_parallel(parsers: Sequence[str], count: int, workers: int, seed: int = 1) -> list[Report]:
    """Each parser's ``count`` inputs split into ``workers`` chunks of their own seeds, run in a process pool."""
    chunks = max(1, workers)
    jobs = [(p, count // chunks + (i < count % chunks), seed * 1000 + i) for p in parsers for i in range(chunks)]
    if workers <= 1:
        results = [_fuzz_job(j) for j in jobs]
    else:
        with multiprocessing.get_context("forkserver").Pool(workers) as pool:
            results = pool.map(_fuzz_job, jobs, chunksize=1)
    reports = {p: Report(p) for p in parsers}
    for r in results:
        reports[r.parser].add(r)
    return list(reports.values())


def format_reports(reports: Sequence[Report]) -> str:
    lines = [f"{'parser':10} {'inputs':>9} {'refused':>9} {'accepted':>9} {'other':>6} {'seconds':>8}"]
    for r in reports:
        lines.append(f"{r.parser:10} {r.inputs:9d} {r.refused:9d} {r.accepted:9d} {r.other:6d} {r.seconds:8.1f}")
    for r in reports:
        for f in r.findings:
            lines.append(f"\n{r.parser}: {f.error}")
            lines.append(f"  reproduce: .venv/bin/python -m tests.fuzzing --replay {r.parser} {f.data[:4000].hex()}")
            lines.append("  " + f.trace.strip().splitlines()[-3].strip())
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "args",
        nargs="*",
        metavar="[COUNT] [PARSER...]",
        help=f"inputs per parser (default 100 000); some of {', '.join(TARGETS)} (default: all)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("PTT_FUZZ_WORKERS", 0)) or os.cpu_count() or 1,
        help="processes (default: $PTT_FUZZ_WORKERS or one per core)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--replay", nargs=2, metavar=("PARSER", "HEX"), help="run one input and show its traceback")
    args = parser.parse_args(argv)
    if args.replay:
        name, hex_data = args.replay
        harness = TARGETS[name]()
        print("accepted" if harness.run(bytes.fromhex(hex_data)) else "refused with the parser's own error")
        return 0
    names = list(args.args)
    count = int(names.pop(0).replace("_", "")) if names and names[0].replace("_", "").isdigit() else 100_000
    unknown = [p for p in names if p not in TARGETS]
    if unknown:
        parser.error(f"unknown parser {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    parsers = names or list(TARGETS)
    print(f"fuzzing {', '.join(parsers)}: {count} inputs each, {args.workers} processes, seed {args.seed}")
    reports = fuzz_parallel(parsers, count, args.workers, args.seed)
    print(format_reports(reports))
    return 1 if any(r.other for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
