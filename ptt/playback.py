"""Opening a recorded burst (issue 17), without I/O: the archived GMK I_MESSAGEs addressed to one identity give the
GMKs of the time, which decrypt the burst's SRTP. A member replaying and the compliance auditor do the same.

An archived I_MESSAGE is checked as when it was sent (every check of ``receive_i_message``: the group's signature
for the key period of its T, addressed to the holder's UID, SAKKE, key parameters) with ``now`` = its own time T
and a replay cache of its own: it is being read again on purpose, not installed as a live key. Whoever holds no RSK
of the right UID and period (the server, a member who joined later or was removed before) gets no GMK, and so no
audio.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ptt.groupkeys import GroupKey
from ptt.mikey.errors import MikeyError
from ptt.mikey.imessage import IdentityKeys, KmsDomain, ReplayCache, receive_i_message, replay_key
from ptt.srtp import SrtpError, SrtpReceiver
from ptt.ts33180 import KeyPurpose

__all__ = ["OpenedBurst", "decrypt_burst", "open_archived_keys"]


@dataclass
class OpenedPackets:
    """RTP packets opened (in order, with their offsets) and what could not be opened (the first reasons)."""

    rtp: list[tuple[float, bytes]] = field(default_factory=list)
    failed: int = 0
    reasons: list[str] = field(default_factory=list)

    def open_each(self, packets: Iterable[tuple[float, bytes]], unprotect: Callable[[bytes], bytes]) -> None:
        """``unprotect`` each packet; one that raises ``SrtpError`` counts as failed and is skipped."""
        for offset, packet in packets:
            try:
                rtp = unprotect(packet)
            except SrtpError as exc:
                self.failed += 1
                if len(self.reasons) < 3:
                    self.reasons.append(str(exc))
                continue
            self.rtp.append((offset, rtp))


@dataclass
class OpenedBurst(OpenedPackets):
    """The RTP packets of a recorded burst."""


def open_archived_keys(
    messages: Iterable[bytes], *, group: str, holder_keys: Sequence[IdentityKeys], domain: KmsDomain
) -> tuple[list[GroupKey], list[str]]:
    """The GMKs of the archived I_MESSAGEs that open with ``holder_keys``, and why the others did not."""
    keys: list[GroupKey] = []
    refused: list[str] = []
    for data in messages:
        try:
            _, timestamp = replay_key(data)
            received = receive_i_message(
                data,
                responder=list(holder_keys),
                expected_initiators=group,
                trusted_kms={domain.kms_uri: domain},
                now=timestamp,
                replay_cache=ReplayCache(4),
            )
        except MikeyError as exc:
            refused.append(f"{type(exc).__name__}: {exc}")
            continue
        if received.purpose != KeyPurpose.GMK:
            refused.append(f"not a GMK ({received.purpose.name})")
            continue
        keys.append(GroupKey(gmk=received.key, gmk_id=received.key_id, rand=received.rand))
    return keys, refused


def decrypt_burst(packets: Iterable[tuple[float, bytes]], keys: Iterable[GroupKey]) -> OpenedBurst:
    """Every packet of the burst unprotected under the GMK its MKI names (a packet whose key is not among ``keys``,
    or that fails authentication, counts as failed)."""
    receiver = SrtpReceiver()
    for key in keys:
        receiver.add_key(key)
    opened = OpenedBurst()
    opened.open_each(packets, lambda packet: receiver.unprotect(packet)[0])
    return opened
