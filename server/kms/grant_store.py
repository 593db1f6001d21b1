"""The KMS store's grants (which identities an account may be keyed for, namespaces included) and the records
of what was issued (never the keys)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from server.kms.account_store import AccountError, KmsAccounts

__all__ = ["GRANT_KINDS", "IssueRecord", "KmsGrants", "namespace_matches"]

GRANT_KINDS = frozenset({"self", "group-manager"})
"""'self': the account's own identity (granted by ``add_account``); 'group-manager': a group it keys."""


@dataclass(frozen=True)
class IssueRecord:
    at: float
    username: str
    identity_uri: str
    period_no: int
    uid: bytes
    kind: str


def _is_namespace(pattern: str) -> bool:
    scheme, sep, rest = pattern.partition(":")
    host = rest[2:]
    return bool(scheme and sep and rest.startswith("*@") and host and "*" not in host and "@" not in host)


def namespace_matches(pattern: str, uri: str) -> bool:
    """``scheme:*@host`` matches ``scheme:USER@host`` for any single USER (no '@', no '*')."""
    if not _is_namespace(pattern):
        return False
    scheme, _, rest = pattern.partition(":")
    uri_scheme, sep, uri_rest = uri.partition(":")
    user, at, host = uri_rest.rpartition("@")
    return bool(sep and at and user) and uri_scheme == scheme and host == rest[2:] and not {"@", "*"} & set(user)


class KmsGrants(KmsAccounts):
    """Grants and issuance records in the KMS's database."""

    # --- grants ---

    def grant(self, username: str, identity_uri: str, kind: str = "group-manager", *, now: float) -> None:
        """Let ``username`` obtain the keys of ``identity_uri`` (replacing the kind of an existing grant)."""
        if kind not in GRANT_KINDS:
            raise AccountError(f"unknown grant kind {kind!r}; one of {', '.join(sorted(GRANT_KINDS))}")
        if not identity_uri:
            raise AccountError("the identity URI must not be empty")
        if "*" in identity_uri and (kind != "group-manager" or not _is_namespace(identity_uri)):
            raise AccountError(
                "a wildcard grant must be a group-manager grant of the form scheme:*@host "
                "(e.g. sip:*@groups.example.org)"
            )
        with self._tx() as db:
            self._require(db, username)
            db.execute(
                "INSERT INTO grants (username, identity_uri, kind, granted) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (username, identity_uri) DO UPDATE SET kind = excluded.kind, granted = excluded.granted",
                (username, identity_uri, kind, now),
            )
            self._audit(db, "grant", username, f"{identity_uri} as {kind}", now)

    def revoke(self, username: str, identity_uri: str, *, now: float) -> None:
        with self._tx() as db:
            self._require(db, username)
            cursor = db.execute("DELETE FROM grants WHERE username = ? AND identity_uri = ?", (username, identity_uri))
            if cursor.rowcount == 0:
                raise AccountError(f"{username!r} has no grant for {identity_uri}")
            self._audit(db, "revoke", username, identity_uri, now)

    def grants(self, username: str) -> dict[str, str]:
        """identity URI → kind."""
        with self._read() as db:
            rows = db.execute(
                "SELECT identity_uri, kind FROM grants WHERE username = ? ORDER BY identity_uri", (username,)
            ).fetchall()
        return {str(u): str(k) for u, k in rows}

    def grant_count(self) -> int:
        with self._read() as db:
            return int(db.execute("SELECT count(*) FROM grants").fetchone()[0])

    def may_key(self, username: str, identity_uri: str) -> bool:
        """Whether an enabled account ``username`` holds a grant for ``identity_uri``: exactly, or through a
        group-manager grant for a whole group namespace (``sip:*@groups.example.org``)."""
        with self._read() as db:
            rows = db.execute(
                "SELECT identity_uri, kind FROM grants JOIN accounts USING (username) "
                "WHERE username = ? AND accounts.disabled = 0 AND (identity_uri = ? OR identity_uri LIKE '%*%')",
                (username, identity_uri),
            ).fetchall()
        return any(
            uri == identity_uri or (kind == "group-manager" and namespace_matches(uri, identity_uri))
            for uri, kind in rows
        )

    def known_identity(self, identity_uri: str) -> bool:
        """Whether the KMS knows ``identity_uri``: an account's own URI or a concrete grant, or keys were issued
        for it (a removed account's identity stays known for its past periods)."""
        with self._read() as db:
            granted = db.execute("SELECT 1 FROM grants WHERE identity_uri = ? LIMIT 1", (identity_uri,)).fetchone()
            issued = db.execute("SELECT 1 FROM issues WHERE identity_uri = ? LIMIT 1", (identity_uri,)).fetchone()
        return granted is not None or issued is not None

    # --- issuance records ---

    def record_issue(
        self, username: str, identity_uri: str, period_no: int, uid: bytes, *, now: float, kind: str = "keyprov"
    ) -> None:
        """Record that ``username`` obtained the keys of ``identity_uri`` for ``period_no`` (never the keys)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO issues (at, username, identity_uri, period_no, uid, kind) VALUES (?, ?, ?, ?, ?, ?)",
                (now, username, identity_uri, period_no, bytes(uid), kind),
            )

    def record_keyprov(
        self,
        username: str,
        identity_uri: str,
        issued: Sequence[tuple[int, bytes]],
        *,
        now: float,
        during: Callable[[], None] | None = None,
    ) -> None:
        """Record a keyprov answer in one transaction: an issuance record per (period, UID) and its audit event, so
        a worker that dies mid-request leaves all of them or none. ``during`` runs inside the transaction (a test
        hook: ``server.kms.service`` stalls there when told to)."""
        with self._tx() as db:
            for period_no, user_id in issued:
                db.execute(
                    "INSERT INTO issues (at, username, identity_uri, period_no, uid, kind) "
                    "VALUES (?, ?, ?, ?, ?, 'keyprov')",
                    (now, username, identity_uri, period_no, bytes(user_id)),
                )
            if during is not None:
                during()
            self._audit(db, "keyprov", username, identity_uri, now)

    def issued(self, identity_uri: str | None = None) -> list[IssueRecord]:
        """Issuance records, oldest first, of one identity or of all."""
        query = "SELECT at, username, identity_uri, period_no, uid, kind FROM issues"
        params: tuple[str, ...] = ()
        if identity_uri is not None:
            query += " WHERE identity_uri = ?"
            params = (identity_uri,)
        with self._read() as db:
            rows = db.execute(query + " ORDER BY id", params).fetchall()
        return [IssueRecord(float(at), str(u), str(i), int(p), bytes(uid), str(k)) for at, u, i, p, uid, k in rows]
