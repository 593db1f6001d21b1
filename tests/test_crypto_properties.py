"""Property and rejection tests of ECCSI, SAKKE and the curve/pairing arithmetic with fresh KMS keys."""

from __future__ import annotations

import random

import pytest
from gmpy2 import mpz
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptt.crypto import DecryptionError, InvalidKey, eccsi, kms, sakke
from ptt.crypto.ec import FixedBase, wnaf
from ptt.crypto.pairing import g_power_table, pairing, reference_pairing, to_representative
from ptt.crypto.params import P256, SAKKE_CURVE, SAKKE_Q

identifiers = st.binary(min_size=1, max_size=64)
SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def master() -> kms.MasterSecrets:
    return kms.generate_master_secrets()


@SETTINGS
@given(identifier=identifiers, message=st.binary(max_size=256))
def test_sign_verify_roundtrip(master: kms.MasterSecrets, identifier: bytes, message: bytes) -> None:
    ssk, pvt = kms.issue_signing_key(identifier, master)
    assert eccsi.validate_signing_key(identifier, ssk, pvt, master.kpak)
    signature = eccsi.sign(message, identifier, ssk, pvt, master.kpak)
    assert eccsi.verify(message, signature, identifier, master.kpak)
    assert not eccsi.verify(message + b"\x00", signature, identifier, master.kpak)
    assert not eccsi.verify(message, signature, identifier + b"\x00", master.kpak)


@SETTINGS
@given(identifier=identifiers, ssv=st.binary(min_size=16, max_size=16))
def test_encapsulate_decapsulate_roundtrip(master: kms.MasterSecrets, identifier: bytes, ssv: bytes) -> None:
    rsk = kms.issue_rsk(identifier, master)
    assert sakke.validate_rsk(identifier, rsk, master.z_public)
    encapsulated = sakke.encapsulate(ssv, identifier, master.z_public)
    assert len(encapsulated) == 273
    assert sakke.decapsulate(encapsulated, identifier, rsk, master.z_public) == ssv


def test_verify_rejects_malformed_without_raising(master: kms.MasterSecrets) -> None:
    ssk, pvt = kms.issue_signing_key(b"alice", master)
    good = eccsi.sign(b"m", b"alice", ssk, pvt, master.kpak)
    q = int(P256.q)
    bad_signatures = [
        b"",
        good[:-1],
        good + b"\x00",
        bytes(32) + good[32:],  # r = 0
        good[:32] + bytes(32) + good[64:],  # s = 0
        good[:32] + q.to_bytes(32, "big") + good[64:],  # s = q
        good[:64] + b"\x04" + bytes(64),  # PVT off the curve
        good[:64] + b"\x02" + good[65:],  # PVT not uncompressed
        good[:64] + pvt[:33] + bytes(32),  # PVT y wrong
    ]
    for signature in bad_signatures:
        assert eccsi.verify(b"m", signature, b"alice", master.kpak) is False
    assert eccsi.verify(b"m", good, b"alice", b"\x04" + bytes(64)) is False  # KPAK off the curve
    assert eccsi.verify(b"m", good, b"alice", b"") is False
    assert eccsi.verify("m", good, b"alice", master.kpak) is False  # type: ignore[arg-type]
    assert eccsi.verify(b"m", None, b"alice", master.kpak) is False  # type: ignore[arg-type]
    other = kms.generate_master_secrets()
    assert eccsi.verify(b"m", good, b"alice", other.kpak) is False
    for i in range(0, len(good) * 8, 37):
        flipped = bytearray(good)
        flipped[i // 8] ^= 1 << (i % 8)
        assert eccsi.verify(b"m", bytes(flipped), b"alice", master.kpak) is False


def test_signing_key_validation_rejects(master: kms.MasterSecrets) -> None:
    ssk, pvt = kms.issue_signing_key(b"alice", master)
    assert not eccsi.validate_signing_key(b"bob", ssk, pvt, master.kpak)
    assert not eccsi.validate_signing_key(b"alice", bytes(32), pvt, master.kpak)
    assert not eccsi.validate_signing_key(b"alice", ssk[:-1], pvt, master.kpak)
    assert not eccsi.validate_signing_key(b"alice", ssk, pvt[:-1] + bytes([pvt[-1] ^ 1]), master.kpak)
    assert not eccsi.validate_signing_key(b"alice", ssk, pvt, kms.generate_master_secrets().kpak)
    with pytest.raises(InvalidKey):
        eccsi.sign(b"m", b"alice", bytes(32), pvt, master.kpak)


def test_decapsulate_rejects(master: kms.MasterSecrets) -> None:
    rsk = kms.issue_rsk(b"alice", master)
    ssv = bytes(range(16))
    good = sakke.encapsulate(ssv, b"alice", master.z_public)
    order_two = SAKKE_CURVE.encode((mpz(0), mpz(0)))  # (0, 0) lies on y^2 = x^3 - 3x, order 2
    cases = [
        b"",
        good[:-1],
        good + b"\x00",
        good[:-1] + bytes([good[-1] ^ 1]),  # H tampered
        good[:100] + bytes([good[100] ^ 1]) + good[101:],  # R off the curve
        b"\x02" + good[1:],
        order_two + good[257:],
        sakke.encapsulate(ssv, b"bob", master.z_public),  # addressed to someone else
    ]
    for data in cases:
        with pytest.raises(DecryptionError):
            sakke.decapsulate(data, b"alice", rsk, master.z_public)
    with pytest.raises(DecryptionError):
        sakke.decapsulate(good, b"bob", rsk, master.z_public)
    with pytest.raises(DecryptionError):
        sakke.decapsulate(good, b"alice", kms.issue_rsk(b"bob", master), master.z_public)
    with pytest.raises(DecryptionError):
        sakke.decapsulate(good, b"alice", rsk[:-1], master.z_public)
    with pytest.raises(DecryptionError):
        sakke.decapsulate(good, b"alice", rsk, b"\x04" + bytes(256))


def test_validate_rsk_rejects(master: kms.MasterSecrets) -> None:
    rsk = kms.issue_rsk(b"alice", master)
    assert not sakke.validate_rsk(b"bob", rsk, master.z_public)
    assert not sakke.validate_rsk(b"alice", rsk[:-1], master.z_public)
    assert not sakke.validate_rsk(b"alice", SAKKE_CURVE.encode((mpz(0), mpz(0))), master.z_public)
    assert not sakke.validate_rsk(b"alice", SAKKE_CURVE.encode(SAKKE_CURVE.generator), master.z_public)
    assert not sakke.validate_rsk(b"alice", rsk, kms.generate_master_secrets().z_public)
    assert not sakke.validate_rsk(b"", rsk, master.z_public)


def test_encapsulate_rejects_bad_inputs(master: kms.MasterSecrets) -> None:
    with pytest.raises(ValueError):
        sakke.encapsulate(bytes(15), b"alice", master.z_public)
    with pytest.raises(InvalidKey):
        sakke.encapsulate(bytes(16), b"alice", b"\x04" + bytes(256))
    with pytest.raises(InvalidKey):  # Z = a point of order 2 is not a valid domain key
        sakke.encapsulate(bytes(16), b"alice", SAKKE_CURVE.encode((mpz(0), mpz(0))))


def test_pairing_is_bilinear_and_matches_reference() -> None:
    rng = random.Random(7)
    P = SAKKE_CURVE.generator
    a = rng.randrange(1, int(SAKKE_Q))
    b = rng.randrange(1, int(SAKKE_Q))
    A = SAKKE_CURVE.mul(P, a)
    B = SAKKE_CURVE.mul(P, b)
    assert A is not None and B is not None
    expected = to_representative(g_power_table().power(a * b % SAKKE_Q))
    assert pairing(A, SAKKE_CURVE.encode(B)) == expected
    assert pairing(B, SAKKE_CURVE.encode(A)) == expected
    assert reference_pairing(A, B) == expected


@pytest.mark.parametrize("curve", [P256, SAKKE_CURVE], ids=lambda c: c.name)
def test_scalar_multiplication_methods_agree(curve: object) -> None:
    assert curve is P256 or curve is SAKKE_CURVE
    rng = random.Random(11)
    G = curve.generator
    table = FixedBase(curve, G, width=5)
    for k in [1, 2, 3, 255, 256, int(curve.q) - 1, int(curve.q) - 2] + [rng.randrange(int(curve.q)) for _ in range(5)]:
        naive = curve.to_affine(curve._double_and_add(G, mpz(k))) if k else None
        assert curve.mul(G, k) == naive
        assert table.mul(k) == naive
    assert curve.mul(G, curve.q) is None
    assert table.mul(0) is None


@given(st.integers(min_value=0, max_value=2**300), st.integers(min_value=2, max_value=8))
def test_wnaf_reconstructs(k: int, width: int) -> None:
    digits = wnaf(mpz(k), width)
    assert sum(d << i for i, d in enumerate(digits)) == k
    assert all(d == 0 or (d % 2 == 1 and abs(d) < 1 << (width - 1)) for d in digits)


def test_derived_user_keys_are_stable_and_valid(master: kms.MasterSecrets) -> None:
    first = kms.derive_user_keys(b"uid-1", master)
    again = kms.derive_user_keys(b"uid-1", master)
    other = kms.derive_user_keys(b"uid-2", master)
    assert (first.ssk, first.pvt, first.rsk) == (again.ssk, again.pvt, again.rsk)
    assert first.pvt != other.pvt and first.ssk != other.ssk
    assert eccsi.validate_signing_key(b"uid-1", first.ssk, first.pvt, master.kpak)
    assert first.pvt != kms.derive_user_keys(b"uid-1", kms.generate_master_secrets()).pvt
