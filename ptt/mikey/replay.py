"""The replay cache of I_MESSAGE receivers (and of ad-hoc datagrams): digests of signed octets seen, until they
expire, bounded in size; its state as a small JSON-able document (digests and times only, no secrets) so that a
process can keep it across restarts (``client.keystore.ReplayFile``)."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

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
        self.changes = 0  # counts what was remembered: a persisting caller saves when it moved

    def check_and_remember(self, digest: bytes, timestamp: float, expires: float) -> None:
        if timestamp <= self._floor:
            raise Replayed("I_MESSAGE older than the replay cache can vouch for")
        if digest in self._seen:
            raise Replayed("I_MESSAGE already received")
        self._seen[digest] = (timestamp, expires)
        self.changes += 1
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

    # --- kept across restarts ------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The cache's state as JSON-able data: the floor and every entry (hex digest, timestamp, expiry), oldest
        first. No secrets: digests of signed octets and times."""
        return {
            "version": SNAPSHOT_VERSION,
            "floor": None if self._floor == float("-inf") else self._floor,
            "entries": [[digest.hex(), timestamp, expires] for digest, (timestamp, expires) in self._seen.items()],
        }

    @classmethod
    def restore(cls, snapshot: Any, now: float, capacity: int = 100_000) -> ReplayCache:
        """A cache holding what ``snapshot`` held, minus the entries expired at ``now``. More entries than
        ``capacity``: the oldest go and raise the floor, as if they had overflowed here. ``ValueError`` for anything
        that is not a snapshot (the caller then starts empty)."""
        if not isinstance(snapshot, dict) or snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError("not a replay cache snapshot (or of another version)")
        floor, entries = snapshot.get("floor"), snapshot.get("entries")
        if not isinstance(entries, list):
            raise ValueError("replay cache snapshot: entries must be a list")
        cache = cls(capacity)
        if floor is not None:
            cache._floor = _finite(floor, "floor")
        for entry in entries:
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)):
                raise ValueError("replay cache snapshot: an entry is not [digest, timestamp, expires]")
            digest = bytes.fromhex(entry[0])
            if len(digest) != 32:
                raise ValueError("replay cache snapshot: a digest is not 32 octets")
            timestamp, expires = _finite(entry[1], "timestamp"), _finite(entry[2], "expires")
            if expires >= now:
                cache._seen[digest] = (timestamp, expires)
        cache._expire_overflow()
        return cache


SNAPSHOT_VERSION = 1


def _finite(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"replay cache snapshot: {name} is not a finite number")
    return float(value)
