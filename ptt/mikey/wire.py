"""Octet-level helpers shared by the MIKEY codecs: bounded reading and fixed-width fields."""

from __future__ import annotations

from enum import IntEnum

from ptt.mikey.errors import MalformedMessage, MikeyError


def known(enum: type[IntEnum], value: int) -> int:
    """Known values become enum members (nicer repr); unknown ones stay plain ints so they round-trip."""
    return enum(value) if value in enum._value2member_map_ else value


def field(value: int, octets: int, what: str) -> bytes:
    if not 0 <= value < 1 << (8 * octets):
        raise ValueError(f"{what} does not fit in {octets} octet(s): {value}")
    return value.to_bytes(octets, "big")


def sized(data: bytes, octets: int, what: str) -> bytes:
    """Length prefix of ``octets`` octets, then ``data``."""
    return field(len(data), octets, f"{what} length") + data


class Reader:
    """Cursor over octets; a short read raises ``error("<context>: truncated <field>")``."""

    __slots__ = ("context", "data", "error", "pos")

    def __init__(self, data: bytes, pos: int, context: str, error: type[MikeyError] = MalformedMessage) -> None:
        self.data = data
        self.pos = pos
        self.context = context
        self.error = error

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise self.error(f"{self.context}: truncated {what}")
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def uint(self, n: int, what: str) -> int:
        return int.from_bytes(self.take(n, what), "big")

    def fail(self, message: str) -> MikeyError:
        return self.error(f"{self.context}: {message}")

    def done(self) -> None:
        if self.pos != len(self.data):
            raise self.error(f"{self.context}: {len(self.data) - self.pos} trailing octet(s)")
