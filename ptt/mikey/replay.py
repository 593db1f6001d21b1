"""The replay cache of I_MESSAGE receivers (and of ad-hoc datagrams): digests of signed octets seen, until they
expire, bounded in size."""

from __future__ import annotations

from collections import OrderedDict

from ptt.mikey.errors import (
    Replayed,
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
