"""Password accounts, one policy for the KMS and the dispatcher API: hashing, service tokens, and the rules that
refuse logins (``LoginGuard``), so that no stranger can turn them against an account's owner.

- ``passwords``: scrypt hashes (self-describing, constant-time check, rehash at a changed cost) and service
  tokens (the group server's KMS account: a 256-bit token, never locked or slowed);
- ``guard``: the rules, checked before any password work (per address, per (account, source) lockout, per
  account, a global failure budget; known sources exempt from the last two), explained in its docstring;
- ``login``: the procedure (``authenticate``) over a store's ``LoginLedger`` and its ``LoginGuard``;
- ``errors``: the refusals.

``LoginFailed`` and ``LockedOut`` are raised by both stores (``server.kms.store``, ``server.groups.store``) and
answered by both HTTP front ends (401, and 429 with Retry-After and a message saying which rule refused).

The names below are this package's API. The hashing cost (``SCRYPT_N``) and the scrypt function live in
``server.accounts.passwords``, where they are looked up: patch them there.
"""

from __future__ import annotations

from server.accounts.errors import AccountError, LockedOut, LoginFailed, MalformedHash, retry_after_header
from server.accounts.guard import (
    IP_FAILURE_LIMIT,
    IP_FAILURE_WINDOW,
    LIMITS,
    LOCKOUT,
    FailureThrottle,
    LockoutPolicy,
    LoginGuard,
    LoginLimits,
    LogLimiter,
)
from server.accounts.login import LoginLedger, LoginRecord, authenticate
from server.accounts.passwords import (
    MIN_PASSWORD_LENGTH,
    SERVICE_TOKEN_BYTES,
    hash_password,
    hash_service_token,
    is_service_hash,
    needs_rehash,
    new_service_token,
    password_problem,
    verify_password,
)

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
