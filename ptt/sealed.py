"""Passphrase-sealed secrets at rest (KMS master secrets, client keystores).

``seal_fields`` gives {"kdf": {"name": "scrypt", "n", "r", "p", "salt"}, "nonce", "ciphertext"} (hex): key =
scrypt(passphrase, salt) (32 octets), AES-256-GCM whose associated data binds the KDF parameters and the
caller's own context, so a changed cost parameter or header is detected like a changed ciphertext. ``seal``
wraps that in a self-describing JSON blob with a label.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

FORMAT = "ptt-sealed-1"
DEFAULT_COST = 2**15
_R, _P = 8, 1
_MAX_N, _MAX_R, _MAX_P = 2**20, 32, 16


class SealError(ValueError):
    """Sealed data is malformed, or the passphrase is wrong, or the data or its context was altered."""


def scrypt_key(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)


def _kdf_context(n: int, r: int, p: int, salt: bytes, associated_data: bytes) -> bytes:
    return f"scrypt|{n}|{r}|{p}|{salt.hex()}|".encode() + associated_data


def seal_fields(
    plaintext: bytes, passphrase: bytes, *, associated_data: bytes = b"", cost: int = DEFAULT_COST
) -> dict[str, Any]:
    if not passphrase:
        raise SealError("empty passphrase")
    salt = os.urandom(16)
    nonce = os.urandom(12)
    key = scrypt_key(passphrase, salt, cost, _R, _P)
    ciphertext = AESGCM(key).encrypt(nonce, plaintext, _kdf_context(cost, _R, _P, salt, associated_data))
    return {
        "kdf": {"name": "scrypt", "n": cost, "r": _R, "p": _P, "salt": salt.hex()},
        "nonce": nonce.hex(),
        "ciphertext": ciphertext.hex(),
    }


def unseal_fields(fields: Mapping[str, Any], passphrase: bytes, *, associated_data: bytes = b"") -> bytes:
    try:
        kdf = fields["kdf"]
        if kdf.get("name") != "scrypt":
            raise SealError("unknown key derivation")
        n, r, p = (v if type(v) is int else 0 for v in (kdf.get("n"), kdf.get("r"), kdf.get("p")))
        if not (2 <= n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
            raise SealError(f"scrypt parameters out of range (n={n}, r={r}, p={p})")
        salt = bytes.fromhex(kdf["salt"])
        nonce = bytes.fromhex(fields["nonce"])
        ciphertext = bytes.fromhex(fields["ciphertext"])
        if len(nonce) != 12:
            raise SealError("malformed nonce")
    except SealError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SealError(f"malformed sealed data: {exc!r}") from None
    try:
        return AESGCM(scrypt_key(passphrase, salt, n, r, p)).decrypt(
            nonce, ciphertext, _kdf_context(n, r, p, salt, associated_data)
        )
    except InvalidTag:
        raise SealError("wrong passphrase, or the sealed data was altered") from None


def seal(plaintext: bytes, passphrase: bytes, *, label: str = "", cost: int = DEFAULT_COST) -> bytes:
    context = f"{FORMAT}|{label}".encode()
    document = {
        "format": FORMAT,
        "label": label,
        **seal_fields(plaintext, passphrase, associated_data=context, cost=cost),
    }
    return json.dumps(document, indent=1).encode()


def is_sealed(data: bytes) -> bool:
    try:
        document = json.loads(data)
    except ValueError:
        return False
    return isinstance(document, dict) and document.get("format") == FORMAT


def unseal(data: bytes, passphrase: bytes, *, label: str = "") -> bytes:
    try:
        document = json.loads(data)
    except ValueError:
        raise SealError("malformed sealed blob: not JSON") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SealError("not a sealed blob of a known format")
    if document.get("label", "") != label:
        raise SealError(f"sealed blob is a {document.get('label')!r}, expected {label!r}")
    return unseal_fields(document, passphrase, associated_data=f"{FORMAT}|{label}".encode())
