"""Voice messages for deferred delivery (issue 17), without I/O: the key, the media and the checks both ends run.

A voice message is what a private call would carry, kept by the server until the addressee fetches it: the sender
makes a fresh PCK (purpose tag 1, TS 33.180 §7.3) and its I_MESSAGE, signed (ECCSI) by the sender and
SAKKE-encrypted to the addressee's UID for the key period in force (``ptt.privatecall.pck``); the speech is Opus in
RTP, protected as the caller's direction of a private call (CS-ID 0, MKI = PCK-ID: ``ptt.privatecall.media``).
The server stores the I_MESSAGE and the SRTP packets (ciphertext only) and never holds the PCK.

* :func:`seal_voice` (sender): Opus frames → (offset, SRTP) under a fresh PCK, and the I_MESSAGE;
* :func:`check_upload` (server, cheap, before any signature work): size, PCK layout, IDRi = the *authenticated*
  sender's UID and IDRr = the addressee's, both for the period of T, T within ``UPLOAD_WINDOW`` of now (an upload
  is made when the message is recorded: an old I_MESSAGE uploaded again is refused), and the replay digest;
* :func:`sender_signature_valid` (server, in a worker): the ECCSI signature by IDRi verifies;
* :func:`open_voice` (addressee): every I_MESSAGE check (signer = the sender the server names, addressed to this
  identity, freshness up to ``stored_max_age`` — a stored message is legitimately old —, replay, SAKKE, purpose
  tag), then the SRTP.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ptt.crypto import eccsi
from ptt.mikey.errors import MikeyError
from ptt.mikey.identity import IdentityKeys, KmsDomain
from ptt.mikey.imessage_receive import MAX_CLOCK_SKEW, check_time, replay_key
from ptt.mikey.message import MikeyMessage
from ptt.mikey.replay import ReplayCache
from ptt.playback import OpenedPackets
from ptt.privatecall.media import PrivateSrtpReceiver, PrivateSrtpSender
from ptt.privatecall.pck import (
    MAX_PCK_MESSAGE,
    PckOffer,
    PrivateCallKey,
    ReceivedPck,
    build_pck_message,
    make_private_call_key,
    receive_pck_message,
)
from ptt.rtp import OPUS_FRAME_SAMPLES, OPUS_PAYLOAD_TYPE, RtpSender

__all__ = [
    "FRAME_SECONDS",
    "MAX_PACKETS",
    "MAX_PACKET_OCTETS",
    "MAX_SECONDS",
    "UPLOAD_WINDOW",
    "OpenedVoice",
    "SealedVoice",
    "UploadRefused",
    "check_upload",
    "open_voice",
    "seal_voice",
    "sender_signature_valid",
    "stored_max_age",
]

FRAME_SECONDS = 0.02
MAX_SECONDS = 120
"""A voice message is at most two minutes of speech (as messaging PTT apps allow)."""
MAX_PACKETS = int(MAX_SECONDS / FRAME_SECONDS)
MAX_PACKET_OCTETS = 1500
UPLOAD_WINDOW = 300.0
"""How far the I_MESSAGE's T may be from the server's clock at upload: made for this upload, clock skew only."""
STORED_SLACK = 3600.0


class UploadRefused(ValueError):
    """An upload the server refuses; ``code`` is the control channel's error code (400, 403, 409, 413 …)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


def stored_max_age(domain: KmsDomain) -> float:
    """How old a stored voice message's I_MESSAGE may be when opened: one key period plus an hour (the addressee
    holds the RSKs of the current and next period; older ones it may have pruned). The server keeps messages no
    longer than this either."""
    return float(domain.key_period) + STORED_SLACK


@dataclass(frozen=True, repr=False)
class SealedVoice:
    """A voice message as it is uploaded: the PCK I_MESSAGE and the SRTP packets with their offsets (seconds)."""

    key: PrivateCallKey
    imessage: bytes
    packets: list[tuple[float, bytes]]

    def __repr__(self) -> str:
        return f"SealedVoice(pck_id={self.key.pck_id.hex()}, packets={len(self.packets)})"


def seal_voice(
    sender: IdentityKeys,
    addressee: str,
    opus_frames: Sequence[bytes],
    *,
    now: float,
    addressee_domain: KmsDomain | None = None,
    key: PrivateCallKey | None = None,
) -> SealedVoice:
    """Opus frames of 20 ms → SRTP under a fresh PCK (the caller's direction, CS-ID 0), and the PCK's I_MESSAGE
    signed by ``sender`` and encrypted to ``addressee``'s UID for the key period at ``now``."""
    if not 1 <= len(opus_frames) <= MAX_PACKETS:
        raise ValueError(f"a voice message is 1 to {MAX_PACKETS} frames ({MAX_SECONDS} s), not {len(opus_frames)}")
    key = key or make_private_call_key()
    imessage = build_pck_message(sender, addressee, key, now=now, callee_domain=addressee_domain)
    protect = PrivateSrtpSender(key, caller=True)
    rtp = RtpSender(struct.unpack(">I", os.urandom(4))[0], OPUS_PAYLOAD_TYPE)
    packets = []
    for index, frame in enumerate(opus_frames):
        packet = rtp.packet(frame, OPUS_FRAME_SAMPLES, start_of_burst=index == 0)
        packets.append((round(index * FRAME_SECONDS, 3), protect.protect(bytes(packet))))
    return SealedVoice(key, imessage, packets)


@dataclass(frozen=True)
class CheckedUpload:
    offer: PckOffer
    digest: bytes  # SHA-256 of the signed octets: the store refuses the same I_MESSAGE twice


def check_upload(imessage: bytes, sender: str, addressee: str, domain: KmsDomain, now: float) -> CheckedUpload:
    """The server's checks before it accepts an upload (no signature work): UploadRefused with the reason."""
    if addressee == sender:
        raise UploadRefused(400, "a voice message to oneself")
    if len(imessage) > MAX_PCK_MESSAGE:
        raise UploadRefused(413, f"I_MESSAGE of {len(imessage)} octets (at most {MAX_PCK_MESSAGE})")
    try:
        offer = PckOffer.parse(imessage)
        offer.check_parties(sender, addressee, domain)
        digest, timestamp = replay_key(imessage)
        check_time(timestamp, now, max_age=UPLOAD_WINDOW, max_skew=MAX_CLOCK_SKEW)
    except MikeyError as exc:
        raise UploadRefused(403, f"I_MESSAGE refused: {type(exc).__name__}: {exc}") from None
    return CheckedUpload(offer, digest)


def sender_signature_valid(imessage: bytes, domain: KmsDomain) -> bool:
    """Whether the ECCSI signature verifies for the message's IDRi (after :func:`check_upload` tied IDRi to the
    authenticated sender): a forged or altered I_MESSAGE is refused before it is stored."""
    try:
        message = MikeyMessage.parse(bytes(imessage))
        offer = PckOffer.parse(imessage)
    except MikeyError:
        return False
    sign = message.sign
    if sign is None or len(sign.signature) != eccsi.SIGNATURE_LENGTH:
        return False
    signed = imessage[: len(imessage) - len(sign.signature)]
    return bool(eccsi.verify(signed, sign.signature, offer.initiator_uid, domain.kpak))


@dataclass(kw_only=True)
class OpenedVoice(OpenedPackets):
    """A voice message as its addressee opens it: who sent it when, its RTP packets, and what failed."""

    received: ReceivedPck


def open_voice(
    imessage: bytes,
    packets: Iterable[tuple[float, bytes]],
    *,
    addressee: Sequence[IdentityKeys],
    sender: str,
    trusted_kms: Mapping[str, KmsDomain],
    now: float,
    replay_cache: ReplayCache,
    max_age: float,
) -> OpenedVoice:
    """Every check of the I_MESSAGE (a MikeyError if one fails), then each packet under the PCK's CS-ID 0."""
    received = receive_pck_message(
        imessage,
        callee=addressee,
        caller_uri=sender,
        trusted_kms=trusted_kms,
        now=now,
        replay_cache=replay_cache,
        max_age=max_age,
    )
    receiver = PrivateSrtpReceiver(received.key, caller=False)
    opened = OpenedVoice(received=received)
    opened.open_each(packets, lambda packet: receiver.unprotect(packet)[0])
    return opened
