"""Precomputed key sets: sealing one identity's keys of one period for the store, and opening them again.

``ptt-kms issue`` (``server.kms.bulk``) derives the key sets of a coming period ahead of its rollover and keeps them
in the store's ``precomputed_keys`` table; keyprov (``server.kms.service``) serves a precomputed set when there is
one and derives otherwise. The keys are the same either way (derivation is deterministic, ``ptt.crypto.kms``).

Sealing: AES-256-GCM, a random 96-bit nonce per row, the plaintext SSK ‖ PVT ‖ RSK, the associated data binding
the KMS URI, the identity, the period number and its UID, so a row moved to another identity or period, or read
after the key period settings changed, does not open (and keyprov derives instead). The key is derived once per
process with HKDF-SHA-256 from the master secrets (KSAK ‖ z): whoever can read the master secrets can derive every
key anyway, so this key adds no secret to keep, works whether the secrets file is sealed under a passphrase or not,
and a domain re-initialised with new master secrets simply stops opening the old rows. The database alone (a
backup, a PostgreSQL replica) gives no keys.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ptt.crypto.kms import MasterSecrets, UserKeyMaterial, derive_user_keys
from ptt.ts33180 import uid

__all__ = ["SEALED_LENGTH", "IssuanceDomain", "KeySetSealer"]

_SSK, _PVT, _RSK = 32, 65, 257
_NONCE = 12
SEALED_LENGTH = _NONCE + _SSK + _PVT + _RSK + 16
"""Octets of one sealed key set: nonce, ciphertext, GCM tag."""
_LABEL = b"ptt-kms precomputed key set v1"


@dataclass(frozen=True)
class IssuanceDomain:
    """What names an identity's UID in a period: the KMS URI and the key period scheme."""

    kms_uri: str
    key_period: int
    key_period_offset: int

    def user_id(self, identity: str, period: int) -> bytes:
        return uid(identity, self.kms_uri, self.key_period, self.key_period_offset, period)


class KeySetSealer:
    """Seals and opens precomputed key sets of one domain under the key derived from its master secrets."""

    def __init__(self, master: MasterSecrets, domain: IssuanceDomain) -> None:
        self.master = master
        self.domain = domain
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=_LABEL + b"|" + domain.kms_uri.encode()
        ).derive(master.ksak + master.z_secret)
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return f"KeySetSealer({self.domain.kms_uri})"

    def _associated_data(self, identity: str, period: int, user_id: bytes) -> bytes:
        fields = (_LABEL, self.domain.kms_uri.encode(), identity.encode(), str(period).encode(), user_id)
        return b"\0".join(len(f).to_bytes(2, "big") + f for f in fields)

    def derive_sealed(self, identity: str, period: int) -> tuple[bytes, bytes]:
        """(UID, sealed key set) of ``identity`` for ``period``, derived now."""
        user_id = self.domain.user_id(identity, period)
        keys = derive_user_keys(user_id, self.master)
        return user_id, self.seal(identity, period, keys)

    def seal(self, identity: str, period: int, keys: UserKeyMaterial) -> bytes:
        nonce = os.urandom(_NONCE)
        plaintext = keys.ssk + keys.pvt + keys.rsk
        return nonce + self._aead.encrypt(nonce, plaintext, self._associated_data(identity, period, keys.identifier))

    def open(self, identity: str, period: int, user_id: bytes, sealed: bytes) -> UserKeyMaterial | None:
        """The key set if ``sealed`` opens for exactly this identity, period and UID (the UID this KMS computes
        now); None otherwise (altered, sealed under other master secrets, or another period scheme)."""
        if len(sealed) != SEALED_LENGTH or user_id != self.domain.user_id(identity, period):
            return None
        try:
            plain = self._aead.decrypt(
                sealed[:_NONCE], sealed[_NONCE:], self._associated_data(identity, period, user_id)
            )
        except InvalidTag:
            return None
        ssk, pvt, rsk = plain[:_SSK], plain[_SSK : _SSK + _PVT], plain[_SSK + _PVT :]
        return UserKeyMaterial(identifier=user_id, ssk=ssk, pvt=pvt, rsk=rsk)
