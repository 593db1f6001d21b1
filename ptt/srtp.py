"""Group media protection: SRTP keyed from the GMK (TS 33.180 §7.4.2), with the MKI selecting the key.

Each sender has its own key: master key/salt = PRF(GMK, CS-ID 4, CSB ID = the sender's GUK-ID, RAND of the GMK).
The 8-octet MKI = GMK-ID ‖ GUK-ID rides in every packet, so a receiver derives (and caches) the sender's key from
the MKI alone, and a rekey mid-call loses nothing: packets under the old GMK still find their key.

pylibsrtp has no MKI support, so the MKI is placed by hand: RFC 7714 §8 (AEAD: the MKI follows the ciphertext,
which includes the tag) and RFC 3711 §3.1 (AES-CM/HMAC: the MKI sits between the encrypted payload and the
authentication tag).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import pylibsrtp

from ptt.groupkeys import GroupKey
from ptt.ts33180 import CsId, KeyPurpose, key_purpose, srtp_master_key_and_salt, srtp_mki

MKI_LENGTH = 8


class SrtpError(ValueError):
    """A packet that cannot be protected or fails authentication, replay or key selection."""


@dataclass(frozen=True)
class Profile:
    name: str
    libsrtp: int
    salt_length: int
    tag_length: int
    aead: bool


AEAD_AES_128_GCM = Profile("AEAD_AES_128_GCM", pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 12, 16, True)
AES_CM_128_HMAC_SHA1_80 = Profile(
    "AES_CM_128_HMAC_SHA1_80", pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 14, 10, False
)
DEFAULT_PROFILE = AEAD_AES_128_GCM  # TS 33.180's default


def _policy(key: bytes, profile: Profile, inbound: bool) -> pylibsrtp.Policy:
    return pylibsrtp.Policy(
        key=key,
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound else pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=profile.libsrtp,
    )


def session_for(key: bytes, profile: Profile, *, inbound: bool) -> pylibsrtp.Session:
    """A libsrtp session under master key ‖ salt ``key`` (for keys other than a GMK's: ``ptt.privatecall.media``)."""
    return pylibsrtp.Session(_policy(key, profile, inbound))


def unprotect_in(session: pylibsrtp.Session, body: bytes, *, rtcp: bool) -> bytes:
    """``body`` (its MKI taken out) unprotected by ``session``; SrtpError if it fails."""
    try:
        return bytes(session.unprotect_rtcp(body) if rtcp else session.unprotect(body))
    except pylibsrtp.Error as exc:
        raise SrtpError(f"{'SRTCP' if rtcp else 'SRTP'} rejected: {exc}") from None


def media_key(group_key: GroupKey, guk_id: bytes, profile: Profile = DEFAULT_PROFILE) -> bytes:
    key, salt = srtp_master_key_and_salt(
        group_key.gmk, CsId.GROUP_CALL, guk_id, group_key.rand, 16, profile.salt_length
    )
    return key + salt


def insert_mki(protected: bytes, mki: bytes, profile: Profile) -> bytes:
    if profile.aead:
        return protected + mki
    return protected[: -profile.tag_length] + mki + protected[-profile.tag_length :]


def split_mki(packet: bytes, profile: Profile) -> tuple[bytes, bytes]:
    """(packet without MKI, MKI)."""
    if len(packet) < 12 + MKI_LENGTH + profile.tag_length:
        raise SrtpError("SRTP packet too short")
    if profile.aead:
        return packet[:-MKI_LENGTH], packet[-MKI_LENGTH:]
    tag_at = len(packet) - profile.tag_length
    return packet[: tag_at - MKI_LENGTH] + packet[tag_at:], packet[tag_at - MKI_LENGTH : tag_at]


class SrtpSender:
    """Protects this member's RTP under one GMK (make a new sender after a rekey)."""

    def __init__(self, group_key: GroupKey, own_uri: str, profile: Profile = DEFAULT_PROFILE) -> None:
        guk = group_key.guk_id(own_uri)
        self.profile = profile
        self.mki = srtp_mki(group_key.gmk_id, guk)
        self._session = pylibsrtp.Session(_policy(media_key(group_key, guk, profile), profile, inbound=False))

    def protect(self, rtp: bytes) -> bytes:
        try:
            return insert_mki(bytes(self._session.protect(rtp)), self.mki, self.profile)
        except pylibsrtp.Error as exc:
            raise SrtpError(f"cannot protect: {exc}") from None

    def protect_rtcp(self, rtcp: bytes) -> bytes:
        """SRTCP with the same key and MKI (after the SRTCP index: RFC 3711 §3.4, RFC 7714 §17)."""
        try:
            return insert_mki(bytes(self._session.protect_rtcp(rtcp)), self.mki, self.profile)
        except pylibsrtp.Error as exc:
            raise SrtpError(f"cannot protect RTCP: {exc}") from None


class SrtpReceiver:
    """Unprotects group media from any sender under any GMK it holds (selected by the MKI)."""

    MAX_SESSIONS = 256

    def __init__(self, profile: Profile = DEFAULT_PROFILE) -> None:
        self.profile = profile
        self._keys: dict[bytes, GroupKey] = {}
        self._sessions: OrderedDict[bytes, pylibsrtp.Session] = OrderedDict()

    def add_key(self, group_key: GroupKey) -> None:
        self._keys[group_key.gmk_id] = group_key

    def drop_key(self, gmk_id: bytes) -> None:
        self._keys.pop(gmk_id, None)
        for mki in [m for m in self._sessions if m[:4] == gmk_id]:
            del self._sessions[mki]

    @property
    def gmk_ids(self) -> list[bytes]:
        return list(self._keys)

    def awaits_key(self, packet: bytes) -> bool:
        """True if the packet's MKI names a GMK (purpose tag 0) this receiver does not hold (yet)."""
        try:
            gmk_id = split_mki(packet, self.profile)[1][:4]
        except SrtpError:
            return False
        return gmk_id not in self._keys and gmk_id[0] >> 4 == 0

    def _session(self, mki: bytes) -> pylibsrtp.Session:
        session = self._sessions.get(mki)
        if session is None:
            group_key = self._keys.get(mki[:4])
            if group_key is None:
                raise SrtpError(f"no GMK {mki[:4].hex()} for this packet")
            try:
                if key_purpose(mki[:4]) != KeyPurpose.GMK:
                    raise SrtpError("MKI does not name a GMK")
            except ValueError:
                raise SrtpError("MKI does not name a GMK") from None
            session = pylibsrtp.Session(_policy(media_key(group_key, mki[4:], self.profile), self.profile, True))
            self._sessions[mki] = session
            while len(self._sessions) > self.MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return session

    def unprotect(self, packet: bytes) -> tuple[bytes, bytes]:
        """(RTP packet, MKI of the sender)."""
        return self._unprotect(packet, rtcp=False)

    def unprotect_rtcp(self, packet: bytes) -> tuple[bytes, bytes]:
        """(RTCP packet, MKI of the sender): off-network floor control, SRTCP under the sender's GMK key."""
        return self._unprotect(packet, rtcp=True)

    def _unprotect(self, packet: bytes, *, rtcp: bool) -> tuple[bytes, bytes]:
        body, mki = split_mki(packet, self.profile)
        session = self._session(mki)
        try:
            plain = bytes(session.unprotect_rtcp(body) if rtcp else session.unprotect(body))
        except pylibsrtp.Error as exc:
            raise SrtpError(f"{'SRTCP' if rtcp else 'SRTP'} rejected: {exc}") from None
        self._sessions.move_to_end(mki)
        return plain, mki


class AwaitingKey:
    """Media under a GMK this member does not hold yet (a rekey under way: the I_MESSAGE is probably on its way).

    Packets are kept ``keep_for`` seconds (at most ``limit``) and handed back when a key arrives, so a rekey
    mid-burst loses nothing; a non-member's packets under made-up GMK-IDs just age out.
    """

    def __init__(self, keep_for: float = 2.0, limit: int = 100) -> None:
        self.keep_for = keep_for
        self.limit = limit
        self._packets: list[tuple[float, bytes]] = []

    @staticmethod
    def awaits_key(receiver: SrtpReceiver, packet: bytes) -> bool:
        """True if the packet's MKI names a GMK (purpose tag 0) that ``receiver`` does not hold."""
        return receiver.awaits_key(packet)

    def hold(self, packet: bytes, now: float) -> bool:
        """Keep the packet; False if it was dropped (the store is full of packets still fresh)."""
        self._packets = [(t, p) for t, p in self._packets if now - t <= self.keep_for]
        if len(self._packets) >= self.limit:
            return False
        self._packets.append((now, packet))
        return True

    def release(self, now: float) -> list[bytes]:
        """The packets still fresh, in arrival order; the store is emptied."""
        packets, self._packets = self._packets, []
        return [p for t, p in packets if now - t <= self.keep_for]

    def __len__(self) -> int:
        return len(self._packets)
