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
    5         1       message type: 1 HELLO, 2 PROBE, 3 GROUP, 4 KEY, 5 ACK, 6 LEAVE, 7 CALL
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
    CALL    call ID 8 | step 1 (1..5) | code 1 | uri16 to | media port 2 | length 2 | I_MESSAGE (SETUP only)
            (off-network private calls: ptt.privatecall.offnetwork)

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
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from ptt.adhoc.bodies import (
    BODY_CLASSES,
    BODY_PARSERS,
    Body,
    GroupAnnouncement,
    GroupInfo,
    Hello,
    KeyAck,
    KeyDelivery,
    Leave,
    Probe,
)
from ptt.adhoc.fields import (
    GMK_ID_LENGTH,
    MAX_HELD,
    MAX_I_MESSAGE,
    MAX_MEMBERS,
    MAX_NAME,
    MAX_URI,
    AdhocAuthError,
    AdhocMessageError,
    BadAdhocSignature,
    MalformedAdhocMessage,
    MessageType,
    ReplayedAdhocMessage,
    StaleAdhocMessage,
    UntrustedSender,
    check_uint,
    check_uri,
    malformed_as_adhoc,
    read_text,
    uri16,
)
from ptt.crypto import eccsi
from ptt.mikey.errors import Replayed
from ptt.mikey.identity import IdentityKeys, KmsDomain
from ptt.mikey.replay import ReplayCache
from ptt.mikey.wire import Reader, field, sized

MAGIC: Final = b"PTTA"
VERSION: Final = 1
MAX_DATAGRAM: Final = 65000
SIGNATURE_LENGTH: Final = eccsi.SIGNATURE_LENGTH  # 129
DEFAULT_WINDOW: Final = 300.0  # seconds of clock difference accepted between sender and receiver

_RESERVED: Final = b"\x00\x00"


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
        check_uri(self.sender, "sender URI")
        check_uri(self.sender_kms, "sender KMS URI")
        check_uint(self.time_ms, 8, "time")
        if not isinstance(self.body, BODY_CLASSES):
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
                uri16(self.sender),
                uri16(self.sender_kms),
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
        with malformed_as_adhoc():
            r = Reader(data, 0, "envelope")
            if r.take(len(MAGIC), "magic") != MAGIC:
                raise MalformedAdhocMessage("not an ad-hoc signalling datagram (magic)")
            version = r.uint(1, "version")
            if version != VERSION:
                raise MalformedAdhocMessage(f"unsupported version {version}")
            type_code = r.uint(1, "type")
            parse_body = BODY_PARSERS.get(type_code)
            if parse_body is None:
                raise MalformedAdhocMessage(f"unknown message type {type_code}")
            if r.take(len(_RESERVED), "reserved") != _RESERVED:
                raise MalformedAdhocMessage("reserved octets are not zero")
            time_ms = r.uint(8, "time")
            sender = read_text(r, 2, "sender URI")
            sender_kms = read_text(r, 2, "sender KMS URI")
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
