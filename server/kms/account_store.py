"""The KMS store's accounts: roles, passwords (hashes and login rules by ``server.accounts``), service accounts
(a generated token instead of a password: the group server's), disabling, and the store's side of the login
ledger."""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cached_property

from server import accounts
from server.accounts import LoginGuard, LoginRecord, hash_password, hash_service_token, new_service_token
from server.kms.database import KmsDatabase, StoreError
from server.sqldb import Connection

__all__ = ["LOCKOUT_AFTER", "LOCKOUT_MAX", "LOCKOUT_MIN", "ROLES", "Account", "AccountError", "KmsAccounts"]

ROLES = frozenset({"user", "admin", "auditor"})

# The lockout policy shared with the dispatcher accounts (``server.accounts.LOCKOUT``), named here for callers: it
# locks an account for the source address its failures came from, not for everyone.
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
    service: bool = False  # its credential is a generated token (``add_service_account``), not a password


class KmsAccounts(KmsDatabase):
    """Accounts in the KMS's database; creating one grants it its own identity (kind 'self')."""

    @cached_property
    def login_guard(self) -> LoginGuard:
        """The rules that refuse logins (per address, per account and source, per account, global), in memory."""
        return LoginGuard()

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
        self._check_new_account(username, roles, uri)
        self._check_new_password(password)
        self._insert(username, hash_password(password), uri, roles, now, "")

    def add_service_account(
        self,
        username: str,
        *,
        uri: str | None,
        roles: set[str] | frozenset[str] = frozenset({"user"}),
        now: float,
    ) -> str:
        """A new service account (a program's, e.g. the group server's): its credential is a generated token of
        256 bits, returned here once and kept only as a hash. Wrong guesses never lock it."""
        self._check_new_account(username, roles, uri)
        token = new_service_token()
        self._insert(username, hash_service_token(token), uri, roles, now, " service")
        return token

    def add_service_accounts(self, accounts_: Sequence[tuple[str, str | None]], *, now: float) -> list[str]:
        """Many service accounts (role user) of (name, own URI) in one transaction, e.g. to load a KMS with
        subscribers for a test or a benchmark: SHA-256 token hashes make this fast where scrypt would not be. Their
        tokens, in order; all or none are added (``AccountError`` for a bad or existing name)."""
        tokens = []
        with self._tx() as db:
            for username, uri in accounts_:
                self._check_new_account(username, {"user"}, uri)
                token = new_service_token()
                self._insert(username, hash_service_token(token), uri, {"user"}, now, " service", db=db)
                tokens.append(token)
        return tokens

    @staticmethod
    def _check_new_account(username: str, roles: set[str] | frozenset[str], uri: str | None) -> None:
        if not _USERNAME_RE.fullmatch(username):
            raise AccountError(
                f"bad account name {username!r}: 1-64 of A-Z a-z 0-9 . _ @ + -, starting with a letter or digit"
            )
        unknown = set(roles) - ROLES
        if unknown or not roles:
            raise AccountError(f"roles must be some of {', '.join(sorted(ROLES))}; got {', '.join(sorted(roles))}")
        if uri is not None and not uri:
            raise AccountError("the identity URI must not be empty")

    def _insert(
        self,
        username: str,
        stored: str,
        uri: str | None,
        roles: set[str] | frozenset[str],
        now: float,
        kind: str,
        *,
        db: Connection | None = None,
    ) -> None:
        with self._tx() if db is None else nullcontext(db) as db:
            if db.execute("SELECT 1 FROM accounts WHERE username = ?", (username,)).fetchone():
                raise AccountError(f"account {username!r} already exists")
            db.execute(
                "INSERT INTO accounts (username, password_hash, uri, created, changed) VALUES (?, ?, ?, ?, ?)",
                (username, stored, uri, now, now),
            )
            for role in sorted(roles):
                db.execute("INSERT INTO account_roles (username, role) VALUES (?, ?)", (username, role))
            if uri is not None:
                db.execute(
                    "INSERT INTO grants (username, identity_uri, kind, granted) VALUES (?, ?, 'self', ?)",
                    (username, uri, now),
                )
            self._audit(db, "account-added", username, f"uri={uri} roles={','.join(sorted(roles))}{kind}", now)

    def _require(self, db: Connection, username: str) -> None:
        if not db.execute("SELECT 1 FROM accounts WHERE username = ?", (username,)).fetchone():
            raise AccountError(f"no account {username!r}")

    def remove_account(self, username: str, *, now: float) -> None:
        with self._tx() as db:
            self._require(db, username)
            db.execute("DELETE FROM accounts WHERE username = ?", (username,))  # roles and grants cascade
            self._audit(db, "account-removed", username, "", now)

    def set_password(self, username: str, password: str, *, now: float) -> None:
        """A new password (a service account becomes a password account); also lifts lockouts (the login rules
        count failures per credential)."""
        self._check_new_password(password)
        self._set_credential(username, hash_password(password), now, "password-changed")

    def new_service_token(self, username: str, *, now: float) -> str:
        """A new generated token for ``username`` (which becomes, or stays, a service account); the old
        credential stops working. Returned here once and kept only as a hash."""
        token = new_service_token()
        self._set_credential(username, hash_service_token(token), now, "service-token-changed")
        return token

    def _set_credential(self, username: str, stored: str, now: float, event: str) -> None:
        with self._tx() as db:
            self._require(db, username)
            db.execute(
                "UPDATE accounts SET password_hash = ?, failures = 0, locked_until = 0, changed = ? WHERE username = ?",
                (stored, now, username),
            )
            self._audit(db, event, username, "", now)

    def set_disabled(self, username: str, disabled: bool, *, now: float) -> None:
        """A disabled account keeps its grants but cannot log in."""
        with self._tx() as db:
            self._require(db, username)
            db.execute(
                "UPDATE accounts SET disabled = ?, changed = ? WHERE username = ?", (int(disabled), now, username)
            )
            self._audit(db, "account-disabled" if disabled else "account-enabled", username, "", now)

    def _account(self, db: Connection, username: str) -> Account | None:
        row = db.execute("SELECT uri, disabled, password_hash FROM accounts WHERE username = ?", (username,)).fetchone()
        if row is None:
            return None
        roles = frozenset(
            str(r) for (r,) in db.execute("SELECT role FROM account_roles WHERE username = ?", (username,)).fetchall()
        )
        service = accounts.is_service_hash(str(row[2]))
        return Account(username=username, uri=row[0], roles=roles, disabled=bool(row[1]), service=service)

    def account(self, username: str) -> Account | None:
        with self._read() as db:
            return self._account(db, username)

    def accounts(self) -> list[Account]:
        with self._read() as db:
            names = [str(n) for (n,) in db.execute("SELECT username FROM accounts ORDER BY username").fetchall()]
            return [a for a in (self._account(db, n) for n in names) if a is not None]

    def authenticate(self, username: str, password: str, *, now: float, source: str = "") -> Account:
        """The account if ``password`` is right; ``LoginFailed`` or ``LockedOut`` otherwise (both audited), by the
        rules of ``server.accounts.authenticate`` for a login from ``source`` (an address; '' for local)."""
        try:
            return accounts.authenticate(self, username, password, now=now, guard=self.login_guard, source=source)
        except accounts.MalformedHash as exc:
            raise StoreError(str(exc)) from None

    # ``server.accounts.LoginLedger``: the login procedure's reads and writes of this store.

    def login_record(self, username: str) -> LoginRecord | None:
        with self._read() as db:
            row = db.execute("SELECT password_hash FROM accounts WHERE username = ?", (username,)).fetchone()
        return None if row is None else LoginRecord(str(row[0]))

    def login_audit(self, event: str, username: str | None, detail: str, now: float) -> None:
        self.audit(event, username=username, detail=detail, now=now)

    def login_failure(self, username: str, now: float, detail: str) -> None:
        with self._tx() as db:
            # Count in SQL so that concurrent failures from two processes are both counted (shown to the operator;
            # the rules that refuse logins are ``server.accounts.LoginGuard``'s).
            db.execute("UPDATE accounts SET failures = failures + 1 WHERE username = ?", (username,))
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
