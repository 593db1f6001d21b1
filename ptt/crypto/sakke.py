"""SAKKE (RFC 6508) with parameter set 1 (RFC 6509): SSVs of n = 128 bits.

Encapsulated data is R_(b,S) || H (257 + 16 = 273 octets). The identifier b is an octet string read as a
big-endian integer (in TS 33.180 the 32-octet UID); Z is the KMS public key (257 octets, 04 || x || y).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from functools import lru_cache

from gmpy2 import mpz

from ptt.crypto import DecryptionError, InvalidKey
from ptt.crypto.ec import FixedBase, Jacobian
from ptt.crypto.pairing import g_power_table, miller_lines, to_representative
from ptt.crypto.params import SAKKE_CURVE, SAKKE_G, SAKKE_N_BYTES, SAKKE_Q

_CURVE = SAKKE_CURVE
_FIELD_BYTES = _CURVE.field_bytes  # 128
POINT_LENGTH = _CURVE.point_bytes  # 257
ENCAPSULATED_LENGTH = POINT_LENGTH + SAKKE_N_BYTES  # 273
_Q_BLOCKS = -(-int(SAKKE_Q).bit_length() // 256)  # 4


def hash_to_integer_range(s: bytes, n: int | mpz, blocks: int | None = None) -> mpz:
    """HashToIntegerRange(s, n, SHA-256) of RFC 6508 §5.1: v_i = H(h_i || H(s)), h_i = H(h_{i-1})."""
    if blocks is None:
        blocks = max(1, -(-(int(n) - 1).bit_length() // 256))
    a = hashlib.sha256(s).digest()
    h = bytes(32)
    v = bytearray()
    for _ in range(blocks):
        h = hashlib.sha256(h).digest()
        v += hashlib.sha256(h + a).digest()
    return mpz(int.from_bytes(v, "big")) % n


def _mask(w: mpz) -> bytes:
    return int(hash_to_integer_range(int(w).to_bytes(_FIELD_BYTES, "big"), 1 << 128, 1)).to_bytes(16, "big")


@dataclass(frozen=True, eq=False)
class _Domain:
    z_table: FixedBase


@lru_cache(maxsize=1)
def _p_table() -> FixedBase:
    return FixedBase(_CURVE, _CURVE.generator)


@lru_cache(maxsize=4)  # ~13 MB each (P and Z tables are 129 windows of 128 points): KMS domains in use
def _domain(z: bytes) -> _Domain:
    try:
        point = _CURVE.decode(z)
    except ValueError as exc:
        raise InvalidKey(f"Z: {exc}") from None
    if not _CURVE.in_subgroup(point):
        raise InvalidKey("Z: not in the order-q subgroup")
    return _Domain(FixedBase(_CURVE, point))


def _identifier_int(identifier: bytes) -> mpz:
    if not isinstance(identifier, bytes | bytearray) or not identifier:
        raise InvalidKey("identifier must be a non-empty octet string")
    return mpz(int.from_bytes(identifier, "big"))


def _r_times_bp_plus_z(r: mpz, b: mpz, domain: _Domain) -> Jacobian:
    # [r]([b]P + Z) = [r*b]P + [r]Z, both from fixed-base tables
    return _CURVE._add(_p_table().mul_jacobian(r * b % SAKKE_Q), domain.z_table.mul_jacobian(r))


def encapsulate(ssv: bytes, identifier: bytes, z: bytes) -> bytes:
    """RFC 6508 §6.2.1: encrypt the 16-octet SSV to ``identifier``; returns R_(b,S) || H (273 octets)."""
    if len(ssv) != SAKKE_N_BYTES:
        raise ValueError(f"SSV must be {SAKKE_N_BYTES} octets")
    ssv = bytes(ssv)
    identifier = bytes(identifier)
    b = _identifier_int(identifier)
    domain = _domain(bytes(z))
    r = hash_to_integer_range(ssv + identifier, SAKKE_Q, _Q_BLOCKS)
    R = _CURVE.to_affine(_r_times_bp_plus_z(r, b, domain))
    if R is None:  # only if r == 0 or b + z == 0: no usable key for this identifier
        raise InvalidKey("identifier cannot be encrypted to in this domain")
    w = to_representative(g_power_table().power(r))
    h = bytes(x ^ y for x, y in zip(ssv, _mask(w), strict=True))
    return _CURVE.encode(R) + h


def decapsulate(encapsulated: bytes, identifier: bytes, rsk: bytes, z: bytes) -> bytes:
    """RFC 6508 §6.2.2: recover the SSV, checking R_(b,S) = [r]([b]P + Z). Raises DecryptionError."""
    try:
        return _decapsulate(bytes(encapsulated), bytes(identifier), bytes(rsk), bytes(z))
    except DecryptionError:
        raise
    except (ValueError, TypeError, ZeroDivisionError) as exc:
        raise DecryptionError(f"SAKKE decapsulation failed: {exc}") from None


def _decapsulate(encapsulated: bytes, identifier: bytes, rsk: bytes, z: bytes) -> bytes:
    if len(encapsulated) != ENCAPSULATED_LENGTH:
        raise DecryptionError(f"encapsulated data must be {ENCAPSULATED_LENGTH} octets")
    R = _CURVE.decode(encapsulated[:POINT_LENGTH])
    h = encapsulated[POINT_LENGTH:]
    b = _identifier_int(identifier)
    domain = _domain(z)
    lines = miller_lines(rsk)  # decodes and checks RSK is on the curve
    w = to_representative(lines.evaluate(*R))
    ssv = bytes(x ^ y for x, y in zip(h, _mask(w), strict=True))
    r = hash_to_integer_range(ssv + identifier, SAKKE_Q, _Q_BLOCKS)
    X, Y, Zj = _r_times_bp_plus_z(r, b, domain)
    p = _CURVE.p
    z2 = Zj * Zj % p
    if Zj == 0 or (X - R[0] * z2) % p or (Y - R[1] * z2 * Zj) % p:
        raise DecryptionError("SAKKE check failed: R does not match the SSV (wrong key or tampered data)")
    return ssv


def validate_rsk(identifier: bytes, rsk: bytes, z: bytes) -> bool:
    """RFC 6508 §6.1.2: <[b]P + Z, RSK> = g. False for any malformed input or wrong key."""
    try:
        b = _identifier_int(bytes(identifier))
        domain = _domain(bytes(z))
        rsk_point = _CURVE.decode(bytes(rsk))
        if not _CURVE.in_subgroup(rsk_point):
            return False
        point = _CURVE.to_affine(_CURVE._add(_p_table().mul_jacobian(b), domain.z_table.mul_jacobian(1)))
        if point is None:
            return False
        w = to_representative(miller_lines(bytes(rsk)).evaluate(*point))
        return hmac.compare_digest(int(w).to_bytes(_FIELD_BYTES, "big"), int(SAKKE_G).to_bytes(_FIELD_BYTES, "big"))
    except (ValueError, TypeError, ZeroDivisionError):
        return False
