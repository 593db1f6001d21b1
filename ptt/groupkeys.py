"""Group master keys (GMK, TS 33.180 §7.1 and F.1.3) and the I_MESSAGEs that distribute them."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ptt.mikey.imessage import RAND_LENGTH, IdentityKeys, KmsDomain, build_i_message
from ptt.mikey.keyparams import KeyParameters
from ptt.ts33180 import KeyPurpose, guk_id, key_purpose, new_key_id

GMK_LENGTH = 16


@dataclass(frozen=True, repr=False)
class GroupKey:
    """A GMK, its 32-bit GMK-ID (purpose tag 0 in the top four bits) and the RAND sent with it.

    Every member's I_MESSAGE for one GMK carries the same RAND: the SRTP master keys derive from GMK, the
    sender's GUK-ID and RAND (TS 33.180 §7.4.2), so sender and receivers must agree on it.
    """

    gmk: bytes
    gmk_id: bytes
    rand: bytes = field(default_factory=lambda: os.urandom(RAND_LENGTH))

    def __post_init__(self) -> None:
        if len(self.gmk) != GMK_LENGTH:
            raise ValueError(f"GMK must be {GMK_LENGTH} octets")
        if key_purpose(self.gmk_id) != KeyPurpose.GMK:
            raise ValueError("GMK-ID must carry the GMK purpose tag (0)")
        if not 1 <= len(self.rand) <= 255:
            raise ValueError("RAND must be 1 to 255 octets")

    def guk_id(self, member_uri: str) -> bytes:
        """The member's GUK-ID: the CSB ID of its I_MESSAGE and the second half of its SRTP MKI."""
        return guk_id(self.gmk, self.gmk_id, member_uri)

    def __repr__(self) -> str:
        return f"GroupKey(gmk_id={self.gmk_id.hex()})"


def make_group_key() -> GroupKey:
    """A fresh random GMK with a fresh GMK-ID."""
    return GroupKey(gmk=os.urandom(GMK_LENGTH), gmk_id=new_key_id(KeyPurpose.GMK))


def build_gmk_messages(
    manager: IdentityKeys,
    group_key: GroupKey,
    members: Iterable[str],
    *,
    now: float,
    member_domains: Mapping[str, KmsDomain] | None = None,
    key_parameters: KeyParameters | None = None,
) -> dict[str, bytes]:
    """One signed, SAKKE-encrypted GMK I_MESSAGE per member URI (members of other domains via
    ``member_domains``), the manager signing as the group identity."""
    domains = member_domains or {}
    return {
        uri: build_i_message(
            initiator=manager,
            responder_uri=uri,
            responder_domain=domains.get(uri, manager.domain),
            key=group_key.gmk,
            key_id=group_key.gmk_id,
            now=now,
            rand=group_key.rand,
            key_parameters=key_parameters,
        )
        for uri in members
    }
