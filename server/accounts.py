"""Password accounts, one policy for the KMS and the dispatcher API: hashing, service tokens, and the rules that
refuse logins (``LoginGuard``), so that no stranger can turn them against an account's owner.

- **Hashes**: scrypt, self-describing (``scrypt$N$r$p$salt$hash``, base64), so a hash made at an older cost still
  verifies and is replaced at the account's next successful login; comparison in constant time.
- **Service accounts** (the group server's KMS account): the credential is a random token of 256 bits made by the
  KMS (``new_service_token``), kept as ``token$sha256$digest``. Guessing it is infeasible and checking it is cheap,
  so wrong guesses never lock it, slow it or spend the failure budget; they count only against their address.
- **Rules** (``LoginGuard``, in memory, bounded, time passed in), checked in this order before any password work:
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
  known ones (no account enumeration by lockout) and cost the same scrypt work.
- **Login** (``authenticate``): the procedure over a store's ``LoginLedger`` (its own table and audit log) and
  its ``LoginGuard``. Refusals are audited and logged at most once per 10 s per account (``LogLimiter``).

``LoginFailed`` and ``LockedOut`` are raised by both stores (``server.kms.store``, ``server.groups.store``) and
answered by both HTTP front ends (401, and 429 with Retry-After and a message saying which rule refused).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import re
import secrets
import threading
import unicodedata
from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

__all__ = [
    "IP_FAILURE_LIMIT",
    "IP_FAILURE_WINDOW",
    "LIMITS",
    "LOCKOUT",
    "MIN_PASSWORD_LENGTH",
    "SERVICE_TOKEN_BYTES",
    "AccountError",
    "FailureThrottle",
    "LockedOut",
    "LockoutPolicy",
    "LogLimiter",
    "LoginFailed",
    "LoginGuard",
    "LoginLedger",
    "LoginLimits",
    "LoginRecord",
    "MalformedHash",
    "authenticate",
    "hash_password",
    "hash_service_token",
    "is_service_hash",
    "needs_rehash",
    "new_service_token",
    "password_problem",
    "retry_after_header",
    "verify_password",
]

MIN_PASSWORD_LENGTH = 8

# Password hashing cost for new hashes; a stored hash names its own parameters, so lowering this (tests do)
# never breaks existing accounts, and a changed value is applied to an account at its next successful login.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_LENGTH = 16
_HASH_LENGTH = 32
_MAX_N = 2**20
_HASH_RE = re.compile(r"scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")
_TOKEN_PREFIX = "token$sha256$"
_TOKEN_RE = re.compile(r"token\$sha256\$([A-Za-z0-9+/=]{44})")
SERVICE_TOKEN_BYTES = 32  # 256 bits of randomness in a service account's credential

IP_FAILURE_WINDOW = 60.0
IP_FAILURE_LIMIT = 20  # failed logins per source address per window before it is refused outright
IP_MAX_ADDRESSES = 10_000  # addresses remembered at most (the least recently failing are forgotten first)


# --- errors ---


class AccountError(Exception):
    """An account operation or a login was refused. Each store's own ``AccountError`` derives from it too."""


class LoginFailed(AccountError):
    """Wrong username or password (which of the two is deliberately not said), or a disabled account."""


_REFUSALS = {
    "source": "too many failed logins to this account from your address: it is locked for logins from there",
    "account": "too many failed logins to this account from elsewhere: logins from new addresses are slowed",
    "global": "too many failed logins on this server: logins from new addresses are slowed",
    "address": "too many failed logins from your address",
}


class LockedOut(AccountError):
    """Refused without checking the password: try again after ``retry_after`` seconds. ``scope`` names the rule:
    'source' (this account from this address is locked), 'account' (the account's failures from elsewhere slow
    new sources), 'global' (the server's failure budget is spent) or 'address' (this address failed too often)."""

    def __init__(self, retry_after: float, scope: str = "source") -> None:
        super().__init__(f"{_REFUSALS[scope]}; try again in {math.ceil(retry_after)} s")
        self.retry_after = retry_after
        self.scope = scope


class MalformedHash(ValueError):
    """A stored password hash is not one of ours, or its parameters are out of range (a damaged database)."""


def retry_after_header(seconds: float) -> str:
    """The Retry-After value for a refusal: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


# --- password hashes and service tokens ---


def password_problem(password: object) -> str | None:
    """Why ``password`` may not be set as a new password, or None if it may."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        return f"the password must have at least {MIN_PASSWORD_LENGTH} characters"
    return None


def _password_octets(password: str) -> bytes:
    # NFC so that the same password typed on differently composing keyboards gives the same octets.
    return unicodedata.normalize("NFC", password).encode("utf-8")


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=_HASH_LENGTH, n=n, r=r, p=p).derive(password)


def hash_password(password: str) -> str:
    """A self-describing hash at the current cost: ``scrypt$N$r$p$salt$hash`` (base64)."""
    salt = secrets.token_bytes(_SALT_LENGTH)
    digest = _scrypt(_password_octets(password), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def new_service_token() -> str:
    """A service account's credential: 256 random bits, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(SERVICE_TOKEN_BYTES)


def hash_service_token(token: str) -> str:
    """``token$sha256$digest``: a token has 256 bits of entropy, so one SHA-256 is as good as scrypt for it."""
    return _TOKEN_PREFIX + base64.b64encode(hashlib.sha256(token.encode("utf-8")).digest()).decode()


def is_service_hash(stored: str) -> bool:
    """Whether ``stored`` is a service token's hash (the account is a service account)."""
    return stored.startswith(_TOKEN_PREFIX)


def _parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    m = _HASH_RE.fullmatch(stored)
    if m is None:
        raise MalformedHash("malformed password hash in the database")
    n, r, p = int(m[1]), int(m[2]), int(m[3])
    if not (2 <= n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
        raise MalformedHash("password hash parameters out of range")
    return n, r, p, base64.b64decode(m[4]), base64.b64decode(m[5])


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (a password hash or a service token's; constant-time comparison);
    ``MalformedHash`` if it is damaged."""
    if is_service_hash(stored):
        m = _TOKEN_RE.fullmatch(stored)
        if m is None:
            raise MalformedHash("malformed service token hash in the database")
        given = hashlib.sha256(password.encode("utf-8", "surrogatepass")).digest()
        return hmac.compare_digest(given, base64.b64decode(m[1]))
    n, r, p, salt, digest = _parse_hash(stored)
    return hmac.compare_digest(_scrypt(_password_octets(password), salt, n, r, p), digest)


def needs_rehash(stored: str) -> bool:
    """Whether ``stored`` was made at another cost than new hashes are (never for a service token's)."""
    if is_service_hash(stored):
        return False
    n, r, p, _, _ = _parse_hash(stored)
    return (n, r, p) != (SCRYPT_N, SCRYPT_R, SCRYPT_P)


def _equal_work(password: str) -> None:
    """The scrypt work of one real check, against a random salt: an unknown name costs what a known one does."""
    _scrypt(_password_octets(password), secrets.token_bytes(_SALT_LENGTH), SCRYPT_N, SCRYPT_R, SCRYPT_P)


# --- the rules ---


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
            log.warning("%s: login of %r from %s refused: %s%s", service, who, where, exc, _held_back(held))

    def log_failure(self, log: logging.Logger, service: str, username: str, source: str, now: float) -> None:
        """Log a failed login, at most once per 10 s per account."""
        held = self.log_limiter.allow(("log", "failed", username[:64]), now)
        if held is not None:
            log.warning("%s: failed login of %r from %s%s", service, username[:64], source or "-", _held_back(held))


def _held_back(count: int) -> str:
    return f" ({count} more like it in the last 10 s not logged)" if count else ""


def _generation(stored: str) -> int:
    return int.from_bytes(hashlib.sha256(stored.encode()).digest()[:8], "big")


# --- the login procedure ---


@dataclass(frozen=True, repr=False)
class LoginRecord:
    """What a login checks: the stored hash (a password's or a service token's)."""

    password_hash: str

    def __repr__(self) -> str:
        return f"LoginRecord(service={is_service_hash(self.password_hash)})"


class Disableable(Protocol):
    @property
    def disabled(self) -> bool: ...


A = TypeVar("A", bound=Disableable)
A_co = TypeVar("A_co", bound=Disableable, covariant=True)


class LoginLedger(Protocol[A_co]):
    """A store's accounts as ``authenticate`` needs them; each method is one transaction of the store's own."""

    def login_record(self, username: str) -> LoginRecord | None:
        """The account's hash, or None if there is no such account."""
        ...

    def login_audit(self, event: str, username: str | None, detail: str, now: float) -> None:
        """Append a login event ('login-failed', 'login-locked') to the store's audit log."""
        ...

    def login_failure(self, username: str, now: float, detail: str) -> None:
        """A wrong password: count it on the account (in SQL, for the operator) and audit 'login-failed' with
        ``detail``."""
        ...

    def login_success(self, username: str, now: float, new_hash: str | None) -> A_co | None:
        """The right password: the account (None if it was removed meanwhile). Unless it is disabled (then audit
        'login-failed' 'account disabled' and change nothing), clear its failures, and store ``new_hash`` if
        given (and audit 'login' if the store records logins)."""
        ...


def authenticate(
    ledger: LoginLedger[A], username: str, password: str, *, now: float, guard: LoginGuard, source: str = ""
) -> A:
    """The account if ``password`` is right; ``LoginFailed`` or ``LockedOut`` otherwise (both audited, refusals
    at most once per 10 s per account and rule).

    ``guard``'s rules are checked before any password work: a refused login costs no scrypt and teaches nothing.
    Unknown names cost the same scrypt work as known ones, are counted alike, and get the same answer.
    ``MalformedHash`` if the stored hash is damaged.
    """
    where = source or "local"
    try:
        guard.check_address(source, now)
        record = ledger.login_record(username)
        if record is not None and is_service_hash(record.password_hash):
            if not verify_password(password, record.password_hash):
                guard.failed_service(source, now)
                held = guard.log_limiter.allow(("audit", "service", username), now)
                if held is not None:
                    detail = f"wrong service token from {where}{_held_back(held)}"
                    ledger.login_audit("login-failed", username, detail, now)
                raise LoginFailed("wrong username or password")
        else:
            generation = 0 if record is None else _generation(record.password_hash)
            guard.admit(username, source, now, generation)
            if record is None:
                _equal_work(password)
                guard.failed(username, source, now)
                ledger.login_audit("login-failed", None, f"unknown account {username[:64]!r} from {where}", now)
                raise LoginFailed("wrong username or password")
            if not verify_password(password, record.password_hash):
                failures, lock = guard.failed(username, source, now, generation)
                detail = f"wrong password from {where} ({failures} in a row from there)"
                if lock:
                    detail += f", locked for logins from there for {lock:.0f} s"
                ledger.login_failure(username, now, detail)
                raise LoginFailed("wrong username or password")
    except LockedOut as exc:
        key = (exc.scope, source) if exc.scope == "address" else (exc.scope, username[:64])
        held = guard.log_limiter.allow(("audit", *key), now)
        if held is not None:
            detail = f"{exc.scope} rule, from {where}, retry after {math.ceil(exc.retry_after)} s{_held_back(held)}"
            ledger.login_audit("login-locked", username[:64] if exc.scope != "address" else None, detail, now)
        raise
    assert record is not None
    new_hash = hash_password(password) if needs_rehash(record.password_hash) else None
    account = ledger.login_success(username, now, new_hash)
    if account is None:  # removed by another process while we were hashing
        raise LoginFailed("wrong username or password")
    if account.disabled:
        raise LoginFailed("account disabled")
    guard.succeeded(username, source, now)
    return account
