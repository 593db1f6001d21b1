"""The KMS store's refresh tokens (issued by the IdMS, ``server.kms.idms``).

A refresh token is 256 random bits, given to the client once and kept here only as its SHA-256. It is rotated on
every use: the used one is kept, marked, until it would have expired, so that presenting it again (a copy in a
thief's hands, or a client that lost the rotated one) revokes every token of that login (its *family*). A token
names the account's ``changed`` time at issue: disabling (or enabling) the account or a new password changes it
and so ends every refresh token issued before; removing the account deletes them.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from server.kms.account_store import AccountError
from server.kms.grant_store import KmsGrants
from server.sqldb import Connection

__all__ = ["REFRESH_TOKEN_BYTES", "KmsRefreshTokens", "RefreshGrant", "RefreshRefused"]

REFRESH_TOKEN_BYTES = 32


class RefreshRefused(Exception):
    """The refresh token is unknown, expired, used before, or its account changed; the message says which."""


@dataclass(frozen=True)
class RefreshGrant:
    """What a refresh token stands for: an account and the scope it asked for at login ('' for all its grants)."""

    username: str
    scope: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class KmsRefreshTokens(KmsGrants):
    """Refresh tokens in the KMS's database."""

    def issue_refresh_token(self, username: str, scope: str, *, now: float, lifetime: float) -> str:
        """A new refresh token (a new family) for ``username``; returned here once."""
        with self._tx() as db:
            return self._new_token(db, username, scope, secrets.token_hex(16), now, lifetime)

    @staticmethod
    def _new_token(db: Connection, username: str, scope: str, family: str, now: float, lifetime: float) -> str:
        row = db.execute("SELECT changed FROM accounts WHERE username = ?", (username,)).fetchone()
        if row is None:
            raise AccountError(f"no account {username!r}")
        db.execute("DELETE FROM refresh_tokens WHERE expires <= ?", (now,))  # keeps the table small
        token = secrets.token_urlsafe(REFRESH_TOKEN_BYTES)
        db.execute(
            "INSERT INTO refresh_tokens (token_hash, username, family, scope, credential, issued, expires) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (_digest(token), username, family, scope, repr(float(row[0])), now, now + lifetime),
        )
        return token

    def rotate_refresh_token(self, token: str, *, now: float, lifetime: float) -> tuple[str, RefreshGrant]:
        """Use ``token``: the new refresh token that replaces it and what it stands for; ``RefreshRefused`` if it
        is not usable (a reuse revokes the whole family, which stays revoked: the refusal is raised after the
        transaction that deleted it)."""
        refusal = None
        with self._tx() as db:
            row = db.execute(
                "SELECT username, family, scope, credential, expires, used FROM refresh_tokens WHERE token_hash = ?",
                (_digest(token),),
            ).fetchone()
            if row is None:
                refusal = "unknown refresh token"
            else:
                username, family, scope, credential = (str(value) for value in row[:4])
                expires, used = float(row[4]), bool(row[5])
                account = db.execute(
                    "SELECT changed, disabled FROM accounts WHERE username = ?", (username,)
                ).fetchone()
                if used:
                    refusal = "the refresh token was used before: every token of that login is revoked"
                    self._audit(db, "refresh-token-reused", username, f"family {family[:8]}", now)
                elif expires <= now:
                    refusal = "the refresh token expired"
                elif account is None or bool(account[1]) or repr(float(account[0])) != credential:
                    refusal = "the account was disabled or its password changed since this login"
                if refusal is not None:
                    db.execute("DELETE FROM refresh_tokens WHERE family = ?", (family,))
                else:
                    db.execute("UPDATE refresh_tokens SET used = 1 WHERE token_hash = ?", (_digest(token),))
                    return self._new_token(db, username, scope, family, now, lifetime), RefreshGrant(username, scope)
        raise RefreshRefused(refusal)

    def revoke_refresh_tokens(self, username: str) -> int:
        """End every refresh token of ``username``; how many there were."""
        with self._tx() as db:
            return int(db.execute("DELETE FROM refresh_tokens WHERE username = ?", (username,)).rowcount)

    def refresh_token_count(self, username: str | None = None) -> int:
        """Unused refresh tokens (of one account or of all)."""
        query, params = "SELECT count(*) FROM refresh_tokens WHERE used = 0", tuple[str, ...]()
        if username is not None:
            query, params = query + " AND username = ?", (username,)
        with self._read() as db:
            return int(db.execute(query, params).fetchone()[0])
