"""MIKEY payload and message codec: the four Streamwide I_MESSAGE vectors, defects, and random round trips."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptt.mikey.errors import MalformedMessage, MikeyError
from ptt.mikey.keyparams import LegacyKeyParameters, ProtectedKeyParameters
from ptt.mikey.message import MAX_MESSAGE_LEN, MikeyMessage, signed_portion
from ptt.mikey.payloads import (
    SAKKE_DATA_LEN_SET1,
    CsIdMapType,
    DataType,
    GeneralExt,
    GenericIdEntry,
    Hdr,
    IdPayload,
    Idr,
    IdRole,
    IdType,
    Payload,
    PayloadType,
    PrfFunc,
    Rand,
    Sakke,
    SakkeIdScheme,
    Sign,
    SignatureType,
    Sp,
    SpParam,
    SrtpIdEntry,
    SrtpParam,
    T,
    TsType,
    ntp_to_unix,
    unix_to_ntp,
)
from tests.vectorfiles import load

DECODED = load("streamwide_imessage_decoded.json")
VECTORS: list[dict[str, Any]] = DECODED["imessages"]
USERS: dict[str, Any] = DECODED["users"]
KMS_URI: str = DECODED["kms"]["KmsUri"]
IDS = [v["name"] for v in VECTORS]


def raw(vector: dict[str, Any]) -> bytes:
    return bytes.fromhex(vector["imessage_hex"])


def by_name(prefix: str) -> dict[str, Any]:
    return next(v for v in VECTORS if v["name"].startswith(prefix))


# --- the vendor vectors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_vector_round_trip_is_byte_identical(vector: dict[str, Any]) -> None:
    data = raw(vector)
    assert len(data) == vector["imessage_length"]
    assert bytes(MikeyMessage.parse(data)) == data


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_vector_payload_chain(vector: dict[str, Any]) -> None:
    msg = MikeyMessage.parse(raw(vector))
    assert [p.TYPE for p in msg.payloads] == [
        PayloadType.T,
        PayloadType.RAND,
        *[PayloadType.IDR] * 4,
        PayloadType.SP,
        PayloadType.SAKKE,
        PayloadType.GENERAL_EXT,
        PayloadType.SIGN,
    ]
    # Offsets recorded in the vector file: payload lengths add up exactly.
    offsets, pos = {}, len(bytes(msg.hdr))
    for p in msg.payloads:
        offsets[type(p)] = pos
        pos += len(bytes(p))
    assert offsets[Sakke] == vector["sakke_payload_offset"]
    assert offsets[Sign] == vector["sign_payload_offset"]


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_vector_hdr(vector: dict[str, Any]) -> None:
    hdr = MikeyMessage.parse(raw(vector)).hdr
    assert (hdr.version, hdr.data_type, hdr.v, hdr.prf_func) == (1, DataType.SAKKE_MSG, False, PrfFunc.HMAC_SHA_256)
    assert hdr.next_payload == PayloadType.T
    key_id = bytes.fromhex(vector["key_id"])
    if vector["name"] == "GMK":
        assert hdr.csb_id == int(vector["guk_id"], 16)
        assert hdr.cs_map_type == CsIdMapType.GENERIC_ID
        spi = key_id + bytes.fromhex(vector["guk_id"])  # GMK-ID || GUK-ID
        assert hdr.cs_map == (GenericIdEntry(cs_id=4, spi=spi, prot_type=0, policies=(0,)),)
    elif vector["name"] == "CSK":
        assert hdr.csb_id == int.from_bytes(key_id)
        assert hdr.cs_map == (GenericIdEntry(cs_id=6, spi=key_id),)
    elif vector["name"] == "PCK":
        assert hdr.csb_id == int.from_bytes(key_id)
        assert (hdr.cs_map_type, hdr.cs_map) == (CsIdMapType.EMPTY, ())
    else:  # legacy GMK: an RFC 3830 SRTP-ID map, and a CSB ID that is neither the GMK-ID nor a GUK-ID here
        assert hdr.csb_id == 0x048209A7
        assert hdr.cs_map_type == CsIdMapType.SRTP_ID
        assert hdr.cs_map == (SrtpIdEntry(0, 0xCAFEBABE, 0), SrtpIdEntry(0, 0, 0))


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_vector_t_rand_idr(vector: dict[str, Any]) -> None:
    msg = MikeyMessage.parse(raw(vector))
    t = msg.find(T)
    assert t is not None and t.ts_type == TsType.NTP_UTC
    assert t.value == 0xEC898DA8_00000000
    assert t.unix_time() == 0xEC898DA8 - 2_208_988_800  # 2025-10-03, all four vectors share it
    rand = msg.find(Rand)
    assert rand is not None and rand.rand == bytes.fromhex(vector["rand"])

    uid = {uri: bytes.fromhex(u["UID"]) for uri, u in USERS.items()}
    expected = [
        (IdRole.INITIATOR_UID, uid[vector["initiator_uri"]]),
        (IdRole.RESPONDER_UID, uid[vector["responder_uri"]]),
        (IdRole.INITIATOR_KMS, KMS_URI.encode()),
        (IdRole.RESPONDER_KMS, KMS_URI.encode()),
    ]
    assert [(i.role, i.data) for i in msg.idrs()] == expected
    # The 32-octet binary UIDs are sent with ID type 1 (URI), like the KMS URIs.
    assert all(i.id_type == IdType.URI for i in msg.idrs())
    responder = msg.idr(IdRole.RESPONDER_UID)
    assert responder is not None and responder.data == uid[vector["responder_uri"]]
    assert msg.idr(IdRole.INITIATOR) is None


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_vector_sp(vector: dict[str, Any]) -> None:
    sp = MikeyMessage.parse(raw(vector)).find(Sp)
    assert sp is not None and (sp.policy_no, sp.prot_type) == (0, 0)
    assert [(p.type, p.int_value) for p in sp.params] == [
        (SrtpParam.ENC_ALG, 6),  # AES-GCM (RFC 7714)
        (SrtpParam.SESSION_ENC_KEY_LEN, 16),
        (SrtpParam.AUTH_ALG, 4),
        (SrtpParam.SESSION_SALT_LEN, 12),
        (SrtpParam.SRTP_PRF, 0),
        (SrtpParam.KEY_DERIVATION_RATE, 0),
        (18, 4),  # not in our table: kept verbatim
        (19, 0),
        (SrtpParam.AEAD_AUTH_TAG_LEN, 16),
    ]
    enc = sp.get(SrtpParam.ENC_ALG)
    assert enc is not None and enc.value == b"\x06"
    assert sp.get(SrtpParam.AUTH_TAG_LEN) is None


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_vector_sakke_ext_sign(vector: dict[str, Any]) -> None:
    data = raw(vector)
    msg = MikeyMessage.parse(data)
    sakke = msg.find(Sakke)
    assert sakke is not None
    assert (sakke.sakke_params, sakke.id_scheme) == (1, SakkeIdScheme.TS33180_UID)
    assert sakke.data == bytes.fromhex(vector["sakke_data_hex"])
    assert len(sakke.data) == SAKKE_DATA_LEN_SET1

    ext = msg.find(GeneralExt)
    assert ext is not None and ext.ext_type == 7
    expected_kind = LegacyKeyParameters if "legacy" in vector["name"] else ProtectedKeyParameters
    assert isinstance(ext.key_parameters(), expected_kind)

    sign = msg.sign
    assert sign is not None and sign is msg.payloads[-1]
    assert sign.sig_type == SignatureType.ECCSI
    assert sign.signature == bytes.fromhex(vector["signature_hex"])
    assert len(sign.signature) == 129


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_signed_portion(vector: dict[str, Any]) -> None:
    data = raw(vector)
    msg = MikeyMessage.parse(data)
    assert msg.signed_octets() == data[:-129]
    assert msg.signed_octets()[-2:] == b"\x20\x81"  # SIGN header included
    assert signed_portion(data) == data[:-129]
    # A signer recomputes the same octets from the unsigned message, then attaches its signature.
    unsigned = msg.unsigned()
    assert unsigned.sign is None
    assert unsigned.octets_to_sign() == data[:-129]
    assert msg.octets_to_sign() == data[:-129]
    assert bytes(unsigned.with_signature(bytes.fromhex(vector["signature_hex"]))) == data


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_build_chains_next_payload(vector: dict[str, Any]) -> None:
    data = raw(vector)
    msg = MikeyMessage.parse(data)
    # Forget every next-payload field; build must restore them.
    hdr = replace(msg.hdr, next_payload=0)
    payloads = [p if isinstance(p, Sign) else p.with_next(0) for p in msg.payloads]
    assert bytes(MikeyMessage.build(hdr, payloads)) == data
    with pytest.raises(ValueError, match="next payload"):
        bytes(MikeyMessage(hdr, payloads))


def test_unsigned_message_has_no_signed_octets() -> None:
    msg = MikeyMessage.parse(raw(VECTORS[0])).unsigned()
    with pytest.raises(MalformedMessage, match="no SIGN"):
        msg.signed_octets()
    assert MikeyMessage.parse(bytes(msg)) == msg


# --- defects ---------------------------------------------------------------------------------------------------

GMK = raw(by_name("GMK"))
HDR_LEN = len(bytes(MikeyMessage.parse(GMK).hdr))


def test_every_truncation_is_malformed() -> None:
    for n in range(len(GMK)):
        with pytest.raises(MalformedMessage):
            MikeyMessage.parse(GMK[:n])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "HDR: truncated version"),
        (b"\x02" + GMK[1:], "HDR: unsupported version 2"),
        (GMK[:8], "HDR: truncated #CS"),
        (GMK[:20], "HDR: truncated GENERIC-ID SPI"),
        (GMK + b"\x00", "SIGN payload is not last: 1 octet"),
        (GMK[:2] + b"\x01" + GMK[3:], "unsupported payload type 1 at offset 25"),
        (GMK[:2] + b"\x00" + GMK[3:], "trailing octet"),
        (GMK[:9] + b"\x03" + GMK[10:], "HDR: unsupported CS ID map type 3"),
        (GMK[: HDR_LEN + 1] + b"\x07" + GMK[HDR_LEN + 2 :], "T: unknown TS type 7"),
        (bytes(MAX_MESSAGE_LEN + 1), "exceeds"),
    ],
    ids=[
        "empty",
        "version",
        "hdr",
        "spi",
        "trailing-after-sign",
        "unknown-type",
        "chain-stops",
        "map-type",
        "ts-type",
        "too-big",
    ],
)
def test_malformed_messages(data: bytes, message: str) -> None:
    with pytest.raises(MalformedMessage, match=message):
        MikeyMessage.parse(data)


def _hdr(next_payload: int = 0) -> Hdr:
    return Hdr(DataType.SAKKE_MSG, 1, CsIdMapType.EMPTY, next_payload=next_payload)


def test_sign_not_last() -> None:
    data = bytes(_hdr(PayloadType.SIGN)) + bytes(Sign(2, b"x" * 3)) + bytes(Rand(b"r" * 16))
    with pytest.raises(MalformedMessage, match="SIGN payload is not last"):
        MikeyMessage.parse(data)
    with pytest.raises(ValueError, match="SIGN must be the last"):
        MikeyMessage.build(_hdr(), [Sign(2, b"x"), Rand(b"r")])


def test_chain_ends_early() -> None:
    data = bytes(_hdr(PayloadType.RAND)) + bytes(Rand(b"r" * 16, next_payload=PayloadType.T))
    with pytest.raises(MalformedMessage, match="payload chain ends early: payload type 5 expected at offset 28"):
        MikeyMessage.parse(data)


def test_too_many_payloads() -> None:
    msg = MikeyMessage.build(_hdr(), [Rand(b"")] * 200)
    with pytest.raises(MalformedMessage, match="more than 128 payloads"):
        MikeyMessage.parse(bytes(msg))


def test_empty_map_with_crypto_sessions() -> None:
    data = bytearray(bytes(_hdr()))
    data[8] = 1  # #CS
    with pytest.raises(MalformedMessage, match="HDR: empty CS ID map with #CS=1"):
        MikeyMessage.parse(bytes(data))


def test_sp_parameter_overrun() -> None:
    # Policy param length 3 but the parameter claims 5 value octets.
    data = bytes(_hdr(PayloadType.SP)) + bytes([0, 0, 0, 0, 3, 0, 5, 6])
    with pytest.raises(MalformedMessage, match="SP: truncated param value"):
        MikeyMessage.parse(data)


def test_bad_key_parameters_are_malformed() -> None:
    ext = GeneralExt(7, b"\x43" + bytes(10))
    with pytest.raises(MalformedMessage, match=r"GENERAL-EXT: bad 3GPP key parameters: .*truncated"):
        MikeyMessage.parse(bytes(MikeyMessage.build(_hdr(), [ext])))
    # Other extension types are opaque.
    other = MikeyMessage.build(_hdr(), [GeneralExt(9, b"\x43")])
    assert MikeyMessage.parse(bytes(other)) == other


def test_all_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        MikeyMessage.parse(b"\x01")
    assert issubclass(MalformedMessage, MikeyError)


@pytest.mark.parametrize(
    "payload",
    [
        Rand(b"x" * 256),
        T(TsType.COUNTER, 1 << 32),
        T(9, 0),
        Sign(16, b""),
        Sign(2, bytes(4096)),
        Idr(1, 1, b"", next_payload=256),
        GenericIdEntry(4, b"", policies=tuple(range(128))),
    ],
)
def test_unencodable_values(payload: Any) -> None:
    with pytest.raises(ValueError):
        bytes(payload)


def test_hdr_entries_must_match_map_type() -> None:
    with pytest.raises(ValueError, match="do not match"):
        bytes(Hdr(26, 0, CsIdMapType.GENERIC_ID, (SrtpIdEntry(0, 0, 0),)))


# --- NTP helpers -----------------------------------------------------------------------------------------------


def test_ntp_conversion() -> None:
    assert ntp_to_unix(2_208_988_800 << 32) == 0.0
    assert unix_to_ntp(0.5) == (2_208_988_800 << 32) | (1 << 31)
    assert unix_to_ntp(1_759_448_872.0) == 0xEC898DA8_00000000
    # NTP era 1 (after 2036-02-07): seconds with the top bit clear.
    assert ntp_to_unix(5 << 32) == (1 << 32) + 5 - 2_208_988_800
    assert T.ntp_utc(1_759_448_872.25) == T(TsType.NTP_UTC, 0xEC898DA8_40000000)
    with pytest.raises(ValueError):
        T(TsType.COUNTER, 1).unix_time()


@given(st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False))
def test_ntp_round_trip(seconds: float) -> None:
    assert abs(ntp_to_unix(unix_to_ntp(seconds)) - seconds) <= 1e-6


# --- random round trips ----------------------------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
next_types = st.sampled_from(list(PayloadType))


def blob(max_size: int) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=max_size)


srtp_entries = st.builds(SrtpIdEntry, u8, u32, u32)
generic_entries = st.builds(
    GenericIdEntry,
    cs_id=u8,
    spi=blob(255),
    prot_type=u8,
    policies=st.lists(u8, max_size=127).map(tuple),
    session_data=blob(300),
    s_flag=st.booleans(),
)


@st.composite
def hdrs(draw: st.DrawFn) -> Hdr:
    map_type = draw(st.sampled_from(list(CsIdMapType)))
    entries: tuple[SrtpIdEntry | GenericIdEntry, ...] = ()
    if map_type == CsIdMapType.SRTP_ID:
        entries = tuple(draw(st.lists(srtp_entries, max_size=20)))
    elif map_type == CsIdMapType.GENERIC_ID:
        entries = tuple(draw(st.lists(generic_entries, max_size=4)))
    return Hdr(
        data_type=draw(u8),
        csb_id=draw(u32),
        cs_map_type=map_type,
        cs_map=entries,
        prf_func=draw(st.integers(0, 0x7F)),
        v=draw(st.booleans()),
        next_payload=draw(u8),
    )


ts = st.one_of(
    st.builds(T, st.sampled_from([TsType.NTP_UTC, TsType.NTP]), st.integers(0, 2**64 - 1), next_types),
    st.builds(T, st.sampled_from([TsType.COUNTER, TsType.NTP_UTC_32]), u32, next_types),
)
payloads: st.SearchStrategy[Payload] = st.one_of(
    ts,
    st.builds(Rand, blob(255), next_types),
    st.builds(IdPayload, u8, blob(400), next_types),
    st.builds(Idr, u8, u8, blob(400), next_types),
    st.builds(Sp, u8, u8, st.lists(st.builds(SpParam, u8, blob(255)), max_size=8).map(tuple), next_types),
    st.builds(Sakke, u8, u8, blob(600), next_types),
    st.builds(GeneralExt, u8.filter(lambda t: t != 7), blob(400), next_types),
    st.builds(Sign, st.integers(0, 15), blob(0xFFF)),
)


@given(hdrs(), blob(8), blob(8))
def test_hdr_round_trip(hdr: Hdr, before: bytes, after: bytes) -> None:
    encoded = bytes(hdr)
    parsed, end = Hdr.parse(before + encoded + after, len(before))
    assert (parsed, end) == (hdr, len(before) + len(encoded))
    assert bytes(parsed) == encoded


@given(payloads, blob(8), blob(8))
def test_payload_round_trip(payload: Payload, before: bytes, after: bytes) -> None:
    encoded = bytes(payload)
    parsed, end = type(payload).parse(before + encoded + after, len(before))
    assert (parsed, end) == (payload, len(before) + len(encoded))
    assert bytes(parsed) == encoded


@given(hdrs(), st.lists(payloads, max_size=12))
def test_message_round_trip(hdr: Hdr, items: list[Payload]) -> None:
    body = [p for p in items if not isinstance(p, Sign)]
    signs = [p for p in items if isinstance(p, Sign)]
    msg = MikeyMessage.build(hdr, [*body, *signs[:1]])
    encoded = bytes(msg)
    assert MikeyMessage.parse(encoded) == msg
    assert bytes(MikeyMessage.parse(encoded)) == encoded
    if signs:
        assert msg.signed_octets() == encoded[: len(encoded) - len(signs[0].signature)]
