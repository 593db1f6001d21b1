"""Passphrase-sealed blobs for secrets at rest (KMS master secrets, client keystores).

Format: JSON {"format": "ptt-sealed-1", "kdf": "scrypt", "n", "r", "p", "salt", "nonce", "ciphertext"} (hex),
key = scrypt(passphrase, salt) (32 octets), AES-256-GCM with the header fields as associated data, so a
changed cost parameter or label is detected like a changed ciphertext.
"""

from __future__ import annotations

import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

FORMAT = "ptt-sealed-1"
DEFAULT_COST = 2**15


class SealError(ValueError):
    """A sealed blob is malformed, or the passphrase is wrong, or the blob was altered."""


def _key(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)


def _header(label: str, n: int, r: int, p: int, salt: bytes) -> bytes:
    return f"{FORMAT}|{label}|scrypt|{n}|{r}|{p}|{salt.hex()}".encode()


def seal(plaintext: bytes, passphrase: bytes, *, label: str = "", cost: int = DEFAULT_COST) -> bytes:
    if not passphrase:
        raise SealError("empty passphrase")
    salt = os.urandom(16)
    nonce = os.urandom(12)
    r, p = 8, 1
    ciphertext = AESGCM(_key(passphrase, salt, cost, r, p)).encrypt(nonce, plaintext, _header(label, cost, r, p, salt))
    document = {
        "format": FORMAT,
        "label": label,
        "kdf": "scrypt",
        "n": cost,
        "r": r,
        "p": p,
        "salt": salt.hex(),
        "nonce": nonce.hex(),
        "ciphertext": ciphertext.hex(),
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
        if document.get("format") != FORMAT or document.get("kdf") != "scrypt":
            raise SealError("not a sealed blob of a known format")
        n, r, p = int(document["n"]), int(document["r"]), int(document["p"])
        if not (2**10 <= n <= 2**20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
            raise SealError("sealed blob has out-of-range scrypt parameters")
        salt = bytes.fromhex(document["salt"])
        nonce = bytes.fromhex(document["nonce"])
        ciphertext = bytes.fromhex(document["ciphertext"])
        if document.get("label", "") != label:
            raise SealError(f"sealed blob is a {document.get('label')!r}, expected {label!r}")
    except SealError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SealError(f"malformed sealed blob: {exc}") from None
    try:
        return AESGCM(_key(passphrase, salt, n, r, p)).decrypt(nonce, ciphertext, _header(label, n, r, p, salt))
    except InvalidTag:
        raise SealError("wrong passphrase, or the sealed data was altered") from None
