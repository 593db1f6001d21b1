"""The group store's dispatcher accounts: add, remove, password, disable, and the login ledger.

Password hashes, lockout and the login procedure are the KMS's (``server.accounts``); this is the store's side
of ``server.accounts.LoginLedger`` for the dispatcher API.
"""

from __future__ import annotations

import re
import sqlite3

from server import accounts
from server.accounts import LockoutPolicy, LoginRecord, hash_password
from server.groups.database import StoreDatabase
from server.groups.records import DISPATCHER_ROLES, AccountError, DispatcherAccount, StoreError

__all__ = ["DispatcherAccounts"]

_USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")


class DispatcherAccounts(StoreDatabase):
    """Dispatcher accounts in the group store's database."""

    def add_dispatcher(self, username: str, password: str, role: str = "dispatcher", *, now: float) -> None:
        if not isinstance(username, str) or not _USERNAME_RE.fullmatch(username):
            raise AccountError(
                f"bad account name {username!r}: 1-64 of A-Z a-z 0-9 . _ @ + -, starting with a letter or digit"
            )
        if role not in DISPATCHER_ROLES:
            raise AccountError(f"role must be one of {', '.join(sorted(DISPATCHER_ROLES))}, not {role!r}")
        self._check_new_password(password)
        stored = hash_password(password)
        with self._tx() as db:
            if db.execute("SELECT 1 FROM dispatchers WHERE username = ?", (username,)).fetchone():
                raise AccountError(f"account {username!r} already exists")
            db.execute(
                "INSERT INTO dispatchers (username, password_hash, role, created, changed) VALUES (?, ?, ?, ?, ?)",
                (username, stored, role, now, now),
            )
            self._audit(db, now, None, "account-added", f"{username} as {role}")

    @staticmethod
    def _check_new_password(password: str) -> None:
        problem = accounts.password_problem(password)
        if problem is not None:
            raise AccountError(problem)

    def _require_account(self, db: sqlite3.Connection, username: str) -> None:
        if not db.execute("SELECT 1 FROM dispatchers WHERE username = ?", (username,)).fetchone():
            raise AccountError(f"no account {username!r}")

    def remove_dispatcher(self, username: str, *, now: float) -> None:
        with self._tx() as db:
            self._require_account(db, username)
            db.execute("DELETE FROM dispatchers WHERE username = ?", (username,))
            self._audit(db, now, None, "account-removed", username)

    def set_dispatcher_password(self, username: str, password: str, *, now: float) -> None:
        """A new password; also lifts any lockout."""
        self._check_new_password(password)
        stored = hash_password(password)
        with self._tx() as db:
            self._require_account(db, username)
            db.execute(
                "UPDATE dispatchers SET password_hash = ?, failures = 0, locked_until = 0, changed = ? "
                "WHERE username = ?",
                (stored, now, username),
            )
            self._audit(db, now, None, "password-changed", username)

    def set_dispatcher_disabled(self, username: str, disabled: bool, *, now: float) -> None:
        with self._tx() as db:
            self._require_account(db, username)
            db.execute(
                "UPDATE dispatchers SET disabled = ?, changed = ? WHERE username = ?", (int(disabled), now, username)
            )
            self._audit(db, now, None, "account-disabled" if disabled else "account-enabled", username)

    def dispatcher(self, username: str) -> DispatcherAccount | None:
        with self._read() as db:
            row = db.execute("SELECT role, disabled FROM dispatchers WHERE username = ?", (username,)).fetchone()
        return None if row is None else DispatcherAccount(username, str(row[0]), bool(row[1]))

    def dispatchers(self) -> list[DispatcherAccount]:
        with self._read() as db:
            rows = db.execute("SELECT username, role, disabled FROM dispatchers ORDER BY username").fetchall()
        return [DispatcherAccount(str(u), str(r), bool(d)) for u, r, d in rows]

    def authenticate(self, username: str, password: str, *, now: float) -> DispatcherAccount:
        """The account if ``password`` is right; ``LoginFailed`` or ``LockedOut`` otherwise (both audited), by the
        KMS's policy (``server.accounts.authenticate``)."""
        try:
            return accounts.authenticate(self, username, password, now=now)
        except accounts.MalformedHash as exc:
            raise StoreError(str(exc)) from None

    # ``server.accounts.LoginLedger``: the login procedure's reads and writes of this store.

    def login_record(self, username: str) -> LoginRecord | None:
        with self._read() as db:
            row = db.execute(
                "SELECT password_hash, locked_until FROM dispatchers WHERE username = ?", (username,)
            ).fetchone()
        return None if row is None else LoginRecord(str(row[0]), float(row[1]))

    def login_audit(self, event: str, username: str | None, detail: str, now: float) -> None:
        self.audit(event, actor=username, detail=detail, now=now)

    def login_failure(self, username: str, now: float, policy: LockoutPolicy) -> None:
        with self._tx() as db:
            db.execute("UPDATE dispatchers SET failures = failures + 1 WHERE username = ?", (username,))
            row = db.execute("SELECT failures FROM dispatchers WHERE username = ?", (username,)).fetchone()
            failures = 0 if row is None else int(row[0])
            detail = f"wrong password ({failures} consecutive)"
            locked_until = policy.locked_until(failures, now)
            if locked_until is not None:
                db.execute("UPDATE dispatchers SET locked_until = ? WHERE username = ?", (locked_until, username))
                detail += f", locked for {locked_until - now:.0f} s"
            self._audit(db, now, username, "login-failed", detail)

    def login_success(self, username: str, now: float, new_hash: str | None) -> DispatcherAccount | None:
        with self._tx() as db:
            row = db.execute("SELECT role, disabled FROM dispatchers WHERE username = ?", (username,)).fetchone()
            if row is None:
                return None
            account = DispatcherAccount(username, str(row[0]), bool(row[1]))
            if account.disabled:
                self._audit(db, now, username, "login-failed", "account disabled")
                return account
            db.execute("UPDATE dispatchers SET failures = 0, locked_until = 0 WHERE username = ?", (username,))
            if new_hash is not None:
                db.execute("UPDATE dispatchers SET password_hash = ? WHERE username = ?", (new_hash, username))
            return account  # not audited: the dispatcher API logs in on every request
