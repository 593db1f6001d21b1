"""SRTP of a private call under its PCK (TS 33.180 §7.4.2 with the private call's crypto sessions).

Each direction has its own crypto session: the caller's media is CS-ID 0, the callee's CS-ID 1; master key and
salt = PRF(PCK, CS-ID, CSB ID = PCK-ID, RAND of the PCK I_MESSAGE). The MKI is the PCK-ID (4 octets), placed
as for group calls (``ptt.srtp``: after the ciphertext for AEAD). A receiver opens only the other party's
direction, so nothing it sent itself (or a third party's packet) ever decrypts.
"""

from __future__ import annotations

import hmac

from ptt.privatecall.pck import PrivateCallKey
from ptt.srtp import DEFAULT_PROFILE, Profile, SrtpError, SrtpReceiver, SrtpSender, session_for, unprotect_in
from ptt.ts33180 import KEY_ID_LENGTH, CsId, srtp_master_key_and_salt

__all__ = ["CALL_MKI_LENGTH", "PrivateSrtpReceiver", "PrivateSrtpSender", "call_media_key", "stream_cs_id"]

CALL_MKI_LENGTH = KEY_ID_LENGTH


def stream_cs_id(caller: bool) -> int:
    """The CS-ID of a party's own media: 0 for the caller (initiator), 1 for the callee (receiver)."""
    return int(CsId.PRIVATE_CALL_INITIATOR if caller else CsId.PRIVATE_CALL_RECEIVER)


def call_media_key(key: PrivateCallKey, cs_id: int, profile: Profile = DEFAULT_PROFILE) -> bytes:
    """master key ‖ master salt of one direction of the call."""
    master, salt = srtp_master_key_and_salt(key.pck, cs_id, key.pck_id, key.rand, 16, profile.salt_length)
    return master + salt


class PrivateSrtpSender(SrtpSender):
    """Protects one party's media in a private call (a drop-in for a group's ``SrtpSender``)."""

    def __init__(self, key: PrivateCallKey, *, caller: bool, profile: Profile = DEFAULT_PROFILE) -> None:
        self.profile = profile
        self.mki = key.pck_id
        self._session = session_for(call_media_key(key, stream_cs_id(caller), profile), profile, inbound=False)


class PrivateSrtpReceiver(SrtpReceiver):
    """Unprotects the *other* party's media of a private call (a drop-in for a group's ``SrtpReceiver``)."""

    def __init__(self, key: PrivateCallKey, *, caller: bool, profile: Profile = DEFAULT_PROFILE) -> None:
        super().__init__(profile)
        self.pck_id = key.pck_id
        peer = stream_cs_id(not caller)
        self._call_session = session_for(call_media_key(key, peer, profile), profile, inbound=True)

    def awaits_key(self, packet: bytes) -> bool:
        return False  # a call has one key, from the start

    def _unprotect(self, packet: bytes, *, rtcp: bool) -> tuple[bytes, bytes]:
        profile = self.profile
        if len(packet) < 12 + CALL_MKI_LENGTH + profile.tag_length:
            raise SrtpError("SRTP packet too short")
        if profile.aead:
            body, mki = packet[:-CALL_MKI_LENGTH], packet[-CALL_MKI_LENGTH:]
        else:
            tag_at = len(packet) - profile.tag_length
            body = packet[: tag_at - CALL_MKI_LENGTH] + packet[tag_at:]
            mki = packet[tag_at - CALL_MKI_LENGTH : tag_at]
        if not hmac.compare_digest(mki, self.pck_id):
            raise SrtpError("MKI does not name this call's PCK")
        return unprotect_in(self._call_session, body, rtcp=rtcp), mki
