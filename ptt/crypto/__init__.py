"""Identity-based cryptography for MIKEY-SAKKE: ECCSI (RFC 6507) and SAKKE (RFC 6508).

Public API (octet strings at the boundary, points as 04||x||y, scalars fixed-length big-endian):

* ``ptt.crypto.eccsi``: ``sign``, ``verify``, ``validate_signing_key``
* ``ptt.crypto.sakke``: ``encapsulate``, ``decapsulate``, ``validate_rsk``
* ``ptt.crypto.kms``: KMS-side master key generation and per-user key issuance
"""

from __future__ import annotations


class CryptoError(ValueError):
    """Base class of the errors raised by ptt.crypto."""


class DecryptionError(CryptoError):
    """SAKKE decapsulation failed: malformed data, a point off the curve, a failed check or a wrong key."""


class InvalidKey(CryptoError):
    """A key, point or scalar given to ptt.crypto is malformed or fails validation."""


__all__ = ["CryptoError", "DecryptionError", "InvalidKey"]
