"""The dispatcher API: HTTPS (TLS 1.2+), HTTP Basic login of dispatcher accounts, JSON in and out.

``DispatchApplication.handle`` is the whole request logic (plain values in, an ``HttpReply`` out, time passed in);
``DispatchResource`` adapts it to twisted.web and runs it on a worker thread (scrypt, SQLite and the SAKKE work
of a rekey must not stall the reactor). Routes, request JSON checks and the JSON of records are
``server.dispatch.routes``.

    GET    /api/health                              {"status": "ok", "domain": ...}  (no login)
    GET    /api/groups                              the groups this account may see, with their member counts
    POST   /api/groups                              {uri, name, members: [{uri, priority?, role?}], max_burst?} → 201
    GET    /api/groups/{uri}                        the group, its members, dispatchers, key's GMK-ID, live status
    DELETE /api/groups/{uri}                        delete the group
    GET    /api/groups/{uri}/members                the members
    POST   /api/groups/{uri}/members                {uri, priority?, role?} → 201 (sent the current GMK)
    GET    /api/groups/{uri}/members/{member}       one member
    PATCH  /api/groups/{uri}/members/{member}       {priority?, role?}
    DELETE /api/groups/{uri}/members/{member}       remove the member and rekey the group
    GET    /api/groups/{uri}/dispatchers            the dispatcher accounts assigned to the group
    POST   /api/groups/{uri}/dispatchers            {username} → 201: assign a dispatcher of the group's org (admin)
    DELETE /api/groups/{uri}/dispatchers/{name}     unassign it (admin)
    GET    /api/audit?limit=N                       the audit records of the admin's organisation, chain checked
    GET    /api/node                                this node's relay, floor and cluster counters (admin)
    GET, DELETE .../alerts[/{member}], POST .../alerts/{member}/ack, PUT, DELETE .../members/{member}/broadcast:
                                                    server.dispatch.emergency
    GET    /api/events                              the live event stream (server-sent events): server.dispatch.stream
    GET, PUT, DELETE .../recording: server.dispatch.recording (issue 17)

URIs in paths are percent-encoded. Who may do what is ``server.dispatch.policy`` (organisations, owners, assigned
dispatchers, the priority ceiling, admin-only pre-emption); a group the account may not see is answered as an
unknown one (404). Wildcard URIs and the reserved ones (the server's, the KMS's) are refused as groups and
members. Errors are {"error": "..."} with 400, 401, 403, 404, 405, 409, 413, 429 or 503 (the group server lacks a
group identity's keys); never a traceback.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.python.threadpool import ThreadPool
from twisted.web import server

from server.accounts import IP_FAILURE_LIMIT as IP_FAILURE_LIMIT  # re-exported: the per-address throttle's limit
from server.accounts import IP_FAILURE_WINDOW as IP_FAILURE_WINDOW
from server.accounts import LockedOut, LoginFailed, retry_after_header
from server.dispatch.emergency import EmergencyRoutes
from server.dispatch.policy import Access, Refused, check_member_change, group_access
from server.dispatch.recording import RecordingRoutes
from server.dispatch.routes import (
    ADMIN_ONLY,
    METHODS,
    ApiError,
    Route,
    audit_json,
    group_json,
    group_path,
    json_object,
    key_json,
    member_json,
    member_spec,
    parse_route,
    status_of,
    uri_list,
)
from server.groups.manager import GroupManager, MemberSpec
from server.groups.store import (
    DEFAULT_MAX_BURST,
    DispatcherAccount,
    GroupError,
    GroupRecord,
    MemberRecord,
    NoSuchGroup,
    NoSuchMember,
    check_not_reserved,
    check_uri,
)
from server.web import MAX_BODY, HttpReply, ThreadedResource, basic_credentials, make_threaded_site

__all__ = [
    "MAX_BODY",
    "DispatchApplication",
    "DispatchResource",
    "HttpReply",
    "StatusSource",
    "make_dispatch_site",
    "no_status",
]

log = logging.getLogger("ptt.dispatch")

REALM = "ptt-dispatch"

StatusSource = Callable[[str], Mapping[str, Any]]
"""``status(group_uri) -> {"present": [uris], "joined": [uris], "talker": uri | None, "queue": [uris]}``, called
on the API's worker thread: a wiring whose floor state lives on the reactor reads it there (e.g. with
``twisted.internet.threads.blockingCallFromThread``)."""


def no_status(group_uri: str) -> dict[str, Any]:
    return {"present": [], "joined": [], "talker": None, "queue": []}


class DispatchApplication(EmergencyRoutes, RecordingRoutes):
    """Authenticates dispatchers and runs their requests against the group manager."""

    def __init__(
        self,
        manager: GroupManager,
        *,
        status: StatusSource | None = None,
        domain: str | None = None,
        reserved: Iterable[str] = (),
        priority_ceiling: int | None = None,
        node_stats: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        """``domain``: the SIP domain bare group names belong to (reported by /api/health for ``ptt-dispatch``);
        ``reserved``: URIs no group or member may have (the server's own, the KMS's; wildcards always are);
        ``priority_ceiling``: the highest priority a non-admin may give (None: the store's setting);
        ``node_stats``: the document of ``GET /api/node`` (called on the API's thread)."""
        self.manager = manager
        self.store = manager.store
        self.status = status or no_status
        self.domain = domain
        self.reserved = tuple(reserved)
        self.priority_ceiling = priority_ceiling
        self.node_stats = node_stats or dict

    def handle(
        self,
        method: str,
        path: str,
        authorization: str | None,
        body: bytes,
        now: float,
        *,
        peer: str | None = None,
    ) -> HttpReply:
        try:
            status, document, headers = self._handle(method, path, authorization, body, now, peer)
        except ApiError as exc:
            status, document, headers = exc.status, {"error": str(exc)}, exc.headers
        except Refused as exc:
            status, document, headers = 403, {"error": str(exc)}, {}
        except GroupError as exc:
            status, document, headers = status_of(exc), {"error": str(exc)}, {}
            if status == 500:
                log.error("dispatch: %s %s: %s", method, path[:200], exc)
        except Exception:  # a bug must not take the service down or leak details
            log.exception("dispatch request failed: %s %s", method, path[:200])
            status, document, headers = 500, {"error": "internal error"}, {}
        reply_headers = {"Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store"}
        reply_headers.update(headers)
        return HttpReply(status, json.dumps(document, indent=1).encode() + b"\n", reply_headers)

    def _handle(
        self, method: str, path: str, authorization: str | None, body: bytes, now: float, peer: str | None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        if len(body) > MAX_BODY:
            raise ApiError(413, f"request body larger than {MAX_BODY} octets")
        route = parse_route(path)
        if route is None:
            raise ApiError(404, f"no such endpoint: {urllib.parse.quote(path[:200], safe='/%-._~')}")
        allowed = METHODS[route.name]
        if method not in allowed:
            raise ApiError(405, f"use {' or '.join(allowed)}", {"Allow": ", ".join(allowed)})
        if route.name == "health":
            return 200, {"status": "ok", "domain": self.domain, "time": now}, {}
        account = self.authenticate(authorization, now, peer)
        if (route.name, method) in ADMIN_ONLY and account.role != "admin":
            raise ApiError(403, f"{method} {path[:200]} needs an admin account; {account.username} is a dispatcher")
        if route.group is not None:
            check_uri(route.group, "group URI")
        if route.member is not None:
            check_uri(route.member, "member URI")
        handler = getattr(self, f"_{method.lower()}_{route.name}")
        result: tuple[int, dict[str, Any], dict[str, str]] = handler(route, account, body, now)
        return result

    def authenticate(self, authorization: str | None, now: float, peer: str | None) -> DispatcherAccount:
        """The logged-in account as stored now (the event stream's login); ApiError 401/429 as any request."""
        return self._current(self._login(authorization, now, peer))

    def visible_groups(self, username: str) -> set[str] | None:
        """The URIs of the groups ``username`` may see now; None once the account is gone or disabled."""
        account = self.store.dispatcher(username)
        if account is None or account.disabled:
            return None
        assigned = self.store.assigned_groups(username)
        return {g.uri for g in self.store.groups(org=account.org) if self._access_to(account, g, assigned).see}

    def _current(self, account: DispatcherAccount) -> DispatcherAccount:
        """The logged-in account's rights as stored now (role and organisation)."""
        current = self.store.dispatcher(account.username)
        if current is None or current.disabled:
            raise ApiError(401, "wrong username or password", {"WWW-Authenticate": f'Basic realm="{REALM}"'})
        return current

    def _login(self, authorization: str | None, now: float, peer: str | None) -> DispatcherAccount:
        """The KMS's login rules (``server.accounts``): per address, per (account, address) lockout, per-account
        slowing and a global failure budget; a refusal says which and when to retry (429, Retry-After)."""
        unauthorised = {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'}
        credentials = basic_credentials(authorization)
        if credentials is None:
            raise ApiError(401, "login required", unauthorised)
        username, password = credentials
        guard, source = self.store.login_guard, peer or ""
        try:
            return self.store.authenticate(username, password, now=now, source=source)
        except LockedOut as exc:
            guard.log_refusal(log, "dispatch", username, source, exc, now)
            raise ApiError(429, str(exc), {"Retry-After": retry_after_header(exc.retry_after)}) from None
        except LoginFailed as exc:
            guard.log_failure(log, "dispatch", username, source, now)
            raise ApiError(401, str(exc), unauthorised) from None

    # --- authorisation (server.dispatch.policy) ---

    def _ceiling(self) -> int:
        return self.store.priority_ceiling() if self.priority_ceiling is None else self.priority_ceiling

    def _access_to(self, account: DispatcherAccount, group: GroupRecord, assigned: set[str] | None = None) -> Access:
        if assigned is None:
            assigned = self.store.assigned_groups(account.username)
        owner = self.store.dispatcher(group.owner) if group.owner is not None else None
        owner_role = owner.role if owner is not None and owner.org == group.org else None
        return group_access(account, group, assigned=group.uri in assigned, owner_role=owner_role)

    def _group(self, route: Route, account: DispatcherAccount) -> tuple[GroupRecord, Access]:
        """The route's group and what ``account`` may do with it; ``NoSuchGroup`` (404) alike for a group that
        does not exist and one the account may not see."""
        assert route.group is not None
        record = self.store.group(route.group)
        access = None if record is None else self._access_to(account, record)
        if record is None or access is None or not access.see:
            raise NoSuchGroup(route.group)
        return record, access

    def _member(self, route: Route, account: DispatcherAccount) -> tuple[Access, MemberRecord]:
        record, access = self._group(route, account)
        assert route.member is not None
        member = self.store.member(record.uri, route.member)
        if member is None:
            raise NoSuchMember(record.uri, route.member)
        return access, member

    def _check_specs(self, access: Access, specs: Iterable[MemberSpec]) -> None:
        ceiling = self._ceiling()
        for spec in specs:
            check_not_reserved(spec.uri, self.reserved, "member URI")
            check_member_change(access, ceiling, priority=spec.priority, role=spec.role)

    # --- endpoints ---

    def _group_detail(self, uri: str) -> dict[str, Any]:
        record = self.store.group(uri)
        if record is None:
            raise NoSuchGroup(uri)
        detail = group_json(record)
        detail["members"] = [member_json(m) for m in self.store.members(uri)]
        detail["dispatchers"] = self.store.assigned_dispatchers(uri)
        detail["key"] = key_json(self.store.key_info(uri))
        detail["status"] = self._live_status(uri)
        return detail

    def _live_status(self, uri: str) -> dict[str, Any]:
        try:
            raw = self.status(uri)
        except Exception:
            log.exception("dispatch: the status of %s is unavailable", uri)
            raw = {}
        talker = raw.get("talker")
        return {
            "present": uri_list(raw.get("present")),
            "joined": uri_list(raw.get("joined")),
            "talker": str(talker) if talker else None,
            "queue": uri_list(raw.get("queue")),
            "alerts": [a for a in raw.get("alerts", []) if isinstance(a, dict)],
        }

    def _get_groups(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        counts = self.store.member_counts()
        assigned = self.store.assigned_groups(account.username)
        visible = [g for g in self.store.groups(org=account.org) if self._access_to(account, g, assigned).see]
        groups = [{**group_json(g), "members": counts.get(g.uri, 0)} for g in visible]
        return 200, {"groups": groups}, {}

    def _post_groups(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        request = json_object(body, required=("uri", "name"), optional=("members", "max_burst"))
        members = request.get("members", [])
        if not isinstance(members, list):
            raise ApiError(400, "members must be a list of {uri, priority?, role?}")
        specs = [member_spec(item, f"members[{i}]") for i, item in enumerate(members)]
        uri = check_not_reserved(check_uri(request["uri"], "group URI"), self.reserved, "group URI")
        # the creator owns the new group (in its own organisation) and may manage it within its role's limits
        self._check_specs(Access(see=True, manage=True, elevate=account.role == "admin"), specs)
        self.manager.create_group(
            uri,
            request["name"],
            specs,
            created_by=account.username,
            now=now,
            max_burst=request.get("max_burst", DEFAULT_MAX_BURST),
            org=account.org,
        )
        return 201, {"group": self._group_detail(uri)}, {"Location": group_path(uri)}

    def _get_group(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        record, _ = self._group(route, account)
        return 200, {"group": self._group_detail(record.uri)}, {}

    def _delete_group(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        record, access = self._group(route, account)
        if not access.delete:
            raise Refused(
                f"only the owner of {record.uri} or an admin of its organisation may delete it (an admin may not "
                "delete another admin's group)"
            )
        self.manager.delete_group(record.uri, by=account.username, now=now)
        return 200, {"deleted": record.uri}, {}

    def _get_members(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        record, _ = self._group(route, account)
        return 200, {"members": [member_json(m) for m in self.store.members(record.uri)]}, {}

    def _post_members(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        record, access = self._group(route, account)
        spec = member_spec(json_object(body, required=("uri",), optional=("priority", "role")), "request body")
        self._check_specs(access, [spec])
        added = self.manager.add_member(record.uri, spec, by=account.username, now=now)
        location = group_path(record.uri) + "/members/" + urllib.parse.quote(added.uri, safe="")
        key = key_json(self.store.key_info(record.uri))
        return 201, {"member": member_json(added), "key": key}, {"Location": location}

    def _get_member(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        _, member = self._member(route, account)
        return 200, {"member": member_json(member)}, {}

    def _patch_member(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        access, member = self._member(route, account)
        request = json_object(body, optional=("priority", "role"))
        if not request:
            raise ApiError(400, "give priority and/or role to change")
        priority, role = request.get("priority"), request.get("role")
        MemberSpec(member.uri, member.priority if priority is None else priority, role or member.role).check()
        check_member_change(access, self._ceiling(), priority=priority, role=role, current=member)
        record = self.manager.update_member(
            member.group, member.uri, priority=priority, role=role, by=account.username, now=now
        )
        return 200, {"member": member_json(record)}, {}

    def _delete_member(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        access, member = self._member(route, account)
        check_member_change(access, self._ceiling(), current=member)
        info = self.manager.remove_member(member.group, member.uri, by=account.username, now=now)
        return 200, {"removed": member.uri, "group": member.group, "rekeyed": True, "key": key_json(info)}, {}

    def _get_dispatchers(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        record, _ = self._group(route, account)
        return 200, {"dispatchers": self.store.assigned_dispatchers(record.uri)}, {}

    def _post_dispatchers(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        record, access = self._group(route, account)
        if not access.assign:
            raise Refused(f"only an admin of its organisation may assign dispatchers to {record.uri}")
        username = json_object(body, required=("username",))["username"]
        if not isinstance(username, str):
            raise ApiError(400, "username must be a string")
        self.store.assign_dispatcher(record.uri, username, by=account.username, now=now)
        location = group_path(record.uri) + "/dispatchers/" + urllib.parse.quote(username, safe="")
        return 201, {"dispatchers": self.store.assigned_dispatchers(record.uri)}, {"Location": location}

    def _delete_dispatcher(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        record, access = self._group(route, account)
        assert route.account is not None
        if not access.assign:
            raise Refused(f"only an admin of its organisation may unassign dispatchers from {record.uri}")
        if route.account not in self.store.assigned_dispatchers(record.uri):
            raise ApiError(404, f"{route.account} is not assigned to {record.uri}")
        self.store.unassign_dispatcher(record.uri, route.account, by=account.username, now=now)
        return 200, {"dispatchers": self.store.assigned_dispatchers(record.uri)}, {}

    def _get_node(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        return 200, dict(self.node_stats()), {}

    def _get_audit(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        raw = (route.query or {}).get("limit", "100")
        if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
            raise ApiError(400, "limit must be a number from 1 to 10000")
        records = self.store.audit_log(int(raw), org=account.org)
        chain = self.store.verify_audit()
        verified = {"ok": chain.ok, "reason": chain.reason or None}
        return 200, {"org": account.org, "chain": verified, "records": [audit_json(r) for r in records]}, {}


# --- Twisted adapter ------------------------------------------------------------------------------------------


class DispatchResource(ThreadedResource):
    def __init__(self, app: DispatchApplication, pool: ThreadPool, clock: Callable[[], float]) -> None:
        super().__init__(
            lambda r: app.handle(r.method, r.path, r.authorization, r.body, r.now, peer=r.peer),
            pool,
            clock,
            HttpReply(500, b'{"error": "internal error"}\n', {"Content-Type": "application/json"}),
            "dispatch",
        )
        self.app = app


def make_dispatch_site(
    app: DispatchApplication, pool: ThreadPool, clock: Callable[[], float] = time.time
) -> server.Site:
    """The site to listen with (on TLS: ``server.tls.server_tls_options``). ``pool`` should have one thread:
    requests are then handled one at a time, in order. ``server.dispatch.stream.with_events`` adds the event
    stream."""
    return make_threaded_site(DispatchResource(app, pool, clock))
