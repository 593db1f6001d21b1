"""The KMS store's accounts: roles, passwords (hashes and lockout by ``server.accounts``), disabling, and the
store's side of the login ledger."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

from server import accounts
from server.accounts import LockoutPolicy, LoginRecord, hash_password
from server.kms.database import KmsDatabase, StoreError

__all__ = ["LOCKOUT_AFTER", "LOCKOUT_MAX", "LOCKOUT_MIN", "ROLES", "Account", "AccountError", "KmsAccounts"]

ROLES = frozenset({"user", "admin", "auditor"})

# The lockout policy shared with the dispatcher accounts (``server.accounts.LOCKOUT``), named here for callers.
LOCKOUT_AFTER = accounts.LOCKOUT.after  # consecutive failures before the first lock
LOCKOUT_MIN = accounts.LOCKOUT.first  # seconds, doubled on every further failure ...
LOCKOUT_MAX = accounts.LOCKOUT.longest  # ... up to an hour
_USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")


class AccountError(StoreError, accounts.AccountError):
    """An account operation was refused: duplicate or unknown account, bad name, role or password. (A refused
    login is ``LoginFailed`` or ``LockedOut`` from ``server.accounts``, shared with the dispatcher accounts.)"""


@dataclass(frozen=True)
class Account:
    username: str
    uri: str | None
    roles: frozenset[str]
    disabled: bool


class KmsAccounts(KmsDatabase):
    """Accounts in the KMS's database; creating one grants it its own identity (kind 'self')."""

    @staticmethod
    def _check_new_password(password: str) -> None:
        problem = accounts.password_problem(password)
        if problem is not None:
            raise AccountError(problem)

    def add_account(
        self,
        username: str,
        password: str,
        *,
        uri: str | None,
        roles: set[str] | frozenset[str] = frozenset({"user"}),
        now: float,
    ) -> None:
        """A new account; ``uri`` (the user's own identity) is granted to it as kind 'self'."""
        if not _USERNAME_RE.fullmatch(username):
            raise AccountError(
                f"bad account name {username!r}: 1-64 of A-Z a-z 0-9 . _ @ + -, starting with a letter or digit"
            )
        unknown = set(roles) - ROLES
        if unknown or not roles:
            raise AccountError(f"roles must be some of {', '.join(sorted(ROLES))}; got {', '.join(sorted(roles))}")
        if uri is not None and not uri:
            raise AccountError("the identity URI must not be empty")
        self._check_new_password(password)
        stored = hash_password(password)
        with self._tx() as db:
            if db.execute("SELECT 1 FROM accounts WHERE username = ?", (username,)).fetchone():
                raise AccountError(f"account {username!r} already exists")
            db.execute(
                "INSERT INTO accounts (username, password_hash, uri, created, changed) VALUES (?, ?, ?, ?, ?)",
                (username, stored, uri, now, now),
            )
            db.executemany(
                "INSERT INTO account_roles (username, role) VALUES (?, ?)", [(username, r) for r in sorted(roles)]
            )
            if uri is not None:
                db.execute(
                    "INSERT INTO grants (username, identity_uri, kind, granted) VALUES (?, ?, 'self', ?)",
                    (username, uri, now),
                )
            self._audit(db, "account-added", username, f"uri={uri} roles={','.join(sorted(roles))}", now)

    def _require(self, db: sqlite3.Connection, username: str) -> None:
        if not db.execute("SELECT 1 FROM accounts WHERE username = ?", (username,)).fetchone():
            raise AccountError(f"no account {username!r}")

    def remove_account(self, username: str, *, now: float) -> None:
        with self._tx() as db:
            self._require(db, username)
            db.execute("DELETE FROM accounts WHERE username = ?", (username,))  # roles and grants cascade
            self._audit(db, "account-removed", username, "", now)

    def set_password(self, username: str, password: str, *, now: float) -> None:
        """A new password; also lifts any lockout."""
        self._check_new_password(password)
        stored = hash_password(password)
        with self._tx() as db:
            self._require(db, username)
            db.execute(
                "UPDATE accounts SET password_hash = ?, failures = 0, locked_until = 0, changed = ? WHERE username = ?",
                (stored, now, username),
            )
            self._audit(db, "password-changed", username, "", now)

    def set_disabled(self, username: str, disabled: bool, *, now: float) -> None:
        """A disabled account keeps its grants but cannot log in."""
        with self._tx() as db:
            self._require(db, username)
            db.execute(
                "UPDATE accounts SET disabled = ?, changed = ? WHERE username = ?", (int(disabled), now, username)
            )
            self._audit(db, "account-disabled" if disabled else "account-enabled", username, "", now)

    def _account(self, db: sqlite3.Connection, username: str) -> Account | None:
        row = db.execute("SELECT uri, disabled FROM accounts WHERE username = ?", (username,)).fetchone()
        if row is None:
            return None
        roles = frozenset(
            str(r) for (r,) in db.execute("SELECT role FROM account_roles WHERE username = ?", (username,))
        )
        return Account(username=username, uri=row[0], roles=roles, disabled=bool(row[1]))

    def account(self, username: str) -> Account | None:
        return self._account(self._db, username)

    def accounts(self) -> list[Account]:
        names = [str(n) for (n,) in self._db.execute("SELECT username FROM accounts ORDER BY username")]
        return [a for a in (self._account(self._db, n) for n in names) if a is not None]

    def authenticate(self, username: str, password: str, *, now: float) -> Account:
        """The account if ``password`` is right; ``LoginFailed`` or ``LockedOut`` otherwise (both audited), by the
        policy of ``server.accounts.authenticate``."""
        try:
            return accounts.authenticate(self, username, password, now=now)
        except accounts.MalformedHash as exc:
            raise StoreError(str(exc)) from None

    # ``server.accounts.LoginLedger``: the login procedure's reads and writes of this store.

    def login_record(self, username: str) -> LoginRecord | None:
        row = self._db.execute(
            "SELECT password_hash, locked_until FROM accounts WHERE username = ?", (username,)
        ).fetchone()
        return None if row is None else LoginRecord(str(row[0]), float(row[1]))

    def login_audit(self, event: str, username: str | None, detail: str, now: float) -> None:
        self.audit(event, username=username, detail=detail, now=now)

    def login_failure(self, username: str, now: float, policy: LockoutPolicy) -> None:
        with self._tx() as db:
            # Count in SQL so that concurrent failures from two processes are both counted.
            db.execute("UPDATE accounts SET failures = failures + 1 WHERE username = ?", (username,))
            row = db.execute("SELECT failures FROM accounts WHERE username = ?", (username,)).fetchone()
            failures = 0 if row is None else int(row[0])
            detail = f"wrong password ({failures} consecutive)"
            locked_until = policy.locked_until(failures, now)
            if locked_until is not None:
                db.execute("UPDATE accounts SET locked_until = ? WHERE username = ?", (locked_until, username))
                detail += f", locked for {locked_until - now:.0f} s"
            self._audit(db, "login-failed", username, detail, now)

    def login_success(self, username: str, now: float, new_hash: str | None) -> Account | None:
        with self._tx() as db:
            account = self._account(db, username)
            if account is None:
                return None
            if account.disabled:
                self._audit(db, "login-failed", username, "account disabled", now)
                return account
            db.execute("UPDATE accounts SET failures = 0, locked_until = 0 WHERE username = ?", (username,))
            if new_hash is not None:
                db.execute("UPDATE accounts SET password_hash = ? WHERE username = ?", (new_hash, username))
            self._audit(db, "login", username, "", now)
            return account
