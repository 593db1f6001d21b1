"""Dispatcher authorisation (``server.dispatch.policy`` through ``DispatchApplication.handle``): the permission
matrix route by route and role by role, reserved URIs, the priority ceiling and the pre-emptive role, the default
role of ``ptt-server dispatcher add``, and the audit log's hash chain."""

from __future__ import annotations

import base64
import json
import sqlite3
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ptt.crypto.kms import generate_master_secrets
from ptt.mikey.imessage import KmsDomain
from server import cli as server_cli
from server.accounts import passwords
from server.dispatch.api import DispatchApplication
from server.groups.manager import GroupManager, MemberSpec
from server.groups.store import DispatcherAccount, GroupStore, InvalidValue, make_data_key, read_data_key
from tests.postgres import raw
from tests.test_group_manager import PERIOD, KeySource, KmsWorld

NOW = 1_790_000_000.0
DATA_KEY = bytes(range(64, 96))
PASSWORD = "a dispatch password"
SERVER_URI = "sip:ptt-server@example.org"
KMS_URI = "sip:kms.example.org"
G = "sip:g@example.org"  # org-a, owned by the dispatcher 'owner', 'assigned' assigned to it
H = "sip:h@example.org"  # org-a, owned by the admin 'admin-a2'
B = "sip:b@example.org"  # org-b
NOWHERE = "sip:nowhere@example.org"
ALICE, BOB, CAROL, DAVE = (f"sip:{n}@example.org" for n in ("alice", "bob", "carol", "dave"))
ROLES = ("admin-a", "owner", "assigned", "other", "admin-b")


@pytest.fixture(autouse=True)
def cheap_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "SCRYPT_N", 2**8)


@pytest.fixture(scope="module")
def world() -> KmsWorld:
    master = generate_master_secrets()
    return KmsWorld(master, KmsDomain("kms.example.org", master.kpak, master.z_public, PERIOD, 0))


def _auth(user: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()


def _path(*parts: str) -> str:
    return "/api/groups/" + "/".join(urllib.parse.quote(p, safe="") for p in parts)


@dataclass
class Env:
    app: DispatchApplication
    store: GroupStore

    def __call__(self, method: str, path: str, body: Any = None, *, user: str | None) -> tuple[int, Any]:
        data = b"" if body is None else json.dumps(body).encode()
        reply = self.app.handle(method, path, None if user is None else _auth(user), data, NOW, peer="192.0.2.9")
        assert b"Traceback" not in reply.body
        return reply.status, json.loads(reply.body)

    def ok(self, method: str, path: str, body: Any = None, *, user: str) -> Any:
        status, doc = self(method, path, body, user=user)
        assert status < 300, (method, path, user, status, doc)
        return doc

    def snapshot(self) -> Any:
        groups = [(g.uri, g.org, g.owner) for g in self.store.groups()]
        members = {g[0]: [(m.uri, m.priority, m.role) for m in self.store.members(g[0])] for g in groups}
        keys = {g[0]: self.store.key_history(g[0]) for g in groups}
        assigned = {g[0]: self.store.assigned_dispatchers(g[0]) for g in groups}
        return groups, members, keys, assigned, self.store.imessages_for(DAVE)


@pytest.fixture
def env(database_url: str, world: KmsWorld) -> Iterator[Env]:
    store = GroupStore(database_url, DATA_KEY)
    for name, role, org in (
        ("admin-a", "admin", "org-a"),
        ("admin-a2", "admin", "org-a"),
        ("owner", "dispatcher", "org-a"),
        ("assigned", "dispatcher", "org-a"),
        ("other", "dispatcher", "org-a"),
        ("admin-b", "admin", "org-b"),
    ):
        store.add_dispatcher(name, PASSWORD, role, now=0, org=org)
    app = DispatchApplication(
        GroupManager(store, KeySource(world)), domain="example.org", reserved=(SERVER_URI, KMS_URI)
    )
    e = Env(app, store)
    e.ok("POST", "/api/groups", {"uri": G, "name": "G", "members": [{"uri": ALICE}, {"uri": BOB}]}, user="owner")
    e.ok("POST", _path(G, "members"), {"uri": CAROL, "priority": 200, "role": "dispatcher"}, user="admin-a")
    e.ok("POST", _path(G, "dispatchers"), {"username": "assigned"}, user="admin-a")
    e.ok("POST", "/api/groups", {"uri": H, "name": "H", "members": [{"uri": ALICE}]}, user="admin-a2")
    e.ok("POST", "/api/groups", {"uri": B, "name": "B", "members": [{"uri": ALICE}]}, user="admin-b")
    yield e
    store.close()


# --- the matrix ------------------------------------------------------------------------------------------------

MATRIX: list[tuple[str, str, str, Any, tuple[int, int, int, int, int]]] = [
    # name, method, path, body, expected status for (admin-a, owner, assigned, other, admin-b)
    ("health", "GET", "/api/health", None, (200, 200, 200, 200, 200)),
    ("list groups", "GET", "/api/groups", None, (200, 200, 200, 200, 200)),
    (
        "create group",
        "POST",
        "/api/groups",
        {"uri": "sip:new@example.org", "name": "n", "members": [{"uri": DAVE}]},
        (201, 201, 201, 201, 201),
    ),
    (
        "create group, priority over the ceiling",
        "POST",
        "/api/groups",
        {"uri": "sip:new@example.org", "name": "n", "members": [{"uri": DAVE, "priority": 101}]},
        (201, 403, 403, 403, 201),
    ),
    (
        "create group, pre-emptive member",
        "POST",
        "/api/groups",
        {"uri": "sip:new@example.org", "name": "n", "members": [{"uri": DAVE, "role": "dispatcher"}]},
        (201, 403, 403, 403, 201),
    ),
    ("show group", "GET", _path(G), None, (200, 200, 200, 404, 404)),
    ("delete group", "DELETE", _path(G), None, (200, 200, 403, 404, 404)),
    ("delete another admin's group", "DELETE", _path(H), None, (403, 404, 404, 404, 404)),
    ("list members", "GET", _path(G, "members"), None, (200, 200, 200, 404, 404)),
    ("add member", "POST", _path(G, "members"), {"uri": DAVE}, (201, 201, 201, 404, 404)),
    (
        "add member, priority at the ceiling",
        "POST",
        _path(G, "members"),
        {"uri": DAVE, "priority": 100},
        (201, 201, 201, 404, 404),
    ),
    (
        "add member, priority 255",
        "POST",
        _path(G, "members"),
        {"uri": DAVE, "priority": 255},
        (201, 403, 403, 404, 404),
    ),
    (
        "add member, pre-emptive",
        "POST",
        _path(G, "members"),
        {"uri": DAVE, "role": "dispatcher"},
        (201, 403, 403, 404, 404),
    ),
    ("show member", "GET", _path(G, "members", ALICE), None, (200, 200, 200, 404, 404)),
    ("change priority", "PATCH", _path(G, "members", ALICE), {"priority": 50}, (200, 200, 200, 404, 404)),
    (
        "raise priority over the ceiling",
        "PATCH",
        _path(G, "members", ALICE),
        {"priority": 255},
        (200, 403, 403, 404, 404),
    ),
    ("make pre-emptive", "PATCH", _path(G, "members", ALICE), {"role": "dispatcher"}, (200, 403, 403, 404, 404)),
    ("change an elevated member", "PATCH", _path(G, "members", CAROL), {"priority": 50}, (200, 403, 403, 404, 404)),
    ("remove member", "DELETE", _path(G, "members", ALICE), None, (200, 200, 200, 404, 404)),
    ("remove an elevated member", "DELETE", _path(G, "members", CAROL), None, (200, 403, 403, 404, 404)),
    ("list dispatchers", "GET", _path(G, "dispatchers"), None, (200, 200, 200, 404, 404)),
    ("assign dispatcher", "POST", _path(G, "dispatchers"), {"username": "other"}, (201, 403, 403, 404, 404)),
    ("unassign dispatcher", "DELETE", _path(G, "dispatchers", "assigned"), None, (200, 403, 403, 404, 404)),
    ("audit log", "GET", "/api/audit", None, (200, 403, 403, 403, 200)),
    ("node counters", "GET", "/api/node", None, (200, 403, 403, 403, 200)),
]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("name", "method", "path", "body", "expected"), MATRIX, ids=[m[0] for m in MATRIX])
def test_permission_matrix(
    env: Env, name: str, method: str, path: str, body: Any, expected: tuple[int, ...], role: str
) -> None:
    want = expected[ROLES.index(role)]
    before = env.snapshot()
    status, doc = env(method, path, body, user=None if name == "health" else role)
    assert status == want, (name, role, doc)
    if status >= 400:
        assert env.snapshot() == before, "a refused request changed something"
    if status == 404:  # not allowed to see is answered exactly as not there
        group = urllib.parse.unquote(path.split("/")[3])
        assert doc == {"error": f"no group {group}"}
        assert env(
            method,
            path.replace(urllib.parse.quote(group, safe=""), urllib.parse.quote(NOWHERE, safe="")),
            body,
            user=role,
        ) == (404, {"error": f"no group {NOWHERE}"})


def test_who_sees_which_groups(env: Env) -> None:
    seen = {role: [g["uri"] for g in env.ok("GET", "/api/groups", user=role)["groups"]] for role in ROLES}
    assert seen == {"admin-a": [G, H], "owner": [G], "assigned": [G], "other": [], "admin-b": [B]}
    group = env.ok("GET", _path(G), user="assigned")["group"]
    assert (group["org"], group["owner"], group["dispatchers"]) == ("org-a", "owner", ["assigned"])
    created = env.ok("POST", "/api/groups", {"uri": "sip:mine@example.org", "name": "m"}, user="other")["group"]
    assert (created["org"], created["owner"]) == ("org-a", "other")  # the creator owns it, in its organisation


def test_assigning_across_organisations_is_refused(env: Env) -> None:
    status, doc = env("POST", _path(G, "dispatchers"), {"username": "admin-b"}, user="admin-a")
    assert status == 400 and "organisation" in doc["error"]
    assert env("POST", _path(G, "dispatchers"), {"username": "nobody"}, user="admin-a")[0] == 400
    assert env("DELETE", _path(G, "dispatchers", "other"), user="admin-a")[0] == 404
    assert env.store.assigned_dispatchers(G) == ["assigned"]


def test_an_assigned_dispatcher_loses_the_group_when_unassigned(env: Env) -> None:
    env.ok("DELETE", _path(G, "dispatchers", "assigned"), user="admin-a")
    assert env("POST", _path(G, "members"), {"uri": DAVE}, user="assigned")[0] == 404
    assert env.store.imessages_for(DAVE) == []


def test_a_removed_owner_leaves_the_group_to_the_admins(env: Env) -> None:
    env.store.remove_dispatcher("owner", now=NOW)
    assert env.store.group(G).owner is None  # type: ignore[union-attr]
    env.store.add_dispatcher("owner", PASSWORD, now=NOW, org="org-a")  # the same name again inherits nothing
    assert env("GET", _path(G), user="owner")[0] == 404
    assert env("DELETE", _path(G), user="admin-a")[0] == 200


def test_an_admin_deletes_its_own_group_and_a_dispatchers(env: Env) -> None:
    assert env("DELETE", _path(H), user="admin-a2")[0] == 200
    assert env("DELETE", _path(G), user="admin-a2")[0] == 200  # owned by a dispatcher of its organisation


def test_a_demoted_admin_loses_its_rights_at_once(env: Env) -> None:
    env.store.set_dispatcher_role("admin-a", "dispatcher", now=NOW)
    assert env("GET", _path(G), user="admin-a")[0] == 404
    assert env("GET", "/api/audit", user="admin-a")[0] == 403


# --- reserved URIs, ceiling -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        SERVER_URI,
        "sip:PTT-Server@Example.ORG",
        SERVER_URI + ";transport=tls",
        KMS_URI,
        "sip:*@example.org",
        "sip:fire*@example.org",
        "tel:*",
    ],
)
def test_reserved_and_wildcard_uris_are_refused(env: Env, uri: str) -> None:
    before = env.snapshot()
    status, doc = env("POST", "/api/groups", {"uri": uri, "name": "x"}, user="admin-a")
    assert status == 400 and ("reserved" in doc["error"] or "wildcard" in doc["error"]), doc
    status, doc = env(
        "POST", "/api/groups", {"uri": "sip:x@example.org", "name": "x", "members": [{"uri": uri}]}, user="admin-a"
    )
    assert status == 400, doc
    assert env("POST", _path(G, "members"), {"uri": uri}, user="admin-a")[0] == 400
    assert env.snapshot() == before


def test_the_manager_refuses_wildcards_whoever_calls(env: Env) -> None:
    manager = env.app.manager
    with pytest.raises(InvalidValue, match="wildcard"):
        manager.create_group("sip:*@example.org", "x", [], created_by="ptt-server", now=NOW)
    with pytest.raises(InvalidValue, match="wildcard"):
        manager.add_member(G, MemberSpec("sip:*@example.org"), by="ptt-server", now=NOW)


def test_the_priority_ceiling_is_configurable(env: Env) -> None:
    env.store.set_priority_ceiling(150, now=NOW)
    assert env("POST", _path(G, "members"), {"uri": DAVE, "priority": 150}, user="owner")[0] == 201
    assert env("PATCH", _path(G, "members", DAVE), {"priority": 151}, user="owner")[0] == 403
    env.app.priority_ceiling = 40  # the application's own setting wins over the store's
    status, doc = env("PATCH", _path(G, "members", BOB), {"priority": 30}, user="assigned")
    assert status == 403 and "only an admin" in doc["error"]  # Bob's 100 is above the ceiling now
    assert env("PATCH", _path(G, "members", BOB), {"priority": 30}, user="admin-a")[0] == 200
    status, doc = env("PATCH", _path(G, "members", BOB), {"priority": 41}, user="assigned")
    assert status == 403 and "above 40" in doc["error"]
    assert env("PATCH", _path(G, "members", BOB), {"priority": 40}, user="assigned")[0] == 200


# --- ptt-server dispatcher ... ----------------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "server"
    root.mkdir()
    (root / "server.json").write_text("{}")
    make_data_key(root / "data.key")
    (root / "password").write_text(PASSWORD + "\n")
    return root


def _server_cli(root: Path, *args: str) -> int:
    return server_cli.main(["--data", str(root), *args])


def _open(root: Path) -> GroupStore:
    return GroupStore(root / "server.sqlite3", read_data_key(root / "data.key"))


def test_dispatcher_add_defaults_to_the_least_privilege(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    password = ["--password-file", str(data_dir / "password")]
    assert _server_cli(data_dir, "dispatcher", "add", "dana", *password) == 0
    assert _server_cli(data_dir, "dispatcher", "add", "root", "--role", "admin", "--org", "fire", *password) == 0
    assert "dana added (dispatcher of default)" in capsys.readouterr().out
    with _open(data_dir) as store:
        assert store.dispatcher("dana") == DispatcherAccount("dana", "dispatcher", False, "default")
        root = store.dispatcher("root")
        assert root is not None and (root.role, root.org) == ("admin", "fire")
        store.create_group(G, "G", created_by="root", now=NOW, org="fire")
    assert _server_cli(data_dir, "dispatcher", "assign", "dana", G) == 2  # dana is not of fire
    assert _server_cli(data_dir, "dispatcher", "role", "dana", "admin") == 0
    assert _server_cli(data_dir, "dispatcher", "ceiling", "120") == 0
    assert _server_cli(data_dir, "dispatcher", "list") == 0
    out = capsys.readouterr().out
    assert "up to 120" in out and "dana  admin  default" in out
    with _open(data_dir) as store:
        assert store.priority_ceiling() == 120


def test_audit_verify_command(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _server_cli(data_dir, "dispatcher", "add", "dana", "--password-file", str(data_dir / "password")) == 0
    assert _server_cli(data_dir, "audit", "verify") == 0
    head = capsys.readouterr().out.split("head ")[1].split()[0]
    assert _server_cli(data_dir, "dispatcher", "ceiling", "90") == 0
    assert _server_cli(data_dir, "audit", "verify", "--anchor", head) == 0
    with sqlite3.connect(data_dir / "server.sqlite3") as db:
        db.execute("DELETE FROM audit WHERE id = (SELECT max(id) FROM audit)")
        db.execute("DELETE FROM audit WHERE id = (SELECT max(id) FROM audit)")  # truncated back before the anchor
    capsys.readouterr()
    assert _server_cli(data_dir, "audit", "verify") == 0  # a cut tail alone still chains ...
    assert _server_cli(data_dir, "audit", "verify", "--anchor", head) == 1  # ... but the anchor catches it
    assert "BROKEN" in capsys.readouterr().out


# --- the audit chain --------------------------------------------------------------------------------------------


def test_member_changes_are_audited_who_when_what(env: Env) -> None:
    env.ok("POST", _path(G, "members"), {"uri": DAVE, "priority": 70}, user="assigned")
    env.ok("PATCH", _path(G, "members", DAVE), {"priority": 80}, user="owner")
    env.ok("DELETE", _path(G, "members", DAVE), user="admin-a")
    records = env.ok("GET", "/api/audit?limit=1000", user="admin-a")
    assert records["org"] == "org-a" and records["chain"] == {"ok": True, "reason": None}
    events = [(r["actor"], r["event"], r["detail"], r["at"]) for r in records["records"]]
    assert ("assigned", "member-added", f"{DAVE} to {G} (priority 70, member)", NOW) in events
    assert ("owner", "member-updated", f"{DAVE} in {G}: priority 70 → 80, role member → member", NOW) in events
    assert ("admin-a", "member-removed", f"{DAVE} from {G}", NOW) in events
    assert ("admin-a", "dispatcher-assigned", f"assigned to {G}", NOW) in events
    assert ("owner", "group-created", f"{G} (G) of org-a", NOW) in events
    assert all(r["org"] == "org-a" for r in records["records"])
    other = env.ok("GET", "/api/audit", user="admin-b")["records"]
    assert other and all(r["org"] == "org-b" for r in other) and not any(G in r["detail"] for r in other)
    assert env("GET", "/api/audit?limit=0", user="admin-a")[0] == 400


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("UPDATE audit SET detail = 'nothing happened' WHERE id = 5", "hash does not match"),
        ("UPDATE audit SET actor = 'admin-b' WHERE id = 5", "hash does not match"),
        ("UPDATE audit SET at = at + 1 WHERE id = 5", "hash does not match"),
        ("DELETE FROM audit WHERE id = 5", "hash does not match"),
        ("UPDATE audit SET id = 1000 WHERE id = 5", "hash does not match"),
    ],
)
def test_the_audit_chain_detects_a_tampered_row(env: Env, tamper: str, reason: str) -> None:
    check = env.store.verify_audit()
    assert check.ok and check.records > 6 and check.broken_at is None
    with raw(env.store.url) as db:
        db.execute(tamper)
    check = env.store.verify_audit()
    assert not check.ok and check.reason == reason and check.broken_at in (5, 6, 1000)
    assert check.records == 4  # the four records before the tampered one still verify
    doc = env.ok("GET", "/api/audit", user="admin-a")
    assert doc["chain"] == {"ok": False, "reason": reason}


def test_the_chain_continues_across_processes_and_reopening(env: Env, tmp_path: Path) -> None:
    with GroupStore(env.store.url, DATA_KEY) as second:  # another process on the same file (e.g. ptt-server CLI)
        second.set_priority_ceiling(120, now=NOW)
    env.ok("POST", _path(G, "members"), {"uri": DAVE}, user="owner")
    check = env.store.verify_audit()
    assert check.ok and check.head == env.store.audit_log(1)[0].hash


def test_the_cli_uses_the_configured_database(data_dir: Path, database_url: str) -> None:
    (data_dir / "server.json").write_text(json.dumps({"database": database_url}))
    assert _server_cli(data_dir, "dispatcher", "add", "dana", "--password-file", str(data_dir / "password")) == 0
    with GroupStore(database_url, read_data_key(data_dir / "data.key")) as store:
        assert store.dispatcher("dana") == DispatcherAccount("dana", "dispatcher", False, "default")
        assert store.verify_audit().ok
    assert not (data_dir / "server.sqlite3").exists() or database_url.endswith("server.sqlite3")
