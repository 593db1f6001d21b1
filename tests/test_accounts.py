"""server.accounts: password hashes, the lockout policy, the login procedure over a ledger, the per-address throttle.
Time is always passed in; hashing is made cheap (``accounts.SCRYPT_N``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from server import accounts
from server.accounts import (
    FailureThrottle,
    LockedOut,
    LockoutPolicy,
    LoginFailed,
    LoginRecord,
    MalformedHash,
    authenticate,
    hash_password,
    needs_rehash,
    password_problem,
    verify_password,
)
from server.groups import store as group_store
from server.kms import store as kms_store

# Made by the KMS store before server.accounts existed (scrypt N=1024): stored hashes must keep verifying.
OLD_HASH = "scrypt$1024$8$1$ISUi2YNg+cE7h1DvXG97ig==$hpQxfgmy1UDNdiN//IYAsuBIHS5p+zFkmFCsJqfmjl0="
OLD_PASSWORD = "caf\u00e9 au lait!"
PASSWORD = "correct horse"


@pytest.fixture(autouse=True)
def cheap_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**8)


@pytest.fixture
def scrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real: Callable[[bytes, bytes, int, int, int], bytes] = accounts._scrypt

    def counting(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
        calls.append(n)
        return real(password, salt, n, r, p)

    monkeypatch.setattr(accounts, "_scrypt", counting)
    return calls


# --- hashes ---


def test_existing_hashes_still_verify() -> None:
    assert verify_password(OLD_PASSWORD, OLD_HASH)
    assert verify_password("cafe\u0301 au lait!", OLD_HASH)  # NFC: the same password, composed differently
    assert not verify_password(OLD_PASSWORD + " ", OLD_HASH)
    assert needs_rehash(OLD_HASH)  # made at another cost than new hashes


def test_hash_is_self_describing_and_salted() -> None:
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    assert first.startswith(f"scrypt${2**8}$8$1$") and first != second
    assert verify_password(PASSWORD, first) and verify_password(PASSWORD, second)
    assert not verify_password("wrong horse", first)
    assert not needs_rehash(first)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "bcrypt$2b$12$abc",
        "scrypt$1000$8$1$AAAA$AAAA",  # N not a power of two
        f"scrypt${2**21}$8$1$AAAA$AAAA",  # N too large: a damaged row must not cost us minutes
        "scrypt$1024$0$1$AAAA$AAAA",
        "scrypt$1024$8$17$AAAA$AAAA",
        "scrypt$1024$8$1$AAAA$",
    ],
)
def test_malformed_hash(stored: str) -> None:
    with pytest.raises(MalformedHash):
        verify_password(PASSWORD, stored)


def test_password_problem() -> None:
    assert password_problem("1234567") == "the password must have at least 8 characters"
    assert password_problem(None) is not None
    assert password_problem("12345678") is None


# --- the lockout policy ---


def test_lockout_durations() -> None:
    policy = LockoutPolicy()
    durations = [policy.lock_duration(n) for n in range(0, 16)]
    assert durations == [0.0] * 5 + [30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0] + [3600.0] * 4
    assert policy.lock_duration(10**6) == 3600.0
    assert policy.locked_until(4, now=100.0) is None
    assert policy.locked_until(5, now=100.0) == 130.0
    assert policy.retry_after(130.0, now=100.0) == 30.0
    assert policy.retry_after(130.0, now=130.0) == 0.0
    assert LockoutPolicy(after=2, first=1.0, longest=3.0).lock_duration(9) == 3.0


def test_the_stores_share_one_policy_and_one_set_of_login_exceptions() -> None:
    assert (kms_store.LOCKOUT_AFTER, kms_store.LOCKOUT_MIN, kms_store.LOCKOUT_MAX) == (5, 30.0, 3600.0)
    assert kms_store.LoginFailed is group_store.LoginFailed is LoginFailed
    assert kms_store.LockedOut is group_store.LockedOut is LockedOut
    # each store's own account errors are account errors too (a CLI can catch them all at once)
    assert issubclass(kms_store.AccountError, accounts.AccountError)
    assert issubclass(group_store.AccountError, accounts.AccountError)


# --- the login procedure ---


@dataclass
class Account:
    username: str
    disabled: bool = False


@dataclass
class Row:
    password_hash: str
    failures: int = 0
    locked_until: float = 0.0
    disabled: bool = False


@dataclass
class MemoryLedger:
    """A store in memory: what ``authenticate`` reads and writes, and what it audits."""

    rows: dict[str, Row] = field(default_factory=dict)
    audit: list[tuple[str, str | None, str]] = field(default_factory=list)

    def login_record(self, username: str) -> LoginRecord | None:
        row = self.rows.get(username)
        return None if row is None else LoginRecord(row.password_hash, row.locked_until)

    def login_audit(self, event: str, username: str | None, detail: str, now: float) -> None:
        self.audit.append((event, username, detail))

    def login_failure(self, username: str, now: float, policy: LockoutPolicy) -> None:
        row = self.rows[username]
        row.failures += 1
        until = policy.locked_until(row.failures, now)
        if until is not None:
            row.locked_until = until
        self.audit.append(("login-failed", username, f"{row.failures}"))

    def login_success(self, username: str, now: float, new_hash: str | None) -> Account | None:
        row = self.rows.get(username)
        if row is None:
            return None
        if not row.disabled:
            row.failures, row.locked_until = 0, 0.0
            if new_hash is not None:
                row.password_hash = new_hash
            self.audit.append(("login", username, ""))
        return Account(username, row.disabled)


@pytest.fixture
def ledger() -> MemoryLedger:
    return MemoryLedger({"alice": Row(hash_password(PASSWORD))})


def test_login_right_wrong_and_unknown_cost_the_same(ledger: MemoryLedger, scrypt_calls: list[int]) -> None:
    assert authenticate(ledger, "alice", PASSWORD, now=1.0) == Account("alice")
    with pytest.raises(LoginFailed) as wrong:
        authenticate(ledger, "alice", "wrong horse", now=2.0)
    with pytest.raises(LoginFailed) as unknown:
        authenticate(ledger, "mallory", PASSWORD, now=3.0)
    assert str(wrong.value) == str(unknown.value) == "wrong username or password"
    assert scrypt_calls == [2**8] * 3
    assert ledger.audit == [
        ("login", "alice", ""),
        ("login-failed", "alice", "1"),
        ("login-failed", None, "unknown account 'mallory'"),
    ]


def test_lockout_refuses_without_checking_and_ends(ledger: MemoryLedger, scrypt_calls: list[int]) -> None:
    t = 1000.0
    for _ in range(5):
        with pytest.raises(LoginFailed):
            authenticate(ledger, "alice", "wrong horse", now=t)
    scrypt_calls.clear()
    with pytest.raises(LockedOut) as locked:
        authenticate(ledger, "alice", PASSWORD, now=t + 10.0)
    assert locked.value.retry_after == 20.0 and scrypt_calls == []
    assert ledger.audit[-1] == ("login-locked", "alice", "retry after 20 s")
    # the next failure after the lock doubles it
    with pytest.raises(LoginFailed):
        authenticate(ledger, "alice", "wrong horse", now=t + 30.0)
    with pytest.raises(LockedOut) as locked:
        authenticate(ledger, "alice", PASSWORD, now=t + 30.0)
    assert locked.value.retry_after == 60.0
    assert authenticate(ledger, "alice", PASSWORD, now=t + 90.0).username == "alice"
    assert ledger.rows["alice"].failures == 0


def test_a_custom_policy_is_used(ledger: MemoryLedger) -> None:
    strict = LockoutPolicy(after=1, first=5.0, longest=5.0)
    with pytest.raises(LoginFailed):
        authenticate(ledger, "alice", "wrong horse", now=0.0, policy=strict)
    with pytest.raises(LockedOut):
        authenticate(ledger, "alice", PASSWORD, now=4.0, policy=strict)


def test_disabled_and_removed_accounts(ledger: MemoryLedger, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger.rows["alice"].disabled = True
    with pytest.raises(LoginFailed, match="disabled"):
        authenticate(ledger, "alice", PASSWORD, now=0.0)
    monkeypatch.setattr(ledger, "login_success", lambda username, now, new_hash: None)  # removed meanwhile
    with pytest.raises(LoginFailed, match="wrong username or password"):
        authenticate(ledger, "alice", PASSWORD, now=1.0)


def test_an_old_hash_is_upgraded_at_login() -> None:
    ledger = MemoryLedger({"zoe": Row(OLD_HASH)})
    authenticate(ledger, "zoe", "cafe\u0301 au lait!", now=0.0)
    upgraded = ledger.rows["zoe"].password_hash
    assert upgraded.startswith(f"scrypt${2**8}$") and verify_password(OLD_PASSWORD, upgraded)


def test_a_damaged_hash_is_an_error_not_a_failed_login() -> None:
    with pytest.raises(MalformedHash):
        authenticate(MemoryLedger({"bob": Row("garbage")}), "bob", PASSWORD, now=0.0)


# --- the per-address throttle ---


def test_throttle_limit_and_sliding_window() -> None:
    throttle = FailureThrottle(window=60.0, limit=3)
    for t in (0.0, 10.0):
        throttle.failed("192.0.2.1", t)
    assert not throttle.blocked("192.0.2.1", 20.0)
    throttle.failed("192.0.2.1", 20.0)
    assert throttle.blocked("192.0.2.1", 20.0)
    assert not throttle.blocked("192.0.2.2", 20.0)  # other addresses are not affected
    assert throttle.blocked("192.0.2.1", 60.0)  # the failure at 0 is exactly a window old: still counted
    assert not throttle.blocked("192.0.2.1", 60.1)  # ... and then it has aged out
    throttle.failed("192.0.2.1", 61.0)
    assert throttle.blocked("192.0.2.1", 61.0)  # 10, 20, 61
    assert not throttle.blocked("192.0.2.1", 130.0)


def test_throttle_forgets_aged_out_addresses() -> None:
    throttle = FailureThrottle(window=60.0, limit=20)
    for i in range(50):
        throttle.failed(f"203.0.113.{i}", float(i))
    assert len(throttle) == 50
    throttle.failed("198.51.100.1", 49.0 + 61.0)
    assert throttle.addresses() == {"198.51.100.1"}
    assert not throttle.blocked("203.0.113.1", 200.0)


def test_throttle_memory_is_bounded() -> None:
    throttle = FailureThrottle(window=60.0, limit=3, max_addresses=100)
    for i in range(1000):  # many addresses within one window (an attacker with a whole IPv6 prefix)
        throttle.failed(f"2001:db8::{i:x}", i / 100)
    assert len(throttle) == 100
    assert "2001:db8::3e7" in throttle.addresses() and "2001:db8::0" not in throttle.addresses()
    for _ in range(1000):  # many failures of one address keep only the last ``limit`` times
        throttle.failed("192.0.2.9", 5.0)
    assert len(throttle._failures["192.0.2.9"]) == 3
    assert throttle.blocked("192.0.2.9", 5.0)


def test_throttle_refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        FailureThrottle(window=0.0)
    with pytest.raises(ValueError):
        FailureThrottle(limit=0)
