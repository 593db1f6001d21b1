"""The KMS's store: settings, accounts and their grants, issuance records, audit log, trusted domains, in SQLite or
PostgreSQL (``server.sqldb``).

No keys live here in clear: user keys are derived on request (``ptt.crypto.kms.derive_user_keys``) or precomputed
by ``ptt-kms issue`` and kept sealed (``server.kms.precomputed_store``), and the master secrets have their own
file. Passwords are kept only as scrypt hashes. Time is always passed in
(``now``, Unix seconds) so tests can drive lockouts without waiting.

``KmsStore(url)`` is the one object callers use (a SQLite path, ``sqlite:///path`` or ``postgresql://…``). Its
parts: the schema, settings and audit log (``server.kms.database``), accounts and logins
(``server.kms.account_store``), grants and issuance records (``server.kms.grant_store``), precomputed key sets
(``server.kms.precomputed_store``), the IdMS's refresh tokens (``server.kms.token_store``); the trusted external
domains are here.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.accounts import MIN_PASSWORD_LENGTH, LockedOut, LoginFailed
from server.kms.account_store import LOCKOUT_AFTER, LOCKOUT_MAX, LOCKOUT_MIN, ROLES, Account, AccountError
from server.kms.database import SCHEMA_VERSION, SETTINGS, AuditRecord, StoreError
from server.kms.grant_store import GRANT_KINDS, IssueRecord, namespace_matches
from server.kms.precomputed_store import KmsPrecomputed
from server.kms.token_store import KmsRefreshTokens, RefreshGrant, RefreshRefused

__all__ = [
    "GRANT_KINDS",
    "LOCKOUT_AFTER",
    "LOCKOUT_MAX",
    "LOCKOUT_MIN",
    "MIN_PASSWORD_LENGTH",
    "ROLES",
    "SCHEMA_VERSION",
    "SETTINGS",
    "Account",
    "AccountError",
    "AuditRecord",
    "IssueRecord",
    "KmsStore",
    "LockedOut",
    "LoginFailed",
    "RefreshGrant",
    "RefreshRefused",
    "StoreError",
    "TrustedDomain",
    "namespace_matches",
]


@dataclass(frozen=True)
class TrustedDomain:
    kms_uri: str
    certificate_xml: bytes
    added: float


class KmsStore(KmsPrecomputed, KmsRefreshTokens):
    """The KMS's store. Several processes may share it (the service's workers, the CLI): each change is one
    transaction, writers serialised (``server.kms.database``)."""

    # --- trusted external domains ---

    def add_trusted_certificate(self, kms_uri: str, certificate_xml: bytes, *, now: float) -> None:
        """Trust another domain's KMS certificate (replacing an earlier one for the same KMS URI)."""
        if not kms_uri:
            raise StoreError("the KMS URI must not be empty")
        with self._tx() as db:
            db.execute(
                "INSERT INTO trusted_domains (kms_uri, certificate_xml, added) VALUES (?, ?, ?) ON CONFLICT (kms_uri) "
                "DO UPDATE SET certificate_xml = excluded.certificate_xml, added = excluded.added",
                (kms_uri, bytes(certificate_xml), now),
            )
            self._audit(db, "trusted-domain-added", None, kms_uri, now)

    def trusted_certificates(self) -> list[bytes]:
        with self._read() as db:
            rows = db.execute("SELECT certificate_xml FROM trusted_domains ORDER BY kms_uri").fetchall()
        return [bytes(x) for (x,) in rows]

    def trusted_domains(self) -> list[TrustedDomain]:
        with self._read() as db:
            rows = db.execute("SELECT kms_uri, certificate_xml, added FROM trusted_domains ORDER BY kms_uri").fetchall()
        return [TrustedDomain(str(u), bytes(x), float(a)) for u, x, a in rows]

    def remove_trusted_certificate(self, kms_uri: str, *, now: float | None = None) -> None:
        with self._tx() as db:
            if db.execute("DELETE FROM trusted_domains WHERE kms_uri = ?", (kms_uri,)).rowcount == 0:
                raise StoreError(f"{kms_uri} is not a trusted domain")
            if now is not None:
                self._audit(db, "trusted-domain-removed", None, kms_uri, now)
