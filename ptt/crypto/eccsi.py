"""ECCSI signatures (RFC 6507) on NIST P-256 with SHA-256 (N = 32).

A signature is r || s || PVT (129 octets). The identifier is the signer's octet string (in TS 33.180 the
32-octet UID of the key period); KPAK is the KMS's public authentication key (65 octets, 04 || x || y).
"""

from __future__ import annotations

import hashlib
import secrets
from functools import lru_cache

import gmpy2
from gmpy2 import mpz

from ptt.crypto import InvalidKey
from ptt.crypto.ec import FixedBase
from ptt.crypto.params import P256

N = 32
SIGNATURE_LENGTH = 2 * N + 1 + 2 * N  # r || s || PVT
_Q = P256.q
_G_BYTES = P256.encode(P256.generator)


@lru_cache(maxsize=1)
def _g_table() -> FixedBase:
    return FixedBase(P256, P256.generator)


@lru_cache(maxsize=8)  # ~0.25 MB each; one per KMS domain whose signatures are checked
def _kpak_table(kpak: bytes) -> FixedBase:
    try:
        return FixedBase(P256, P256.decode(kpak), width=6)
    except ValueError as exc:
        raise InvalidKey(f"KPAK: {exc}") from None


def _decode_point(data: bytes, what: str) -> tuple[mpz, mpz]:
    try:
        return P256.decode(data)
    except ValueError as exc:
        raise InvalidKey(f"{what}: {exc}") from None


def hash_hs(identifier: bytes, pvt: bytes, kpak: bytes) -> mpz:
    """HS = hash(G || KPAK || ID || PVT) read as an integer (RFC 6507 §5.1.1 step 3)."""
    digest = hashlib.sha256(_G_BYTES + kpak + identifier + pvt).digest()
    return mpz(int.from_bytes(digest, "big"))


def _hash_he(hs: mpz, r: mpz, message: bytes) -> mpz:
    digest = hashlib.sha256(int(hs).to_bytes(N, "big") + int(r).to_bytes(N, "big") + message).digest()
    return mpz(int.from_bytes(digest, "big"))


def _check_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    return bytes(value)


def sign(message: bytes, identifier: bytes, ssk: bytes, pvt: bytes, kpak: bytes, *, j: int | None = None) -> bytes:
    """Sign ``message`` as ``identifier`` (RFC 6507 §5.2.1). ``j`` is injectable only for test vectors."""
    message = _check_bytes(message, "message")
    identifier = _check_bytes(identifier, "identifier")
    if len(ssk) != N:
        raise InvalidKey(f"SSK must be {N} octets")
    if len(pvt) != 2 * N + 1 or len(kpak) != 2 * N + 1:
        raise InvalidKey("PVT and KPAK must be 65-octet uncompressed points")
    ssk_int = mpz(int.from_bytes(ssk, "big"))
    if not 0 < ssk_int < _Q:
        raise InvalidKey("SSK out of range")
    hs = hash_hs(identifier, bytes(pvt), bytes(kpak))
    table = _g_table()
    while True:
        jj = mpz(j) if j is not None else mpz(secrets.randbelow(int(_Q) - 1) + 1)
        if not 0 < jj < _Q:
            raise ValueError("j out of range")
        J = table.mul(jj)
        assert J is not None
        r = J[0]
        he = _hash_he(hs, r, message)
        t = (he + r * ssk_int) % _Q
        if t == 0:
            if j is not None:
                raise ValueError("the given j gives HE + r*SSK = 0; choose another")
            continue
        s = gmpy2.invert(t, _Q) * jj % _Q
        if s.bit_length() > 8 * N:  # never for P-256 (q < 2^256); kept for the RFC's step 6
            s = _Q - s
        return int(r).to_bytes(N, "big") + int(s).to_bytes(N, "big") + bytes(pvt)


def verify(message: bytes, signature: bytes, identifier: bytes, kpak: bytes) -> bool:
    """RFC 6507 §5.2.2. Returns False, never raises, for any malformed input or bad signature."""
    try:
        return _verify(bytes(message), bytes(signature), bytes(identifier), bytes(kpak))
    except (ValueError, TypeError, ZeroDivisionError):
        return False


def _verify(message: bytes, signature: bytes, identifier: bytes, kpak: bytes) -> bool:
    if len(signature) != SIGNATURE_LENGTH:
        return False
    r = mpz(int.from_bytes(signature[:N], "big"))
    s = mpz(int.from_bytes(signature[N : 2 * N], "big"))
    pvt_bytes = signature[2 * N :]
    if not (0 < r < P256.p and 0 < s < _Q):
        return False
    pvt = P256.decode(pvt_bytes)  # step 1: PVT on the curve (cofactor 1: also in the group)
    kpak_table = _kpak_table(kpak)
    hs = hash_hs(identifier, pvt_bytes, kpak)
    he = _hash_he(hs, r, message)
    # J = [s]([HE]G + [r]([HS]PVT + KPAK)) = [s*HE]G + [s*r]KPAK + [s*r*HS]PVT
    sr = s * r % _Q
    acc = P256._add(_g_table().mul_jacobian(s * he % _Q), kpak_table.mul_jacobian(sr))
    acc = P256._add(acc, P256._mul_jacobian(pvt, sr * hs % _Q))
    X, _, Z = acc
    if Z == 0:
        return False
    p = P256.p
    # Jx == r (mod p), without an inversion: X == r * Z^2
    return bool((X - r * Z * Z) % p == 0)


def validate_signing_key(identifier: bytes, ssk: bytes, pvt: bytes, kpak: bytes) -> bool:
    """RFC 6507 §5.1.2: PVT on the curve and KPAK = [SSK]G - [HS]PVT. False on any malformed input."""
    try:
        if len(ssk) != N:
            return False
        ssk_int = mpz(int.from_bytes(ssk, "big"))
        if not 0 < ssk_int < _Q:
            return False
        pvt_point = P256.decode(bytes(pvt))
        kpak_point = P256.decode(bytes(kpak))
        hs = hash_hs(bytes(identifier), bytes(pvt), bytes(kpak))
        acc = P256._add(_g_table().mul_jacobian(ssk_int), P256._mul_jacobian(pvt_point, _Q - hs % _Q))
        return P256.to_affine(acc) == kpak_point
    except (ValueError, TypeError):
        return False
