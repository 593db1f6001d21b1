"""The parties of an I_MESSAGE: a KMS domain (its certificate's public part) and one identity's keys for one
key period."""

from __future__ import annotations

from dataclasses import dataclass, field

from ptt.ts33180 import (
    DEFAULT_KEY_PERIOD,
    period_number,
    uid,
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
