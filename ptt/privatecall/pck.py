"""The private call key (PCK) and its I_MESSAGE (TS 33.180 §7.3, Annex E.3; pure, time passed in).

The caller's client makes a PCK and a PCK-ID (purpose tag 1 in the top four bits) and sends it to the callee in
a MIKEY-SAKKE I_MESSAGE: signed (ECCSI) by the caller's UID, SAKKE-encapsulated to the callee's UID, both UIDs
for the key period in force (TS 33.180 F.2.1). Layout, as other vendors send it (Streamwide's PCK vector):
HDR (CSB ID = PCK-ID, CS ID map type "empty") · T · RAND · IDR(8: caller's UID) · IDR(9: callee's UID) ·
IDR(6: caller's KMS) · IDR(7: callee's KMS) · SP · SAKKE · GENERAL-EXT 7 (key parameters, key type PCK) · SIGN.

* :func:`build_pck_message` builds it (``ptt.mikey.imessage.build_i_message`` does the work);
* :meth:`PckOffer.parse` reads what anyone can read of it without a key (the server's cheap check that it is a
  PCK I_MESSAGE from the caller to the callee it is sent to; it never learns the PCK);
* :func:`receive_pck_message` is the callee's full check (time, signature by the expected caller, addressed to
  this callee's UID, replay, SAKKE, purpose tag, key parameters) before it hands out the key.

Every refusal is a :class:`ptt.mikey.errors.MikeyError` (a ``ValueError``); the PCK-specific ones are
:class:`PckError` subclasses.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ptt.mikey.codes import CsIdMapType, DataType, IdRole
from ptt.mikey.errors import MalformedMessage, MikeyError
from ptt.mikey.header import Rand, T
from ptt.mikey.identity import IdentityKeys, KmsDomain
from ptt.mikey.imessage_build import RAND_LENGTH, build_i_message
from ptt.mikey.imessage_receive import DEFAULT_MAX_AGE, MAX_CLOCK_SKEW, receive_i_message
from ptt.mikey.message import MikeyMessage
from ptt.mikey.replay import ReplayCache
from ptt.ts33180 import KEY_ID_LENGTH, KeyPurpose, key_purpose, new_key_id

__all__ = [
    "MAX_PCK_MESSAGE",
    "PCK_LENGTH",
    "NotAPck",
    "PckError",
    "PckOffer",
    "PckRevoked",
    "PrivateCallKey",
    "ReceivedPck",
    "WrongParties",
    "build_pck_message",
    "make_private_call_key",
    "receive_pck_message",
]

PCK_LENGTH = 16
MAX_PCK_MESSAGE = 4096
"""A PCK I_MESSAGE is about 500 octets; anything far larger is refused before it is parsed."""


class PckError(MikeyError):
    """A PCK I_MESSAGE refused for a reason of its own (beyond the I_MESSAGE checks)."""


class NotAPck(PckError):
    """The I_MESSAGE carries another kind of key (purpose tag not 1) or not the PCK layout (HDR map, CSB ID)."""


class WrongParties(PckError):
    """IDRi/IDRr are not the UIDs of the caller and callee the message travels between."""


class PckRevoked(PckError):
    """The key parameters mark the PCK revoked."""


@dataclass(frozen=True, repr=False)
class PrivateCallKey:
    """A PCK, its PCK-ID (purpose tag 1) and the RAND of its I_MESSAGE (the SRTP keys derive from all three)."""

    pck: bytes
    pck_id: bytes
    rand: bytes = field(default_factory=lambda: os.urandom(RAND_LENGTH))

    def __post_init__(self) -> None:
        if len(self.pck) != PCK_LENGTH:
            raise ValueError(f"PCK must be {PCK_LENGTH} octets")
        if len(self.pck_id) != KEY_ID_LENGTH or key_purpose(self.pck_id) != KeyPurpose.PCK:
            raise ValueError("PCK-ID must be 4 octets with the PCK purpose tag (1)")
        if not 1 <= len(self.rand) <= 255:
            raise ValueError("RAND must be 1 to 255 octets")

    def __repr__(self) -> str:  # never show the key
        return f"PrivateCallKey(pck_id={self.pck_id.hex()})"


def make_private_call_key() -> PrivateCallKey:
    """A fresh random PCK with a fresh PCK-ID (purpose tag 1, 28 random bits) and RAND."""
    return PrivateCallKey(pck=os.urandom(PCK_LENGTH), pck_id=new_key_id(KeyPurpose.PCK))


def build_pck_message(
    caller: IdentityKeys,
    callee_uri: str,
    key: PrivateCallKey,
    *,
    now: float,
    callee_domain: KmsDomain | None = None,
) -> bytes:
    """The I_MESSAGE carrying ``key`` from ``caller`` (its keys for the period at ``now``) to ``callee_uri``'s UID
    for the key period at ``now`` (under ``callee_domain``, default the caller's own KMS)."""
    return build_i_message(
        initiator=caller,
        responder_uri=callee_uri,
        responder_domain=callee_domain,
        key=key.pck,
        key_id=key.pck_id,
        now=now,
        rand=key.rand,
    )


@dataclass(frozen=True)
class PckOffer:
    """What a PCK I_MESSAGE says in clear: PCK-ID, time, the parties' UIDs and KMSs (no signature check, no key)."""

    pck_id: bytes
    timestamp: float
    initiator_uid: bytes
    responder_uid: bytes
    initiator_kms: str
    responder_kms: str

    @classmethod
    def parse(cls, data: bytes) -> PckOffer:
        """Raises MalformedMessage (not MIKEY, not an I_MESSAGE) or NotAPck (another key, another layout)."""
        data = bytes(data)
        if len(data) > MAX_PCK_MESSAGE:
            raise MalformedMessage(f"PCK I_MESSAGE of {len(data)} octets (at most {MAX_PCK_MESSAGE})")
        message = MikeyMessage.parse(data)
        hdr = message.hdr
        if hdr.data_type != DataType.SAKKE_MSG or message.sign is None:
            raise MalformedMessage("not a signed SAKKE I_MESSAGE")
        pck_id = hdr.csb_id.to_bytes(KEY_ID_LENGTH, "big")
        if pck_id[0] >> 4 != KeyPurpose.PCK:
            raise NotAPck(f"CSB ID {pck_id.hex()} does not carry the PCK purpose tag (1)")
        if hdr.cs_map_type != CsIdMapType.EMPTY or hdr.cs_map:
            raise NotAPck("a PCK I_MESSAGE carries an empty CS ID map (TS 33.180 E.3)")
        times = message.find_all(T)
        rands = message.find_all(Rand)
        if len(times) != 1 or len(rands) != 1:
            raise MalformedMessage("an I_MESSAGE carries exactly one T and one RAND")
        timestamp = times[0]
        assert isinstance(timestamp, T)
        try:
            when = timestamp.unix_time()
        except ValueError as exc:
            raise MalformedMessage(str(exc)) from None

        def one(role: IdRole) -> bytes:
            found = message.idrs(role)
            if len(found) != 1:
                raise MalformedMessage(f"exactly one IDR with role {role.name} expected, found {len(found)}")
            return found[0].data

        return cls(
            pck_id=pck_id,
            timestamp=when,
            initiator_uid=one(IdRole.INITIATOR_UID),
            responder_uid=one(IdRole.RESPONDER_UID),
            initiator_kms=one(IdRole.INITIATOR_KMS).decode("utf-8", "replace"),
            responder_kms=one(IdRole.RESPONDER_KMS).decode("utf-8", "replace"),
        )

    def check_parties(self, caller_uri: str, callee_uri: str, domain: KmsDomain) -> None:
        """WrongParties unless IDRi is ``caller_uri``'s UID and IDRr ``callee_uri``'s, both under ``domain`` for
        the key period at the message's time (the server's check: it forwards only such offers)."""
        if self.initiator_kms != domain.kms_uri or self.responder_kms != domain.kms_uri:
            raise WrongParties("the PCK I_MESSAGE names another KMS")
        period = domain.period_number(self.timestamp)
        if not hmac.compare_digest(self.initiator_uid, domain.uid(caller_uri, period)):
            raise WrongParties("IDRi is not the caller's UID for the key period")
        if not hmac.compare_digest(self.responder_uid, domain.uid(callee_uri, period)):
            raise WrongParties("IDRr is not the callee's UID for the key period")


@dataclass(frozen=True, repr=False)
class ReceivedPck:
    """A verified, decrypted PCK and who sent it to whom."""

    key: PrivateCallKey
    caller_uri: str
    callee_uri: str
    caller_uid: bytes
    callee_uid: bytes
    timestamp: float

    def __repr__(self) -> str:
        return f"ReceivedPck(pck_id={self.key.pck_id.hex()}, caller={self.caller_uri!r}, callee={self.callee_uri!r})"


def receive_pck_message(
    data: bytes,
    *,
    callee: IdentityKeys | Sequence[IdentityKeys],
    caller_uri: str,
    trusted_kms: Mapping[str, KmsDomain],
    now: float,
    replay_cache: ReplayCache,
    max_age: float = DEFAULT_MAX_AGE,
    max_skew: float = MAX_CLOCK_SKEW,
) -> ReceivedPck:
    """The callee's checks, cheapest first: the PCK layout (purpose tag 1, empty map), then every I_MESSAGE check
    (time window, caller's KMS trusted, IDRi = ``caller_uri``'s UID, ECCSI signature, IDRr = this callee's UID,
    replay, SAKKE), then the key's purpose and key parameters. Raises a MikeyError subclass."""
    PckOffer.parse(data)
    received = receive_i_message(
        data,
        responder=callee,
        expected_initiators=caller_uri,
        trusted_kms=trusted_kms,
        now=now,
        replay_cache=replay_cache,
        max_age=max_age,
        max_skew=max_skew,
    )
    if received.purpose != KeyPurpose.PCK or received.key_id != received.csb_id:
        raise NotAPck(f"the I_MESSAGE carries a {received.purpose.name}, not a PCK")
    if received.revoked:
        raise PckRevoked("the PCK is marked revoked")
    try:
        key = PrivateCallKey(pck=received.key, pck_id=received.key_id, rand=received.rand)
    except ValueError as exc:
        raise NotAPck(str(exc)) from None
    return ReceivedPck(
        key=key,
        caller_uri=received.initiator_uri,
        callee_uri=received.responder_uri,
        caller_uid=received.initiator_uid,
        callee_uid=received.responder_uid,
        timestamp=received.timestamp,
    )
