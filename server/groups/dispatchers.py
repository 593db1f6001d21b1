"""The group store's dispatcher accounts: add, remove, password, disable, role and organisation, the dispatchers
assigned to a group, and the login ledger. What each role may do is ``server.dispatch.policy``.

Password hashes, the login rules and the login procedure are the KMS's (``server.accounts``); this is the store's
side of ``server.accounts.LoginLedger`` for the dispatcher API, and its ``LoginGuard``.
"""

from __future__ import annotations

import re
from functools import cached_property

from server import accounts
from server.accounts import LoginGuard, LoginRecord, hash_password
from server.groups.database import StoreDatabase
from server.groups.records import (
    DEFAULT_ORG,
    DISPATCHER_ROLES,
    AccountError,
    DispatcherAccount,
    NoSuchGroup,
    StoreError,
    check_org,
)
from server.sqldb import Connection

__all__ = ["DispatcherAccounts"]

_USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")


class DispatcherAccounts(StoreDatabase):
    """Dispatcher accounts in the group store's database."""

    @cached_property
    def login_guard(self) -> LoginGuard:
        """The rules that refuse logins (per address, per account and source, per account, global), in memory."""
        return LoginGuard()

    def add_dispatcher(
        self, username: str, password: str, role: str = "dispatcher", *, now: float, org: str = DEFAULT_ORG
    ) -> None:
        """A new account; the default role is the least privileged ('dispatcher')."""
        if not isinstance(username, str) or not _USERNAME_RE.fullmatch(username):
            raise AccountError(
                f"bad account name {username!r}: 1-64 of A-Z a-z 0-9 . _ @ + -, starting with a letter or digit"
            )
        if role not in DISPATCHER_ROLES:
            raise AccountError(f"role must be one of {', '.join(sorted(DISPATCHER_ROLES))}, not {role!r}")
        check_org(org)
        self._check_new_password(password)
        stored = hash_password(password)
        with self._tx() as db:
            if db.execute("SELECT 1 FROM dispatchers WHERE username = ?", (username,)).fetchone():
                raise AccountError(f"account {username!r} already exists")
            db.execute(
                "INSERT INTO dispatchers (username, password_hash, role, org, created, changed) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (username, stored, role, org, now, now),
            )
            self._audit(db, now, None, "account-added", f"{username} as {role} of {org}", org=org)

    @staticmethod
    def _check_new_password(password: str) -> None:
        problem = accounts.password_problem(password)
        if problem is not None:
            raise AccountError(problem)

    def _require_account(self, db: Connection, username: str) -> None:
        if not db.execute("SELECT 1 FROM dispatchers WHERE username = ?", (username,)).fetchone():
            raise AccountError(f"no account {username!r}")

    def remove_dispatcher(self, username: str, *, now: float) -> None:
        """Remove an account: its assignments go with it, and the groups it owned have no owner any more (their
        organisation's admins manage them; a later account of the same name does not inherit them)."""
        with self._tx() as db:
            self._require_account(db, username)
            org = self._org_of(db, username)
            db.execute("UPDATE groups SET owner = NULL WHERE owner = ?", (username,))
            db.execute("DELETE FROM dispatchers WHERE username = ?", (username,))
            self._audit(db, now, None, "account-removed", username, org=org)

    @staticmethod
    def _org_of(db: Connection, username: str) -> str | None:
        row = db.execute("SELECT org FROM dispatchers WHERE username = ?", (username,)).fetchone()
        return None if row is None else str(row[0])

    def set_dispatcher_role(self, username: str, role: str, *, now: float, by: str | None = None) -> None:
        if role not in DISPATCHER_ROLES:
            raise AccountError(f"role must be one of {', '.join(sorted(DISPATCHER_ROLES))}, not {role!r}")
        with self._tx() as db:
            self._require_account(db, username)
            db.execute("UPDATE dispatchers SET role = ?, changed = ? WHERE username = ?", (role, now, username))
            self._audit(db, now, by, "account-role", f"{username} is now {role}", org=self._org_of(db, username))

    # --- dispatchers assigned to groups (an admin's decision; the account and the group share an organisation) ---

    def assign_dispatcher(self, group: str, username: str, *, now: float, by: str | None = None) -> None:
        """Let ``username`` manage the members of ``group``. Refused (``AccountError``) if there is no such account
        or it belongs to another organisation than the group; assigning twice is harmless."""
        with self._tx() as db:
            row = db.execute("SELECT org FROM groups WHERE uri = ?", (group,)).fetchone()
            if row is None:
                raise NoSuchGroup(group)
            if self._org_of(db, username) != str(row[0]):
                raise AccountError(f"no account {username!r} in the organisation of {group}")
            if db.execute(
                "SELECT 1 FROM group_dispatchers WHERE group_uri = ? AND username = ?", (group, username)
            ).fetchone():
                return
            db.execute(
                "INSERT INTO group_dispatchers (group_uri, username, assigned_by, assigned_at) VALUES (?, ?, ?, ?)",
                (group, username, by, now),
            )
            self._audit(db, now, by, "dispatcher-assigned", f"{username} to {group}", org=str(row[0]))

    def unassign_dispatcher(self, group: str, username: str, *, now: float, by: str | None = None) -> None:
        with self._tx() as db:
            row = db.execute("SELECT org FROM groups WHERE uri = ?", (group,)).fetchone()
            if row is None:
                raise NoSuchGroup(group)
            deleted = db.execute(
                "DELETE FROM group_dispatchers WHERE group_uri = ? AND username = ?", (group, username)
            ).rowcount
            if not deleted:
                raise AccountError(f"{username!r} is not assigned to {group}")
            self._audit(db, now, by, "dispatcher-unassigned", f"{username} from {group}", org=str(row[0]))

    def assigned_dispatchers(self, group: str) -> list[str]:
        with self._read() as db:
            rows = db.execute(
                "SELECT username FROM group_dispatchers WHERE group_uri = ? ORDER BY username", (group,)
            ).fetchall()
        return [str(r[0]) for r in rows]

    def assigned_groups(self, username: str) -> set[str]:
        with self._read() as db:
            rows = db.execute("SELECT group_uri FROM group_dispatchers WHERE username = ?", (username,)).fetchall()
        return {str(r[0]) for r in rows}

    def set_dispatcher_password(self, username: str, password: str, *, now: float) -> None:
        """A new password; also lifts lockouts (the login rules count failures per password)."""
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
            row = db.execute("SELECT role, disabled, org FROM dispatchers WHERE username = ?", (username,)).fetchone()
        return None if row is None else DispatcherAccount(username, str(row[0]), bool(row[1]), str(row[2]))

    def dispatchers(self) -> list[DispatcherAccount]:
        with self._read() as db:
            rows = db.execute("SELECT username, role, disabled, org FROM dispatchers ORDER BY username").fetchall()
        return [DispatcherAccount(str(u), str(r), bool(d), str(o)) for u, r, d, o in rows]

    def authenticate(self, username: str, password: str, *, now: float, source: str = "") -> DispatcherAccount:
        """The account if ``password`` is right; ``LoginFailed`` or ``LockedOut`` otherwise (both audited), by the
        KMS's rules (``server.accounts.authenticate``) for a login from ``source`` (an address; '' for local)."""
        try:
            return accounts.authenticate(self, username, password, now=now, guard=self.login_guard, source=source)
        except accounts.MalformedHash as exc:
            raise StoreError(str(exc)) from None

    # ``server.accounts.LoginLedger``: the login procedure's reads and writes of this store.

    def login_record(self, username: str) -> LoginRecord | None:
        with self._read() as db:
            row = db.execute("SELECT password_hash FROM dispatchers WHERE username = ?", (username,)).fetchone()
        return None if row is None else LoginRecord(str(row[0]))

    def login_audit(self, event: str, username: str | None, detail: str, now: float) -> None:
        self.audit(event, actor=username, detail=detail, now=now)

    def login_failure(self, username: str, now: float, detail: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE dispatchers SET failures = failures + 1 WHERE username = ?", (username,))
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
