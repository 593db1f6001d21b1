"""The KMS store's precomputed key sets (``ptt-kms issue``; sealed by ``server.kms.issuance``, never in clear) and
the identities they are computed for."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from server.kms.grant_store import KmsGrants

__all__ = ["KmsPrecomputed"]

# The identities an account may be keyed for by name: its own URI and concrete granted URIs (a wildcard namespace
# names no identity), of enabled accounts.
_KEYABLE = (
    "SELECT DISTINCT grants.identity_uri FROM grants JOIN accounts USING (username) "
    "WHERE accounts.disabled = 0 AND grants.identity_uri NOT LIKE '%*%'"
)


class KmsPrecomputed(KmsGrants):
    """Precomputed key sets: one sealed row per (identity, period)."""

    def keyable_count(self) -> int:
        with self._read() as db:
            return int(db.execute(f"SELECT count(*) FROM ({_KEYABLE}) AS keyable").fetchone()[0])

    def identities_without_keys(self, period_no: int) -> list[str]:
        """The keyable identities that have no precomputed key set for ``period_no`` yet, in order."""
        with self._read() as db:
            rows = db.execute(
                f"SELECT identity_uri FROM ({_KEYABLE}) AS keyable WHERE NOT EXISTS (SELECT 1 FROM precomputed_keys "
                "WHERE precomputed_keys.identity_uri = keyable.identity_uri AND precomputed_keys.period_no = ?) "
                "ORDER BY identity_uri",
                (period_no,),
            ).fetchall()
        return [str(u) for (u,) in rows]

    def add_precomputed(self, period_no: int, rows: Iterable[tuple[str, bytes, bytes]], *, now: float) -> int:
        """Store (identity, UID, sealed key set) rows of ``period_no`` in one transaction; a row already there
        stays (a repeated or resumed run changes nothing). The number of rows added."""
        added = 0
        with self._tx() as db:
            for identity, user_id, sealed in rows:
                cursor = db.execute(
                    "INSERT INTO precomputed_keys (identity_uri, period_no, uid, sealed, created) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (identity_uri, period_no) DO NOTHING",
                    (identity, period_no, bytes(user_id), bytes(sealed), now),
                )
                added += max(cursor.rowcount, 0)
        return added

    def precomputed(self, identity_uri: str, periods: Sequence[int]) -> dict[int, tuple[bytes, bytes]]:
        """period → (UID, sealed key set) of ``identity_uri``, for those of ``periods`` that are precomputed."""
        if not periods:
            return {}
        marks = ", ".join("?" for _ in periods)
        with self._read() as db:
            rows = db.execute(
                "SELECT period_no, uid, sealed FROM precomputed_keys "
                f"WHERE identity_uri = ? AND period_no IN ({marks})",
                (identity_uri, *periods),
            ).fetchall()
        return {int(p): (bytes(u), bytes(s)) for p, u, s in rows}

    def precomputed_counts(self) -> dict[int, int]:
        """period → number of precomputed key sets."""
        with self._read() as db:
            rows = db.execute(
                "SELECT period_no, count(*) FROM precomputed_keys GROUP BY period_no ORDER BY period_no"
            ).fetchall()
        return {int(p): int(n) for p, n in rows}

    def purge_precomputed(self, before_period: int, *, now: float) -> int:
        """Delete the key sets of periods before ``before_period`` (never served again); the number deleted."""
        with self._tx() as db:
            deleted = db.execute("DELETE FROM precomputed_keys WHERE period_no < ?", (before_period,)).rowcount
            if deleted:
                detail = f"{deleted} key sets of periods before {before_period}"
                self._audit(db, "precomputed-purged", None, detail, now)
        return int(deleted)
