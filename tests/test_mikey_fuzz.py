"""Mutation fuzz of MikeyMessage.parse, seeded from the four vendor I_MESSAGEs.

Only MikeyError subclasses may escape the parser; whatever parses must re-encode to the same octets. The normal run
tries FAST_COUNT inputs; ``pytest -m slow tests/test_mikey_fuzz.py`` runs the slow one with PTT_FUZZ_COUNT
(default two million); ``scripts/fuzz`` runs every parser, this one included, 100 000 inputs each. Both use a
seeded random.Random, so a failure is reproducible (and the failing input is printed in hex).
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptt.mikey.errors import KeyParametersError, MikeyError
from ptt.mikey.keyparams import ProtectedKeyParameters, unprotect
from ptt.mikey.message import MikeyMessage
from ptt.mikey.payloads import (
    CsIdMapType,
    GeneralExt,
    GenericIdEntry,
    IdPayload,
    Idr,
    Payload,
    Rand,
    Sakke,
    Sign,
    Sp,
    T,
)
from tests.fuzzing_base import delete, duplicate, flip_bits, insert, set_byte, truncate
from tests.vectorfiles import load

FAST_COUNT = 50_000
VECTORS: list[dict[str, Any]] = load("streamwide_imessage_decoded.json")["imessages"]
KEYS = [bytes.fromhex(v["key"]) for v in VECTORS]

Field = tuple[int, int]  # (offset, width in octets) of a length/type field worth tweaking


def _hdr_fields(msg: MikeyMessage) -> list[Field]:
    fields = [(2, 1), (3, 1), (8, 1), (9, 1)]
    pos = 10
    if msg.hdr.cs_map_type == CsIdMapType.GENERIC_ID:
        for e in msg.hdr.cs_map:
            assert isinstance(e, GenericIdEntry)
            fields += [(pos + 2, 1), (pos + 3 + len(e.policies), 2)]
            spi_len_at = pos + 5 + len(e.policies) + len(e.session_data)
            fields.append((spi_len_at, 1))
            pos = spi_len_at + 1 + len(e.spi)
    return fields


def _payload_fields(p: Payload, at: int) -> list[Field]:
    if isinstance(p, Sign):
        return [(at, 2)]
    fields = [(at, 1)]  # next payload
    if isinstance(p, T | Rand):
        fields.append((at + 1, 1))
    elif isinstance(p, Idr):
        fields += [(at + 1, 1), (at + 3, 2)]
    elif isinstance(p, IdPayload):
        fields.append((at + 2, 2))
    elif isinstance(p, Sakke):
        fields.append((at + 3, 2))
    elif isinstance(p, Sp):
        fields.append((at + 3, 2))
        pos = at + 5
        for param in p.params:
            fields.append((pos + 1, 1))
            pos += 2 + len(param.value)
    elif isinstance(p, GeneralExt):
        fields += [(at + 1, 1), (at + 2, 2)]
        if isinstance(p.key_parameters(), ProtectedKeyParameters):
            fields += [(at + 4, 1), (at + 4 + 11, 1), (at + 4 + 32, 1), (at + 4 + 33, 2)]
        else:  # legacy plaintext: text length
            fields.append((at + 4 + 15, 2))
    return fields


def _seed(data: bytes) -> tuple[bytes, list[Field]]:
    msg = MikeyMessage.parse(data)
    fields = _hdr_fields(msg)
    pos = len(bytes(msg.hdr))
    for p in msg.payloads:
        fields += _payload_fields(p, pos)
        pos += len(bytes(p))
    return data, fields


def _seeds() -> list[tuple[bytes, list[Field]]]:
    signed = [bytes.fromhex(v["imessage_hex"]) for v in VECTORS]
    unsigned = [bytes(MikeyMessage.parse(d).unsigned()) for d in signed]  # exercises the "last payload" path
    return [_seed(d) for d in signed + unsigned]


SEEDS = _seeds()


# --- mutators: the generic ones, and these that take the fields of the seed --------------------------------


def tweak_field(rng: random.Random, data: bytes, fields: list[Field]) -> bytes:
    offset, width = rng.choice(fields)
    if offset + width > len(data):
        return data
    old = int.from_bytes(data[offset : offset + width], "big")
    top = (1 << (8 * width)) - 1
    new = rng.choice([old + rng.randint(-3, 3), 0, top, rng.randint(0, top), old ^ (1 << rng.randrange(8 * width))])
    return data[:offset] + (new & top).to_bytes(width, "big") + data[offset + width :]


def splice(rng: random.Random, data: bytes, _: list[Field]) -> bytes:
    other = rng.choice(SEEDS)[0]
    return data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other)) :]


MUTATORS: list[Callable[[random.Random, bytes, list[Field]], bytes]] = [
    flip_bits,
    set_byte,
    truncate,
    insert,
    delete,
    duplicate,
    tweak_field,
    tweak_field,  # twice the weight: length fields reach the deepest code
    splice,
]


def mutate(rng: random.Random) -> bytes:
    data, fields = rng.choice(SEEDS)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        if not data:
            break
        data = rng.choice(MUTATORS)(rng, data, fields)
    return data


def check_one(data: bytes) -> bool:
    """Parse ``data``; True if it parsed. Any exception other than the parser's MikeyError fails the test."""
    try:
        return _check(data)
    except Exception as e:
        pytest.fail(f"{type(e).__name__}: {e} on input {data.hex()}")


def _check(data: bytes) -> bool:
    try:
        msg = MikeyMessage.parse(data)
    except MikeyError:
        return False
    assert bytes(msg) == data, "re-encoding differs"
    if msg.sign is not None:
        assert msg.signed_octets() == data[: len(data) - len(msg.sign.signature)]
    ext = msg.find(GeneralExt)
    if ext is not None and ext.ext_type == 7:
        params = ext.key_parameters()  # validated by parse: must not raise
        if isinstance(params, ProtectedKeyParameters):
            for key in KEYS:
                with contextlib.suppress(KeyParametersError):
                    unprotect(params, key)
    return True


def run(count: int, seed: int) -> int:
    rng = random.Random(seed)
    return sum(check_one(mutate(rng)) for _ in range(count))


def test_seeds_parse() -> None:
    for data, fields in SEEDS:
        assert check_one(data)
        assert all(offset + width <= len(data) for offset, width in fields)


def test_mutation_fuzz() -> None:
    started = time.monotonic()
    parsed = run(FAST_COUNT, seed=20240601)
    # Sanity: the mutations must let some inputs through, or the deep paths are never reached.
    assert parsed > FAST_COUNT // 100
    assert time.monotonic() - started < 60


@pytest.mark.slow
def test_mutation_fuzz_long() -> None:
    count = int(os.environ.get("PTT_FUZZ_COUNT", "2000000"))
    run(count, seed=int(os.environ.get("PTT_FUZZ_SEED", "1")))


@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    check_one(data)


@given(st.binary(max_size=120))
def test_random_bytes_after_valid_header(tail: bytes) -> None:
    check_one(SEEDS[0][0][:25] + tail)
