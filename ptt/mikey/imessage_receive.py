"""Receiving MIKEY-SAKKE I_MESSAGEs: one call (``receive_i_message``) checks everything before returning the key;
``replay_key`` lets a receiver refuse a replay from a parse alone."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ptt.crypto import DecryptionError, eccsi, sakke
from ptt.mikey.codes import CsIdMapType, DataType, IdRole, Payload, PrfFunc, SakkeIdScheme, SakkeParams, SignatureType
from ptt.mikey.errors import (
    BadSignature,
    DecryptionFailed,
    KeyParametersError,
    MalformedMessage,
    OutsideTimeWindow,
    UnexpectedInitiator,
    UnknownKms,
    WrongRecipient,
)
from ptt.mikey.header import GenericIdEntry, Hdr, Rand, T
from ptt.mikey.identity import IdentityKeys, KmsDomain
from ptt.mikey.imessage_build import KEY_PARAMETERS_EXT
from ptt.mikey.keyparams import KeyParameters, KeyStatus, LegacyKeyParameters, unprotect
from ptt.mikey.message import MikeyMessage
from ptt.mikey.replay import ReplayCache
from ptt.mikey.security import GeneralExt, Sakke, Sp
from ptt.ts33180 import (
    KeyPurpose,
    guk_id,
    key_purpose,
)

MAX_CLOCK_SKEW = 300.0
"""How far in the future an I_MESSAGE's time may be (seconds): the senders' clocks may run ahead of ours by this
much (RFC 3830 §5.4's allowable clock skew; TS 33.180 practice is minutes). Never days: a message dated ahead is
no message anyone sent now, and accepting it would let it be stored and played in later."""
DEFAULT_MAX_AGE = 300.0
"""How old a directly delivered I_MESSAGE may be (seconds): clock skew plus transit. Receivers of *stored*
messages (a GMK kept for an offline member) pass a larger ``max_age``, bounded by the key period."""
DEFAULT_WINDOW = DEFAULT_MAX_AGE  # the former symmetric window's name, kept for importers


@dataclass(frozen=True, repr=False)
class ReceivedKey:
    """What a verified, decrypted I_MESSAGE delivers."""

    key: bytes
    key_id: bytes
    purpose: KeyPurpose
    rand: bytes
    csb_id: bytes
    cs_id: int | None
    initiator_uri: str
    initiator_uid: bytes
    responder_uri: str
    responder_uid: bytes
    initiator_kms: str
    responder_kms: str
    timestamp: float
    key_parameters: KeyParameters | None
    security_policy: Sp | None

    @property
    def revoked(self) -> bool:
        params = self.key_parameters
        return params is not None and not params.status & KeyStatus.NOT_REVOKED

    def __repr__(self) -> str:  # never show the key
        return (
            f"ReceivedKey(purpose={self.purpose.name}, key_id={self.key_id.hex()}, csb_id={self.csb_id.hex()}, "
            f"initiator={self.initiator_uri!r}, responder={self.responder_uri!r})"
        )


def _one_idr(message: MikeyMessage, role: IdRole) -> bytes:
    found = message.idrs(role)
    if len(found) != 1:
        raise MalformedMessage(f"I_MESSAGE must carry exactly one IDR with role {role.name}, found {len(found)}")
    return found[0].data


def _required(message: MikeyMessage, kind: type[Payload], name: str) -> Payload:
    found = message.find_all(kind)
    if len(found) != 1:
        raise MalformedMessage(f"I_MESSAGE must carry exactly one {name} payload, found {len(found)}")
    return found[0]


def replay_key(data: bytes) -> tuple[bytes, float]:
    """The replay cache's key of an I_MESSAGE and its time, from a parse only (no signature check, no SAKKE):
    lets a receiver refuse a replay before any expensive work. Raises MalformedMessage."""
    data = bytes(data)
    message = MikeyMessage.parse(data)
    sign = message.sign
    if sign is None:
        raise MalformedMessage("I_MESSAGE has no SIGN payload")
    timestamp_payload = _required(message, T, "T")
    assert isinstance(timestamp_payload, T)
    try:
        timestamp = timestamp_payload.unix_time()
    except ValueError as exc:
        raise MalformedMessage(str(exc)) from None
    return hashlib.sha256(data[: len(data) - len(sign.signature)]).digest(), timestamp


def check_time(
    timestamp: float, now: float, *, max_age: float = DEFAULT_MAX_AGE, max_skew: float = MAX_CLOCK_SKEW
) -> None:
    """The time window: ``OutsideTimeWindow`` unless now - ``max_age`` ≤ ``timestamp`` ≤ now + ``max_skew``.
    (Callers that check the time before the expensive work, on ``replay_key``'s time, use it too.)"""
    if not now - max_age <= timestamp <= now + max_skew:  # also refuses a NaN
        raise OutsideTimeWindow(
            f"I_MESSAGE time is {timestamp - now:+.0f} s from now (accepted: {max_age:.0f} s old to "
            f"{max_skew:.0f} s ahead)"
        )


def receive_i_message(
    data: bytes,
    *,
    responder: IdentityKeys | Sequence[IdentityKeys],
    expected_initiators: str | Iterable[str],
    trusted_kms: Mapping[str, KmsDomain],
    now: float,
    replay_cache: ReplayCache,
    max_age: float = DEFAULT_MAX_AGE,
    max_skew: float = MAX_CLOCK_SKEW,
) -> ReceivedKey:
    """Parse, check and decrypt an I_MESSAGE addressed to ``responder``.

    ``responder`` may list the keys of several key periods (current and next). ``expected_initiators`` are the
    URIs allowed to send this key (a GMK: the group's URI). ``trusted_kms`` maps KMS URIs to their public
    parameters (own domain plus the domains the KMS vouches for). The message's time T must lie in
    [now - ``max_age``, now + ``max_skew``]: a large ``max_age`` admits stored messages (the replay cache, which keeps
    each digest until T + ``max_age``, refuses them twice), but the future allowance is clock skew only.
    Raises a MikeyError subclass on any failure.
    """
    data = bytes(data)
    message = MikeyMessage.parse(data)
    hdr = message.hdr
    if hdr.data_type != DataType.SAKKE_MSG:
        raise MalformedMessage(f"not a SAKKE I_MESSAGE (data type {hdr.data_type})")
    if hdr.prf_func != PrfFunc.HMAC_SHA_256:
        raise MalformedMessage(f"unsupported PRF {hdr.prf_func}")
    sign = message.sign
    if sign is None or sign.sig_type != SignatureType.ECCSI or len(sign.signature) != eccsi.SIGNATURE_LENGTH:
        raise MalformedMessage("I_MESSAGE must end in a 129-octet ECCSI SIGN payload")
    timestamp_payload = _required(message, T, "T")
    rand_payload = _required(message, Rand, "RAND")
    sakke_payload = _required(message, Sakke, "SAKKE")
    assert isinstance(timestamp_payload, T) and isinstance(rand_payload, Rand) and isinstance(sakke_payload, Sakke)
    initiator_uid = _one_idr(message, IdRole.INITIATOR_UID)
    responder_uid = _one_idr(message, IdRole.RESPONDER_UID)
    initiator_kms = _one_idr(message, IdRole.INITIATOR_KMS).decode("utf-8", "replace")
    responder_kms = _one_idr(message, IdRole.RESPONDER_KMS).decode("utf-8", "replace")

    try:
        timestamp = timestamp_payload.unix_time()
    except ValueError as exc:
        raise MalformedMessage(str(exc)) from None
    check_time(timestamp, now, max_age=max_age, max_skew=max_skew)

    initiator_domain = trusted_kms.get(initiator_kms)
    if initiator_domain is None:
        raise UnknownKms(f"initiator's KMS {initiator_kms!r} is not trusted")

    # Who signed: the UID must be one of the expected initiators' UIDs for the key period at the message's time.
    candidates = [expected_initiators] if isinstance(expected_initiators, str) else list(expected_initiators)
    period = initiator_domain.period_number(timestamp)
    initiator_uri = next(
        (uri for uri in candidates if hmac.compare_digest(initiator_domain.uid(uri, period), initiator_uid)), None
    )
    if initiator_uri is None:
        raise UnexpectedInitiator("I_MESSAGE initiator is none of the identities allowed to send this key")

    signed = data[: len(data) - len(sign.signature)]
    if not eccsi.verify(signed, sign.signature, initiator_uid, initiator_domain.kpak):
        raise BadSignature("ECCSI signature does not verify")

    held = [responder] if isinstance(responder, IdentityKeys) else list(responder)
    keys = next((k for k in held if hmac.compare_digest(k.uid, responder_uid)), None)
    if keys is None or responder_kms != keys.domain.kms_uri:
        raise WrongRecipient("I_MESSAGE is not addressed to this identity (responder UID or KMS differs)")
    if not keys.rsk:
        raise WrongRecipient("no decryption key held for the addressed key period")

    replay_cache.sweep(now)
    replay_cache.check_and_remember(hashlib.sha256(signed).digest(), timestamp, timestamp + max_age)

    if (
        sakke_payload.sakke_params != SakkeParams.PARAMETER_SET_1
        or sakke_payload.id_scheme != SakkeIdScheme.TS33180_UID
    ):
        raise MalformedMessage("SAKKE payload: only parameter set 1 with TS 33.180 UIDs is supported")
    try:
        key = sakke.decapsulate(sakke_payload.data, responder_uid, keys.rsk, keys.domain.z)
    except DecryptionError as exc:
        raise DecryptionFailed(str(exc)) from None

    csb_id = hdr.csb_id.to_bytes(4, "big")
    key_id, cs_id = _key_id_from_map(hdr, csb_id)
    try:
        purpose = key_purpose(key_id)
    except ValueError as exc:
        raise MalformedMessage(str(exc)) from None
    if purpose == KeyPurpose.GMK and hdr.cs_map_type == CsIdMapType.GENERIC_ID:
        expected = guk_id(key, key_id, keys.uri)
        if not hmac.compare_digest(expected, csb_id):
            raise WrongRecipient("GUK-ID in the HDR does not belong to this member")

    key_parameters = _key_parameters(message, key)
    if key_parameters is not None and key_parameters.key_type != purpose:
        raise KeyParametersError(f"key parameters say key type {key_parameters.key_type}, key ID says {purpose.name}")
    security_policy = message.find(Sp)
    return ReceivedKey(
        key=key,
        key_id=key_id,
        purpose=purpose,
        rand=rand_payload.rand,
        csb_id=csb_id,
        cs_id=cs_id,
        initiator_uri=initiator_uri,
        initiator_uid=initiator_uid,
        responder_uri=keys.uri,
        responder_uid=responder_uid,
        initiator_kms=initiator_kms,
        responder_kms=responder_kms,
        timestamp=timestamp,
        key_parameters=key_parameters,
        security_policy=security_policy,
    )


def _key_id_from_map(hdr: Hdr, csb_id: bytes) -> tuple[bytes, int | None]:
    """GMK: SPI = GMK-ID || GUK-ID; CSK: SPI = CSK-ID; otherwise the CSB ID is the key ID."""
    if hdr.cs_map_type == CsIdMapType.GENERIC_ID and hdr.cs_map:
        entry = hdr.cs_map[0]
        assert isinstance(entry, GenericIdEntry)
        if len(entry.spi) == 8:
            if entry.spi[4:] != csb_id:
                raise MalformedMessage("GENERIC-ID SPI does not end in the CSB ID (GUK-ID)")
            return entry.spi[:4], entry.cs_id
        if len(entry.spi) == 4:
            if entry.spi != csb_id:  # CSK (and the like): the CSB ID is the key ID the SPI carries
                raise MalformedMessage("GENERIC-ID SPI (key ID) differs from the CSB ID")
            return entry.spi, entry.cs_id
        raise MalformedMessage(f"GENERIC-ID SPI of {len(entry.spi)} octets (expected 4 or 8)")
    return csb_id, None


def _key_parameters(message: MikeyMessage, key: bytes) -> KeyParameters | None:
    extensions = [p for p in message.find_all(GeneralExt) if p.ext_type == KEY_PARAMETERS_EXT]
    if not extensions:
        return None
    if len(extensions) > 1:
        raise MalformedMessage("more than one 3GPP key parameters extension")
    carried = extensions[0].key_parameters()
    if isinstance(carried, LegacyKeyParameters):
        return carried.to_key_parameters()
    return unprotect(carried, key)
