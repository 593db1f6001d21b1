"""KMS-side key generation and issuance (RFC 6507 §5.1.1, RFC 6508 §6.1.1).

The KMS holds two master secrets: KSAK (ECCSI; public KPAK = [KSAK]G) and z (SAKKE; public Z = [z]P).
For each identifier it issues an ECCSI signing key (SSK, PVT) and a SAKKE receiver secret key (RSK).
All values are octet strings: scalars 32 (P-256) or 128 (SAKKE) octets big-endian, points 04 || x || y.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import gmpy2
from gmpy2 import mpz

from ptt.crypto import InvalidKey
from ptt.crypto.eccsi import _g_table, hash_hs
from ptt.crypto.params import P256, SAKKE_CURVE, SAKKE_Q
from ptt.crypto.sakke import _p_table


@dataclass(frozen=True, repr=False)
class MasterSecrets:
    """A KMS domain's master secrets and their public keys. ``repr`` never shows the secrets."""

    ksak: bytes  # 32 octets
    kpak: bytes  # 65 octets
    z_secret: bytes  # 128 octets
    z_public: bytes  # 257 octets

    def __repr__(self) -> str:
        return f"MasterSecrets(kpak={self.kpak[:9].hex()}…, z_public={self.z_public[:9].hex()}…)"


@dataclass(frozen=True, repr=False)
class UserKeyMaterial:
    """One identifier's keys for one key period."""

    identifier: bytes
    ssk: bytes
    pvt: bytes
    rsk: bytes

    def __repr__(self) -> str:
        return f"UserKeyMaterial(identifier={self.identifier.hex()}, pvt={self.pvt[:9].hex()}…)"


def _random_scalar(q: mpz) -> mpz:
    return mpz(secrets.randbelow(int(q) - 1) + 1)


def generate_master_secrets(*, ksak: int | None = None, z: int | None = None) -> MasterSecrets:
    """Fresh KSAK and z (injectable only for test vectors)."""
    k = mpz(ksak) if ksak is not None else _random_scalar(P256.q)
    zz = mpz(z) if z is not None else _random_scalar(SAKKE_Q)
    if not (0 < k < P256.q and 0 < zz < SAKKE_Q):
        raise InvalidKey("master secret out of range")
    kpak = P256.encode(_g_table().mul(k))
    z_public = SAKKE_CURVE.encode(_p_table().mul(zz))
    return MasterSecrets(
        ksak=int(k).to_bytes(32, "big"),
        kpak=kpak,
        z_secret=int(zz).to_bytes(SAKKE_CURVE.field_bytes, "big"),
        z_public=z_public,
    )


def issue_signing_key(identifier: bytes, master: MasterSecrets, *, v: int | None = None) -> tuple[bytes, bytes]:
    """RFC 6507 §5.1.1: (SSK, PVT) for ``identifier``; ``v`` injectable only for test vectors."""
    ksak = mpz(int.from_bytes(master.ksak, "big"))
    q = P256.q
    while True:
        vv = mpz(v) if v is not None else _random_scalar(q)
        pvt_point = _g_table().mul(vv)
        if pvt_point is None:
            raise InvalidKey("v gives the point at infinity")
        pvt = P256.encode(pvt_point)
        hs = hash_hs(identifier, pvt, master.kpak)
        ssk = (ksak + hs * vv) % q
        if ssk != 0:
            return int(ssk).to_bytes(32, "big"), pvt
        if v is not None:
            raise InvalidKey("the given v gives SSK = 0")


def issue_rsk(identifier: bytes, master: MasterSecrets) -> bytes:
    """RFC 6508 §6.1.1: RSK = [(b + z)^-1 mod q]P, b the identifier read as an integer."""
    if not identifier:
        raise InvalidKey("identifier must not be empty")
    b = mpz(int.from_bytes(identifier, "big"))
    z = mpz(int.from_bytes(master.z_secret, "big"))
    t = (b + z) % SAKKE_Q
    if t == 0:
        raise InvalidKey("identifier collides with the master secret; no key can be issued")
    return SAKKE_CURVE.encode(_p_table().mul(gmpy2.invert(t, SAKKE_Q)))


def issue_user_keys(identifier: bytes, master: MasterSecrets) -> UserKeyMaterial:
    ssk, pvt = issue_signing_key(identifier, master)
    return UserKeyMaterial(identifier=identifier, ssk=ssk, pvt=pvt, rsk=issue_rsk(identifier, master))


def _derived_v(identifier: bytes, master: MasterSecrets) -> mpz:
    # v from the KSAK and the identifier (in the manner of RFC 6979): re-issuing keys for the same UID gives the
    # same SSK/PVT, so a KMS needs no key store and a restart or a repeated request changes nothing.
    key = hmac.new(master.ksak, b"ptt ECCSI v derivation", hashlib.sha256).digest()
    wide = b"".join(hmac.new(key, bytes([i]) + identifier, hashlib.sha256).digest() for i in range(2))
    return mpz(int.from_bytes(wide, "big")) % (P256.q - 1) + 1


def derive_user_keys(identifier: bytes, master: MasterSecrets) -> UserKeyMaterial:
    """Like ``issue_user_keys`` but deterministic for an identifier (the RSK always is; v is derived)."""
    ssk, pvt = issue_signing_key(identifier, master, v=int(_derived_v(identifier, master)))
    return UserKeyMaterial(identifier=identifier, ssk=ssk, pvt=pvt, rsk=issue_rsk(identifier, master))
