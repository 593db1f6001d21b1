"""3GPP key parameters: the GENERAL-EXT type 7 payload of a TS 33.180 I_MESSAGE (§E.6).

The key parameters (key type, status, activation/expiry time, text, MC group IDs) travel protected in the
MCData "protected payload" format of TS 33.180 §8.5.4::

    message type (1) = 0x43 | date-time (5) | payload ID (4) | payload sequence number (1)
    | payload algorithm (1) | IV (16) | DPPK-ID (4) | payload type (1) | ciphertext length (2)
    | ciphertext (AES-128-GCM output || 16-octet tag)

The AEAD key is the last 16 octets of KDF(K, FC 0x53, P0 = DPPK-ID) (TS 33.220 KDF) where K is the key
being distributed; the associated data is the first 12 octets, the IV and the DPPK-ID. A vendor's older "IWF"
form carries the plaintext structure unprotected, with the key type off by one (1 = GMK); it is parsed as
``LegacyKeyParameters``.

Everything keeps enough detail (optional blocks, unknown values) that parse → bytes is byte-identical.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from enum import IntFlag
from typing import Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ptt.kdf import kdf_3gpp
from ptt.mikey.errors import KeyParametersError
from ptt.mikey.wire import Reader, field, known

# The key type field uses the purpose numbering of the key ID's top four bits (TS 33.180 §E.6, F.1.3).
from ptt.ts33180 import KeyPurpose as KeyType

KEY_PARAMETERS_EXT_TYPE = 7  # GENERAL-EXT type "3GPP key parameters"
PROTECTED_MESSAGE_TYPE = 0x43  # the MCData message type used for the protected form
AEAD_AES_128_GCM = 1  # payload algorithm
KEY_PARAMETERS_PAYLOAD_TYPE = 0  # payload type of the protected form (not covered by the AEAD)
DPPK_FC = 0x53  # TS 33.220 KDF function code for the key-parameter protection key
IV_LEN = 16
TAG_LEN = 16


class KeyStatus(IntFlag):
    """Bits of the 4-octet status field."""

    NOT_REVOKED = 0x1
    SHARED_WITH_GATEWAY = 0x2


@dataclass(frozen=True, slots=True)
class GroupId:
    """One MC group ID entry of the key parameters: IEI (1) | length (2) | data."""

    iei: int
    data: bytes

    def __bytes__(self) -> bytes:
        return field(self.iei, 1, "group ID IEI") + field(len(self.data), 2, "group ID length") + self.data


@dataclass(frozen=True, slots=True)
class KeyParameters:
    """The plaintext key parameters.

    ``group_ids`` is None when the optional MC group IDs block is absent, and a (possibly empty) tuple when
    present: the GMK vector carries the block with zero IDs, the CSK/PCK vectors omit it.
    """

    key_type: int
    status: int = KeyStatus.NOT_REVOKED
    activation_time: int = 0  # 5-octet date-time
    expiry_time: int = 0  # 5-octet date-time
    text: bytes = b""
    group_ids: tuple[GroupId, ...] | None = None

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Parse the whole of ``data`` (no trailing octets allowed)."""
        c = Reader(data, 0, "key parameters", KeyParametersError)
        key_type = c.uint(1, "key type")
        status = c.uint(4, "status")
        activation = c.uint(5, "activation time")
        expiry = c.uint(5, "expiry time")
        text = c.take(c.uint(2, "text length"), "text")
        group_ids: tuple[GroupId, ...] | None = None
        if c.pos < len(data):
            block = Reader(
                c.take(c.uint(2, "group IDs block length"), "group IDs block"), 0, "MC group IDs", KeyParametersError
            )
            count = block.uint(1, "number of group IDs")
            entries = []
            for _ in range(count):
                iei = block.uint(1, "group ID IEI")
                entries.append(GroupId(iei, block.take(block.uint(2, "group ID length"), "group ID")))
            block.done()
            group_ids = tuple(entries)
        c.done()
        return cls(known(KeyType, key_type), status, activation, expiry, text, group_ids)

    def __bytes__(self) -> bytes:
        out = (
            field(self.key_type, 1, "key type")
            + field(self.status, 4, "status")
            + field(self.activation_time, 5, "activation time")
            + field(self.expiry_time, 5, "expiry time")
            + field(len(self.text), 2, "text length")
            + self.text
        )
        if self.group_ids is not None:
            block = field(len(self.group_ids), 1, "number of group IDs") + b"".join(map(bytes, self.group_ids))
            out += field(len(block), 2, "group IDs block length") + block
        return out


@dataclass(frozen=True, slots=True)
class LegacyKeyParameters:
    """The older unprotected form: the plaintext structure directly, key type counted from 1 (1 = GMK).

    ``raw`` holds the fields exactly as on the wire; ``to_key_parameters`` gives the current numbering.
    """

    raw: KeyParameters

    @classmethod
    def parse(cls, data: bytes) -> Self:
        raw = KeyParameters.parse(data)
        return cls(replace(raw, key_type=int(raw.key_type)))

    def __bytes__(self) -> bytes:
        return bytes(self.raw)

    def to_key_parameters(self) -> KeyParameters:
        if self.raw.key_type == 0:
            raise KeyParametersError("legacy key parameters: key type 0 is not defined in the legacy numbering")
        return replace(self.raw, key_type=known(KeyType, self.raw.key_type - 1))


@dataclass(frozen=True, slots=True)
class ProtectedKeyParameters:
    """The protected form (TS 33.180 §8.5.4 layout); ``ciphertext`` includes the 16-octet GCM tag."""

    message_type: int
    date_time: int
    payload_id: int
    payload_sequence: int
    payload_algorithm: int
    iv: bytes
    dppk_id: int
    payload_type: int
    ciphertext: bytes

    @classmethod
    def parse(cls, data: bytes) -> Self:
        c = Reader(data, 0, "protected key parameters", KeyParametersError)
        message_type = c.uint(1, "message type")
        if message_type != PROTECTED_MESSAGE_TYPE:
            raise KeyParametersError(f"protected key parameters: message type {message_type:#04x}, expected 0x43")
        date_time = c.uint(5, "date-time")
        payload_id = c.uint(4, "payload ID")
        sequence = c.uint(1, "payload sequence number")
        algorithm = c.uint(1, "payload algorithm")
        iv = c.take(IV_LEN, "IV")
        dppk_id = c.uint(4, "DPPK-ID")
        payload_type = c.uint(1, "payload type")
        ciphertext = c.take(c.uint(2, "ciphertext length"), "ciphertext")
        c.done()
        return cls(message_type, date_time, payload_id, sequence, algorithm, iv, dppk_id, payload_type, ciphertext)

    def _header(self) -> bytes:
        return (
            field(self.message_type, 1, "message type")
            + field(self.date_time, 5, "date-time")
            + field(self.payload_id, 4, "payload ID")
            + field(self.payload_sequence, 1, "payload sequence number")
            + field(self.payload_algorithm, 1, "payload algorithm")
        )

    @property
    def associated_data(self) -> bytes:
        """AEAD associated data: message type .. payload algorithm (12) || IV (16) || DPPK-ID (4)."""
        return self._header() + self.iv + field(self.dppk_id, 4, "DPPK-ID")

    def __bytes__(self) -> bytes:
        if len(self.iv) != IV_LEN:
            raise ValueError(f"IV must be {IV_LEN} octets, got {len(self.iv)}")
        return (
            self.associated_data
            + field(self.payload_type, 1, "payload type")
            + field(len(self.ciphertext), 2, "ciphertext length")
            + self.ciphertext
        )


def parse_key_parameters_ext(data: bytes) -> ProtectedKeyParameters | LegacyKeyParameters:
    """Parse GENERAL-EXT type 7 data: the protected form starts with 0x43, anything else is legacy."""
    if data[:1] == bytes([PROTECTED_MESSAGE_TYPE]):
        return ProtectedKeyParameters.parse(data)
    return LegacyKeyParameters.parse(data)


def derive_protection_key(key: bytes, dppk_id: int) -> bytes:
    """AES-128 key protecting the parameters: last 16 octets of KDF(key, 0x53, DPPK-ID)."""
    return kdf_3gpp(key, DPPK_FC, field(dppk_id, 4, "DPPK-ID"))[-16:]


def protect(
    params: KeyParameters,
    key: bytes,
    dppk_id: int,
    *,
    iv: bytes | None = None,
    date_time: int = 0,
    payload_id: int = 0,
    payload_sequence: int = 0,
) -> ProtectedKeyParameters:
    """Encrypt ``params`` under ``key`` (the GMK/CSK/PCK being distributed); random 16-octet IV by default."""
    if iv is None:
        iv = os.urandom(IV_LEN)
    if len(iv) != IV_LEN:
        raise ValueError(f"IV must be {IV_LEN} octets, got {len(iv)}")
    unsealed = ProtectedKeyParameters(
        PROTECTED_MESSAGE_TYPE,
        date_time,
        payload_id,
        payload_sequence,
        AEAD_AES_128_GCM,
        iv,
        dppk_id,
        KEY_PARAMETERS_PAYLOAD_TYPE,
        b"",
    )
    aead = AESGCM(derive_protection_key(key, dppk_id))
    return replace(unsealed, ciphertext=aead.encrypt(iv, bytes(params), unsealed.associated_data))


def unprotect(protected: ProtectedKeyParameters, key: bytes) -> KeyParameters:
    """Authenticate and decrypt; KeyParametersError on a wrong key, tampering or malformed plaintext."""
    if protected.payload_algorithm != AEAD_AES_128_GCM:
        raise KeyParametersError(f"unsupported key parameters payload algorithm {protected.payload_algorithm}")
    if protected.payload_type != KEY_PARAMETERS_PAYLOAD_TYPE:
        # The payload type octet is outside the AEAD associated data: insist on the one value we know.
        raise KeyParametersError(f"unsupported key parameters payload type {protected.payload_type}")
    if len(protected.ciphertext) < TAG_LEN:
        raise KeyParametersError("protected key parameters: ciphertext shorter than the GCM tag")
    aead = AESGCM(derive_protection_key(key, protected.dppk_id))
    try:
        plaintext = aead.decrypt(protected.iv, protected.ciphertext, protected.associated_data)
    except InvalidTag:
        raise KeyParametersError("key parameters: authentication failed (wrong key or tampered)") from None
    return KeyParameters.parse(plaintext)


__all__ = [
    "AEAD_AES_128_GCM",
    "KEY_PARAMETERS_EXT_TYPE",
    "GroupId",
    "KeyParameters",
    "KeyStatus",
    "KeyType",
    "LegacyKeyParameters",
    "ProtectedKeyParameters",
    "derive_protection_key",
    "parse_key_parameters_ext",
    "protect",
    "unprotect",
]
