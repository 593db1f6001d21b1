"""The PCK I_MESSAGE (TS 33.180 §7.3, E.3) and the private call's SRTP: the vendor's PCK vector, the TS 33.180
structure of ours (purpose tag 1, IDRi/IDRr = the two users' UIDs), round trips, tampering, the wrong callee."""

from __future__ import annotations

import os
from typing import Any

import pytest

from ptt.crypto import eccsi
from ptt.mikey.codes import CsIdMapType, DataType, IdRole, IdType, SignatureType
from ptt.mikey.errors import (
    BadSignature,
    MalformedMessage,
    MikeyError,
    Replayed,
    UnexpectedInitiator,
    WrongRecipient,
)
from ptt.mikey.header import Hdr, Rand
from ptt.mikey.imessage import IdentityKeys, KmsDomain, ReplayCache, build_i_message
from ptt.mikey.keyparams import KeyStatus, KeyType
from ptt.mikey.message import MikeyMessage
from ptt.mikey.security import GeneralExt, Sakke
from ptt.privatecall.media import PrivateSrtpReceiver, PrivateSrtpSender, call_media_key
from ptt.privatecall.pck import (
    NotAPck,
    PckOffer,
    PrivateCallKey,
    WrongParties,
    build_pck_message,
    make_private_call_key,
    receive_pck_message,
)
from ptt.rtp import RtpSender
from ptt.srtp import AwaitingKey, SrtpError
from ptt.ts33180 import CsId, KeyPurpose, key_purpose, new_key_id, srtp_master_key_and_salt
from tests.identities import keys_for, make_world
from tests.vectorfiles import load

NOW = 1_760_000_000.0
ALICE, BOB, CAROL = "sip:alice@example.org", "sip:bob@example.org", "sip:carol@example.org"


def h(text: str) -> bytes:
    return bytes.fromhex(text)


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    w = make_world()
    domain = w[0]
    return {"domain": domain, "keys": {u: keys_for(w, u, NOW) for u in (ALICE, BOB, CAROL)}}


def offer(world: dict[str, Any], key: PrivateCallKey | None = None, *, to: str = BOB) -> tuple[bytes, PrivateCallKey]:
    key = key or make_private_call_key()
    return build_pck_message(world["keys"][ALICE], to, key, now=NOW), key


def receive(world: dict[str, Any], data: bytes, *, callee: str = BOB, caller: str = ALICE, cache: Any = None) -> Any:
    return receive_pck_message(
        data,
        callee=world["keys"][callee],
        caller_uri=caller,
        trusted_kms={world["domain"].kms_uri: world["domain"]},
        now=NOW + 1,
        replay_cache=ReplayCache() if cache is None else cache,
    )


# --- the vendor's PCK vector -----------------------------------------------------------------------------------

VENDOR = load("streamwide_imessage_decoded.json")
PCK_VECTOR = next(v for v in VENDOR["imessages"] if v["name"] == "PCK")
_KMS = VENDOR["kms"]
VENDOR_DOMAIN = KmsDomain(
    _KMS["KmsUri"], h(_KMS["PubAuthKey"]), h(_KMS["PubEncKey"]), _KMS["UserKeyPeriod"], _KMS["UserKeyOffset"]
)


def test_the_vendor_pck_vector_is_received_with_its_structure() -> None:
    data = h(PCK_VECTOR["imessage_hex"])
    parsed = PckOffer.parse(data)
    users = VENDOR["users"]
    caller, callee = PCK_VECTOR["initiator_uri"], PCK_VECTOR["responder_uri"]
    assert parsed.pck_id == h(PCK_VECTOR["key_id"]) and key_purpose(parsed.pck_id) == KeyPurpose.PCK
    assert parsed.initiator_uid == h(users[caller]["UID"]) and parsed.responder_uid == h(users[callee]["UID"])
    parsed.check_parties(caller, callee, VENDOR_DOMAIN)
    user = users[callee]
    keys = IdentityKeys(callee, VENDOR_DOMAIN, user["KeyPeriodNo"], h(user["SSK"]), h(user["PVT"]), h(user["RSK"]))
    got = receive_pck_message(
        data,
        callee=keys,
        caller_uri=caller,
        trusted_kms={VENDOR_DOMAIN.kms_uri: VENDOR_DOMAIN},
        now=parsed.timestamp + 5,
        replay_cache=ReplayCache(),
    )
    assert got.key.pck == h(PCK_VECTOR["key"]) and got.key.rand == h(PCK_VECTOR["rand"])
    assert (got.caller_uri, got.callee_uri) == (caller, callee)


# --- our PCK I_MESSAGE -----------------------------------------------------------------------------------------


def test_our_pck_message_has_the_ts33180_structure(world: dict[str, Any]) -> None:
    data, key = offer(world)
    message = MikeyMessage.parse(data)
    hdr = message.hdr
    assert hdr.data_type == DataType.SAKKE_MSG
    assert hdr.csb_id.to_bytes(4, "big") == key.pck_id  # CSB ID = PCK-ID
    assert key_purpose(key.pck_id) is KeyPurpose.PCK and key.pck_id[0] >> 4 == 1  # purpose tag 1
    assert (hdr.cs_map_type, hdr.cs_map) == (CsIdMapType.EMPTY, ())
    domain: KmsDomain = world["domain"]
    period = domain.period_number(NOW)
    assert [(i.role, i.id_type, i.data) for i in message.idrs()] == [
        (IdRole.INITIATOR_UID, IdType.URI, domain.uid(ALICE, period)),  # IDRi: the caller's UID
        (IdRole.RESPONDER_UID, IdType.URI, domain.uid(BOB, period)),  # IDRr: the callee's UID
        (IdRole.INITIATOR_KMS, IdType.URI, domain.kms_uri.encode()),
        (IdRole.RESPONDER_KMS, IdType.URI, domain.kms_uri.encode()),
    ]
    rand = message.find(Rand)
    assert rand is not None and rand.rand == key.rand
    assert message.find(Sakke) is not None
    ext = message.find(GeneralExt)
    assert ext is not None and ext.ext_type == 7
    sign = message.sign
    assert sign is not None and sign.sig_type == SignatureType.ECCSI
    assert eccsi.verify(data[: -len(sign.signature)], sign.signature, domain.uid(ALICE, period), domain.kpak)
    parsed = PckOffer.parse(data)
    parsed.check_parties(ALICE, BOB, domain)
    with pytest.raises(WrongParties):
        parsed.check_parties(ALICE, CAROL, domain)
    with pytest.raises(WrongParties):
        parsed.check_parties(CAROL, BOB, domain)


def test_round_trip(world: dict[str, Any]) -> None:
    data, key = offer(world)
    got = receive(world, data)
    assert (got.key.pck, got.key.pck_id, got.key.rand) == (key.pck, key.pck_id, key.rand)
    assert (got.caller_uri, got.callee_uri) == (ALICE, BOB)
    assert got.caller_uid == world["keys"][ALICE].uid and got.callee_uid == world["keys"][BOB].uid
    assert key.pck.hex() not in repr(got) + repr(key)


def test_the_key_parameters_say_pck(world: dict[str, Any]) -> None:
    from ptt.mikey.keyparams import unprotect

    data, key = offer(world)
    ext = MikeyMessage.parse(data).find(GeneralExt)
    assert ext is not None
    params = unprotect(ext.key_parameters(), key.pck)  # type: ignore[arg-type]
    assert params.key_type == KeyType.PCK and params.status == KeyStatus.NOT_REVOKED


def test_the_wrong_callee_cannot_decrypt(world: dict[str, Any]) -> None:
    data, _ = offer(world)
    with pytest.raises(WrongRecipient):
        receive(world, data, callee=CAROL)
    # Carol with Bob's UID in hand but her own RSK: the SAKKE does not open for her
    bob, carol = world["keys"][BOB], world["keys"][CAROL]
    impostor = IdentityKeys(BOB, bob.domain, bob.period_no, carol.ssk, carol.pvt, carol.rsk)
    with pytest.raises(MikeyError):
        receive_pck_message(
            data,
            callee=impostor,
            caller_uri=ALICE,
            trusted_kms={bob.domain.kms_uri: bob.domain},
            now=NOW,
            replay_cache=ReplayCache(),
        )


def test_another_caller_is_refused(world: dict[str, Any]) -> None:
    data, _ = offer(world)
    with pytest.raises(UnexpectedInitiator):
        receive(world, data, caller=CAROL)


def test_replay_is_refused(world: dict[str, Any]) -> None:
    data, _ = offer(world)
    cache = ReplayCache()
    receive(world, data, cache=cache)
    with pytest.raises(Replayed):
        receive(world, data, cache=cache)


@pytest.mark.parametrize("where", [20, 60, 100, 200, 300, -60, -1])
def test_tampering_is_refused(world: dict[str, Any], where: int) -> None:
    data, _ = offer(world)
    changed = bytearray(data)
    changed[where] ^= 0x04
    with pytest.raises(MikeyError):
        receive(world, bytes(changed))


def test_tampered_and_resigned_by_carol_is_refused(world: dict[str, Any]) -> None:
    data, _ = offer(world)
    unsigned = MikeyMessage.parse(data).unsigned()
    carol = world["keys"][CAROL]
    signature = eccsi.sign(unsigned.octets_to_sign(), carol.uid, carol.ssk, carol.pvt, carol.domain.kpak)
    with pytest.raises(BadSignature):
        receive(world, bytes(unsigned.with_signature(signature)))


def test_a_gmk_or_csk_is_not_a_pck(world: dict[str, Any]) -> None:
    for purpose in (KeyPurpose.GMK, KeyPurpose.CSK):
        data = build_i_message(
            initiator=world["keys"][ALICE],
            responder_uri=BOB,
            key=os.urandom(16),
            key_id=new_key_id(purpose),
            now=NOW,
        )
        with pytest.raises(NotAPck):
            PckOffer.parse(data)
        with pytest.raises(NotAPck):
            receive(world, data)


@pytest.mark.parametrize("data", [b"", b"\x01\x1a", b"\x00" * 40, os.urandom(300), b"\x01" * 5000])
def test_garbage_is_a_clean_refusal(data: bytes) -> None:
    with pytest.raises((MalformedMessage, NotAPck)):
        PckOffer.parse(data)


def test_pck_checks_its_form() -> None:
    with pytest.raises(ValueError):
        PrivateCallKey(os.urandom(16), new_key_id(KeyPurpose.GMK))
    with pytest.raises(ValueError):
        PrivateCallKey(os.urandom(15), new_key_id(KeyPurpose.PCK))
    assert isinstance(Hdr, type)


# --- the call's SRTP -------------------------------------------------------------------------------------------


def test_call_media_keys_follow_ts33180() -> None:
    key = make_private_call_key()
    for cs_id in (CsId.PRIVATE_CALL_INITIATOR, CsId.PRIVATE_CALL_RECEIVER):
        master, salt = srtp_master_key_and_salt(key.pck, cs_id, key.pck_id, key.rand, 16, 12)
        assert call_media_key(key, cs_id) == master + salt
    assert call_media_key(key, 0) != call_media_key(key, 1)


def test_each_party_opens_only_the_other_direction() -> None:
    key = make_private_call_key()
    rtp = bytes(RtpSender(1234, 96).packet(b"hello" * 20, 960, start_of_burst=True))
    caller_out, callee_out = PrivateSrtpSender(key, caller=True), PrivateSrtpSender(key, caller=False)
    caller_in, callee_in = PrivateSrtpReceiver(key, caller=True), PrivateSrtpReceiver(key, caller=False)
    from_caller = caller_out.protect(rtp)
    assert from_caller[-4:] == key.pck_id  # MKI = PCK-ID
    assert callee_in.unprotect(from_caller) == (rtp, key.pck_id)
    with pytest.raises(SrtpError):
        caller_in.unprotect(from_caller)  # its own direction: another key
    rtp2 = bytes(RtpSender(999, 96).packet(b"x" * 50, 960))
    assert caller_in.unprotect(callee_out.protect(rtp2))[0] == rtp2
    other = PrivateSrtpReceiver(make_private_call_key(), caller=False)
    with pytest.raises(SrtpError):
        other.unprotect(caller_out.protect(bytes(RtpSender(5, 96).packet(b"y" * 50, 960))))
    assert not AwaitingKey.awaits_key(callee_in, from_caller)
    with pytest.raises(SrtpError):
        callee_in.unprotect(b"\x80" * 10)


def test_tshark_decodes_the_pck_i_message(world: dict[str, Any], tmp_path: Any) -> None:
    """Wireshark's MIKEY dissector reads our PCK I_MESSAGE (over UDP) without a malformation: SAKKE data type, CSB ID =
    the PCK-ID, IDR roles 8/9/6/7 (the UIDs of 32 octets, the KMS URIs), SAKKE payload, key parameters, ECCSI SIGN."""
    import shutil
    import subprocess

    tshark, text2pcap = shutil.which("tshark"), shutil.which("text2pcap")
    if tshark is None or text2pcap is None:
        pytest.skip("tshark/text2pcap not installed (scripts/setup installs them)")
    data, key = offer(world)
    dump = "".join(f"{i:06x} " + " ".join(f"{b:02x}" for b in data[i : i + 16]) + "\n" for i in range(0, len(data), 16))
    (tmp_path / "in.txt").write_text(dump)
    pcap = tmp_path / "pck.pcap"
    subprocess.run([text2pcap, "-q", "-u", "5000,2269", str(tmp_path / "in.txt"), str(pcap)], check=True, timeout=60)

    def fields(*args: str) -> str:
        command = [tshark, "-r", str(pcap), "-d", "udp.port==2269,mikey", *args]
        return subprocess.run(command, check=True, capture_output=True, text=True, timeout=60).stdout.strip()

    names = ["type", "csb_id", "cs_count", "id.role", "id.len", "sakke.params", "sakke.len", "ext.type"]
    names += ["sign.type", "sign.len"]
    out = fields("-T", "fields", "-E", "separator=\t", *[a for n in names for a in ("-e", f"mikey.{n}")])
    assert dict(zip(names, out.split("\t"), strict=True)) == {
        "type": "26",
        "csb_id": f"0x{key.pck_id.hex()}",
        "cs_count": "0",
        "id.role": "8,9,6,7",
        "id.len": "32,32,15,15",
        "sakke.params": "1",
        "sakke.len": "273",
        "ext.type": "7",
        "sign.type": "2",
        "sign.len": "129",
    }
    assert fields("-Y", "_ws.malformed") == ""
