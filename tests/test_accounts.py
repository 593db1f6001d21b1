"""server.accounts: password hashes and service tokens, the lockout policy, the login rules (``LoginGuard``: per
address, per (account, source), per account, global budget, known sources), the login procedure over a ledger, the
per-address throttle. Time is always passed in; hashing is made cheap (``passwords.SCRYPT_N``)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from server import accounts
from server.accounts import (
    FailureThrottle,
    LockedOut,
    LockoutPolicy,
    LoginFailed,
    LoginGuard,
    LoginLimits,
    LoginRecord,
    LogLimiter,
    MalformedHash,
    authenticate,
    hash_password,
    hash_service_token,
    is_service_hash,
    needs_rehash,
    new_service_token,
    password_problem,
    passwords,
    retry_after_header,
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
    monkeypatch.setattr(passwords, "SCRYPT_N", 2**8)


@pytest.fixture
def scrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real: Callable[[bytes, bytes, int, int, int], bytes] = passwords._scrypt

    def counting(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
        calls.append(n)
        return real(password, salt, n, r, p)

    monkeypatch.setattr(passwords, "_scrypt", counting)
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
    # The cost is read in server.accounts.passwords (the fixture patches it there); the package does not
    # re-export it, so a patch of ``server.accounts.SCRYPT_N`` fails instead of silently changing nothing.
    assert not hasattr(accounts, "SCRYPT_N") and not hasattr(accounts, "_scrypt")
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


# --- service tokens ---


def test_service_tokens() -> None:
    token = new_service_token()
    assert len(token) == 43 and len(base64.urlsafe_b64decode(token + "=")) == 32  # 256 bits
    assert new_service_token() != token
    stored = hash_service_token(token)
    assert is_service_hash(stored) and not is_service_hash(hash_password(PASSWORD))
    assert verify_password(token, stored) and not verify_password(token[:-1] + "x", stored)
    assert not needs_rehash(stored) and token not in stored
    with pytest.raises(MalformedHash):
        verify_password(token, "token$sha256$short")


# --- the login rules ---

A, B, C = "192.0.2.1", "198.51.100.2", "203.0.113.3"


def _fail(guard: LoginGuard, name: str, source: str, now: float, times: int = 1) -> tuple[int, float]:
    result = (0, 0.0)
    for _ in range(times):
        guard.admit(name, source, now)
        result = guard.failed(name, source, now)
    return result


def test_lockout_is_per_account_and_source() -> None:
    guard = LoginGuard()
    assert _fail(guard, "alice", A, 100.0, 4) == (4, 0.0)
    assert _fail(guard, "alice", A, 100.0) == (5, 30.0)
    with pytest.raises(LockedOut) as locked:
        guard.admit("alice", A, 110.0)
    assert (locked.value.scope, locked.value.retry_after) == ("source", 20.0)
    assert "locked for logins from there" in str(locked.value) and "try again in 20 s" in str(locked.value)
    guard.admit("alice", B, 110.0)  # the owner elsewhere is not locked by the attacker's failures
    guard.admit("bob", A, 110.0)  # nor another account from the attacker's address
    guard.admit("alice", A, 130.0)  # the lock ends; the next failure there doubles it
    assert guard.failed("alice", A, 130.0) == (6, 60.0)
    # a success from that source starts it afresh
    guard.succeeded("alice", A, 200.0)
    assert _fail(guard, "alice", A, 200.0, 4) == (4, 0.0)


def test_a_new_credential_starts_the_count_afresh() -> None:
    guard = LoginGuard()
    for _ in range(5):
        guard.failed("alice", A, 0.0, generation=1)
    with pytest.raises(LockedOut):
        guard.admit("alice", A, 1.0, generation=1)
    guard.admit("alice", A, 1.0, generation=2)  # the operator set a new password


def test_per_account_limit_slows_new_sources_only() -> None:
    guard = LoginGuard(limits=LoginLimits(account_burst=10, account_rate=0.1))
    guard.succeeded("alice", A, 0.0)  # the owner's usual source
    for i in range(10):  # a spread-out attack: one guess from each of ten addresses
        _fail(guard, "alice", f"10.0.0.{i}", 1.0)
    with pytest.raises(LockedOut) as slowed:
        guard.admit("alice", "10.0.1.1", 1.0)
    assert slowed.value.scope == "account" and slowed.value.retry_after == pytest.approx(10.0)
    assert "slowed" in str(slowed.value)
    guard.admit("alice", A, 1.0)  # the known source is not slowed
    guard.admit("bob", "10.0.1.1", 1.0)  # other accounts are not slowed
    guard.admit("alice", "10.0.1.1", 11.0)  # one guess per 10 s after that: it slows, it never locks
    guard.failed("alice", "10.0.1.1", 11.0)
    with pytest.raises(LockedOut):
        guard.admit("alice", "10.0.1.2", 12.0)


def test_global_budget_stops_a_spray_and_spares_known_sources() -> None:
    guard = LoginGuard(limits=LoginLimits(global_burst=30, global_rate=2.0))
    guard.succeeded("owner", A, 0.0)
    admitted = refused = 0
    for i in range(1000):  # 1000 guesses in 10 s: one per (account, address), so no lock and no account limit
        now = i / 100
        try:
            guard.admit(f"user{i % 97}", f"10.{i // 250}.{i % 250}.1", now)
        except LockedOut as exc:
            assert exc.scope == "global" and 0 < exc.retry_after <= 0.5
            refused += 1
            continue
        guard.failed(f"user{i % 97}", f"10.{i // 250}.{i % 250}.1", now)
        admitted += 1
    assert admitted <= 30 + 2 * 10 + 1 and refused >= 949
    guard.admit("owner", A, 10.0)  # the owner's usual login is not refused
    with pytest.raises(LockedOut, match="on this server"):
        guard.admit("owner", B, 10.0)  # a new source waits for the budget
    guard.admit("owner", B, 10.5)


def test_workers_share_the_account_and_global_budgets() -> None:
    # N KMS workers each keep a guard; together they allow what one process allows (sources steered by address)
    limits = LoginLimits(account_burst=10, account_rate=0.2, global_burst=30, global_rate=2.0)
    assert limits.shared_by(1) is limits
    half = limits.shared_by(2)
    assert (half.account_burst, half.account_rate, half.global_burst, half.global_rate) == (5, 0.1, 15, 1.0)
    assert limits.shared_by(64).global_burst == 1 and limits.shared_by(64).account_burst == 1
    guards = [LoginGuard(limits=limits.shared_by(2)) for _ in range(2)]
    admitted = 0
    for i in range(1000):  # a spray from many addresses over 10 s, each address reaching "its" worker
        now, user, source = i / 100, f"user{i % 97}", f"10.{i // 250}.{i % 250}.{1 + i % 2}"
        guard = guards[i % 2]
        try:
            guard.admit(user, source, now)
        except LockedOut:
            continue
        guard.failed(user, source, now)
        admitted += 1
    assert 30 + 2 * 10 - 4 <= admitted <= 30 + 2 * 10 + 2


def test_service_failures_count_only_against_the_address() -> None:
    guard = LoginGuard()
    for _ in range(19):
        guard.failed_service(A, 0.0)
    guard.check_address(A, 0.0)
    guard.admit("ptt-server", A, 0.0)
    guard.failed_service(A, 0.0)
    with pytest.raises(LockedOut) as refused:
        guard.check_address(A, 1.0)
    assert refused.value.scope == "address" and refused.value.retry_after == pytest.approx(59.0)
    guard.check_address(B, 1.0)
    assert len(guard) == 0 and len(guard.accounts) == 0


def test_guard_memory_is_bounded() -> None:
    limits = LoginLimits(max_entries=100, forget_after=3600.0)
    guard = LoginGuard(limits=limits)
    for i in range(1000):
        guard.failed(f"user{i}", f"10.0.{i // 250}.{i % 250}", i / 100)
        guard.succeeded(f"known{i}", A, i / 100)
    assert len(guard) == 100 and len(guard.accounts) <= 100 and len(guard._known) == 100
    assert len(guard.addresses) <= 100 and len(guard.budget) == 1
    guard.failed("late", A, 10.0 + 3601.0)  # the rest have been quiet longer than forget_after
    assert len(guard) == 1


def test_log_limiter() -> None:
    limiter = LogLimiter(interval=10.0, max_keys=2)
    assert limiter.allow("a", 0.0) == 0
    assert limiter.allow("a", 5.0) is None and limiter.allow("a", 9.9) is None
    assert limiter.allow("a", 10.0) == 2  # two held back meanwhile
    assert limiter.allow("b", 10.0) == 0 and limiter.allow("c", 10.0) == 0
    assert len(limiter._last) == 2


def test_retry_after_header() -> None:
    assert [retry_after_header(s) for s in (0.0, 0.2, 1.0, 29.0, 29.1)] == ["1", "1", "1", "29", "30"]


# --- the login procedure ---


@dataclass
class Account:
    username: str
    disabled: bool = False


@dataclass
class Row:
    password_hash: str
    failures: int = 0
    disabled: bool = False


@dataclass
class MemoryLedger:
    """A store in memory: what ``authenticate`` reads and writes, and what it audits."""

    rows: dict[str, Row] = field(default_factory=dict)
    audit: list[tuple[str, str | None, str]] = field(default_factory=list)
    guard: LoginGuard = field(default_factory=LoginGuard)

    def login_record(self, username: str) -> LoginRecord | None:
        row = self.rows.get(username)
        return None if row is None else LoginRecord(row.password_hash)

    def login_audit(self, event: str, username: str | None, detail: str, now: float) -> None:
        self.audit.append((event, username, detail))

    def login_failure(self, username: str, now: float, detail: str) -> None:
        self.rows[username].failures += 1
        self.audit.append(("login-failed", username, detail))

    def login_success(self, username: str, now: float, new_hash: str | None) -> Account | None:
        row = self.rows.get(username)
        if row is None:
            return None
        if not row.disabled:
            row.failures = 0
            if new_hash is not None:
                row.password_hash = new_hash
            self.audit.append(("login", username, ""))
        return Account(username, row.disabled)

    def login(self, username: str, password: str, now: float, source: str = A) -> Account:
        return authenticate(self, username, password, now=now, guard=self.guard, source=source)


@pytest.fixture
def ledger() -> MemoryLedger:
    return MemoryLedger({"alice": Row(hash_password(PASSWORD))})


def test_login_right_wrong_and_unknown_cost_the_same(ledger: MemoryLedger, scrypt_calls: list[int]) -> None:
    assert ledger.login("alice", PASSWORD, now=1.0) == Account("alice")
    with pytest.raises(LoginFailed) as wrong:
        ledger.login("alice", "wrong horse", now=2.0)
    with pytest.raises(LoginFailed) as unknown:
        ledger.login("mallory", PASSWORD, now=3.0)
    assert str(wrong.value) == str(unknown.value) == "wrong username or password"
    assert scrypt_calls == [2**8] * 3
    assert ledger.audit == [
        ("login", "alice", ""),
        ("login-failed", "alice", f"wrong password from {A} (1 in a row from there)"),
        ("login-failed", None, f"unknown account 'mallory' from {A}"),
    ]


def test_lockout_refuses_without_checking_and_ends(ledger: MemoryLedger, scrypt_calls: list[int]) -> None:
    t = 1000.0
    for _ in range(5):
        with pytest.raises(LoginFailed):
            ledger.login("alice", "wrong horse", now=t)
    assert ledger.audit[-1][2].endswith("(5 in a row from there), locked for logins from there for 30 s")
    scrypt_calls.clear()
    with pytest.raises(LockedOut) as locked:
        ledger.login("alice", PASSWORD, now=t + 10.0)
    assert locked.value.retry_after == 20.0 and scrypt_calls == []
    assert ledger.audit[-1] == ("login-locked", "alice", f"source rule, from {A}, retry after 20 s")
    # the owner from another address is not locked out by these failures
    assert ledger.login("alice", PASSWORD, now=t + 10.0, source=B).username == "alice"
    # the next failure after the lock doubles it
    with pytest.raises(LoginFailed):
        ledger.login("alice", "wrong horse", now=t + 30.0)
    with pytest.raises(LockedOut) as locked:
        ledger.login("alice", PASSWORD, now=t + 30.0)
    assert locked.value.retry_after == 60.0
    assert ledger.login("alice", PASSWORD, now=t + 90.0).username == "alice"
    assert ledger.rows["alice"].failures == 0


def test_refusals_are_audited_at_most_every_10_s(ledger: MemoryLedger) -> None:
    for _ in range(5):
        with pytest.raises(LoginFailed):
            ledger.login("alice", "wrong horse", now=0.0)
    for i in range(21):  # 1.0, 1.5, ... 11.0
        with pytest.raises(LockedOut):
            ledger.login("alice", PASSWORD, now=1.0 + i * 0.5)
    locked = [a for a in ledger.audit if a[0] == "login-locked"]
    assert len(locked) == 2 and locked[1][2].endswith("(19 more like it in the last 10 s not logged)")


def test_a_service_account_cannot_be_locked(ledger: MemoryLedger, scrypt_calls: list[int]) -> None:
    token = new_service_token()
    ledger.rows["ptt-server"] = Row(hash_service_token(token))
    for i in range(19):  # from many addresses: no lock, no slowing, no scrypt work
        with pytest.raises(LoginFailed):
            ledger.login("ptt-server", f"guess {i}", now=float(i), source=f"10.0.0.{i}")
    for i in range(19):  # and from one address: only the address is refused (after 20)
        with pytest.raises(LoginFailed):
            ledger.login("ptt-server", f"guess {i}", now=20.0, source=C)
    with pytest.raises(LoginFailed):
        ledger.login("ptt-server", "guess 20", now=20.0, source=C)
    with pytest.raises(LockedOut, match="from your address"):
        ledger.login("ptt-server", token, now=21.0, source=C)
    assert scrypt_calls == []
    assert ledger.login("ptt-server", token, now=21.0, source=A).username == "ptt-server"
    failed = [a for a in ledger.audit if a[0] == "login-failed" and a[1] == "ptt-server"]
    assert 1 <= len(failed) <= 3  # audited at most every 10 s


def test_a_custom_policy_is_used(ledger: MemoryLedger) -> None:
    ledger.guard = LoginGuard(policy=LockoutPolicy(after=1, first=5.0, longest=5.0))
    with pytest.raises(LoginFailed):
        ledger.login("alice", "wrong horse", now=0.0)
    with pytest.raises(LockedOut):
        ledger.login("alice", PASSWORD, now=4.0)


def test_disabled_and_removed_accounts(ledger: MemoryLedger, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger.rows["alice"].disabled = True
    with pytest.raises(LoginFailed, match="disabled"):
        ledger.login("alice", PASSWORD, now=0.0)
    monkeypatch.setattr(ledger, "login_success", lambda username, now, new_hash: None)  # removed meanwhile
    with pytest.raises(LoginFailed, match="wrong username or password"):
        ledger.login("alice", PASSWORD, now=1.0)


def test_an_old_hash_is_upgraded_at_login() -> None:
    ledger = MemoryLedger({"zoe": Row(OLD_HASH)})
    ledger.login("zoe", "cafe\u0301 au lait!", now=0.0)
    upgraded = ledger.rows["zoe"].password_hash
    assert upgraded.startswith(f"scrypt${2**8}$") and verify_password(OLD_PASSWORD, upgraded)


def test_a_damaged_hash_is_an_error_not_a_failed_login() -> None:
    with pytest.raises(MalformedHash):
        MemoryLedger({"bob": Row("garbage")}).login("bob", PASSWORD, now=0.0)


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
