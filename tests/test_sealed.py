"""Passphrase-sealed blobs: round trip, wrong passphrase, tampering, label binding."""

from __future__ import annotations

import json

import pytest

from ptt.sealed import SealError, is_sealed, seal, unseal

COST = 2**10  # tests only: the default cost is 2**15


def test_round_trip_and_label() -> None:
    blob = seal(b"secret", b"pass", label="keystore", cost=COST)
    assert is_sealed(blob)
    assert b"secret" not in blob
    assert unseal(blob, b"pass", label="keystore") == b"secret"
    with pytest.raises(SealError):
        unseal(blob, b"pass", label="master-secrets")


def test_wrong_passphrase_and_tampering() -> None:
    blob = seal(b"secret", b"pass", cost=COST)
    with pytest.raises(SealError, match="wrong passphrase"):
        unseal(blob, b"Pass")
    document = json.loads(blob)
    for field in ("ciphertext", "nonce", "salt"):
        changed = json.loads(blob)
        holder = changed["kdf"] if field == "salt" else changed
        value = bytearray.fromhex(holder[field])
        value[0] ^= 1
        holder[field] = value.hex()
        with pytest.raises(SealError):
            unseal(json.dumps(changed).encode(), b"pass")
    with pytest.raises(SealError):
        unseal(json.dumps({**document, "kdf": {**document["kdf"], "n": 2**11}}).encode(), b"pass")


@pytest.mark.parametrize("data", [b"", b"{}", b"[]", b"not json", json.dumps({"format": "ptt-sealed-1"}).encode()])
def test_malformed(data: bytes) -> None:
    with pytest.raises(SealError):
        unseal(data, b"pass")


def test_empty_passphrase_refused() -> None:
    with pytest.raises(SealError):
        seal(b"x", b"")
