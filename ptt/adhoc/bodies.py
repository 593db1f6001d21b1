"""The bodies of ad-hoc signalling datagrams: the signed group description (``GroupInfo``), ``Hello``, ``Probe``,
``GroupAnnouncement``, ``KeyDelivery``, ``KeyAck`` and ``Leave``, each with a strict parser and canonical encoding.

The wire format, and the envelope that signs a body, are in :mod:`ptt.adhoc.messages`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Final, TypeAlias

from ptt.adhoc.fields import (
    GMK_ID_LENGTH,
    MAX_HELD,
    MAX_I_MESSAGE,
    MAX_MEMBERS,
    MAX_NAME,
    MalformedAdhocMessage,
    MessageType,
    check_gmk_id,
    check_text,
    check_uint,
    check_uri,
    malformed_as_adhoc,
    read_count,
    read_text,
    uri16,
    uri_tuple,
)
from ptt.mikey.wire import Reader, field, sized


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
        check_uri(self.uri, "group URI")
        check_text(self.name, "group name", MAX_NAME, empty=True)
        check_uri(self.manager, "manager URI")
        check_uint(self.revision, 4, "revision")
        if not isinstance(self.media_host, str):
            raise TypeError("media host must be a str")
        try:
            host = ipaddress.IPv4Address(self.media_host)
        except ValueError:
            raise MalformedAdhocMessage(f"media host {self.media_host!r} is not an IPv4 address") from None
        if not host.is_multicast:
            raise MalformedAdhocMessage(f"media host {host} is not a multicast address (224.0.0.0/4)")
        check_uint(self.media_port, 2, "media port", minimum=1)
        object.__setattr__(self, "gmk_id", check_gmk_id(self.gmk_id))
        members = uri_tuple(self.members, "members")
        object.__setattr__(self, "members", members)
        if len(members) > MAX_MEMBERS:
            raise MalformedAdhocMessage(f"{len(members)} members, more than {MAX_MEMBERS}")
        for member in members:
            check_uri(member, "member URI")
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
                uri16(self.uri),
                sized(name, 1, "group name"),
                uri16(self.manager),
                field(self.revision, 4, "revision"),
                ipaddress.IPv4Address(self.media_host).packed,
                field(self.media_port, 2, "media port"),
                self.gmk_id,
                field(len(self.members), 2, "member count"),
                *(uri16(m) for m in self.members),
            ]
        )

    @classmethod
    def parse(cls, data: bytes) -> GroupInfo:
        with malformed_as_adhoc():
            r = Reader(bytes(data), 0, "GroupInfo")
            info = cls._read(r)
            r.done()
        return info

    @classmethod
    def _read(cls, r: Reader) -> GroupInfo:
        uri = read_text(r, 2, "group URI")
        name = read_text(r, 1, "group name")
        manager = read_text(r, 2, "manager URI")
        revision = r.uint(4, "revision")
        media_host = str(ipaddress.IPv4Address(r.take(4, "media host")))
        media_port = r.uint(2, "media port")
        gmk_id = r.take(GMK_ID_LENGTH, "GMK-ID")
        count = read_count(r, MAX_MEMBERS, "members")
        members = tuple(read_text(r, 2, "member URI") for _ in range(count))
        return cls(uri, name, manager, revision, media_host, media_port, gmk_id, members)


# --- bodies -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """Multicast presence: my unicast port and (group URI, GMK-ID) of each ad-hoc group key I hold."""

    TYPE: ClassVar[MessageType] = MessageType.HELLO

    port: int
    held: tuple[tuple[str, bytes], ...] = ()

    def __post_init__(self) -> None:
        check_uint(self.port, 2, "port", minimum=1)
        held = tuple((uri, check_gmk_id(gmk_id)) for uri, gmk_id in self.held)
        object.__setattr__(self, "held", held)
        if len(held) > MAX_HELD:
            raise MalformedAdhocMessage(f"{len(held)} held keys, more than {MAX_HELD}")
        for uri, _ in held:
            check_uri(uri, "held group URI")

    def __bytes__(self) -> bytes:
        entries = b"".join(uri16(uri) + gmk_id for uri, gmk_id in self.held)
        return field(self.port, 2, "port") + field(len(self.held), 2, "held count") + entries

    @classmethod
    def parse(cls, data: bytes) -> Hello:
        with malformed_as_adhoc():
            r = Reader(bytes(data), 0, "HELLO")
            port = r.uint(2, "port")
            count = read_count(r, MAX_HELD, "held keys")
            held = tuple((read_text(r, 2, "group URI"), r.take(GMK_ID_LENGTH, "GMK-ID")) for _ in range(count))
            r.done()
        return cls(port, held)


@dataclass(frozen=True)
class Probe:
    """Multicast request: "these URIs (everyone if empty): send a HELLO now"."""

    TYPE: ClassVar[MessageType] = MessageType.PROBE

    wanted: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        wanted = uri_tuple(self.wanted, "wanted")
        object.__setattr__(self, "wanted", wanted)
        if len(wanted) > MAX_MEMBERS:
            raise MalformedAdhocMessage(f"{len(wanted)} wanted URIs, more than {MAX_MEMBERS}")
        for uri in wanted:
            check_uri(uri, "wanted URI")

    def __bytes__(self) -> bytes:
        return field(len(self.wanted), 2, "wanted count") + b"".join(uri16(uri) for uri in self.wanted)

    @classmethod
    def parse(cls, data: bytes) -> Probe:
        with malformed_as_adhoc():
            r = Reader(bytes(data), 0, "PROBE")
            count = read_count(r, MAX_MEMBERS, "wanted URIs")
            wanted = tuple(read_text(r, 2, "wanted URI") for _ in range(count))
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
        with malformed_as_adhoc():
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
        check_uri(self.group_uri, "group URI")
        object.__setattr__(self, "gmk_id", check_gmk_id(self.gmk_id))

    def __bytes__(self) -> bytes:
        return uri16(self.group_uri) + self.gmk_id

    @classmethod
    def parse(cls, data: bytes) -> KeyAck:
        with malformed_as_adhoc():
            r = Reader(bytes(data), 0, "ACK")
            group_uri = read_text(r, 2, "group URI")
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
        check_uri(self.group_uri, "group URI")
        check_uint(self.revision, 4, "revision")

    def __bytes__(self) -> bytes:
        return uri16(self.group_uri) + field(self.revision, 4, "revision")

    @classmethod
    def parse(cls, data: bytes) -> Leave:
        with malformed_as_adhoc():
            r = Reader(bytes(data), 0, "LEAVE")
            group_uri = read_text(r, 2, "group URI")
            revision = r.uint(4, "revision")
            r.done()
        return cls(group_uri, revision)


@dataclass(frozen=True)
class CallSignal:
    """One step of an off-network private call (``ptt.privatecall.offnetwork``), unicast to ``to``.

    ``step``: 1 SETUP (``code`` 0 automatic / 1 manual commencement; ``imessage`` the PCK I_MESSAGE), 2 RINGING,
    3 ACCEPT, 4 REJECT and 5 END (``code`` the reason's index in ``ptt.privatecall.offnetwork.REASON_CODES``);
    ``media_port`` is the sender's SRTP port for SETUP and ACCEPT (0 otherwise).
    """

    TYPE: ClassVar[MessageType] = MessageType.CALL

    call_id: bytes
    step: int
    code: int
    to: str
    media_port: int = 0
    imessage: bytes = b""

    def __post_init__(self) -> None:
        if not isinstance(self.call_id, bytes) or len(self.call_id) != 8:
            raise MalformedAdhocMessage("call ID must be 8 octets")
        if self.step not in range(1, 6):
            raise MalformedAdhocMessage(f"unknown call step {self.step!r}")
        check_uint(self.code, 1, "code")
        check_uri(self.to, "callee URI")
        check_uint(self.media_port, 2, "media port")
        if not isinstance(self.imessage, bytes) or len(self.imessage) > MAX_I_MESSAGE:
            raise MalformedAdhocMessage("I_MESSAGE too long")
        if (self.step == 1) != bool(self.imessage):
            raise MalformedAdhocMessage("a SETUP, and only a SETUP, carries an I_MESSAGE")

    def __bytes__(self) -> bytes:
        return b"".join(
            [
                self.call_id,
                field(self.step, 1, "step"),
                field(self.code, 1, "code"),
                uri16(self.to),
                field(self.media_port, 2, "media port"),
                sized(self.imessage, 2, "I_MESSAGE"),
            ]
        )

    @classmethod
    def parse(cls, data: bytes) -> CallSignal:
        with malformed_as_adhoc():
            r = Reader(bytes(data), 0, "CALL")
            call_id = r.take(8, "call ID")
            step = r.uint(1, "step")
            code = r.uint(1, "code")
            to = read_text(r, 2, "callee URI")
            port = r.uint(2, "media port")
            imessage = r.take(r.uint(2, "I_MESSAGE length"), "I_MESSAGE")
            r.done()
        return cls(call_id, step, code, to, port, imessage)


Body: TypeAlias = Hello | Probe | GroupAnnouncement | KeyDelivery | KeyAck | Leave | CallSignal

BODY_CLASSES: Final = (Hello, Probe, GroupAnnouncement, KeyDelivery, KeyAck, Leave, CallSignal)
BODY_PARSERS: Final[dict[int, Callable[[bytes], Body]]] = {cls.TYPE: cls.parse for cls in BODY_CLASSES}
