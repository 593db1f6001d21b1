"""Building and receiving MIKEY-SAKKE I_MESSAGEs as 3GPP TS 33.180 uses them (GMK, PCK, CSK, ...).

Layout (TS 33.180 E.2 / E.6, as other vendors send it): HDR · T · RAND · IDR(8 initiator UID) · IDR(9 responder
UID) · IDR(6 initiator's KMS) · IDR(7 responder's KMS) · SP · SAKKE · GENERAL-EXT(7 key parameters) · SIGN.
Building signs last; receiving is one call that checks everything before returning the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ptt.crypto import DecryptionError, eccsi, sakke
from ptt.mikey.errors import (
    BadSignature,
    DecryptionFailed,
    KeyParametersError,
    MalformedMessage,
    OutsideTimeWindow,
    Replayed,
    UnexpectedInitiator,
    UnknownKms,
    WrongRecipient,
)
from ptt.mikey.keyparams import KeyParameters, KeyStatus, LegacyKeyParameters, protect, unprotect
from ptt.mikey.message import MikeyMessage
from ptt.mikey.payloads import (
    CsIdMapType,
    DataType,
    GeneralExt,
    GenericIdEntry,
    Hdr,
    Idr,
    IdRole,
    IdType,
    Payload,
    PrfFunc,
    Rand,
    Sakke,
    SakkeIdScheme,
    SakkeParams,
    SignatureType,
    Sp,
    SpParam,
    SrtpParam,
    T,
)
from ptt.ts33180 import (
    DEFAULT_KEY_PERIOD,
    CsId,
    KeyPurpose,
    guk_id,
    key_purpose,
    period_number,
    uid,
    unix_to_ntp,
)

RAND_LENGTH = 16
KEY_LENGTH = 16
KEY_PARAMETERS_EXT = 7
DEFAULT_WINDOW = 300.0  # seconds of clock skew / transit allowed for a directly delivered I_MESSAGE

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


@dataclass(frozen=True)
class KmsDomain:
    """What anyone needs to know of a KMS to key a call to its users: its certificate's public part."""

    kms_uri: str
    kpak: bytes
    z: bytes
    key_period: int = DEFAULT_KEY_PERIOD
    key_period_offset: int = 0

    def period_number(self, now: float) -> int:
        return period_number(now, self.key_period, self.key_period_offset)

    def uid(self, uri: str, period_no: int) -> bytes:
        return uid(uri, self.kms_uri, self.key_period, self.key_period_offset, period_no)


@dataclass(frozen=True, repr=False)
class IdentityKeys:
    """One identity's keys for one key period: ECCSI (SSK, PVT) to sign, SAKKE RSK to decrypt."""

    uri: str
    domain: KmsDomain
    period_no: int
    ssk: bytes = b""
    pvt: bytes = b""
    rsk: bytes = b""
    uid: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "uid", self.domain.uid(self.uri, self.period_no))

    def __repr__(self) -> str:
        return f"IdentityKeys(uri={self.uri!r}, kms={self.domain.kms_uri!r}, period_no={self.period_no})"


# SigningKeys is the name the group manager uses for the identity it signs as.
SigningKeys = IdentityKeys


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


class ReplayCache:
    """Remembers the I_MESSAGEs accepted within the time window (RFC 3830 §5.4).

    Keyed by a digest of the signed octets minus the signature (ECCSI signatures are malleable: (r, q-s)
    verifies too). Bounded: when full, the oldest entries go and anything not newer than them is refused.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[bytes, tuple[float, float]] = OrderedDict()  # digest -> (timestamp, expires)
        self._floor = float("-inf")  # timestamps at or below this may have been forgotten
        self._last_sweep = float("-inf")

    def check_and_remember(self, digest: bytes, timestamp: float, expires: float) -> None:
        if timestamp <= self._floor:
            raise Replayed("I_MESSAGE older than the replay cache can vouch for")
        if digest in self._seen:
            raise Replayed("I_MESSAGE already received")
        self._seen[digest] = (timestamp, expires)
        self._expire_overflow()

    def seen(self, digest: bytes, timestamp: float) -> bool:
        """Would :meth:`check_and_remember` refuse this message? (A cheap check before the expensive ones.)"""
        return timestamp <= self._floor or digest in self._seen

    def sweep(self, now: float, every: float = 30.0) -> None:
        """``forget_expired`` at most once per ``every`` seconds of ``now``: cheap to call per message."""
        if now - self._last_sweep >= every or now < self._last_sweep:
            self._last_sweep = now
            self.forget_expired(now)

    def forget_expired(self, now: float) -> None:
        stale = [d for d, (_, expires) in self._seen.items() if expires < now]
        for d in stale:
            del self._seen[d]

    def _expire_overflow(self) -> None:
        while len(self._seen) > self.capacity:
            # The floor is the evicted message's own time: a replay of it (or of anything older) is refused,
            # while newer messages are still accepted.
            _, (timestamp, _) = self._seen.popitem(last=False)
            self._floor = max(self._floor, timestamp)

    def __len__(self) -> int:
        return len(self._seen)


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


def receive_i_message(
    data: bytes,
    *,
    responder: IdentityKeys | Sequence[IdentityKeys],
    expected_initiators: str | Iterable[str],
    trusted_kms: Mapping[str, KmsDomain],
    now: float,
    replay_cache: ReplayCache,
    window: float = DEFAULT_WINDOW,
) -> ReceivedKey:
    """Parse, check and decrypt an I_MESSAGE addressed to ``responder``.

    ``responder`` may list the keys of several key periods (current and next). ``expected_initiators`` are the
    URIs allowed to send this key (a GMK: the group's URI). ``trusted_kms`` maps KMS URIs to their public
    parameters (own domain plus the domains the KMS vouches for). Raises a MikeyError subclass on any failure.
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
    if abs(now - timestamp) > window:
        raise OutsideTimeWindow(f"I_MESSAGE time is {timestamp - now:+.0f} s from now (window ±{window:.0f} s)")

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
    replay_cache.check_and_remember(hashlib.sha256(signed).digest(), timestamp, timestamp + window)

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
