"""Key derivation functions shared by MIKEY and 3GPP TS 33.180.

* ``mikey_prf``: the MIKEY PRF of RFC 3830 §4.1.2 (the P-function) with HMAC-SHA-256 as in RFC 6043 §6.1
  (MIKEY PRF identifier 1, "PRF-HMAC-SHA-256"), which TS 33.180 §7.4.2 uses for SRTP keys.
* ``kdf_3gpp``: the generic key derivation function of 3GPP TS 33.220 Annex B.2 (HMAC-SHA-256 over
  FC || P0 || L0 || P1 || L1 ...), which TS 33.180 uses for key-parameter protection and other derived keys.
"""

from __future__ import annotations

import hashlib
import hmac

_BLOCK_BITS = 256  # RFC 6043: inkey is split in 256-bit blocks, each output block is 256 bits


def _p_function(secret: bytes, label: bytes, blocks: int) -> bytes:
    # P(s, label, m) = HMAC(s, A_1 || label) || ... || HMAC(s, A_m || label), A_0 = label, A_i = HMAC(s, A_{i-1})
    out = bytearray()
    a = label
    for _ in range(blocks):
        a = hmac.new(secret, a, hashlib.sha256).digest()
        out += hmac.new(secret, a + label, hashlib.sha256).digest()
    return bytes(out)


def mikey_prf(inkey: bytes, label: bytes, length: int) -> bytes:
    """PRF(inkey, label) truncated to ``length`` octets (RFC 3830 §4.1.2 with HMAC-SHA-256)."""
    if length <= 0:
        raise ValueError("PRF output length must be positive")
    if not inkey:
        raise ValueError("PRF input key must not be empty")
    blocks = -(-length * 8 // _BLOCK_BITS)
    chunk = _BLOCK_BITS // 8
    result = bytes(blocks * chunk)
    for i in range(0, len(inkey), chunk):
        part = _p_function(inkey[i : i + chunk], label, blocks)
        result = bytes(x ^ y for x, y in zip(result, part, strict=True))
    return result[:length]


def kdf_3gpp(key: bytes, fc: int, *params: bytes) -> bytes:
    """TS 33.220 B.2 KDF: HMAC-SHA-256(key, FC || P0 || L0 || ...), each Li the 2-octet length of Pi."""
    if not 0 <= fc <= 0xFF:
        raise ValueError("FC must be one octet")
    s = bytearray([fc])
    for p in params:
        if len(p) > 0xFFFF:
            raise ValueError("KDF parameter longer than 65535 octets")
        s += p + len(p).to_bytes(2, "big")
    return hmac.new(key, bytes(s), hashlib.sha256).digest()
