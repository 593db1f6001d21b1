"""The dispatcher API's HTTP vocabulary: the routes and the methods each allows, request JSON checked field by
field, records rendered as JSON, and the status code of each refusal. No I/O and no state: the request logic is
``server.dispatch.api.DispatchApplication``."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

from ptt import boundedjson
from server.groups.manager import MemberSpec
from server.groups.store import (
    DEFAULT_PRIORITY,
    AccountError,
    AuditRecord,
    DuplicateGroup,
    DuplicateMember,
    GroupError,
    GroupRecord,
    InvalidValue,
    KeyInfo,
    KeysUnavailable,
    MemberRecord,
    NoSuchGroup,
    NoSuchMember,
)

__all__ = [
    "ADMIN_ONLY",
    "JSON_LIMITS",
    "METHODS",
    "ApiError",
    "Route",
    "audit_json",
    "check_fields",
    "group_json",
    "group_path",
    "json_object",
    "key_json",
    "member_json",
    "member_spec",
    "parse_route",
    "status_of",
    "uri_list",
]


JSON_LIMITS = boundedjson.JsonLimits(max_size=64 * 1024, max_depth=8, max_items=4096, max_string=4096)
"""Request bodies: a group with its members list is the deepest (3 levels); URIs and names are at most 255."""


class ApiError(Exception):
    """Answered as {"error": message} with ``status`` (and extra headers)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def status_of(exc: GroupError) -> int:
    if isinstance(exc, NoSuchGroup | NoSuchMember):
        return 404
    if isinstance(exc, DuplicateGroup | DuplicateMember):
        return 409
    if isinstance(exc, InvalidValue | AccountError):
        return 400
    if isinstance(exc, KeysUnavailable):
        return 503
    return 500


@dataclass(frozen=True)
class Route:
    name: str
    group: str | None = None
    member: str | None = None
    account: str | None = None  # a dispatcher account assigned to ``group``
    query: dict[str, str] | None = None


METHODS = {
    "health": ("GET",),
    "audit": ("GET",),
    "node": ("GET",),
    "groups": ("GET", "POST"),
    "group": ("GET", "DELETE"),
    "members": ("GET", "POST"),
    "member": ("GET", "PATCH", "DELETE"),
    "dispatchers": ("GET", "POST"),
    "dispatcher": ("DELETE",),
    # issue 16: emergency alerts (a dispatcher cancels any) and the broadcast right (server.dispatch.emergency)
    "alerts": ("GET",),
    "alert": ("DELETE",),
    "alert_ack": ("POST",),  # issue 15: a dispatcher acknowledges an alert
    "broadcast": ("PUT", "DELETE"),
    "recording": ("GET", "PUT", "DELETE"),  # issue 17 (server.dispatch.recording)
}
ADMIN_ONLY = {("audit", "GET"), ("node", "GET")}
"""Routes only an admin may use at all; the rest are decided per group by ``server.dispatch.policy``."""


def parse_route(path: str) -> Route | None:
    raw, _, query = path.partition("?")
    if len(raw) > 1:
        raw = raw.rstrip("/")
    segments = raw.split("/")
    if len(segments) < 3 or segments[0] != "" or segments[1] != "api" or any(not s for s in segments[2:]):
        return None
    try:
        parts = [urllib.parse.unquote(s, errors="strict") for s in segments[2:]]
    except UnicodeDecodeError:
        return None
    if parts == ["health"]:
        return Route("health")
    if parts == ["node"]:
        return Route("node")
    if parts == ["audit"]:
        return Route("audit", query=dict(urllib.parse.parse_qsl(query[:1000])))
    if parts[0] != "groups":
        return None
    if len(parts) == 1:
        return Route("groups")
    if len(parts) == 2:
        return Route("group", parts[1])
    if parts[2] == "members":
        if len(parts) == 3:
            return Route("members", parts[1])
        if len(parts) == 4:
            return Route("member", parts[1], parts[3])
        if len(parts) == 5 and parts[4] == "broadcast":
            return Route("broadcast", parts[1], parts[3])
    if parts[2] == "alerts":
        if len(parts) == 3:
            return Route("alerts", parts[1])
        if len(parts) == 4:
            return Route("alert", parts[1], parts[3])
        if len(parts) == 5 and parts[4] == "ack":
            return Route("alert_ack", parts[1], parts[3])
    if parts[2] == "recording" and len(parts) == 3:
        return Route("recording", parts[1])
    if parts[2] == "dispatchers":
        if len(parts) == 3:
            return Route("dispatchers", parts[1])
        if len(parts) == 4:
            return Route("dispatcher", parts[1], account=parts[3])
    return None


def json_object(body: bytes, *, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """The request body as a JSON object with ``required`` and only ``optional`` other fields; ApiError 400 if not
    (bounded parsing: ``JSON_LIMITS``, so a deeply nested or huge body is refused before it is built)."""
    try:
        document = boundedjson.loads(body, JSON_LIMITS)
    except boundedjson.JsonLimitError as exc:
        raise ApiError(400, f"the request body is refused: {exc}") from None
    if not isinstance(document, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return check_fields(document, required, optional, "request body")


def check_fields(
    document: dict[str, Any], required: tuple[str, ...], optional: tuple[str, ...], what: str
) -> dict[str, Any]:
    missing = [k for k in required if k not in document]
    if missing:
        raise ApiError(400, f"{what}: missing {', '.join(missing)}")
    unknown = sorted(set(document) - set(required) - set(optional))
    if unknown:
        raise ApiError(400, f"{what}: unknown field {', '.join(unknown)}")
    return document


def member_spec(item: Any, what: str) -> MemberSpec:
    if not isinstance(item, dict):
        raise ApiError(400, f"{what} must be an object with uri, priority?, role?")
    check_fields(item, ("uri",), ("priority", "role"), what)
    return MemberSpec(item["uri"], item.get("priority", DEFAULT_PRIORITY), item.get("role", "member")).check()


def key_json(info: KeyInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    return {"gmk_id": info.gmk_id.hex(), "period_no": info.period_no, "created_at": info.created_at}


def member_json(m: MemberRecord) -> dict[str, Any]:
    return {"uri": m.uri, "priority": m.priority, "role": m.role, "added_at": m.added_at, "broadcast": m.broadcast}


def group_json(g: GroupRecord) -> dict[str, Any]:
    return {
        "uri": g.uri,
        "name": g.name,
        "created_at": g.created_at,
        "created_by": g.created_by,
        "max_burst": g.max_burst,
        "org": g.org,
        "owner": g.owner,
        "recording_days": g.recording_days,
    }


def audit_json(a: AuditRecord) -> dict[str, Any]:
    return {
        "id": a.id,
        "at": a.at,
        "actor": a.actor,
        "event": a.event,
        "detail": a.detail,
        "org": a.org,
        "hash": a.hash.hex(),
    }


def uri_list(value: Any) -> list[str]:
    if not isinstance(value, list | tuple | set | frozenset):
        return []
    return [str(v) for v in value]


def group_path(uri: str) -> str:
    return "/api/groups/" + urllib.parse.quote(uri, safe="")
