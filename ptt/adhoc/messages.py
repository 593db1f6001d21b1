"""Signed datagrams of ad-hoc (off-network) group signalling: presence, group state, key delivery, acks, leaves.

A client creates a group with no server and no KMS online, finds members on the LAN by IP multicast (``Hello``,
``Probe``), states the group (``GroupAnnouncement``) and gives each member the group's GMK in a MIKEY-SAKKE
I_MESSAGE by unicast (``KeyDelivery``, re-sent until its ``KeyAck``); a member leaves with ``Leave``. Every datagram
is signed with the *sender's own* ECCSI key (RFC 6507) for the key period of the datagram's time, so nobody can
forge presence, group state, acks or leaves. TS 24.379's off-network protocol assumes pre-provisioned groups, so
this envelope is our own. Pure: octets and ``now`` in, values or exceptions out.

This module proves *who* sent a datagram and *when*; whether that sender may say it (only a group's manager
announces it, only a member acks) is the group state machine's decision (``ptt.adhoc.engine``).

Wire format
-----------
All integers are unsigned big-endian. ``uri16`` = 2-octet length ‖ UTF-8 octets; every URI is 1..MAX_URI (1024)
octets. Text (URIs and the group name) must be valid UTF-8 without C0/C1 control characters (U+0000-U+001F,
U+007F-U+009F), so nothing a peer signs can drive a terminal.

Envelope::

    offset    octets  field
    0         4       magic "PTTA"
    4         1       version: 1
    5         1       message type: 1 HELLO, 2 PROBE, 3 GROUP, 4 KEY, 5 ACK, 6 LEAVE
    6         2       reserved: 0 (anything else is malformed)
    8         8       time_ms: the sender's wall clock, milliseconds since the Unix epoch
    16        2+S     uri16 sender
    18+S      2+K     uri16 sender_kms (selects the KPAK; with sender and time it gives the signer's UID)
    20+S+K    2       body length B
    22+S+K    B       body (below)
    22+S+K+B  129     ECCSI signature r ‖ s ‖ PVT over every octet before it (offsets 0 .. 21+S+K+B)

Bodies::

    HELLO   port 2 (1..65535) | count 2 (≤ MAX_HELD) | count * (uri16 group | gmk_id 4)
    PROBE   count 2 (≤ MAX_MEMBERS; 0 = everyone) | count * uri16 wanted
    GROUP   GroupInfo
    KEY     GroupInfo | length 2 (1..MAX_I_MESSAGE) | I_MESSAGE
    ACK     uri16 group | gmk_id 4
    LEAVE   uri16 group | revision 4

    GroupInfo = uri16 uri | name length 1 | name (UTF-8, 0..255 octets) | uri16 manager | revision 4
              | media IPv4 address 4 (multicast, 224.0.0.0/4) | media port 2 (1..65535) | gmk_id 4
              | count 2 (1..MAX_MEMBERS) | count * uri16 member   (no duplicates; the manager among them)

The HELLO count is 2 octets (the suggested 1 octet cannot say 256, the limit of held keys). Every length is checked
against what remains; trailing octets in a body or after the signature, unknown versions or types, and datagrams
over MAX_DATAGRAM are malformed. Parsing is strict and the encoding canonical: ``bytes(Envelope.parse(x)) == x``.

Size
----
Fixed octets: envelope 151 + S + K; GroupInfo 21 + G + N + M (group URI, name, manager); KEY adds 2 + I (the
I_MESSAGE: 683 octets for a GMK from a 15-octet KMS URI); each member costs 2 + its URI. A datagram
holds (65000 - fixed) / (2 + L) members of L-octet URIs. Example: sender = manager of 30 octets, KMS URI 20, group
URI 40, name 32, a 683-octet I_MESSAGE: fixed = 1009 octets, so a KEY holds 1999 members of 30-octet URIs (a
1000-member KEY is 33 009 octets) and MAX_MEMBERS is the binding limit; 1000 members fit while member URIs average
at most 61 octets. Beyond that ``bytes(envelope)`` and ``seal`` raise ``ValueError``. Datagrams over ~1470 octets
are IP-fragmented on Ethernet and lost whole if any fragment is lost; retransmission (KEY) and periodic repetition
(GROUP, HELLO) carry that.

Receiving (``open_envelope``): parse; time within ``window`` of ``now``; sender's KMS trusted; ECCSI verification
with the sender's UID for the key period at the datagram's time; then the replay cache, keyed by SHA-256 of the
signed octets (ECCSI signatures are malleable: (r, q - s) verifies too, so the signature must not be part of the
key). Any failure is an ``AdhocMessageError`` subclass, whatever the input octets.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Final, TypeAlias

from ptt.crypto import eccsi
from ptt.mikey.errors import MalformedMessage, Replayed
from ptt.mikey.imessage import IdentityKeys, KmsDomain, ReplayCache
from ptt.mikey.wire import Reader, field, sized

MAGIC: Final = b"PTTA"
VERSION: Final = 1
MAX_URI: Final = 1024  # octets of UTF-8
MAX_NAME: Final = 255  # octets of UTF-8 (1-octet length)
MAX_MEMBERS: Final = 1000
MAX_HELD: Final = 256  # (group, GMK-ID) pairs in one HELLO
MAX_I_MESSAGE: Final = 8192
MAX_DATAGRAM: Final = 65000
GMK_ID_LENGTH: Final = 4
SIGNATURE_LENGTH: Final = eccsi.SIGNATURE_LENGTH  # 129
DEFAULT_WINDOW: Final = 300.0  # seconds of clock difference accepted between sender and receiver

_RESERVED: Final = b"\x00\x00"
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


# --- value checks (constructors) and reading helpers (parsers) ---------------------------------------------------


def _text(value: object, what: str, max_octets: int, *, empty: bool = False) -> bytes:
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


def _uri(value: object, what: str) -> bytes:
    return _text(value, what, MAX_URI)


def _uint(value: object, octets: int, what: str, *, minimum: int = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int")
    if not minimum <= value < 1 << (8 * octets):
        raise MalformedAdhocMessage(f"{what} {value} is out of range {minimum}..{(1 << (8 * octets)) - 1}")


def _gmk_id(value: object, what: str = "GMK-ID") -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{what} must be bytes")
    value = bytes(value)
    if len(value) != GMK_ID_LENGTH:
        raise MalformedAdhocMessage(f"{what} must be {GMK_ID_LENGTH} octets, not {len(value)}")
    return value


def _uri16(value: str) -> bytes:
    return sized(value.encode("utf-8"), 2, "URI")


def _strings(values: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(values, str | bytes):
        raise TypeError(f"{what} must be a sequence of URIs, not a single {type(values).__name__}")
    return tuple(values)


@contextmanager
def _malformed() -> Iterator[None]:
    """The MIKEY ``Reader`` raises MIKEY's ``MalformedMessage``; here that is a ``MalformedAdhocMessage``."""
    try:
        yield
    except MalformedMessage as exc:
        raise MalformedAdhocMessage(str(exc)) from None


def _read_text(r: Reader, length_octets: int, what: str) -> str:
    raw = r.take(r.uint(length_octets, f"{what} length"), what)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedAdhocMessage(f"{r.context}: {what} is not valid UTF-8") from None


def _read_count(r: Reader, limit: int, what: str) -> int:
    count = r.uint(2, f"{what} count")
    if count > limit:
        raise MalformedAdhocMessage(f"{r.context}: {count} {what}, more than {limit}")
    return count


# --- the group description ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupInfo:
    """The signed description of one ad-hoc group, as its manager states it.

    ``revision`` increases with every change of members, key or manager. ``media_host`` is an IPv4 multicast
    address in dotted-quad form. Invalid values raise ``MalformedAdhocMessage`` on construction, as on parsing.
    """

    uri: str
    name: str
    manager: str
    revision: int
    media_host: str
    media_port: int
    gmk_id: bytes
    members: tuple[str, ...]

    def __post_init__(self) -> None:
        _uri(self.uri, "group URI")
        _text(self.name, "group name", MAX_NAME, empty=True)
        _uri(self.manager, "manager URI")
        _uint(self.revision, 4, "revision")
        if not isinstance(self.media_host, str):
            raise TypeError("media host must be a str")
        try:
            host = ipaddress.IPv4Address(self.media_host)
        except ValueError:
            raise MalformedAdhocMessage(f"media host {self.media_host!r} is not an IPv4 address") from None
        if not host.is_multicast:
            raise MalformedAdhocMessage(f"media host {host} is not a multicast address (224.0.0.0/4)")
        _uint(self.media_port, 2, "media port", minimum=1)
        object.__setattr__(self, "gmk_id", _gmk_id(self.gmk_id))
        members = _strings(self.members, "members")
        object.__setattr__(self, "members", members)
        if len(members) > MAX_MEMBERS:
            raise MalformedAdhocMessage(f"{len(members)} members, more than {MAX_MEMBERS}")
        for member in members:
            _uri(member, "member URI")
        if len(set(members)) != len(members):
            raise MalformedAdhocMessage("a member is listed more than once")
        if self.manager not in members:
            raise MalformedAdhocMessage("the manager is not among the members")

    def has_member(self, uri: str) -> bool:
        return uri in self.members

    def __bytes__(self) -> bytes:
        name = self.name.encode("utf-8")
        return b"".join(
            [
                _uri16(self.uri),
                sized(name, 1, "group name"),
                _uri16(self.manager),
                field(self.revision, 4, "revision"),
                ipaddress.IPv4Address(self.media_host).packed,
                field(self.media_port, 2, "media port"),
                self.gmk_id,
                field(len(self.members), 2, "member count"),
                *(_uri16(m) for m in self.members),
            ]
        )

    @classmethod
    def parse(cls, data: bytes) -> GroupInfo:
        with _malformed():
            r = Reader(bytes(data), 0, "GroupInfo")
            info = cls._read(r)
            r.done()
        return info

    @classmethod
    def _read(cls, r: Reader) -> GroupInfo:
        uri = _read_text(r, 2, "group URI")
        name = _read_text(r, 1, "group name")
        manager = _read_text(r, 2, "manager URI")
        revision = r.uint(4, "revision")
        media_host = str(ipaddress.IPv4Address(r.take(4, "media host")))
        media_port = r.uint(2, "media port")
        gmk_id = r.take(GMK_ID_LENGTH, "GMK-ID")
        count = _read_count(r, MAX_MEMBERS, "members")
        members = tuple(_read_text(r, 2, "member URI") for _ in range(count))
        return cls(uri, name, manager, revision, media_host, media_port, gmk_id, members)


# --- bodies -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """Multicast presence: my unicast port and (group URI, GMK-ID) of each ad-hoc group key I hold."""

    TYPE: ClassVar[MessageType] = MessageType.HELLO

    port: int
    held: tuple[tuple[str, bytes], ...] = ()

    def __post_init__(self) -> None:
        _uint(self.port, 2, "port", minimum=1)
        held = tuple((uri, _gmk_id(gmk_id)) for uri, gmk_id in self.held)
        object.__setattr__(self, "held", held)
        if len(held) > MAX_HELD:
            raise MalformedAdhocMessage(f"{len(held)} held keys, more than {MAX_HELD}")
        for uri, _ in held:
            _uri(uri, "held group URI")

    def __bytes__(self) -> bytes:
        entries = b"".join(_uri16(uri) + gmk_id for uri, gmk_id in self.held)
        return field(self.port, 2, "port") + field(len(self.held), 2, "held count") + entries

    @classmethod
    def parse(cls, data: bytes) -> Hello:
        with _malformed():
            r = Reader(bytes(data), 0, "HELLO")
            port = r.uint(2, "port")
            count = _read_count(r, MAX_HELD, "held keys")
            held = tuple((_read_text(r, 2, "group URI"), r.take(GMK_ID_LENGTH, "GMK-ID")) for _ in range(count))
            r.done()
        return cls(port, held)


@dataclass(frozen=True)
class Probe:
    """Multicast request: "these URIs (everyone if empty): send a HELLO now"."""

    TYPE: ClassVar[MessageType] = MessageType.PROBE

    wanted: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        wanted = _strings(self.wanted, "wanted")
        object.__setattr__(self, "wanted", wanted)
        if len(wanted) > MAX_MEMBERS:
            raise MalformedAdhocMessage(f"{len(wanted)} wanted URIs, more than {MAX_MEMBERS}")
        for uri in wanted:
            _uri(uri, "wanted URI")

    def __bytes__(self) -> bytes:
        return field(len(self.wanted), 2, "wanted count") + b"".join(_uri16(uri) for uri in self.wanted)

    @classmethod
    def parse(cls, data: bytes) -> Probe:
        with _malformed():
            r = Reader(bytes(data), 0, "PROBE")
            count = _read_count(r, MAX_MEMBERS, "wanted URIs")
            wanted = tuple(_read_text(r, 2, "wanted URI") for _ in range(count))
            r.done()
        return cls(wanted)


@dataclass(frozen=True)
class GroupAnnouncement:
    """The group's current description (multicast)."""

    TYPE: ClassVar[MessageType] = MessageType.GROUP

    group: GroupInfo

    def __post_init__(self) -> None:
        if not isinstance(self.group, GroupInfo):
            raise TypeError("group must be a GroupInfo")

    def __bytes__(self) -> bytes:
        return bytes(self.group)

    @classmethod
    def parse(cls, data: bytes) -> GroupAnnouncement:
        return cls(GroupInfo.parse(data))


@dataclass(frozen=True)
class KeyDelivery:
    """The group's description and one member's MIKEY-SAKKE I_MESSAGE carrying its current GMK (unicast)."""

    TYPE: ClassVar[MessageType] = MessageType.KEY

    group: GroupInfo
    i_message: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.group, GroupInfo):
            raise TypeError("group must be a GroupInfo")
        if not isinstance(self.i_message, bytes | bytearray | memoryview):
            raise TypeError("I_MESSAGE must be bytes")
        object.__setattr__(self, "i_message", bytes(self.i_message))
        if not 1 <= len(self.i_message) <= MAX_I_MESSAGE:
            raise MalformedAdhocMessage(f"I_MESSAGE of {len(self.i_message)} octets (1..{MAX_I_MESSAGE})")

    def __bytes__(self) -> bytes:
        return bytes(self.group) + sized(self.i_message, 2, "I_MESSAGE")

    @classmethod
    def parse(cls, data: bytes) -> KeyDelivery:
        with _malformed():
            r = Reader(bytes(data), 0, "KEY")
            group = GroupInfo._read(r)
            i_message = r.take(r.uint(2, "I_MESSAGE length"), "I_MESSAGE")
            r.done()
        return cls(group, i_message)


@dataclass(frozen=True)
class KeyAck:
    """Acknowledges a key: "I hold this GMK of this group" (unicast to the manager)."""

    TYPE: ClassVar[MessageType] = MessageType.ACK

    group_uri: str
    gmk_id: bytes

    def __post_init__(self) -> None:
        _uri(self.group_uri, "group URI")
        object.__setattr__(self, "gmk_id", _gmk_id(self.gmk_id))

    def __bytes__(self) -> bytes:
        return _uri16(self.group_uri) + self.gmk_id

    @classmethod
    def parse(cls, data: bytes) -> KeyAck:
        with _malformed():
            r = Reader(bytes(data), 0, "ACK")
            group_uri = _read_text(r, 2, "group URI")
            gmk_id = r.take(GMK_ID_LENGTH, "GMK-ID")
            r.done()
        return cls(group_uri, gmk_id)


@dataclass(frozen=True)
class Leave:
    """The sender leaves the group; ``revision`` is the group's revision it last knew."""

    TYPE: ClassVar[MessageType] = MessageType.LEAVE

    group_uri: str
    revision: int

    def __post_init__(self) -> None:
        _uri(self.group_uri, "group URI")
        _uint(self.revision, 4, "revision")

    def __bytes__(self) -> bytes:
        return _uri16(self.group_uri) + field(self.revision, 4, "revision")

    @classmethod
    def parse(cls, data: bytes) -> Leave:
        with _malformed():
            r = Reader(bytes(data), 0, "LEAVE")
            group_uri = _read_text(r, 2, "group URI")
            revision = r.uint(4, "revision")
            r.done()
        return cls(group_uri, revision)


Body: TypeAlias = Hello | Probe | GroupAnnouncement | KeyDelivery | KeyAck | Leave

_BODY_CLASSES: Final = (Hello, Probe, GroupAnnouncement, KeyDelivery, KeyAck, Leave)
_PARSERS: Final[dict[int, Callable[[bytes], Body]]] = {cls.TYPE: cls.parse for cls in _BODY_CLASSES}


# --- the envelope -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """One signalling datagram: who sent it, under which KMS, when, what, and the sender's ECCSI signature.

    ``signature`` is empty until signed (``seal`` signs); ``bytes(envelope)`` needs the 129-octet signature.
    """

    sender: str
    sender_kms: str
    time_ms: int
    body: Body
    signature: bytes = b""

    def __post_init__(self) -> None:
        _uri(self.sender, "sender URI")
        _uri(self.sender_kms, "sender KMS URI")
        _uint(self.time_ms, 8, "time")
        if not isinstance(self.body, _BODY_CLASSES):
            raise TypeError(f"body must be one of the ad-hoc bodies, not {type(self.body).__name__}")
        if not isinstance(self.signature, bytes | bytearray | memoryview):
            raise TypeError("signature must be bytes")
        object.__setattr__(self, "signature", bytes(self.signature))

    @property
    def type(self) -> MessageType:
        return self.body.TYPE

    def signed_octets(self) -> bytes:
        """Every octet before the signature. ``ValueError`` if the whole datagram would exceed MAX_DATAGRAM."""
        body = bytes(self.body)
        head = b"".join(
            [
                MAGIC,
                field(VERSION, 1, "version"),
                field(self.type, 1, "type"),
                _RESERVED,
                field(self.time_ms, 8, "time"),
                _uri16(self.sender),
                _uri16(self.sender_kms),
            ]
        )
        total = len(head) + 2 + len(body) + SIGNATURE_LENGTH
        if total > MAX_DATAGRAM:
            raise ValueError(f"{self.type.name} datagram of {total} octets exceeds MAX_DATAGRAM ({MAX_DATAGRAM})")
        return head + sized(body, 2, "body")

    def __bytes__(self) -> bytes:
        if len(self.signature) != SIGNATURE_LENGTH:
            raise ValueError(f"signature must be {SIGNATURE_LENGTH} octets, not {len(self.signature)}")
        return self.signed_octets() + self.signature

    @classmethod
    def parse(cls, data: bytes) -> Envelope:
        """Structure only, no cryptography. Raises only ``MalformedAdhocMessage``."""
        data = bytes(data)
        if len(data) > MAX_DATAGRAM:
            raise MalformedAdhocMessage(f"datagram of {len(data)} octets exceeds MAX_DATAGRAM ({MAX_DATAGRAM})")
        with _malformed():
            r = Reader(data, 0, "envelope")
            if r.take(len(MAGIC), "magic") != MAGIC:
                raise MalformedAdhocMessage("not an ad-hoc signalling datagram (magic)")
            version = r.uint(1, "version")
            if version != VERSION:
                raise MalformedAdhocMessage(f"unsupported version {version}")
            type_code = r.uint(1, "type")
            parse_body = _PARSERS.get(type_code)
            if parse_body is None:
                raise MalformedAdhocMessage(f"unknown message type {type_code}")
            if r.take(len(_RESERVED), "reserved") != _RESERVED:
                raise MalformedAdhocMessage("reserved octets are not zero")
            time_ms = r.uint(8, "time")
            sender = _read_text(r, 2, "sender URI")
            sender_kms = _read_text(r, 2, "sender KMS URI")
            body = r.take(r.uint(2, "body length"), "body")
            signature = r.take(SIGNATURE_LENGTH, "signature")
            r.done()
        return cls(sender, sender_kms, time_ms, parse_body(body), signature)


# --- signing and opening ------------------------------------------------------------------------------------------


def seal(sender: IdentityKeys, body: Body, now: float) -> bytes:
    """``body`` as a datagram from ``sender`` at ``now``, signed with its ECCSI key for the key period at ``now``.

    ``ValueError`` if the keys are not for that period (the period of the millisecond time sent, which is what the
    receiver computes), if they cannot sign, or if the datagram would exceed MAX_DATAGRAM.
    """
    if not sender.ssk or not sender.pvt:
        raise ValueError("sender has no signing key")
    if not math.isfinite(now) or now < 0:
        raise ValueError("now must be a finite, non-negative Unix time")
    time_ms = math.floor(now * 1000)
    if sender.period_no != sender.domain.period_number(time_ms / 1000):
        raise ValueError("sender's keys are not for the key period at 'now'")
    octets = Envelope(sender.uri, sender.domain.kms_uri, time_ms, body).signed_octets()
    return octets + eccsi.sign(octets, sender.uid, sender.ssk, sender.pvt, sender.domain.kpak)


def open_envelope(
    data: bytes,
    *,
    trusted_kms: Mapping[str, KmsDomain],
    now: float,
    replay_cache: ReplayCache,
    window: float = DEFAULT_WINDOW,
) -> Envelope:
    """Parse and authenticate a received datagram; remember it in ``replay_cache``.

    Checks, in order: structure (``MalformedAdhocMessage``), time within ``window`` seconds of ``now``
    (``StaleAdhocMessage``), the sender's KMS in ``trusted_kms`` (``UntrustedSender``), the ECCSI signature with
    the sender's UID for the key period at the datagram's time (``BadAdhocSignature``), first sight of the signed
    octets (``ReplayedAdhocMessage``). Raises only ``AdhocMessageError`` subclasses, for any input octets.
    """
    data = bytes(data)
    envelope = Envelope.parse(data)
    sent = envelope.time_ms / 1000
    if not abs(now - sent) <= window:
        raise StaleAdhocMessage(f"datagram time is {sent - now:+.3f} s from now (window ±{window:.0f} s)")
    domain = trusted_kms.get(envelope.sender_kms)
    if domain is None:
        raise UntrustedSender(f"sender's KMS {envelope.sender_kms!r} is not trusted")
    try:
        sender_uid = domain.uid(envelope.sender, domain.period_number(sent))
    except ValueError as exc:
        raise BadAdhocSignature(f"no key period of the sender's KMS at the datagram's time: {exc}") from None
    signed = data[: len(data) - SIGNATURE_LENGTH]
    if not eccsi.verify(signed, envelope.signature, sender_uid, domain.kpak):
        raise BadAdhocSignature(f"ECCSI signature does not verify for {envelope.sender!r}")
    replay_cache.sweep(now)
    try:
        replay_cache.check_and_remember(hashlib.sha256(signed).digest(), sent, sent + window)
    except Replayed as exc:
        reason = str(exc).replace("I_MESSAGE", "datagram")
        raise ReplayedAdhocMessage(f"{envelope.type.name} from {envelope.sender!r}: {reason}") from None
    return envelope


__all__ = [
    "DEFAULT_WINDOW",
    "GMK_ID_LENGTH",
    "MAGIC",
    "MAX_DATAGRAM",
    "MAX_HELD",
    "MAX_I_MESSAGE",
    "MAX_MEMBERS",
    "MAX_NAME",
    "MAX_URI",
    "SIGNATURE_LENGTH",
    "VERSION",
    "AdhocAuthError",
    "AdhocMessageError",
    "BadAdhocSignature",
    "Body",
    "Envelope",
    "GroupAnnouncement",
    "GroupInfo",
    "Hello",
    "KeyAck",
    "KeyDelivery",
    "Leave",
    "MalformedAdhocMessage",
    "MessageType",
    "Probe",
    "ReplayedAdhocMessage",
    "StaleAdhocMessage",
    "UntrustedSender",
    "open_envelope",
    "seal",
]
