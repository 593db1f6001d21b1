"""Fields of ad-hoc signalling datagrams: limits, the refusals (``AdhocMessageError`` and its subclasses), message
types, and the value checks and reading helpers the bodies and the envelope share.

The wire format is described in :mod:`ptt.adhoc.messages`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from enum import IntEnum
from typing import Final

from ptt.mikey.errors import MalformedMessage
from ptt.mikey.wire import Reader, sized

MAX_URI: Final = 1024  # octets of UTF-8
MAX_NAME: Final = 255  # octets of UTF-8 (1-octet length)
MAX_MEMBERS: Final = 1000
MAX_HELD: Final = 256  # (group, GMK-ID) pairs in one HELLO
MAX_I_MESSAGE: Final = 8192
GMK_ID_LENGTH: Final = 4

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class AdhocMessageError(ValueError):
    """Base of every refusal of an ad-hoc signalling datagram."""


class MalformedAdhocMessage(AdhocMessageError):
    """Not a well-formed datagram (or an invalid value given to a constructor): structure, lengths, limits, text."""


class AdhocAuthError(AdhocMessageError):
    """Well-formed, but not an authentic, fresh, first-seen datagram from a trusted sender."""


class UntrustedSender(AdhocAuthError):
    """The sender's KMS is not among the trusted ones."""


class BadAdhocSignature(AdhocAuthError):
    """The ECCSI signature does not verify for the claimed sender at the datagram's time."""


class StaleAdhocMessage(AdhocAuthError):
    """The datagram's time is outside the window around the receiver's clock."""


class ReplayedAdhocMessage(AdhocAuthError):
    """The same signed octets were accepted before (or are older than the replay cache can vouch for)."""


class MessageType(IntEnum):
    HELLO = 1
    PROBE = 2
    GROUP = 3
    KEY = 4
    ACK = 5
    LEAVE = 6
    CALL = 7  # off-network private call signalling (ptt.privatecall.offnetwork)


# --- value checks (constructors) and reading helpers (parsers) ---------------------------------------------------


def check_text(value: object, what: str, max_octets: int, *, empty: bool = False) -> bytes:
    """UTF-8 of ``value`` after checking it is a str of allowed length without control characters."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    try:
        octets = value.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedAdhocMessage(f"{what} is not encodable as UTF-8 (lone surrogate)") from None
    if not octets and not empty:
        raise MalformedAdhocMessage(f"{what} is empty")
    if len(octets) > max_octets:
        raise MalformedAdhocMessage(f"{what} is {len(octets)} octets, more than {max_octets}")
    if _CONTROL.search(value):
        raise MalformedAdhocMessage(f"{what} contains a control character")
    return octets


def check_uri(value: object, what: str) -> bytes:
    return check_text(value, what, MAX_URI)


def check_uint(value: object, octets: int, what: str, *, minimum: int = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int")
    if not minimum <= value < 1 << (8 * octets):
        raise MalformedAdhocMessage(f"{what} {value} is out of range {minimum}..{(1 << (8 * octets)) - 1}")


def check_gmk_id(value: object, what: str = "GMK-ID") -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{what} must be bytes")
    value = bytes(value)
    if len(value) != GMK_ID_LENGTH:
        raise MalformedAdhocMessage(f"{what} must be {GMK_ID_LENGTH} octets, not {len(value)}")
    return value


def uri16(value: str) -> bytes:
    return sized(value.encode("utf-8"), 2, "URI")


def uri_tuple(values: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(values, str | bytes):
        raise TypeError(f"{what} must be a sequence of URIs, not a single {type(values).__name__}")
    return tuple(values)


@contextmanager
def malformed_as_adhoc() -> Iterator[None]:
    """The MIKEY ``Reader`` raises MIKEY's ``MalformedMessage``; here that is a ``MalformedAdhocMessage``."""
    try:
        yield
    except MalformedMessage as exc:
        raise MalformedAdhocMessage(str(exc)) from None


def read_text(r: Reader, length_octets: int, what: str) -> str:
    raw = r.take(r.uint(length_octets, f"{what} length"), what)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedAdhocMessage(f"{r.context}: {what} is not valid UTF-8") from None


def read_count(r: Reader, limit: int, what: str) -> int:
    count = r.uint(2, f"{what} count")
    if count > limit:
        raise MalformedAdhocMessage(f"{r.context}: {count} {what}, more than {limit}")
    return count
