"""The audit logs' hash chain, shared by the group store and the KMS: each record's hash is SHA-256 of the previous
record's hash followed by the record's own canonical content, so an edited, inserted, deleted or reordered row
breaks every hash after it; an anchor (id, hash) written down elsewhere also shows a log cut back before it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["AUDIT_GENESIS", "AuditRecord", "ChainCheck", "audit_digest", "parse_anchor", "verify_audit_chain"]

AUDIT_GENESIS = bytes(32)  # the "previous hash" of the first audit record


@dataclass(frozen=True)
class AuditRecord:
    """Who (``actor``), when (``at``), what (``event``, ``detail``), in which organisation (``org``: the group's or
    the account's; None for server-wide events); ``hash`` chains it to the record before it (``audit_digest``)."""

    at: float
    actor: str | None
    event: str
    detail: str
    id: int = 0
    org: str | None = None
    hash: bytes = b""


@dataclass(frozen=True)
class ChainCheck:
    """The result of verifying the audit chain: ``ok`` if every record's hash is right; ``broken_at`` the id of the
    first record whose hash is wrong; ``head_id``/``head`` the last record and its hash (an operator who writes
    them down can later check that no record up to there was removed: ``verify_audit_chain(..., anchor=...)``)."""

    ok: bool
    records: int
    head_id: int
    head: bytes
    broken_at: int | None = None
    reason: str = ""


def audit_digest(previous: bytes, record: AuditRecord) -> bytes:
    """SHA-256(previous hash ‖ the record's canonical content: id, time, actor, event, detail, org as JSON)."""
    content = json.dumps(
        [record.id, record.at, record.actor, record.event, record.detail, record.org],
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    return hashlib.sha256(previous + content).digest()


def verify_audit_chain(records: Iterable[AuditRecord], *, anchor: tuple[int, bytes] | None = None) -> ChainCheck:
    """Check every record (all of them, in id order) against the chain; with ``anchor`` (id, hash) written down
    earlier, also that this record is still there with that hash (so truncating the log is noticed too)."""
    previous, count, head_id = AUDIT_GENESIS, 0, 0
    anchored = anchor is None
    for record in records:
        if record.id <= head_id:
            return ChainCheck(False, count, head_id, previous, record.id, "records out of order")
        if audit_digest(previous, record) != record.hash:
            return ChainCheck(False, count, head_id, previous, record.id, "hash does not match")
        if anchor is not None and record.id == anchor[0]:
            if record.hash != anchor[1]:
                return ChainCheck(False, count, head_id, previous, record.id, "differs from the anchor")
            anchored = True
        previous, count, head_id = record.hash, count + 1, record.id
    if not anchored:
        assert anchor is not None
        return ChainCheck(False, count, head_id, previous, anchor[0], "the anchored record is missing")
    return ChainCheck(True, count, head_id, previous)


def parse_anchor(text: str) -> tuple[int, bytes]:
    """``ID:HASH`` (as a verify printed it) → (id, hash); ValueError if malformed."""
    ident, _, digest = text.partition(":")
    value = bytes.fromhex(digest)
    if not ident.isdigit() or len(value) != 32:
        raise ValueError(f"bad anchor {text!r}: expected ID:HASH (64 hex digits)")
    return int(ident), value
