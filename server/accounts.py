"""Password accounts, one policy for the KMS and the dispatcher API: hashing, lockout, per-address throttling.

- **Hashes**: scrypt, self-describing (``scrypt$N$r$p$salt$hash``, base64), so a hash made at an older cost still
  verifies and is replaced at the account's next successful login; comparison in constant time.
- **Lockout** (``LockoutPolicy``): 5 consecutive failures lock the account for 30 s, doubling with each further
  failure up to an hour; while locked the password is not even checked. A pure function of the failure count and
  ``now``.
- **Login** (``authenticate``): the whole procedure (unknown names cost the same scrypt work, locked accounts are
  refused unchecked, failures counted and locked, disabled accounts refused, hashes upgraded) over a store's
  ``LoginLedger``, which only reads and writes its own table and audit log.
- **Per-address throttle** (``FailureThrottle``): 20 failed logins from one address within a minute refuse that
  address outright; bounded memory, time passed in.

``LoginFailed`` and ``LockedOut`` are raised by both stores (``server.kms.store``, ``server.groups.store``) and
answered by both HTTP front ends (401 and 429 with Retry-After). A change to how logins are refused (e.g. so an
attacker cannot lock an account out for its rightful user) belongs to ``LockoutPolicy`` and ``authenticate``.
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets
import unicodedata
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Protocol, TypeVar

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

__all__ = [
    "IP_FAILURE_LIMIT",
    "IP_FAILURE_WINDOW",
    "LOCKOUT",
    "MIN_PASSWORD_LENGTH",
    "AccountError",
    "FailureThrottle",
    "LockedOut",
    "LockoutPolicy",
    "LoginFailed",
    "LoginLedger",
    "LoginRecord",
    "MalformedHash",
    "authenticate",
    "hash_password",
    "needs_rehash",
    "password_problem",
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

IP_FAILURE_WINDOW = 60.0
IP_FAILURE_LIMIT = 20  # failed logins per source address per window before it is refused outright
IP_MAX_ADDRESSES = 10_000  # addresses remembered at most (the least recently failing are forgotten first)


# --- errors ---


class AccountError(Exception):
    """An account operation or a login was refused. Each store's own ``AccountError`` derives from it too."""


class LoginFailed(AccountError):
    """Wrong username or password (which of the two is deliberately not said), or a disabled account."""


class LockedOut(AccountError):
    """Too many recent failures: try again after ``retry_after`` seconds; the password was not checked."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed logins; try again in {retry_after:.0f} s")
        self.retry_after = retry_after


class MalformedHash(ValueError):
    """A stored password hash is not one of ours, or its parameters are out of range (a damaged database)."""


# --- password hashes ---


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


def _parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    m = _HASH_RE.fullmatch(stored)
    if m is None:
        raise MalformedHash("malformed password hash in the database")
    n, r, p = int(m[1]), int(m[2]), int(m[3])
    if not (2 <= n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
        raise MalformedHash("password hash parameters out of range")
    return n, r, p, base64.b64decode(m[4]), base64.b64decode(m[5])


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (constant-time comparison); ``MalformedHash`` if it is damaged."""
    n, r, p, salt, digest = _parse_hash(stored)
    return hmac.compare_digest(_scrypt(_password_octets(password), salt, n, r, p), digest)


def needs_rehash(stored: str) -> bool:
    """Whether ``stored`` was made at another cost than new hashes are."""
    n, r, p, _, _ = _parse_hash(stored)
    return (n, r, p) != (SCRYPT_N, SCRYPT_R, SCRYPT_P)


def _equal_work(password: str) -> None:
    """The scrypt work of one real check, against a random salt: an unknown name costs what a known one does."""
    _scrypt(_password_octets(password), secrets.token_bytes(_SALT_LENGTH), SCRYPT_N, SCRYPT_R, SCRYPT_P)


# --- lockout ---


@dataclass(frozen=True)
class LockoutPolicy:
    """When consecutive failed logins lock an account, and for how long (pure: counts and times in)."""

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


# --- the login procedure ---


@dataclass(frozen=True, repr=False)
class LoginRecord:
    """What a login checks before the password: the stored hash and the account's lock."""

    password_hash: str
    locked_until: float

    def __repr__(self) -> str:
        return f"LoginRecord(locked_until={self.locked_until})"


class Disableable(Protocol):
    @property
    def disabled(self) -> bool: ...


A = TypeVar("A", bound=Disableable)
A_co = TypeVar("A_co", bound=Disableable, covariant=True)


class LoginLedger(Protocol[A_co]):
    """A store's accounts as ``authenticate`` needs them; each method is one transaction of the store's own."""

    def login_record(self, username: str) -> LoginRecord | None:
        """The account's hash and lock, or None if there is no such account."""
        ...

    def login_audit(self, event: str, username: str | None, detail: str, now: float) -> None:
        """Append a login event ('login-failed', 'login-locked') to the store's audit log."""
        ...

    def login_failure(self, username: str, now: float, policy: LockoutPolicy) -> None:
        """A wrong password: count it (in SQL, so failures in two processes both count), lock the account until
        ``policy.locked_until(count, now)`` if that is not None, audit 'login-failed' with the count and lock."""
        ...

    def login_success(self, username: str, now: float, new_hash: str | None) -> A_co | None:
        """The right password: the account (None if it was removed meanwhile). Unless it is disabled (then audit
        'login-failed' 'account disabled' and change nothing), clear failures and lock, and store ``new_hash`` if
        given (and audit 'login' if the store records logins)."""
        ...


def authenticate(
    ledger: LoginLedger[A], username: str, password: str, *, now: float, policy: LockoutPolicy = LOCKOUT
) -> A:
    """The account if ``password`` is right; ``LoginFailed`` or ``LockedOut`` otherwise (both audited).

    Unknown names cost the same scrypt work as known ones and get the same answer. While an account is locked the
    password is not even checked, so guessing during a lock teaches nothing and costs no scrypt work.
    ``MalformedHash`` if the stored hash is damaged.
    """
    record = ledger.login_record(username)
    if record is None:
        _equal_work(password)
        ledger.login_audit("login-failed", None, f"unknown account {username[:64]!r}", now)
        raise LoginFailed("wrong username or password")
    wait = policy.retry_after(record.locked_until, now)
    if wait > 0:
        ledger.login_audit("login-locked", username, f"retry after {wait:.0f} s", now)
        raise LockedOut(wait)
    if not verify_password(password, record.password_hash):
        ledger.login_failure(username, now, policy)
        raise LoginFailed("wrong username or password")
    new_hash = hash_password(password) if needs_rehash(record.password_hash) else None
    account = ledger.login_success(username, now, new_hash)
    if account is None:  # removed by another process while we were hashing
        raise LoginFailed("wrong username or password")
    if account.disabled:
        raise LoginFailed("account disabled")
    return account


# --- per-address throttle ---


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

    def blocked(self, peer: str, now: float) -> bool:
        """Whether ``peer`` has failed ``limit`` times within the window before ``now``."""
        self._forget_stale(now)
        times = self._failures.get(peer)
        return times is not None and len(times) >= self.limit and times[0] >= now - self.window
