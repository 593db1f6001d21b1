"""What every fuzz target of ``tests.fuzzing`` shares: the harness and report types and the generic mutators
(bit flips, edge octets, truncation, insertion, deletion, duplication, splices, huge length fields, hostile tokens,
nesting)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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


# --- generic mutators -------------------------------------------------------------------------------------------------

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


def flip_bits(rng: random.Random, data: bytes, _: object) -> bytes:
    out = bytearray(data)
    for _flip in range(rng.randint(1, 4)):
        i = rng.randrange(len(out) * 8)
        out[i // 8] ^= 1 << (i % 8)
    return bytes(out)


def set_byte(rng: random.Random, data: bytes, _: object) -> bytes:
    out = bytearray(data)
    out[rng.randrange(len(out))] = rng.choice(
        [0, 1, 0x22, 0x2C, 0x3C, 0x5B, 0x7B, 0x7F, 0x80, 0xFF, rng.randrange(256)]
    )
    return bytes(out)


def truncate(rng: random.Random, data: bytes, _: object) -> bytes:
    return data[: rng.randrange(len(data))]


def insert(rng: random.Random, data: bytes, _: object) -> bytes:
    i = rng.randrange(len(data) + 1)
    return data[:i] + rng.randbytes(rng.randint(1, 8)) + data[i:]


def delete(rng: random.Random, data: bytes, _: object) -> bytes:
    i = rng.randrange(len(data))
    return data[:i] + data[i + rng.randint(1, 16) :]


def duplicate(rng: random.Random, data: bytes, _: object) -> bytes:
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
