"""Voice messages to a group (deferred delivery, issue 17), without I/O: the speech under the group's current GMK.

A member sends as it talks in the group: RTP (Opus) protected with its own key from the GMK (``ptt.srtp``: MKI =
GMK-ID ‖ GUK-ID, the GUK-ID derived from the GMK and the sender's URI). No I_MESSAGE travels with it: every member
already holds the GMK (the server distributes it, signed by the group), and the server does not. A member opens a
group message with the GMKs it holds, and only packets whose GUK-ID is the named sender's (a member could protect
media under another member's GUK-ID, as in a live group call; what the GUK-ID check adds is that the server cannot
relabel a message with another sender).

* :func:`seal_group_voice` (sender); :func:`group_digest` (server: a message's identity, the SHA-256 of its first
  packet — random SSRC and sequence, encrypted: the same packets uploaded again are refused);
  :func:`check_group_keys` (server: every packet is under a GMK the group has now or just had);
  :func:`open_group_voice` (member).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ptt.groupkeys import GroupKey
from ptt.playback import OpenedPackets
from ptt.recording import gmk_id_of
from ptt.rtp import OPUS_FRAME_SAMPLES, OPUS_PAYLOAD_TYPE, RtpSender
from ptt.srtp import SrtpError, SrtpReceiver, SrtpSender
from ptt.voicemessage import FRAME_SECONDS, MAX_PACKETS, MAX_SECONDS, UploadRefused

__all__ = ["OpenedGroupVoice", "check_group_keys", "group_digest", "open_group_voice", "seal_group_voice"]


def seal_group_voice(key: GroupKey, sender: str, opus_frames: Sequence[bytes]) -> list[tuple[float, bytes]]:
    """Opus frames of 20 ms → (offset, SRTP) under ``sender``'s key from the group's GMK ``key``."""
    if not 1 <= len(opus_frames) <= MAX_PACKETS:
        raise ValueError(f"a voice message is 1 to {MAX_PACKETS} frames ({MAX_SECONDS} s), not {len(opus_frames)}")
    protect = SrtpSender(key, sender)
    rtp = RtpSender(struct.unpack(">I", os.urandom(4))[0], OPUS_PAYLOAD_TYPE)
    return [
        (
            round(i * FRAME_SECONDS, 3),
            protect.protect(bytes(rtp.packet(frame, OPUS_FRAME_SAMPLES, start_of_burst=i == 0))),
        )
        for i, frame in enumerate(opus_frames)
    ]


def group_digest(packets: Sequence[tuple[float, bytes]]) -> bytes:
    if not packets:
        raise UploadRefused(400, "a group voice message without packets")
    return hashlib.sha256(b"ptt-group-voice\x00" + packets[0][1]).digest()


def check_group_keys(packets: Iterable[tuple[float, bytes]], allowed: Sequence[bytes]) -> None:
    """UploadRefused unless every packet's MKI names one of the ``allowed`` GMK-IDs (the group's current GMK, or
    the one before while a rekey settles)."""
    for _, packet in packets:
        gmk_id = gmk_id_of(packet)
        if gmk_id is None or gmk_id not in allowed:
            raise UploadRefused(403, "a packet is not under the group's current GMK")


@dataclass
class OpenedGroupVoice(OpenedPackets):
    """A group voice message's RTP packets as a member opens them."""


def open_group_voice(packets: Iterable[tuple[float, bytes]], keys: Sequence[GroupKey], sender: str) -> OpenedGroupVoice:
    """Each packet under the GMK its MKI names (among ``keys``) and the sender's own GUK-ID; others count failed."""
    receiver = SrtpReceiver()
    for key in keys:
        receiver.add_key(key)
    senders = {key.gmk_id: key.guk_id(sender) for key in keys}

    def unprotect_from_sender(packet: bytes) -> bytes:
        rtp, mki = receiver.unprotect(packet)
        expected = senders.get(mki[:4])
        if expected is None or not hmac.compare_digest(mki[4:], expected):
            raise SrtpError(f"not under {sender}'s key")
        return rtp

    opened = OpenedGroupVoice()
    opened.open_each(packets, unprotect_from_sender)
    return opened
