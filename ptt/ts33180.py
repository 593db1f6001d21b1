"""3GPP TS 33.180 identities and key derivations (pure functions, no I/O, no clock).

* UID, MIKEY-SAKKE user identifier format 2 (Annex F.2.1), and the key periods it is bound to.
* Key IDs and their 4-bit purpose tags (§7, Annex F.1.3).
* GUK-ID, the per-member identifier of a group key (Annex F.1.3).
* SRTP master key and salt from a MIKEY TGK (§7.4.2, RFC 3830 §4.1.3) and the group-call MKI.

Time is always passed in (Unix seconds); the conversion to the NTP timescale the spec uses is done here.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from ptt.kdf import kdf_3gpp, mikey_prf

__all__ = [
    "DEFAULT_KEY_PERIOD",
    "KEY_ID_LENGTH",
    "NTP_UNIX_OFFSET",
    "SRTP_MKI_LENGTH",
    "UID_LENGTH",
    "CsId",
    "KeyPeriodPolicy",
    "KeyPurpose",
    "SrtpKeys",
    "group_srtp_keys",
    "guk_id",
    "guk_salt",
    "key_purpose",
    "new_key_id",
    "ntp_to_unix",
    "parse_srtp_mki",
    "period_bounds",
    "period_number",
    "srtp_master_key_and_salt",
    "srtp_mki",
    "uid",
    "uid_input",
    "unix_to_ntp",
]

NTP_UNIX_OFFSET = 2208988800
"""Seconds from the NTP epoch (1900-01-01T00:00:00Z) to the Unix epoch (1970-01-01T00:00:00Z)."""

DEFAULT_KEY_PERIOD = 2592000
"""30 days, the key period of the TS 33.180 F.2.1.2 example."""

UID_LENGTH = 32
KEY_ID_LENGTH = 4
SRTP_MKI_LENGTH = 2 * KEY_ID_LENGTH

_UID_TAG = b"MIKEY-SAKKE-UID"
_FC_GUK_ID = 0x50  # TS 33.180 F.1.3: FC of the user-salt derivation
_LOW_28 = (1 << 28) - 1
_PURPOSE_SHIFT = 28

# RFC 3830 §4.1.3 label constants for the SRTP master key and master salt.
_SRTP_KEY_CONSTANT = 0x2AD01C64
_SRTP_SALT_CONSTANT = 0x39A2C14B


# --- UID (Annex F.2.1) ---


def _uint_octets(value: int) -> bytes:
    # F.2.1: integers in the fewest big-endian octets; 0 still takes one octet.
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def _lv(param: bytes, name: str) -> bytes:
    if len(param) > 0xFFFF:
        raise ValueError(f"{name} longer than 65535 octets")
    return param + len(param).to_bytes(2, "big")


def uid_input(uri: str, kms_uri: str, key_period: int, key_period_offset: int, period_no: int) -> bytes:
    """The string S hashed into a UID (TS 33.180 F.2.1, user identifier format 2).

    S = 0x00 || "MIKEY-SAKKE-UID" || L || URI || L || KMS URI || L || key period || L || key period offset ||
    L || key period number || L, each L the 2-octet big-endian length of the parameter before it.
    """
    if not uri:
        raise ValueError("user URI must not be empty")
    if not kms_uri:
        raise ValueError("KMS URI must not be empty")
    if key_period <= 0:
        raise ValueError("key period must be positive")
    if key_period_offset < 0:
        raise ValueError("key period offset must not be negative")
    if period_no < 0:
        raise ValueError("key period number must not be negative")
    return b"".join(
        [
            b"\x00",
            _lv(_UID_TAG, "tag"),
            _lv(uri.encode("utf-8"), "user URI"),
            _lv(kms_uri.encode("utf-8"), "KMS URI"),
            _lv(_uint_octets(key_period), "key period"),
            _lv(_uint_octets(key_period_offset), "key period offset"),
            _lv(_uint_octets(period_no), "key period number"),
        ]
    )


def uid(uri: str, kms_uri: str, key_period: int, key_period_offset: int, period_no: int) -> bytes:
    """The 32-octet MIKEY-SAKKE UID = SHA-256(S) (TS 33.180 F.2.1); the SAKKE/ECCSI identifier of a user."""
    return hashlib.sha256(uid_input(uri, kms_uri, key_period, key_period_offset, period_no)).digest()


# --- Key periods (Annex F.2.1, KMS certificate UserKeyPeriod / UserKeyOffset) ---


def unix_to_ntp(unix_seconds: float) -> float:
    """Unix time → NTP seconds (RFC 5905 era 0, epoch 1900): the timescale of key periods and MIKEY's T."""
    return unix_seconds + NTP_UNIX_OFFSET


def ntp_to_unix(ntp_seconds: float) -> float:
    """NTP seconds (epoch 1900) → Unix time."""
    return ntp_seconds - NTP_UNIX_OFFSET


def _check_period(key_period: int, offset: int) -> None:
    if key_period <= 0:
        raise ValueError("key period must be positive")
    if offset < 0:
        raise ValueError("key period offset must not be negative")


def period_number(now_unix: float, key_period: int, offset: int) -> int:
    """Current key period number = ⌊(NTP seconds - offset) / key period⌋ (TS 33.180 F.2.1)."""
    _check_period(key_period, offset)
    if not math.isfinite(now_unix):
        raise ValueError("time must be finite")
    # Floor the Unix time *before* adding the (integer) NTP epoch offset: the float sum can round up across a
    # second boundary (6380945792.999999 + 2208988800 == 8589934593.0), the integer sum cannot.
    elapsed = math.floor(now_unix) + NTP_UNIX_OFFSET - offset
    if elapsed < 0:
        raise ValueError("time is before the first key period")
    return elapsed // key_period


def period_bounds(period_no: int, key_period: int, offset: int) -> tuple[int, int]:
    """Unix-time interval [start, end) of key period ``period_no`` (before 1970 for small numbers)."""
    _check_period(key_period, offset)
    if period_no < 0:
        raise ValueError("key period number must not be negative")
    start = period_no * key_period + offset - NTP_UNIX_OFFSET
    return start, start + key_period


@dataclass(frozen=True)
class KeyPeriodPolicy:
    """A KMS's user key period and offset in seconds (KmsCertificate UserKeyPeriod/UserKeyOffset, Annex D)."""

    key_period: int = DEFAULT_KEY_PERIOD
    offset: int = 0

    def __post_init__(self) -> None:
        _check_period(self.key_period, self.offset)

    def period_number(self, now_unix: float) -> int:
        """Key period number in force at ``now_unix``."""
        return period_number(now_unix, self.key_period, self.offset)

    def period_bounds(self, period_no: int) -> tuple[int, int]:
        """Unix-time interval [start, end) of key period ``period_no``."""
        return period_bounds(period_no, self.key_period, self.offset)

    def uid(self, uri: str, kms_uri: str, period_no: int) -> bytes:
        """UID of ``uri`` under this KMS for key period ``period_no``."""
        return uid(uri, kms_uri, self.key_period, self.offset, period_no)


# --- Key IDs and purpose tags (§7, Annex F.1.3) ---


class KeyPurpose(IntEnum):
    """Purpose tag: the 4 most significant bits of a 32-bit key ID."""

    GMK = 0
    PCK = 1
    CSK = 2
    SPK = 3
    MKFC = 4
    MSCCK = 5
    MUSIK = 6


def _check_key_id(key_id: bytes, name: str = "key ID") -> int:
    if len(key_id) != KEY_ID_LENGTH:
        raise ValueError(f"{name} must be {KEY_ID_LENGTH} octets, got {len(key_id)}")
    return int.from_bytes(key_id, "big")


def key_purpose(key_id: bytes) -> KeyPurpose:
    """Purpose of a key from the top 4 bits of its 4-octet ID; ValueError for an unassigned tag."""
    tag = _check_key_id(key_id) >> _PURPOSE_SHIFT
    try:
        return KeyPurpose(tag)
    except ValueError:
        raise ValueError(f"unassigned key purpose tag {tag}") from None


def new_key_id(purpose: KeyPurpose, rand: Callable[[int], bytes] = os.urandom) -> bytes:
    """A fresh 4-octet key ID: purpose tag in the top 4 bits, 28 random bits below."""
    purpose = KeyPurpose(purpose)
    r = rand(KEY_ID_LENGTH)
    if len(r) != KEY_ID_LENGTH:
        raise ValueError("random source returned the wrong number of octets")
    value = (purpose << _PURPOSE_SHIFT) | (int.from_bytes(r, "big") & _LOW_28)
    return value.to_bytes(KEY_ID_LENGTH, "big")


# --- GUK-ID (Annex F.1.3) ---


def guk_salt(gmk: bytes, mc_id: str) -> int:
    """User salt (28 bits) = low 28 bits of KDF(GMK, FC 0x50, P0 = MC ID) (TS 33.180 F.1.3, TS 33.220 B.2)."""
    if not gmk:
        raise ValueError("GMK must not be empty")
    if not mc_id:
        raise ValueError("MC ID must not be empty")
    return int.from_bytes(kdf_3gpp(gmk, _FC_GUK_ID, mc_id.encode("utf-8")), "big") & _LOW_28


def guk_id(gmk: bytes, gmk_id: bytes, mc_id: str) -> bytes:
    """GUK-ID of the member ``mc_id`` (its full URI, e.g. ``sip:alice@example.org``) (TS 33.180 F.1.3).

    GUK-ID = purpose tag of the GMK-ID || (low 28 bits of the GMK-ID XOR user salt). Each sender's GUK-ID is
    the CSB ID of its SRTP keys, so members sharing a GMK still get distinct SRTP keys.
    """
    value = _check_key_id(gmk_id, "GMK-ID")
    return (value ^ guk_salt(gmk, mc_id)).to_bytes(KEY_ID_LENGTH, "big")  # salt < 2**28: tag untouched


# --- SRTP keys and MKI (§7.4.2, RFC 3830 §4.1.3) ---


class CsId(IntEnum):
    """MIKEY crypto-session IDs that TS 33.180 assigns to its SRTP/SRTCP sessions."""

    PRIVATE_CALL_INITIATOR = 0
    PRIVATE_CALL_RECEIVER = 1
    GROUP_CALL = 4
    CSK_SRTCP = 6  # floor control / media control to and from the server, keyed by the CSK
    MUSIK = 7


def _srtp_label(constant: int, cs_id: int, csb_id: bytes, rand: bytes) -> bytes:
    return constant.to_bytes(4, "big") + bytes([cs_id]) + csb_id + rand


def srtp_master_key_and_salt(
    tgk: bytes,
    cs_id: int,
    csb_id: bytes,
    rand: bytes,
    key_length: int = 16,
    salt_length: int = 12,
) -> tuple[bytes, bytes]:
    """SRTP master key and salt from a MIKEY TGK (RFC 3830 §4.1.3, used by TS 33.180 §7.4.2).

    label = constant || CS-ID || CSB ID || RAND; key = PRF(TGK, label with 0x2AD01C64), salt = PRF(TGK, label
    with 0x39A2C14B). Group call: TGK = GMK, CS-ID 4, CSB ID = the sender's GUK-ID. CSK: TGK = CSK, CS-ID 6,
    CSB ID = the CSK-ID. The default salt length 12 is for AEAD_AES_128_GCM (TS 33.180's default); AES-CM
    profiles use 14. The CSB ID's purpose tag is not checked (a published CSK vector's key ID carries tag 1).
    """
    if not tgk:
        raise ValueError("TGK must not be empty")
    if not 0 <= cs_id <= 0xFF:
        raise ValueError("CS-ID must fit in one octet")
    if len(csb_id) != 4:
        raise ValueError("CSB ID must be 4 octets")
    if not 0 < len(rand) <= 0xFF:  # the RAND payload carries a 1-octet length
        raise ValueError("RAND must be 1 to 255 octets")
    if key_length <= 0 or salt_length <= 0:
        raise ValueError("key and salt lengths must be positive")
    key = mikey_prf(tgk, _srtp_label(_SRTP_KEY_CONSTANT, cs_id, csb_id, rand), key_length)
    salt = mikey_prf(tgk, _srtp_label(_SRTP_SALT_CONSTANT, cs_id, csb_id, rand), salt_length)
    return key, salt


def srtp_mki(gmk_id: bytes, guk_id: bytes) -> bytes:
    """SRTP MKI of a group call = GMK-ID || GUK-ID (TS 33.180 §7.4.2): names the GMK and the sender."""
    _check_mki_ids(gmk_id, guk_id)
    return gmk_id + guk_id


def parse_srtp_mki(mki: bytes) -> tuple[bytes, bytes]:
    """Split a group-call SRTP MKI into (GMK-ID, GUK-ID); ValueError if it cannot be one."""
    if len(mki) != SRTP_MKI_LENGTH:
        raise ValueError(f"SRTP MKI must be {SRTP_MKI_LENGTH} octets, got {len(mki)}")
    gmk_id, guk = mki[:KEY_ID_LENGTH], mki[KEY_ID_LENGTH:]
    _check_mki_ids(gmk_id, guk)
    return gmk_id, guk


def _check_mki_ids(gmk_id: bytes, guk: bytes) -> None:
    gmk_value = _check_key_id(gmk_id, "GMK-ID")
    guk_value = _check_key_id(guk, "GUK-ID")
    if gmk_value >> _PURPOSE_SHIFT != KeyPurpose.GMK:
        raise ValueError("GMK-ID does not carry the GMK purpose tag")
    if guk_value >> _PURPOSE_SHIFT != KeyPurpose.GMK:
        raise ValueError("GUK-ID does not carry the GMK purpose tag")


@dataclass(frozen=True)
class SrtpKeys:
    """SRTP keying material of one sender in a group call."""

    master_key: bytes
    master_salt: bytes
    mki: bytes

    @property
    def key_and_salt(self) -> bytes:
        """master key || master salt, the form SRTP libraries (libsrtp) take."""
        return self.master_key + self.master_salt


def group_srtp_keys(
    gmk: bytes, gmk_id: bytes, guk_id: bytes, rand: bytes, key_length: int = 16, salt_length: int = 12
) -> SrtpKeys:
    """SRTP keys and MKI of the sender whose GUK-ID is ``guk_id`` in a group call keyed by ``gmk`` (§7.4.2).

    ``rand`` is the RAND of the GMK's I_MESSAGE.
    """
    mki = srtp_mki(gmk_id, guk_id)
    key, salt = srtp_master_key_and_salt(gmk, CsId.GROUP_CALL, guk_id, rand, key_length, salt_length)
    return SrtpKeys(master_key=key, master_salt=salt, mki=mki)
