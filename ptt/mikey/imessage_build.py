"""Building MIKEY-SAKKE I_MESSAGEs (TS 33.180 E.2 / E.6): the layout and what ``build_i_message`` fills in are
described in :mod:`ptt.mikey.imessage`; building signs last."""

from __future__ import annotations

import os

from ptt.crypto import eccsi, sakke
from ptt.mikey.codes import (
    CsIdMapType,
    DataType,
    IdRole,
    IdType,
    Payload,
    PrfFunc,
    SakkeIdScheme,
    SakkeParams,
    SignatureType,
    SrtpParam,
)
from ptt.mikey.header import GenericIdEntry, Hdr, Idr, Rand, T
from ptt.mikey.identity import IdentityKeys, KmsDomain
from ptt.mikey.keyparams import KeyParameters, KeyStatus, protect
from ptt.mikey.message import MikeyMessage
from ptt.mikey.security import GeneralExt, Sakke, Sp, SpParam
from ptt.ts33180 import (
    CsId,
    KeyPurpose,
    guk_id,
    key_purpose,
    unix_to_ntp,
)

RAND_LENGTH = 16
KEY_LENGTH = 16
KEY_PARAMETERS_EXT = 7

# The SRTP policy TS 33.180 mandates by default (AEAD AES-128-GCM, 16-octet key, 12-octet salt, 16-octet tag),
# with the parameter list other vendors send (types 18 and 19 as they carry them).
DEFAULT_SECURITY_POLICY = Sp(
    policy_no=0,
    prot_type=0,
    params=(
        SpParam(SrtpParam.ENC_ALG, b"\x06"),
        SpParam(SrtpParam.SESSION_ENC_KEY_LEN, b"\x10"),
        SpParam(SrtpParam.AUTH_ALG, b"\x04"),
        SpParam(SrtpParam.SESSION_SALT_LEN, b"\x0c"),
        SpParam(SrtpParam.SRTP_PRF, b"\x00"),
        SpParam(SrtpParam.KEY_DERIVATION_RATE, b"\x00"),
        SpParam(18, b"\x04"),
        SpParam(19, b"\x00"),
        SpParam(SrtpParam.AEAD_AUTH_TAG_LEN, b"\x10"),
    ),
)


def build_i_message(
    *,
    initiator: IdentityKeys,
    responder_uri: str,
    responder_domain: KmsDomain | None = None,
    key: bytes,
    key_id: bytes,
    now: float,
    rand: bytes | None = None,
    key_parameters: KeyParameters | None = None,
    security_policy: Sp | None = DEFAULT_SECURITY_POLICY,
    responder_period_no: int | None = None,
) -> bytes:
    """An I_MESSAGE carrying ``key`` from ``initiator`` to ``responder_uri``, signed last."""
    if len(key) != KEY_LENGTH:
        raise ValueError(f"key must be {KEY_LENGTH} octets")
    purpose = key_purpose(key_id)
    if initiator.period_no != initiator.domain.period_number(now):
        raise ValueError("initiator keys are not for the key period at 'now'")
    if not initiator.ssk or not initiator.pvt:
        raise ValueError("initiator has no signing key")
    domain = responder_domain or initiator.domain
    period = responder_period_no if responder_period_no is not None else domain.period_number(now)
    responder_uid = domain.uid(responder_uri, period)
    rand = os.urandom(RAND_LENGTH) if rand is None else rand

    if purpose == KeyPurpose.GMK:
        csb_id = guk_id(key, key_id, responder_uri)
        hdr = Hdr(
            DataType.SAKKE_MSG,
            int.from_bytes(csb_id, "big"),
            CsIdMapType.GENERIC_ID,
            (GenericIdEntry(CsId.GROUP_CALL, key_id + csb_id),),
            PrfFunc.HMAC_SHA_256,
        )
    elif purpose == KeyPurpose.CSK:
        csb_id = key_id
        hdr = Hdr(
            DataType.SAKKE_MSG,
            int.from_bytes(csb_id, "big"),
            CsIdMapType.GENERIC_ID,
            (GenericIdEntry(CsId.CSK_SRTCP, key_id),),
            PrfFunc.HMAC_SHA_256,
        )
    else:
        csb_id = key_id
        hdr = Hdr(DataType.SAKKE_MSG, int.from_bytes(csb_id, "big"), CsIdMapType.EMPTY, (), PrfFunc.HMAC_SHA_256)

    if key_parameters is None:
        key_parameters = KeyParameters(
            key_type=purpose,
            status=KeyStatus.NOT_REVOKED,
            group_ids=() if purpose == KeyPurpose.GMK else None,
        )
    protected = protect(
        key_parameters, key, int.from_bytes(csb_id, "big"), date_time=int(unix_to_ntp(now)) & 0xFFFFFFFFFF
    )

    payloads: list[Payload] = [
        T.ntp_utc(now),
        Rand(rand),
        Idr(IdRole.INITIATOR_UID, IdType.URI, initiator.uid),
        Idr(IdRole.RESPONDER_UID, IdType.URI, responder_uid),
        Idr(IdRole.INITIATOR_KMS, IdType.URI, initiator.domain.kms_uri.encode()),
        Idr(IdRole.RESPONDER_KMS, IdType.URI, domain.kms_uri.encode()),
    ]
    if security_policy is not None:
        payloads.append(security_policy)
    payloads.append(
        Sakke(SakkeParams.PARAMETER_SET_1, SakkeIdScheme.TS33180_UID, sakke.encapsulate(key, responder_uid, domain.z))
    )
    payloads.append(GeneralExt(KEY_PARAMETERS_EXT, bytes(protected)))
    unsigned = MikeyMessage.build(hdr, payloads)
    signature = eccsi.sign(
        unsigned.octets_to_sign(), initiator.uid, initiator.ssk, initiator.pvt, initiator.domain.kpak
    )
    return bytes(unsigned.with_signature(signature, SignatureType.ECCSI))
