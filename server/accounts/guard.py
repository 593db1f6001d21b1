"""The rules that refuse logins (``LoginGuard``), so that no stranger can turn them against an account's owner.

In memory, bounded, time passed in; checked in this order before any password work:

1. *per address* (``FailureThrottle``): 20 failed logins from one address within a minute refuse that address;
2. *per (account, source address)* (``LockoutPolicy``): 5 consecutive failures of an account from one address
   lock that account *for that address only*, 30 s doubling with each further failure up to an hour; the owner
   logging in from elsewhere is not affected, and while locked the password is not even checked;
3. *per account*, sources the account has not logged in from lately: a token bucket of 10 failures refilled one
   per 6 s; when empty, logins of the account from new sources are refused for a few seconds (429, Retry-After)
   unchecked. It only slows a spread-out attack (about 10 guesses a minute), never locks;
4. *global failure budget*: 30 failures refilled 2 per second across all accounts and sources; when spent,
   password checks from new sources are refused (429) before scrypt runs, so a spray from many addresses cannot
   eat the CPU nor get more than 2 guesses a second.

An (account, source) that logged in successfully within 30 days is a *known source*: rules 3 and 4 do not apply
to it, so an attack elsewhere leaves the owner's usual logins working. Unknown account names are counted like
known ones (no account enumeration by lockout) and cost the same scrypt work. Refusals are logged (and audited by
the login procedure) at most once per 10 s per account (``LogLimiter``).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass, replace

from server.accounts.errors import LockedOut

IP_FAILURE_WINDOW = 60.0
IP_FAILURE_LIMIT = 20  # failed logins per source address per window before it is refused outright
IP_MAX_ADDRESSES = 10_000  # addresses remembered at most (the least recently failing are forgotten first)


@dataclass(frozen=True)
class LockoutPolicy:
    """When consecutive failed logins of one account from one source lock it for that source, and for how long
    (pure: counts and times in)."""

    after: int = 5  # consecutive failures before the first lock
    first: float = 30.0  # seconds, doubled on every further failure ...
    longest: float = 3600.0  # ... up to an hour

    def lock_duration(self, failures: int) -> float:
        """Seconds locked after ``failures`` consecutive failures: 0 below the threshold, then doubling."""
        if failures < self.after:
            return 0.0
        doublings = min(failures - self.after, 32)
        return min(self.first * float(1 << doublings), self.longest)

    def retry_after(self, locked_until: float, now: float) -> float:
        """Seconds until a login may be tried again (0: it may be tried now)."""
        return max(0.0, locked_until - now)

    def locked_until(self, failures: int, now: float) -> float | None:
        """After a failure that makes ``failures`` consecutive ones at ``now``: the end of the lock, or None."""
        lock = self.lock_duration(failures)
        return now + lock if lock else None


LOCKOUT = LockoutPolicy()


@dataclass(frozen=True)
class LoginLimits:
    """The limits of ``LoginGuard`` besides the lockout policy."""

    account_burst: int = 10  # failures of one account (from sources it is not known at) before new sources wait
    account_rate: float = 1 / 6  # ... refilled per second: about 10 guesses a minute per account
    global_burst: int = 30  # failures across all accounts and sources before new sources wait
    global_rate: float = 2.0  # ... refilled per second
    known_source_days: float = 30.0  # how long a successful login makes its (account, source) a known source
    forget_after: float = 86400.0  # an (account, source)'s failures are forgotten after this long without one
    max_entries: int = 10_000  # per table: (account, source) records, accounts, known sources

    def shared_by(self, workers: int) -> LoginLimits:
        """The limits of one of ``workers`` processes that each keep their own guard: the account-wide and global
        budgets divided among them, so N workers together allow what one process does. (Connections are steered
        to workers by source address, so the per-address and per-(account, address) rules need no division.)"""
        if workers <= 1:
            return self
        return replace(
            self,
            account_burst=max(1, math.ceil(self.account_burst / workers)),
            account_rate=self.account_rate / workers,
            global_burst=max(1, math.ceil(self.global_burst / workers)),
            global_rate=self.global_rate / workers,
        )


LIMITS = LoginLimits()


class FailureThrottle:
    """Failed logins per source address over a sliding window: ``limit`` failures within ``window`` seconds refuse
    the address until they age out.

    Memory is bounded: per address only the last ``limit`` failure times, and at most ``max_addresses``
    addresses (those whose failures have all aged out are forgotten first, then the least recently failing).
    Times must not go backwards by more than the window.
    """

    def __init__(
        self,
        window: float = IP_FAILURE_WINDOW,
        limit: int = IP_FAILURE_LIMIT,
        max_addresses: int = IP_MAX_ADDRESSES,
    ) -> None:
        if window <= 0 or limit < 1 or max_addresses < 1:
            raise ValueError("the window, the limit and the number of addresses must be positive")
        self.window = window
        self.limit = limit
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()  # least recently failing first

    def __len__(self) -> int:
        """The number of addresses remembered."""
        return len(self._failures)

    def addresses(self) -> set[str]:
        return set(self._failures)

    def _forget_stale(self, now: float) -> None:
        horizon = now - self.window
        while self._failures:
            address, times = next(iter(self._failures.items()))
            if times[-1] >= horizon:
                break
            del self._failures[address]

    def failed(self, peer: str, now: float) -> None:
        """Record a failed login from ``peer``."""
        self._forget_stale(now)
        times = self._failures.pop(peer, None)
        if times is None:
            times = deque(maxlen=self.limit)
        times.append(now)
        self._failures[peer] = times
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)

    def retry_after(self, peer: str, now: float) -> float:
        """Seconds until ``peer`` may log in again: 0 unless it has failed ``limit`` times within the window."""
        self._forget_stale(now)
        times = self._failures.get(peer)
        if times is None or len(times) < self.limit or times[0] < now - self.window:
            return 0.0
        return max(times[0] + self.window - now, 0.001)

    def blocked(self, peer: str, now: float) -> bool:
        """Whether ``peer`` has failed ``limit`` times within the window before ``now``."""
        return self.retry_after(peer, now) > 0


class _Buckets:
    """Token buckets by key, one token per failure. A full bucket needs no record, so memory holds only keys that
    failed lately (at most ``max_keys``, the least recently failing forgotten first)."""

    def __init__(self, burst: int, rate: float, max_keys: int) -> None:
        if burst < 1 or rate <= 0 or max_keys < 1:
            raise ValueError("a bucket's burst, rate and size must be positive")
        self.burst = float(burst)
        self.rate = rate
        self.max_keys = max_keys
        self._levels: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def __len__(self) -> int:
        return len(self._levels)

    def _level(self, key: Hashable, now: float) -> float:
        entry = self._levels.get(key)
        if entry is None:
            return self.burst
        tokens, at = entry
        return min(self.burst, tokens + max(0.0, now - at) * self.rate)

    def wait(self, key: Hashable, now: float) -> float:
        """Seconds until the bucket holds a token (0: it holds one now)."""
        level = self._level(key, now)
        return 0.0 if level >= 1.0 else (1.0 - level) / self.rate

    def take(self, key: Hashable, now: float) -> None:
        level = max(0.0, self._level(key, now) - 1.0)
        self._levels.pop(key, None)
        self._levels[key] = (level, now)
        while self._levels:  # forget refilled buckets (least recently failing first), then the oldest
            oldest, _ = next(iter(self._levels.items()))
            if len(self._levels) <= self.max_keys and self._level(oldest, now) < self.burst:
                break
            del self._levels[oldest]


@dataclass
class _SourceRecord:
    """Consecutive failures of one account from one source, and the lock they earned."""

    failures: int
    locked_until: float
    last: float
    generation: int  # the account's credential when counted: a new password starts the count afresh


class LogLimiter:
    """At most one log line or audit record per key per ``interval``; counts what it held back. Bounded keys."""

    def __init__(self, interval: float = 10.0, max_keys: int = 1000) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._last: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()  # key -> (last written, held back)

    def allow(self, key: Hashable, now: float) -> int | None:
        """None: hold this one back; otherwise write it, noting the returned number held back since the last."""
        entry = self._last.get(key)
        if entry is not None and now - entry[0] < self.interval:
            self._last[key] = (entry[0], entry[1] + 1)
            return None
        self._last.pop(key, None)
        self._last[key] = (now, 0)
        while len(self._last) > self.max_keys:
            self._last.popitem(last=False)
        return 0 if entry is None else entry[1]


Key = tuple[str, str]  # (account name, source address)


class LoginGuard:
    """The rules that refuse logins before any password work (see the module's docstring), in memory: a restart
    forgets them. Thread-safe; every table bounded; time passed in. Sources are addresses as strings ('' when the
    caller has none, e.g. a command line)."""

    def __init__(self, policy: LockoutPolicy = LOCKOUT, limits: LoginLimits = LIMITS) -> None:
        self.policy = policy
        self.limits = limits
        self.addresses = FailureThrottle(max_addresses=limits.max_entries)
        self.accounts = _Buckets(limits.account_burst, limits.account_rate, limits.max_entries)
        self.budget = _Buckets(limits.global_burst, limits.global_rate, 1)
        self.log_limiter = LogLimiter()
        self._sources: OrderedDict[Key, _SourceRecord] = OrderedDict()  # least recently failing first
        self._known: OrderedDict[Key, float] = OrderedDict()  # (account, source) -> last successful login
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """The number of (account, source) failure records held."""
        return len(self._sources)

    def _record(self, key: Key, generation: int, now: float) -> _SourceRecord | None:
        record = self._sources.get(key)
        if record is not None and record.generation != generation:
            del self._sources[key]  # counted against an earlier password
            return None
        return record

    def _is_known(self, key: Key, now: float) -> bool:
        at = self._known.get(key)
        return at is not None and now - at <= self.limits.known_source_days * 86400.0

    def check_address(self, source: str, now: float) -> None:
        """``LockedOut`` (scope 'address') if ``source`` failed too often lately."""
        with self._lock:
            wait = self.addresses.retry_after(source, now)
        if wait > 0:
            raise LockedOut(wait, "address")

    def admit(self, username: str, source: str, now: float, generation: int = 0) -> None:
        """``LockedOut`` if a password check of ``username`` from ``source`` must not run now (rules 2 to 4)."""
        key = (username, source)
        with self._lock:
            record = self._record(key, generation, now)
            if record is not None:
                wait = self.policy.retry_after(record.locked_until, now)
                if wait > 0:
                    raise LockedOut(wait, "source")
            if self._is_known(key, now):
                return
            wait = self.accounts.wait(username, now)
            if wait > 0:
                raise LockedOut(wait, "account")
            wait = self.budget.wait(None, now)
            if wait > 0:
                raise LockedOut(wait, "global")

    def failed(self, username: str, source: str, now: float, generation: int = 0) -> tuple[int, float]:
        """A wrong password: counted by every rule. Returns the consecutive failures from ``source`` and the lock
        it now has there (0: none)."""
        key = (username, source)
        with self._lock:
            self.addresses.failed(source, now)
            self.accounts.take(username, now)
            self.budget.take(None, now)
            record = self._record(key, generation, now)
            failures = 1 if record is None else record.failures + 1
            locked_until = self.policy.locked_until(failures, now)
            self._sources.pop(key, None)
            self._sources[key] = _SourceRecord(failures, locked_until or 0.0, now, generation)
            self._forget(now)
        return failures, 0.0 if locked_until is None else locked_until - now

    def failed_service(self, source: str, now: float) -> None:
        """A wrong service token: counted only against the address (guessing one is infeasible)."""
        with self._lock:
            self.addresses.failed(source, now)

    def succeeded(self, username: str, source: str, now: float) -> None:
        """The right password: the (account, source) starts afresh and becomes a known source."""
        key = (username, source)
        with self._lock:
            self._sources.pop(key, None)
            self._known.pop(key, None)
            self._known[key] = now
            while len(self._known) > self.limits.max_entries:
                self._known.popitem(last=False)

    def _forget(self, now: float) -> None:
        horizon = now - self.limits.forget_after
        while self._sources:
            _, oldest = next(iter(self._sources.items()))
            if oldest.last >= horizon and len(self._sources) <= self.limits.max_entries:
                break
            self._sources.popitem(last=False)

    # --- rate-limited reporting (the services' logs and the stores' audit of refusals) ---

    def log_refusal(
        self, log: logging.Logger, service: str, username: str, source: str, exc: LockedOut, now: float
    ) -> None:
        """Log a refused login, at most once per 10 s per account (per address, or once for the budget)."""
        key = {"address": ("address", source), "global": ("global", "")}.get(exc.scope, (exc.scope, username))
        held = self.log_limiter.allow(("log", *key), now)
        if held is not None:
            who, where = username[:64], source or "-"
            log.warning("%s: login of %r from %s refused: %s%s", service, who, where, exc, held_back(held))

    def log_failure(self, log: logging.Logger, service: str, username: str, source: str, now: float) -> None:
        """Log a failed login, at most once per 10 s per account."""
        held = self.log_limiter.allow(("log", "failed", username[:64]), now)
        if held is not None:
            log.warning("%s: failed login of %r from %s%s", service, username[:64], source or "-", held_back(held))


def held_back(count: int) -> str:
    """The note on a log line or audit record of how many like it ``LogLimiter`` held back ('' for none)."""
    return f" ({count} more like it in the last 10 s not logged)" if count else ""
