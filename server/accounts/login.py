"""The login procedure (``authenticate``) over a store's ``LoginLedger`` (its own table and audit log) and its
``LoginGuard``. Refusals are audited and logged at most once per 10 s per account (``LogLimiter``)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Protocol, TypeVar

from server.accounts.errors import LockedOut, LoginFailed
from server.accounts.guard import LoginGuard, held_back
from server.accounts.passwords import equal_work, hash_password, is_service_hash, needs_rehash, verify_password


def _generation(stored: str) -> int:
    return int.from_bytes(hashlib.sha256(stored.encode()).digest()[:8], "big")


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
                    detail = f"wrong service token from {where}{held_back(held)}"
                    ledger.login_audit("login-failed", username, detail, now)
                raise LoginFailed("wrong username or password")
        else:
            generation = 0 if record is None else _generation(record.password_hash)
            guard.admit(username, source, now, generation)
            if record is None:
                equal_work(password)
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
            detail = f"{exc.scope} rule, from {where}, retry after {math.ceil(exc.retry_after)} s{held_back(held)}"
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
