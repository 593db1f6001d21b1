"""ECCSI, SAKKE and the pairing against RFC 6507 / RFC 6508 Appendix A and the vendor KMS keys."""

from __future__ import annotations

import pytest
from gmpy2 import mpz

from ptt.crypto import eccsi, kms, sakke
from ptt.crypto.pairing import g_power_table, pairing, reference_pairing, to_representative
from ptt.crypto.params import P256, SAKKE_CURVE, SAKKE_G, SAKKE_Q
from ptt.ts33180 import uid
from tests.vectorfiles import load

E = load("rfc6507_eccsi.json")
S = load("rfc6508_sakke.json")
VENDOR = load("streamwide_imessage_decoded.json")
h = bytes.fromhex


def test_curve_constants_match_vectors() -> None:
    assert P256.encode(P256.generator) == h(E["curve"]["G"])
    assert int(P256.p) == int(E["curve"]["p"], 16)
    assert int(P256.q) == int(E["curve"]["q_order"], 16)
    assert int(SAKKE_CURVE.p) == int(S["p"], 16)
    assert int(SAKKE_Q) == int(S["q"], 16)
    assert SAKKE_CURVE.encode(SAKKE_CURVE.generator) == h(S["P"])
    assert int(SAKKE_G) == int(S["g"], 16)
    assert SAKKE_CURVE.mul(SAKKE_CURVE.generator, SAKKE_Q) is None


def test_eccsi_kms_issuance_vector() -> None:
    master = kms.generate_master_secrets(ksak=int(E["KSAK"], 16), z=int(S["z_S"], 16))
    assert master.kpak == h(E["KPAK"])
    ssk, pvt = kms.issue_signing_key(h(E["ID"]), master, v=int(E["v"], 16))
    assert pvt == h(E["PVT"])
    assert ssk == h(E["SSK"])
    assert int(eccsi.hash_hs(h(E["ID"]), pvt, master.kpak)) == int(E["HS"], 16)


def test_eccsi_sign_vector() -> None:
    signature = eccsi.sign(h(E["M"]), h(E["ID"]), h(E["SSK"]), h(E["PVT"]), h(E["KPAK"]), j=int(E["j"], 16))
    assert signature == h(E["Signature"])
    assert len(signature) == 129


def test_eccsi_verify_vector() -> None:
    assert eccsi.verify(h(E["M"]), h(E["Signature"]), h(E["ID"]), h(E["KPAK"]))


def test_eccsi_validate_vector() -> None:
    assert eccsi.validate_signing_key(h(E["ID"]), h(E["SSK"]), h(E["PVT"]), h(E["KPAK"]))


def test_sakke_kms_issuance_vector() -> None:
    master = kms.generate_master_secrets(ksak=int(E["KSAK"], 16), z=int(S["z_S"], 16))
    assert master.z_public == h(S["Z_S"])
    assert kms.issue_rsk(h(S["b"]), master) == h(S["RSK"])


def test_sakke_encapsulate_vector() -> None:
    assert sakke.hash_to_integer_range(h(S["SSV"]) + h(S["b"]), SAKKE_Q) == int(S["r"], 16)
    encapsulated = sakke.encapsulate(h(S["SSV"]), h(S["b"]), h(S["Z_S"]))
    assert encapsulated[:257] == h(S["R_bS"])
    assert encapsulated[257:] == h(S["H"])
    assert encapsulated == h(S["encapsulated_data"])


def test_sakke_decapsulate_vector() -> None:
    assert sakke.decapsulate(h(S["encapsulated_data"]), h(S["b"]), h(S["RSK"]), h(S["Z_S"])) == h(S["SSV"])


def test_sakke_validate_rsk_vector() -> None:
    assert sakke.validate_rsk(h(S["b"]), h(S["RSK"]), h(S["Z_S"]))


def test_pairing_vectors() -> None:
    P = SAKKE_CURVE.generator
    assert pairing(P, SAKKE_CURVE.encode(P)) == SAKKE_G
    R = SAKKE_CURVE.decode(h(S["R_bS"]))
    assert pairing(R, h(S["RSK"])) == int(S["g_r"], 16)
    assert to_representative(g_power_table().power(mpz(int(S["r"], 16)))) == int(S["g_r"], 16)
    mask = sakke.hash_to_integer_range(h(S["g_r"]), 1 << 128)
    assert mask == int(S["mask"], 16)


def test_reference_pairing_agrees_on_vector() -> None:
    """The RFC's own algorithm (loop on R, evaluated at psi(RSK)) gives the same value as the fast one."""
    R = SAKKE_CURVE.decode(h(S["R_bS"]))
    assert reference_pairing(R, SAKKE_CURVE.decode(h(S["RSK"]))) == int(S["g_r"], 16)


@pytest.mark.parametrize("user", sorted(VENDOR["users"]))
def test_vendor_user_keys_validate(user: str) -> None:
    kms_cert = VENDOR["kms"]
    keys = VENDOR["users"][user]
    expected_uid = uid(
        user, kms_cert["KmsUri"], kms_cert["UserKeyPeriod"], kms_cert["UserKeyOffset"], keys["KeyPeriodNo"]
    )
    assert expected_uid == h(keys["UID"])
    assert eccsi.validate_signing_key(expected_uid, h(keys["SSK"]), h(keys["PVT"]), h(kms_cert["PubAuthKey"]))
    assert sakke.validate_rsk(expected_uid, h(keys["RSK"]), h(kms_cert["PubEncKey"]))
    assert not sakke.validate_rsk(expected_uid[::-1], h(keys["RSK"]), h(kms_cert["PubEncKey"]))
