"""Tests of ptt.ts33180 against the TS 33.180 / vendor vectors in tests/vectors, plus property tests."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptt.kdf import kdf_3gpp
from ptt.ts33180 import (
    DEFAULT_KEY_PERIOD,
    NTP_UNIX_OFFSET,
    CsId,
    KeyPeriodPolicy,
    KeyPurpose,
    group_srtp_keys,
    guk_id,
    guk_salt,
    key_purpose,
    new_key_id,
    ntp_to_unix,
    parse_srtp_mki,
    period_bounds,
    period_number,
    srtp_master_key_and_salt,
    srtp_mki,
    uid,
    uid_input,
    unix_to_ntp,
)

VECTORS = Path(__file__).parent / "vectors"


def _load(name: str) -> dict[str, Any]:
    with (VECTORS / name).open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def _cases(name: str, *required: str) -> list[Any]:
    vectors = [v for v in _load(name)["vectors"] if all(k in v for k in required)]
    assert vectors, f"no vectors with {required} in {name}"
    return [pytest.param(v, id=v["name"]) for v in vectors]


UID_CASES = _cases("ts33180_uid.json", "S", "UID")
GUK_CASES = _cases("ts33180_key_derivation.json", "GMK", "GMK_ID", "GUK_ID")
GROUP_SRTP_CASES = _cases("ts33180_key_derivation.json", "GMK", "RAND", "srtp_master_key")
OTHER_SRTP_CASES = _cases("ts33180_key_derivation.json", "KEY", "KEY_ID", "srtp_master_key")

# --- UID (F.2.1) ---


@pytest.mark.parametrize("v", UID_CASES)
def test_uid_vectors(v: dict[str, Any]) -> None:
    args = (v["uri"], v["kms_uri"], v["key_period"], v["key_period_offset"], v["key_period_no"])
    assert uid_input(*args).hex() == v["S"]
    assert uid(*args).hex() == v["UID"]
    policy = KeyPeriodPolicy(v["key_period"], v["key_period_offset"])
    assert policy.uid(v["uri"], v["kms_uri"], v["key_period_no"]).hex() == v["UID"]


def _streamwide_users() -> list[Any]:
    data = _load("streamwide_imessage_decoded.json")
    kms = data["kms"]
    return [pytest.param(kms, uri, user, id=uri) for uri, user in data["users"].items()]


@pytest.mark.parametrize(("kms", "uri", "user"), _streamwide_users())
def test_uid_of_streamwide_kms_users(kms: dict[str, Any], uri: str, user: dict[str, Any]) -> None:
    # The KMS-issued UserID of each user (Annex D KmsKeySet) must be the F.2.1 UID of its parameters.
    policy = KeyPeriodPolicy(kms["UserKeyPeriod"], kms["UserKeyOffset"])
    assert policy.uid(uri, kms["KmsUri"], user["KeyPeriodNo"]).hex() == user["UID"]


def test_uid_zero_is_one_octet() -> None:
    s = uid_input("a", "b", 1, 0, 0)
    # key period 1, offset 0, period number 0: one octet each, then its length
    assert s.endswith(b"\x01\x00\x01" + b"\x00\x00\x01" + b"\x00\x00\x01")
    assert s.startswith(b"\x00MIKEY-SAKKE-UID\x00\x0f")


def test_uid_utf8_uri() -> None:
    s = uid_input("sip:é@x", "k", 10, 0, 1)
    assert b"sip:\xc3\xa9@x\x00\x08" in s


@pytest.mark.parametrize(
    "args",
    [
        ("", "kms", 10, 0, 1),
        ("sip:a@b", "", 10, 0, 1),
        ("sip:a@b", "kms", 0, 0, 1),
        ("sip:a@b", "kms", -5, 0, 1),
        ("sip:a@b", "kms", 10, -1, 1),
        ("sip:a@b", "kms", 10, 0, -1),
        ("x" * 65536, "kms", 10, 0, 1),
        ("sip:a@b", "k" * 65536, 10, 0, 1),
    ],
)
def test_uid_bad_inputs(args: tuple[str, str, int, int, int]) -> None:
    with pytest.raises(ValueError):
        uid(*args)


def test_uid_longest_uri_accepted() -> None:
    assert len(uid("x" * 65535, "kms", 10, 0, 1)) == 32


@given(
    uri=st.text(min_size=1, max_size=40),
    kms=st.text(min_size=1, max_size=40),
    period=st.integers(1, 2**64),
    offset=st.integers(0, 2**64),
    no=st.integers(0, 2**64),
)
def test_uid_is_sha256_of_input(uri: str, kms: str, period: int, offset: int, no: int) -> None:
    s = uid_input(uri, kms, period, offset, no)
    assert uid(uri, kms, period, offset, no) == hashlib.sha256(s).digest()
    # Walk S back: every parameter is followed by its 2-octet length.
    fields = []
    end = len(s)
    while end > 1:
        n = int.from_bytes(s[end - 2 : end], "big")
        fields.append(s[end - 2 - n : end - 2])
        end -= 2 + n
    assert end == 1 and s[0] == 0
    fields.reverse()
    assert fields[:3] == [b"MIKEY-SAKKE-UID", uri.encode(), kms.encode()]
    assert [int.from_bytes(f, "big") for f in fields[3:]] == [period, offset, no]
    assert all(
        len(f) == max(1, (v.bit_length() + 7) // 8) for f, v in zip(fields[3:], [period, offset, no], strict=True)
    )


# --- Key periods ---


def test_period_number_example() -> None:
    # ts33180_uid.json: NTP 3599719634 (2014-01-26T10:07:14Z), period 2592000, offset 0 -> 1388.
    example = _load("ts33180_uid.json")["key_period_number"]
    assert "3599719634" in example and "1388" in example
    now = ntp_to_unix(3599719634)
    assert datetime.fromtimestamp(now, UTC) == datetime(2014, 1, 26, 10, 7, 14, tzinfo=UTC)
    assert period_number(now, 2592000, 0) == 1388
    assert KeyPeriodPolicy().period_number(now) == 1388


def test_period_number_of_streamwide_imessage() -> None:
    # The GMK I_MESSAGE's T payload (0b 00 ec898da8 00000000: NTP-UTC) was sent in key period 236 of the KMS
    # (period 16777215 s, offset 0), the period of every user key in that vector set.
    data = _load("streamwide_imessage_decoded.json")
    t = data["imessages"][0]["imessage_hex"]
    ntp_seconds = int(t[t.index("0b00") + 4 :][:8], 16)
    assert ntp_seconds == 0xEC898DA8
    policy = KeyPeriodPolicy(data["kms"]["UserKeyPeriod"], data["kms"]["UserKeyOffset"])
    assert policy.period_number(ntp_to_unix(ntp_seconds)) == 236


def test_ntp_conversion() -> None:
    assert unix_to_ntp(0) == NTP_UNIX_OFFSET
    assert ntp_to_unix(NTP_UNIX_OFFSET) == 0
    assert datetime.fromtimestamp(ntp_to_unix(0), UTC) == datetime(1900, 1, 1, tzinfo=UTC)


def test_period_bounds_known() -> None:
    start, end = period_bounds(1388, 2592000, 0)
    assert start == 1388 * 2592000 - NTP_UNIX_OFFSET
    assert end - start == 2592000
    assert start <= ntp_to_unix(3599719634) < end


def test_period_number_does_not_round_up_across_a_second() -> None:
    # found by hypothesis: the float sum with the NTP offset rounded 6380945792.999999 up to the next second
    policy = KeyPeriodPolicy(1, 0)
    n = policy.period_number(6380945792.999999)
    start, end = policy.period_bounds(n)
    assert start <= 6380945792.999999 < end


@given(
    now=st.floats(0, 2**33, allow_nan=False, allow_infinity=False),
    period=st.integers(1, 10**8),
    offset=st.integers(0, NTP_UNIX_OFFSET),
)
def test_period_bounds_contain_now(now: float, period: int, offset: int) -> None:
    policy = KeyPeriodPolicy(period, offset)
    n = policy.period_number(now)
    start, end = policy.period_bounds(n)
    assert start <= now < end
    assert end - start == period
    assert policy.period_number(start) == n
    assert policy.period_number(end) == n + 1
    if n > 0:
        assert policy.period_number(start - 1) == n - 1


def test_key_period_policy_defaults_and_validation() -> None:
    assert KeyPeriodPolicy() == KeyPeriodPolicy(DEFAULT_KEY_PERIOD, 0)
    with pytest.raises(ValueError):
        KeyPeriodPolicy(0)
    with pytest.raises(ValueError):
        KeyPeriodPolicy(10, -1)


@pytest.mark.parametrize(
    ("now", "period", "offset"),
    [
        (0.0, 0, 0),
        (0.0, -1, 0),
        (0.0, 10, -1),
        (float("nan"), 10, 0),
        (float("inf"), 10, 0),
        (-NTP_UNIX_OFFSET - 1.0, 10, 0),  # before the NTP epoch
        (0.0, 10, NTP_UNIX_OFFSET + 1),  # before the first key period
    ],
)
def test_period_number_bad_inputs(now: float, period: int, offset: int) -> None:
    with pytest.raises(ValueError):
        period_number(now, period, offset)


@pytest.mark.parametrize(("no", "period", "offset"), [(-1, 10, 0), (1, 0, 0), (1, 10, -1)])
def test_period_bounds_bad_inputs(no: int, period: int, offset: int) -> None:
    with pytest.raises(ValueError):
        period_bounds(no, period, offset)


# --- Key IDs ---


@pytest.mark.parametrize(
    ("key_id", "purpose"),
    [
        ("0df9bc39", KeyPurpose.GMK),  # Streamwide GMK-ID
        ("06a12aea", KeyPurpose.GMK),  # its GUK-ID
        ("16992638", KeyPurpose.PCK),  # Streamwide PCK-ID
        ("2ddd5bf0", KeyPurpose.CSK),  # Streamwide CSK-ID
        ("3fffffff", KeyPurpose.SPK),
        ("40000000", KeyPurpose.MKFC),
        ("5abcdef0", KeyPurpose.MSCCK),
        ("60000001", KeyPurpose.MUSIK),
    ],
)
def test_key_purpose(key_id: str, purpose: KeyPurpose) -> None:
    assert key_purpose(bytes.fromhex(key_id)) is purpose


def test_streamwide_imessage_key_ids() -> None:
    expected = {"GMK": KeyPurpose.GMK, "CSK": KeyPurpose.CSK, "PCK": KeyPurpose.PCK}
    for m in _load("streamwide_imessage_decoded.json")["imessages"]:
        assert key_purpose(bytes.fromhex(m["key_id"])) is expected[m["key_type"]]


@pytest.mark.parametrize("key_id", ["70000000", "ffffffff", "000000", "0000000000", ""])
def test_key_purpose_bad(key_id: str) -> None:
    with pytest.raises(ValueError):
        key_purpose(bytes.fromhex(key_id))


@given(purpose=st.sampled_from(KeyPurpose), r=st.binary(min_size=4, max_size=4))
def test_new_key_id(purpose: KeyPurpose, r: bytes) -> None:
    key_id = new_key_id(purpose, rand=lambda n: r[:n])
    assert len(key_id) == 4
    assert key_purpose(key_id) is purpose
    low = int.from_bytes(key_id, "big") & 0x0FFFFFFF
    assert low == int.from_bytes(r, "big") & 0x0FFFFFFF


def test_new_key_id_default_random_and_bad_source() -> None:
    assert key_purpose(new_key_id(KeyPurpose.CSK)) is KeyPurpose.CSK
    assert len({new_key_id(KeyPurpose.GMK) for _ in range(16)}) > 1
    with pytest.raises(ValueError):
        new_key_id(KeyPurpose.GMK, rand=lambda n: b"\x00")
    with pytest.raises(ValueError):
        new_key_id(9)  # type: ignore[arg-type]


# --- GUK-ID (F.1.3) ---


@pytest.mark.parametrize("v", GUK_CASES)
def test_guk_id_vectors(v: dict[str, Any]) -> None:
    gmk, gmk_id = bytes.fromhex(v["GMK"]), bytes.fromhex(v["GMK_ID"])
    assert guk_id(gmk, gmk_id, v["user_uri"]).hex() == v["GUK_ID"]


def test_guk_salt_is_low_28_bits_of_kdf() -> None:
    # F.1.3 check of which bits form the salt: the 28 least significant bits of the 256-bit KDF output.
    gmk = bytes.fromhex("07d1a1677ac36d8e81620484689b3c2d")
    out = kdf_3gpp(gmk, 0x50, b"sip:alice@streamwide.com")
    assert guk_salt(gmk, "sip:alice@streamwide.com") == int.from_bytes(out[-4:], "big") & 0x0FFFFFFF
    assert guk_id(gmk, bytes.fromhex("0df9bc39"), "sip:alice@streamwide.com").hex() == "06a12aea"


mc_ids = st.text(min_size=1, max_size=60)
key_ids = st.binary(min_size=4, max_size=4)
gmks = st.binary(min_size=16, max_size=32)


@given(gmk=gmks, gmk_id=key_ids, mc_id=mc_ids)
def test_guk_id_properties(gmk: bytes, gmk_id: bytes, mc_id: str) -> None:
    g = guk_id(gmk, gmk_id, mc_id)
    assert len(g) == 4
    assert g[0] >> 4 == gmk_id[0] >> 4  # purpose tag kept
    salt = guk_salt(gmk, mc_id)
    assert 0 <= salt < 2**28
    assert (int.from_bytes(g, "big") ^ int.from_bytes(gmk_id, "big")) == salt  # XOR is invertible
    assert guk_id(gmk, g, mc_id) == gmk_id  # so applying it twice gives the GMK-ID back


@pytest.mark.parametrize(
    ("gmk", "gmk_id", "mc_id"),
    [(b"", b"\x00" * 4, "sip:a@b"), (b"k" * 16, b"\x00" * 3, "sip:a@b"), (b"k" * 16, b"\x00" * 4, "")],
)
def test_guk_id_bad_inputs(gmk: bytes, gmk_id: bytes, mc_id: str) -> None:
    with pytest.raises(ValueError):
        guk_id(gmk, gmk_id, mc_id)


# --- SRTP master key and salt (7.4.2) ---


@pytest.mark.parametrize("v", GROUP_SRTP_CASES)
def test_group_srtp_vectors(v: dict[str, Any]) -> None:
    gmk, gmk_id, guk = (bytes.fromhex(v[k]) for k in ("GMK", "GMK_ID", "GUK_ID"))
    rand = bytes.fromhex(v["RAND"])
    assert v["CS_ID"] == CsId.GROUP_CALL
    key, salt = srtp_master_key_and_salt(gmk, v["CS_ID"], guk, rand)
    assert (key.hex(), salt.hex()) == (v["srtp_master_key"], v["srtp_master_salt"])

    keys = group_srtp_keys(gmk, gmk_id, guk, rand)
    assert keys.master_key.hex() == v["srtp_master_key"]
    assert keys.master_salt.hex() == v["srtp_master_salt"]
    assert keys.mki == gmk_id + guk
    assert keys.key_and_salt == key + salt
    # The GUK-ID in the MKI is this sender's, derived from its URI.
    assert guk_id(gmk, gmk_id, v["user_uri"]) == guk


@pytest.mark.parametrize("v", OTHER_SRTP_CASES)
def test_csk_srtp_vectors(v: dict[str, Any]) -> None:
    # CSK: CS-ID 6 and the CSK-ID itself as CSB ID (no GUK-ID).
    assert v["CS_ID"] == CsId.CSK_SRTCP
    key, salt = srtp_master_key_and_salt(
        bytes.fromhex(v["KEY"]), CsId.CSK_SRTCP, bytes.fromhex(v["KEY_ID"]), bytes.fromhex(v["RAND"])
    )
    assert (key.hex(), salt.hex()) == (v["srtp_master_key"], v["srtp_master_salt"])


@given(tgk=gmks, cs_id=st.sampled_from(CsId), csb_id=key_ids, rand=st.binary(min_size=16, max_size=16))
def test_srtp_lengths_and_separation(tgk: bytes, cs_id: CsId, csb_id: bytes, rand: bytes) -> None:
    key, salt12 = srtp_master_key_and_salt(tgk, cs_id, csb_id, rand)
    assert (len(key), len(salt12)) == (16, 12)
    key256, salt14 = srtp_master_key_and_salt(tgk, cs_id, csb_id, rand, key_length=32, salt_length=14)
    assert (len(key256), len(salt14)) == (32, 14)
    # The PRF output is truncated, so the shorter forms are prefixes of the longer ones.
    assert key256.startswith(key) and salt14.startswith(salt12)
    assert key != salt12[: len(key)]
    other_cs = CsId.GROUP_CALL if cs_id != CsId.GROUP_CALL else CsId.CSK_SRTCP
    assert srtp_master_key_and_salt(tgk, other_cs, csb_id, rand)[0] != key


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tgk": b""},
        {"cs_id": -1},
        {"cs_id": 256},
        {"csb_id": b"\x00" * 3},
        {"csb_id": b"\x00" * 5},
        {"rand": b""},
        {"rand": b"r" * 256},
        {"key_length": 0},
        {"salt_length": 0},
    ],
)
def test_srtp_bad_inputs(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"tgk": b"k" * 16, "cs_id": 4, "csb_id": b"\x00" * 4, "rand": b"r" * 16}
    args.update(kwargs)
    with pytest.raises(ValueError):
        srtp_master_key_and_salt(**args)


# --- SRTP MKI ---


def test_srtp_mki_vector() -> None:
    mki = srtp_mki(bytes.fromhex("0df9bc39"), bytes.fromhex("06a12aea"))
    assert mki.hex() == "0df9bc3906a12aea"  # as in the HDR's SPI of the Streamwide GMK I_MESSAGE
    imessage = _load("streamwide_imessage_decoded.json")["imessages"][0]["imessage_hex"]
    assert mki.hex() in imessage
    assert parse_srtp_mki(mki) == (bytes.fromhex("0df9bc39"), bytes.fromhex("06a12aea"))


@given(gmk=gmks, low=st.integers(0, 2**28 - 1), mc_id=mc_ids)
def test_srtp_mki_roundtrip(gmk: bytes, low: int, mc_id: str) -> None:
    gmk_id = low.to_bytes(4, "big")  # purpose tag 0: GMK
    g = guk_id(gmk, gmk_id, mc_id)
    assert parse_srtp_mki(srtp_mki(gmk_id, g)) == (gmk_id, g)


@pytest.mark.parametrize(
    "mki",
    [
        "",
        "0df9bc3906a12a",  # 7 octets
        "0df9bc3906a12aea00",  # 9 octets
        "2ddd5bf006a12aea",  # first ID is a CSK-ID
        "0df9bc3916a12aea",  # second ID not tagged GMK
    ],
)
def test_parse_srtp_mki_bad(mki: str) -> None:
    with pytest.raises(ValueError):
        parse_srtp_mki(bytes.fromhex(mki))


def test_srtp_mki_bad() -> None:
    with pytest.raises(ValueError):
        srtp_mki(bytes.fromhex("2ddd5bf0"), bytes.fromhex("06a12aea"))
    with pytest.raises(ValueError):
        srtp_mki(bytes.fromhex("0df9bc39"), bytes.fromhex("06a12a"))
    with pytest.raises(ValueError):
        group_srtp_keys(b"k" * 16, bytes.fromhex("1df9bc39"), bytes.fromhex("16a12aea"), b"r" * 16)
