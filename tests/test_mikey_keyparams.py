"""3GPP key parameters (GENERAL-EXT type 7): the vendor vectors, AES-GCM protection, tampering, round trips."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from ptt.kdf import kdf_3gpp
from ptt.mikey.errors import KeyParametersError
from ptt.mikey.keyparams import (
    GroupId,
    KeyParameters,
    KeyStatus,
    KeyType,
    LegacyKeyParameters,
    ProtectedKeyParameters,
    derive_protection_key,
    parse_key_parameters_ext,
    protect,
    unprotect,
)
from ptt.mikey.message import MikeyMessage
from ptt.mikey.payloads import GeneralExt
from tests.vectorfiles import load

VECTORS: list[dict[str, Any]] = load("streamwide_imessage_decoded.json")["imessages"]
PROTECTED = [v for v in VECTORS if "legacy" not in v["name"]]
LEGACY = next(v for v in VECTORS if "legacy" in v["name"])

# Plaintexts recovered from the vectors (key type | status | activation | expiry | text length | text | groups).
PLAINTEXTS = {
    "GMK": "00 00000001 0000000000 0000000000 0000 0001 00",  # group IDs block present, zero IDs
    "CSK": "02 00000001 0000000000 0000000000 0000",
    "PCK": "01 00000001 0000000000 0000000000 0000",
}


def ext_data(vector: dict[str, Any]) -> bytes:
    ext = MikeyMessage.parse(bytes.fromhex(vector["imessage_hex"])).find(GeneralExt)
    assert ext is not None and ext.ext_type == 7
    return ext.data


def protected(vector: dict[str, Any]) -> ProtectedKeyParameters:
    parsed = parse_key_parameters_ext(ext_data(vector))
    assert isinstance(parsed, ProtectedKeyParameters)
    return parsed


@pytest.mark.parametrize("vector", PROTECTED, ids=[v["name"] for v in PROTECTED])
def test_vector_unprotect(vector: dict[str, Any]) -> None:
    key = bytes.fromhex(vector["key"])
    prot = protected(vector)
    assert bytes(prot) == ext_data(vector)
    assert (prot.message_type, prot.date_time, prot.payload_id, prot.payload_sequence) == (0x43, 1, 0, 0)
    assert (prot.payload_algorithm, prot.payload_type) == (1, 0)
    # DPPK-ID: the GUK-ID (= CSB ID) for a GMK, the key ID itself for a CSK or PCK.
    dppk = vector["guk_id"] or vector["key_id"]
    assert prot.dppk_id == int(dppk, 16)

    params = unprotect(prot, key)
    assert bytes(params) == bytes.fromhex(PLAINTEXTS[vector["name"]])
    assert params.key_type == KeyType[vector["key_type"]]
    assert params.status == KeyStatus.NOT_REVOKED
    assert (params.activation_time, params.expiry_time, params.text) == (0, 0, b"")
    assert params.group_ids == (() if vector["name"] == "GMK" else None)


@pytest.mark.parametrize("vector", PROTECTED, ids=[v["name"] for v in PROTECTED])
def test_vector_reprotect_is_identical(vector: dict[str, Any]) -> None:
    # With the vector's IV and header fields, protecting the plaintext reproduces the vendor's octets exactly.
    key = bytes.fromhex(vector["key"])
    prot = protected(vector)
    again = protect(unprotect(prot, key), key, prot.dppk_id, iv=prot.iv, date_time=prot.date_time)
    assert again == prot


def test_protection_key_is_last_half_of_kdf() -> None:
    key = bytes.fromhex(PROTECTED[0]["key"])
    assert derive_protection_key(key, 0x06A12AEA) == kdf_3gpp(key, 0x53, bytes.fromhex("06a12aea"))[16:]


@pytest.mark.parametrize("vector", PROTECTED, ids=[v["name"] for v in PROTECTED])
def test_wrong_key_fails(vector: dict[str, Any]) -> None:
    key = bytearray.fromhex(vector["key"])
    key[0] ^= 1
    with pytest.raises(KeyParametersError, match="authentication failed"):
        unprotect(protected(vector), bytes(key))


@pytest.mark.parametrize("vector", PROTECTED, ids=[v["name"] for v in PROTECTED])
def test_every_bit_flip_is_detected(vector: dict[str, Any]) -> None:
    # Flipping any bit — associated data, IV, DPPK-ID, payload type, length or ciphertext — must not yield
    # parameters: either the structure no longer parses or authentication fails.
    key = bytes.fromhex(vector["key"])
    data = ext_data(vector)
    for bit in range(len(data) * 8):
        mutated = bytearray(data)
        mutated[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(KeyParametersError):
            parsed = parse_key_parameters_ext(bytes(mutated))
            assert isinstance(parsed, ProtectedKeyParameters)
            unprotect(parsed, key)


def test_legacy_form() -> None:
    data = ext_data(LEGACY)
    assert data == bytes.fromhex("01 00000001 0000000000 0000000000 0000")
    legacy = parse_key_parameters_ext(data)
    assert isinstance(legacy, LegacyKeyParameters)
    assert bytes(legacy) == data
    assert legacy.raw.key_type == 1  # as on the wire: off by one
    assert legacy.to_key_parameters() == KeyParameters(KeyType.GMK, KeyStatus.NOT_REVOKED)
    with pytest.raises(KeyParametersError, match="key type 0"):
        LegacyKeyParameters(KeyParameters(0)).to_key_parameters()


def test_unprotect_rejects_unsupported_fields() -> None:
    key = bytes(16)
    sealed = protect(KeyParameters(KeyType.CSK), key, 7)
    with pytest.raises(KeyParametersError, match="payload algorithm 2"):
        unprotect(replace(sealed, payload_algorithm=2), key)
    with pytest.raises(KeyParametersError, match="payload type 1"):
        unprotect(replace(sealed, payload_type=1), key)
    with pytest.raises(KeyParametersError, match="shorter than the GCM tag"):
        unprotect(replace(sealed, ciphertext=sealed.ciphertext[:15]), key)


@pytest.mark.parametrize(
    ("plaintext", "message"),
    [
        ("00 00000001", "truncated activation time"),
        ("00 00000001 0000000000 0000000000 0003 4142", "truncated text"),
        ("00 00000001 0000000000 0000000000 0000 00", "truncated group IDs block length"),
        ("00 00000001 0000000000 0000000000 0000 0000", "MC group IDs: truncated number of group IDs"),
        ("00 00000001 0000000000 0000000000 0000 0001 01", "MC group IDs: truncated group ID IEI"),
        ("00 00000001 0000000000 0000000000 0000 0002 00 ff", "MC group IDs: 1 trailing octet"),
        ("00 00000001 0000000000 0000000000 0000 0001 00 ff", "key parameters: 1 trailing octet"),
    ],
)
def test_malformed_plaintext(plaintext: str, message: str) -> None:
    # Encrypt a malformed plaintext properly: authentication passes, the structure check must still fail.
    key, dppk_id, iv = bytes(range(16)), 0x2DDD5BF0, bytes(16)
    template = protect(KeyParameters(KeyType.CSK), key, dppk_id, iv=iv)
    aead = AESGCM(derive_protection_key(key, dppk_id))
    sealed = replace(template, ciphertext=aead.encrypt(iv, bytes.fromhex(plaintext), template.associated_data))
    with pytest.raises(KeyParametersError, match=message):
        unprotect(sealed, key)


def test_protected_form_defects() -> None:
    good = bytes(protect(KeyParameters(KeyType.GMK), bytes(16), 1))
    with pytest.raises(KeyParametersError, match="message type 0x44"):
        ProtectedKeyParameters.parse(b"\x44" + good[1:])
    with pytest.raises(KeyParametersError, match="truncated IV"):
        ProtectedKeyParameters.parse(good[:20])
    with pytest.raises(KeyParametersError, match="1 trailing octet"):
        ProtectedKeyParameters.parse(good + b"\x00")
    with pytest.raises(ValueError, match="IV must be 16 octets"):
        protect(KeyParameters(KeyType.GMK), bytes(16), 1, iv=bytes(12))


def test_random_iv_by_default() -> None:
    params = KeyParameters(KeyType.GMK, group_ids=())
    a, b = protect(params, bytes(16), 5), protect(params, bytes(16), 5)
    assert a.iv != b.iv and len(a.iv) == 16
    assert unprotect(a, bytes(16)) == unprotect(b, bytes(16)) == params


# --- random round trips ----------------------------------------------------------------------------------------

group_ids = st.builds(GroupId, st.integers(0, 255), st.binary(max_size=40))
key_params = st.builds(
    KeyParameters,
    key_type=st.integers(0, 255),
    status=st.integers(0, 2**32 - 1),
    activation_time=st.integers(0, 2**40 - 1),
    expiry_time=st.integers(0, 2**40 - 1),
    text=st.binary(max_size=100),
    group_ids=st.none() | st.lists(group_ids, max_size=5).map(tuple),
)


@given(key_params)
def test_key_parameters_round_trip(params: KeyParameters) -> None:
    assert KeyParameters.parse(bytes(params)) == params
    assert bytes(KeyParameters.parse(bytes(params))) == bytes(params)


@given(
    key_params,
    st.binary(min_size=16, max_size=32),
    st.integers(0, 2**32 - 1),
    st.binary(min_size=16, max_size=16),
    st.integers(0, 2**40 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 255),
)
def test_protect_unprotect_round_trip(
    params: KeyParameters, key: bytes, dppk_id: int, iv: bytes, date_time: int, payload_id: int, seq: int
) -> None:
    sealed = protect(params, key, dppk_id, iv=iv, date_time=date_time, payload_id=payload_id, payload_sequence=seq)
    encoded = bytes(sealed)
    reparsed = parse_key_parameters_ext(encoded)
    assert reparsed == sealed and bytes(reparsed) == encoded
    assert unprotect(sealed, key) == params
    ext = GeneralExt(7, encoded)
    assert GeneralExt.parse(bytes(ext), 0) == (ext, len(bytes(ext)))
