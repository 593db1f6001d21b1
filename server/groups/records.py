"""The group store's vocabulary: its refusals, the records it hands out, and the value checks.

The checks are module functions so the manager and the dispatcher API refuse a bad value before any expensive
work (signing, KMS requests) and before touching the database. The audit log's hash chain (``audit_digest``,
``verify_audit_chain``) is re-exported from ``server.auditchain``, which the KMS's audit log shares.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from server import accounts
from server.auditchain import AUDIT_GENESIS, AuditRecord, ChainCheck, audit_digest, verify_audit_chain

__all__ = [
    "AUDIT_GENESIS",
    "DEFAULT_MAX_BURST",
    "DEFAULT_ORG",
    "DEFAULT_PRIORITY",
    "DISPATCHER_ROLES",
    "MEMBER_ROLES",
    "AccountError",
    "AuditRecord",
    "ChainCheck",
    "DispatcherAccount",
    "DuplicateGroup",
    "DuplicateMember",
    "GroupError",
    "GroupRecord",
    "InvalidValue",
    "KeyInfo",
    "KeysUnavailable",
    "MemberRecord",
    "NoSuchGroup",
    "NoSuchMember",
    "StoreError",
    "StoredIMessage",
    "audit_digest",
    "check_group_name",
    "check_max_burst",
    "check_not_reserved",
    "check_org",
    "check_priority",
    "check_role",
    "check_uri",
    "verify_audit_chain",
]

DISPATCHER_ROLES = frozenset({"dispatcher", "admin"})
MEMBER_ROLES = frozenset({"member", "dispatcher"})  # a member with role 'dispatcher' may pre-empt the floor
DEFAULT_PRIORITY = 100
DEFAULT_ORG = "default"  # the organisation of accounts and groups made before organisations existed
DEFAULT_MAX_BURST = 30.0
MAX_BURST_LIMIT = 3600.0
MAX_URI_LENGTH = 255
MAX_NAME_LENGTH = 100
URI_SCHEMES = ("sip", "sips", "tel", "urn")

_URI_RE = re.compile(r"([a-z][a-z0-9+.-]*):([\x21-\x7e]+)")
_ORG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


# --- errors ---


class GroupError(Exception):
    """A group operation was refused; the message says why in terms an operator can act on."""


class InvalidValue(GroupError):
    """A URI, name, priority, role or other value is malformed or out of range."""


class NoSuchGroup(GroupError):
    def __init__(self, uri: str) -> None:
        super().__init__(f"no group {uri}")
        self.uri = uri


class DuplicateGroup(GroupError):
    def __init__(self, uri: str) -> None:
        super().__init__(f"group {uri} already exists")
        self.uri = uri


class NoSuchMember(GroupError):
    def __init__(self, group: str, uri: str) -> None:
        super().__init__(f"{uri} is not a member of {group}")
        self.group, self.uri = group, uri


class DuplicateMember(GroupError):
    def __init__(self, group: str, uri: str) -> None:
        super().__init__(f"{uri} is already a member of {group}")
        self.group, self.uri = group, uri


class KeysUnavailable(GroupError):
    """The group server holds no signing keys for a group identity (the KMS account lacks a grant)."""


class StoreError(GroupError):
    """The database or the data key is unusable (newer schema, wrong data key, altered sealed key)."""


class AccountError(GroupError, accounts.AccountError):
    """A dispatcher account operation was refused: duplicate or unknown account, bad name, role or password. (A
    refused login is ``LoginFailed`` or ``LockedOut`` from ``server.accounts``, shared with the KMS.)"""


# --- records ---


@dataclass(frozen=True)
class DispatcherAccount:
    username: str
    role: str
    disabled: bool
    org: str = DEFAULT_ORG


@dataclass(frozen=True)
class GroupRecord:
    uri: str
    name: str
    created_at: float
    created_by: str
    max_burst: float
    org: str = DEFAULT_ORG
    owner: str | None = None  # the account that owns the group (its creator); None once that account is removed
    recording_days: int | None = None
    """Recording on, bursts kept this many days (issue 17: ``server.groups.recordings``); None: not recorded."""


@dataclass(frozen=True)
class MemberRecord:
    group: str
    uri: str
    priority: int
    role: str
    added_at: float
    broadcast: bool = False
    """May make broadcast group calls (a dispatcher's grant, issue 16)."""


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown of a group's active key: its public GMK-ID, key period and creation time."""

    gmk_id: bytes
    period_no: int
    created_at: float


@dataclass(frozen=True, repr=False)
class StoredIMessage:
    group: str
    member: str
    gmk_id: bytes
    data: bytes
    created_at: float

    def __repr__(self) -> str:
        return f"StoredIMessage(group={self.group!r}, member={self.member!r}, gmk_id={self.gmk_id.hex()})"


# --- validation (module functions so the manager and the API check before any expensive work) ---


def check_uri(uri: object, what: str = "URI") -> str:
    """A group or member URI: ``sip:``, ``sips:``, ``tel:`` or ``urn:``, printable ASCII, no whitespace, ≤ 255."""
    if not isinstance(uri, str) or not uri:
        raise InvalidValue(f"the {what} must be a non-empty string")
    if len(uri) > MAX_URI_LENGTH:
        raise InvalidValue(f"the {what} is longer than {MAX_URI_LENGTH} characters")
    m = _URI_RE.fullmatch(uri)
    if m is None:
        raise InvalidValue(f"bad {what} {uri[:80]!r}: expected scheme:rest with no whitespace or control characters")
    if m[1] not in URI_SCHEMES:
        raise InvalidValue(f"bad {what} {uri[:80]!r}: the scheme must be one of {', '.join(URI_SCHEMES)}")
    return uri


def check_not_reserved(uri: str, reserved: Iterable[str], what: str = "URI") -> str:
    """Refuse a wildcard URI (any ``*``) and the reserved ones (the server's own, the KMS's), compared without case
    and without URI parameters or headers (``;...``, ``?...``), so spelling variants of them are refused too."""
    if "*" in uri:
        raise InvalidValue(f"the {what} {uri[:80]!r} is a wildcard; a group or member must be one identity")
    key = _uri_key(uri)
    if any(key == _uri_key(r) for r in reserved):
        raise InvalidValue(f"the {what} {uri[:80]!r} is reserved (the server's or the KMS's own identity)")
    return uri


def _uri_key(uri: str) -> str:
    return re.split(r"[;?]", uri, maxsplit=1)[0].casefold()


def check_org(org: object) -> str:
    if not isinstance(org, str) or not _ORG_RE.fullmatch(org):
        raise AccountError(f"bad organisation {org!r}: 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit")
    return org


def check_group_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidValue("the group name must be a non-empty string")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidValue(f"the group name is longer than {MAX_NAME_LENGTH} characters")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise InvalidValue("the group name must not contain control characters")
    return name


def check_priority(priority: object) -> int:
    if type(priority) is not int or not 0 <= priority <= 255:
        raise InvalidValue(f"priority must be an integer from 0 to 255, not {priority!r}")
    return priority


def check_role(role: object) -> str:
    if not isinstance(role, str) or role not in MEMBER_ROLES:
        raise InvalidValue(f"member role must be one of {', '.join(sorted(MEMBER_ROLES))}, not {role!r}")
    return role


def check_max_burst(seconds: object) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= MAX_BURST_LIMIT:
        raise InvalidValue(f"max_burst must be a number of seconds in (0, {MAX_BURST_LIMIT:.0f}], not {seconds!r}")
    return float(seconds)
