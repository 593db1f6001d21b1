"""Crossing key-period boundaries in a running client (issue 18), without I/O: time and file stamps are passed in.

A KMS issues every identity an ECCSI SSK/PVT and a SAKKE RSK per key period (``KmsDomain.key_period``, a month
normally, seconds in tests). ``provision --watch`` (another process, or the client's own agent) stores the next
period's keys in the keystore file some time during the current one; a running client must pick them up and use
them from the boundary on. What is decided here:

- which period is current at ``now`` and when the next boundary is (``next_boundary``);
- which of our own key sets signs (``signing_period``: the current period's only; a signature under another
  period's UID is refused by receivers, since they check the UID for the period of the signed time);
- which periods a peer may rightly address or sign to us around ``now`` (``accepted_periods``): every period that
  overlaps ``now ± grace``. The grace is the clock-skew allowance receivers already apply to the signed time
  (``MAX_CLOCK_SKEW``, 300 s): a peer whose clock is that far off signs and encrypts for its own idea of the
  period, so we must still hold those keys;
- when an ad-hoc group needs a fresh GMK (``rekey_due``): its key was made in an earlier period and we hold the
  current period's keys;
- when to re-read the keystore file (``KeystoreTracker``: its stamp changed), and what a reload brought
  (``Reloaded``: periods added and dropped, and whether the current period's keys came only now, late);
- which of our periods opened a received I_MESSAGE and in which period it was signed (``key_origin``), for the
  client's report.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ptt.mikey.identity import IdentityKeys, KmsDomain
from ptt.mikey.imessage_receive import MAX_CLOCK_SKEW, ReceivedKey
from ptt.ts33180 import period_bounds

__all__ = [
    "BOUNDARY_DELAY",
    "GRACE",
    "POLL_INTERVAL",
    "FileStamp",
    "KeyOrigin",
    "KeystoreTracker",
    "Reloaded",
    "accepted_periods",
    "key_origin",
    "next_boundary",
    "period_start",
    "rekey_due",
    "signing_period",
]

GRACE = MAX_CLOCK_SKEW
"""Seconds either side of ``now`` whose key periods a peer may use (the clock skew receivers allow)."""
POLL_INTERVAL = 2.0
"""Seconds between looks at the keystore file's stamp (a stat: cheap; the file is opened only when it changed)."""
BOUNDARY_DELAY = 0.5
"""Seconds after a boundary at which the client acts on it (sure to be past it, whatever the timer's rounding)."""


def period_start(domain: KmsDomain, period_no: int) -> float:
    return float(period_bounds(period_no, domain.key_period, domain.key_period_offset)[0])


def next_boundary(domain: KmsDomain, now: float) -> float:
    """The time the period after the one current at ``now`` begins."""
    return period_start(domain, domain.period_number(now) + 1)


def signing_period(domain: KmsDomain, held: Iterable[int], now: float) -> int | None:
    """The period whose keys sign at ``now``: the current one, or None when it is not held (never another
    period's: a receiver checks the UID for the period of the signed time and would refuse it)."""
    current = domain.period_number(now)
    return current if current in set(held) else None


def accepted_periods(domain: KmsDomain, now: float, grace: float = GRACE) -> tuple[int, ...]:
    """The periods that overlap ``[now - grace, now + grace]``: a peer with a clock that far off signs (and keys
    us) for one of them. Usually one; two within ``grace`` of a boundary; more only if a period is shorter."""
    first = domain.period_number(max(0.0, now - grace))
    last = domain.period_number(now + grace)
    return tuple(range(first, last + 1))


def rekey_due(domain: KmsDomain, keyed_at: float, now: float, held: Iterable[int]) -> bool:
    """An ad-hoc manager's question at each tick: was the group's GMK made in an earlier period than ``now``'s,
    and can we key it under ``now``'s (a GMK lives at most one key period)?"""
    current = domain.period_number(now)
    return current > domain.period_number(keyed_at) and current in set(held)


@dataclass(frozen=True)
class KeyOrigin:
    """Where a GMK came from: who signed its I_MESSAGE in which period, and which of our periods' RSK opened it."""

    signer: str
    signed_period: int
    rsk_period: int | None  # None: the responder UID matched none of our key sets (cannot happen once opened)
    timestamp: float

    def to_json(self) -> dict[str, Any]:
        return {
            "signer": self.signer,
            "signed_period": self.signed_period,
            "rsk_period": self.rsk_period,
            "t": round(self.timestamp, 3),
        }


def key_origin(received: ReceivedKey, held: Iterable[IdentityKeys]) -> KeyOrigin:
    """The periods of an opened I_MESSAGE: the signer's is the period of its time T (the receiver checked the
    initiator's UID for it); ours is the held key set whose UID is the message's responder UID."""
    rsk_period = None
    signed_period = None
    for keys in held:
        if keys.uid == received.responder_uid:
            rsk_period = keys.period_no
        if signed_period is None:
            signed_period = keys.domain.period_number(received.timestamp)
    return KeyOrigin(received.initiator_uri, -1 if signed_period is None else signed_period, rsk_period,
                     received.timestamp)  # fmt: skip


@dataclass(frozen=True)
class FileStamp:
    """What tells a rewritten file apart: the keystore is replaced atomically (a new inode), size and mtime too."""

    inode: int
    mtime_ns: int
    size: int


@dataclass(frozen=True)
class Reloaded:
    """What a reload changed in one identity's keys."""

    added: tuple[int, ...]
    dropped: tuple[int, ...]
    current: int
    has_current: bool
    late: bool  # the current period's keys arrived only now: what was keyed to them meanwhile was not opened
    has_next: bool

    @property
    def changed(self) -> bool:
        return bool(self.added or self.dropped)


@dataclass
class KeystoreTracker:
    """When to read the keystore file again and what a reload brought, for one identity."""

    domain: KmsDomain
    held: frozenset[int]
    stamp: FileStamp | None = None
    loading: bool = False
    _announced: int | None = field(default=None, repr=False)  # the last period whose boundary was acted on

    def should_load(self, stamp: FileStamp | None) -> bool:
        """At each poll: the file's current stamp (None: absent). A changed file is read once; a read in progress
        is not started again (it sets the stamp it read when it finishes)."""
        return stamp is not None and stamp != self.stamp and not self.loading

    def loaded(self, stamp: FileStamp, periods: Iterable[int], now: float) -> Reloaded:
        """The file at ``stamp`` was read and holds ``periods`` for our identity."""
        new = frozenset(periods)
        current = self.domain.period_number(now)
        result = Reloaded(
            added=tuple(sorted(new - self.held)),
            dropped=tuple(sorted(self.held - new)),
            current=current,
            has_current=current in new,
            late=current in new and current not in self.held,
            has_next=current + 1 in new,
        )
        self.held, self.stamp, self.loading = new, stamp, False
        return result

    def next_wakeup(self, now: float) -> float:
        """When the client should next act on a boundary: just after the next one."""
        return next_boundary(self.domain, now) + BOUNDARY_DELAY

    def boundary(self, now: float) -> int | None:
        """At a wake-up: the period that began, if not acted on yet (a timer may fire twice or late)."""
        current = self.domain.period_number(now)
        if self._announced == current:
            return None
        self._announced = current
        return current

    def missing(self, now: float, grace: float = GRACE) -> tuple[int, ...]:
        """Periods a peer may key or sign us under around ``now`` whose keys we do not hold."""
        return tuple(p for p in accepted_periods(self.domain, now, grace) if p not in self.held)
