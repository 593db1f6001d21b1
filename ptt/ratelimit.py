"""Token buckets with time passed in, and a bounded table of them keyed by who is being limited."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; :meth:`take` spends one if there is one."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float = 0.0) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least one")
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def _refill(self, now: float) -> None:
        elapsed = now - self.stamp
        self.stamp = now
        if elapsed > 0:  # a clock that went back refills nothing
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)

    def take(self, now: float, cost: float = 1.0) -> bool:
        self._refill(now)
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True

    def retry_after(self, now: float, cost: float = 1.0) -> float:
        """Seconds until :meth:`take` would succeed."""
        self._refill(now)
        return max(0.0, (cost - self.tokens) / self.rate)

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


class BucketTable(Generic[Key]):
    """One bucket per key, at most ``capacity`` of them: when full, the least recently used full bucket goes,
    and if none is full every new key shares one overflow bucket (a flood of new keys cannot grow memory)."""

    def __init__(self, rate: float, burst: float, capacity: int = 4096) -> None:
        self.rate, self.burst, self.capacity = rate, burst, capacity
        self._buckets: OrderedDict[Key, TokenBucket] = OrderedDict()
        self._overflow = TokenBucket(rate, burst)

    def bucket(self, key: Key, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is not None:
            self._buckets.move_to_end(key)
            return bucket
        if len(self._buckets) >= self.capacity:
            oldest_key, oldest = next(iter(self._buckets.items()))
            if not oldest.full(now):
                return self._overflow
            del self._buckets[oldest_key]
        bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        return bucket

    def take(self, key: Key, now: float) -> bool:
        return self.bucket(key, now).take(now)

    def __len__(self) -> int:
        return len(self._buckets)
