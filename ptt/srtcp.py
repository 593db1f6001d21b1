"""SRTCP protection of floor control with the client's CSK (TS 33.180 §7.5: CSK, CS-ID 6) via pylibsrtp.

Both ends derive the SRTCP master key and salt from the CSK with the MIKEY PRF (TS 33.180 §7.4.2 with CS-ID 6
and CSB ID = the CSK-ID, RAND of the CSK's I_MESSAGE). Profile: AEAD AES-128-GCM (the TS 33.180 default),
12-octet salt. One session per direction: the sender's SSRCs are its own, so replay windows do not collide.
"""

from __future__ import annotations

from dataclasses import dataclass

import pylibsrtp

from ptt.ts33180 import CsId, srtp_master_key_and_salt


class SrtcpError(ValueError):
    """An SRTCP packet failed authentication or replay checks, or could not be protected."""


@dataclass(frozen=True, repr=False)
class CskKeys:
    csk: bytes
    csk_id: bytes
    rand: bytes

    def master(self) -> bytes:
        key, salt = srtp_master_key_and_salt(self.csk, CsId.CSK_SRTCP, self.csk_id, self.rand, 16, 12)
        return key + salt

    def __repr__(self) -> str:
        return f"CskKeys(csk_id={self.csk_id.hex()})"


class SrtcpChannel:
    """Protects outgoing and unprotects incoming RTCP with one CSK."""

    def __init__(self, keys: CskKeys) -> None:
        material = keys.master()
        self.keys = keys
        self._tx = pylibsrtp.Session(
            pylibsrtp.Policy(
                key=material,
                ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
            )
        )
        self._rx = pylibsrtp.Session(
            pylibsrtp.Policy(
                key=material,
                ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
                srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
            )
        )

    def protect(self, packet: bytes) -> bytes:
        try:
            return bytes(self._tx.protect_rtcp(packet))
        except pylibsrtp.Error as exc:
            raise SrtcpError(f"cannot protect RTCP: {exc}") from None

    def unprotect(self, packet: bytes) -> bytes:
        try:
            return bytes(self._rx.unprotect_rtcp(packet))
        except pylibsrtp.Error as exc:
            raise SrtcpError(f"SRTCP rejected: {exc}") from None
