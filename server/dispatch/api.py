"""The dispatcher API: HTTPS (TLS 1.2+), HTTP Basic login of dispatcher accounts, JSON in and out.

``DispatchApplication.handle`` is the whole request logic (plain values in, an ``HttpReply`` out, time passed in);
``DispatchResource`` adapts it to twisted.web and runs it on a worker thread (scrypt, SQLite and the SAKKE work
of a rekey must not stall the reactor). Routes, request JSON checks and the JSON of records are
``server.dispatch.routes``.

    GET    /api/health                              {"status": "ok", "domain": ...}  (no login)
    GET    /api/groups                              the groups with their member counts
    POST   /api/groups                              {uri, name, members: [{uri, priority?, role?}], max_burst?} → 201
    GET    /api/groups/{uri}                        the group, its members, its key's GMK-ID, live status
    DELETE /api/groups/{uri}                        delete the group
    GET    /api/groups/{uri}/members                the members
    POST   /api/groups/{uri}/members                {uri, priority?, role?} → 201 (sent the current GMK)
    GET    /api/groups/{uri}/members/{member}       one member
    PATCH  /api/groups/{uri}/members/{member}       {priority?, role?}
    DELETE /api/groups/{uri}/members/{member}       remove the member and rekey the group

URIs in paths are percent-encoded. Roles: 'dispatcher' accounts may read and change memberships; creating and
deleting groups needs 'admin'. Errors are {"error": "..."} with 400, 401, 403, 404, 405, 409, 413, 429 or 503
(the group server lacks a group identity's keys); never a traceback.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from twisted.python.threadpool import ThreadPool
from twisted.web import server

from server.accounts import IP_FAILURE_LIMIT as IP_FAILURE_LIMIT  # re-exported: the per-address throttle's limit
from server.accounts import IP_FAILURE_WINDOW as IP_FAILURE_WINDOW
from server.accounts import FailureThrottle, LockedOut, LoginFailed
from server.dispatch.routes import (
    ADMIN_ONLY,
    METHODS,
    ApiError,
    Route,
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
from server.groups.manager import GroupManager
from server.groups.store import DEFAULT_MAX_BURST, DispatcherAccount, GroupError, NoSuchGroup, NoSuchMember, check_uri
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


class DispatchApplication:
    """Authenticates dispatchers and runs their requests against the group manager."""

    def __init__(
        self,
        manager: GroupManager,
        *,
        status: StatusSource | None = None,
        domain: str | None = None,
    ) -> None:
        """``domain``: the SIP domain bare group names belong to (reported by /api/health for ``ptt-dispatch``)."""
        self.manager = manager
        self.store = manager.store
        self.status = status or no_status
        self.domain = domain
        self.throttle = FailureThrottle()  # failed logins per source address

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
        account = self._login(authorization, now, peer)
        if (route.name, method) in ADMIN_ONLY and account.role != "admin":
            raise ApiError(403, f"{method} {path[:200]} needs an admin account; {account.username} is a dispatcher")
        if route.group is not None:
            check_uri(route.group, "group URI")
        if route.member is not None:
            check_uri(route.member, "member URI")
        handler = getattr(self, f"_{method.lower()}_{route.name}")
        result: tuple[int, dict[str, Any], dict[str, str]] = handler(route, account, body, now)
        return result

    def _login(self, authorization: str | None, now: float, peer: str | None) -> DispatcherAccount:
        if peer is not None and self.throttle.blocked(peer, now):
            log.warning("dispatch: refusing %s: too many failed logins from this address", peer)
            raise ApiError(
                429, "too many failed logins from this address", {"Retry-After": str(int(self.throttle.window))}
            )
        unauthorised = {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'}
        credentials = basic_credentials(authorization)
        if credentials is None:
            raise ApiError(401, "login required", unauthorised)
        username, password = credentials
        try:
            return self.store.authenticate(username, password, now=now)
        except LockedOut as exc:
            log.warning("dispatch: login for %r refused: locked out for %.0f s", username[:64], exc.retry_after)
            raise ApiError(
                429, "account locked after failed logins", {"Retry-After": str(max(1, int(exc.retry_after + 0.999)))}
            ) from None
        except LoginFailed as exc:
            if peer is not None:
                self.throttle.failed(peer, now)
            log.warning("dispatch: failed login for %r from %s", username[:64], peer)
            raise ApiError(401, str(exc), unauthorised) from None

    # --- endpoints ---

    def _group_detail(self, uri: str) -> dict[str, Any]:
        record = self.store.group(uri)
        if record is None:
            raise NoSuchGroup(uri)
        detail = group_json(record)
        detail["members"] = [member_json(m) for m in self.store.members(uri)]
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
        }

    def _get_groups(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        counts = self.store.member_counts()
        groups = [{**group_json(g), "members": counts.get(g.uri, 0)} for g in self.store.groups()]
        return 200, {"groups": groups}, {}

    def _post_groups(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        request = json_object(body, required=("uri", "name"), optional=("members", "max_burst"))
        members = request.get("members", [])
        if not isinstance(members, list):
            raise ApiError(400, "members must be a list of {uri, priority?, role?}")
        specs = [member_spec(item, f"members[{i}]") for i, item in enumerate(members)]
        uri = check_uri(request["uri"], "group URI")
        self.manager.create_group(
            uri,
            request["name"],
            specs,
            created_by=account.username,
            now=now,
            max_burst=request.get("max_burst", DEFAULT_MAX_BURST),
        )
        return 201, {"group": self._group_detail(uri)}, {"Location": group_path(uri)}

    def _get_group(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        assert route.group is not None
        return 200, {"group": self._group_detail(route.group)}, {}

    def _delete_group(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        assert route.group is not None
        self.manager.delete_group(route.group, by=account.username, now=now)
        return 200, {"deleted": route.group}, {}

    def _get_members(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        assert route.group is not None
        return 200, {"members": [member_json(m) for m in self.store.members(route.group)]}, {}

    def _post_members(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        assert route.group is not None
        spec = member_spec(json_object(body, required=("uri",), optional=("priority", "role")), "request body")
        record = self.manager.add_member(route.group, spec, by=account.username, now=now)
        location = group_path(route.group) + "/members/" + urllib.parse.quote(record.uri, safe="")
        key = key_json(self.store.key_info(route.group))
        return 201, {"member": member_json(record), "key": key}, {"Location": location}

    def _get_member(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        assert route.group is not None and route.member is not None
        if self.store.group(route.group) is None:
            raise NoSuchGroup(route.group)
        record = self.store.member(route.group, route.member)
        if record is None:
            raise NoSuchMember(route.group, route.member)
        return 200, {"member": member_json(record)}, {}

    def _patch_member(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        assert route.group is not None and route.member is not None
        request = json_object(body, optional=("priority", "role"))
        if not request:
            raise ApiError(400, "give priority and/or role to change")
        record = self.manager.update_member(
            route.group,
            route.member,
            priority=request.get("priority"),
            role=request.get("role"),
            by=account.username,
            now=now,
        )
        return 200, {"member": member_json(record)}, {}

    def _delete_member(self, route: Route, account: DispatcherAccount, body: bytes, now: float) -> Any:
        assert route.group is not None and route.member is not None
        info = self.manager.remove_member(route.group, route.member, by=account.username, now=now)
        return 200, {"removed": route.member, "group": route.group, "rekeyed": True, "key": key_json(info)}, {}


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
    requests are then handled one at a time, in order."""
    return make_threaded_site(DispatchResource(app, pool, clock))
