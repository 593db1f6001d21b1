"""The dispatcher API (``DispatchApplication.handle`` for every endpoint and error) and ``ptt-dispatch`` against a
real HTTPS server in a subprocess, with the keys it distributes checked by the members' own keys."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ptt.crypto.kms import generate_master_secrets
from ptt.mikey.errors import DecryptionFailed, WrongRecipient
from ptt.mikey.imessage import KmsDomain
from server.accounts import passwords
from server.dispatch import api as api_module
from server.dispatch import cli
from server.dispatch.api import DispatchApplication
from server.groups.manager import GroupManager
from server.groups.store import GroupStore
from server.kms import store as kms_store
from server.kms.material import make_self_signed, write_key_and_certificate
from server.web import MAX_BODY
from tests.test_group_manager import PERIOD, KeySource, KmsWorld

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_790_000_000.0
GROUP = "sip:fire-ops@example.org"
ALICE, BOB, CAROL, DAVE = (f"sip:{n}@example.org" for n in ("alice", "bob", "carol", "dave"))
DATA_KEY = bytes(range(32, 64))
ROOT_PASSWORD = "root password!"
DANA_PASSWORD = "dana password!"
NINA_PASSWORD = "nina password!"


@pytest.fixture(autouse=True)
def cheap_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "SCRYPT_N", 2**8)


@pytest.fixture(scope="module")
def world() -> KmsWorld:
    master = generate_master_secrets()
    return KmsWorld(master, KmsDomain("kms.example.org", master.kpak, master.z_public, PERIOD, 0))


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


ROOT_AUTH = _basic("root", ROOT_PASSWORD)
DANA_AUTH = _basic("dana", DANA_PASSWORD)


def _path(*parts: str) -> str:
    return "/api/groups/" + "/".join(urllib.parse.quote(p, safe="") for p in parts)


@dataclass
class Api:
    app: DispatchApplication
    store: GroupStore
    status: dict[str, Any]

    def __call__(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        auth: str | None = ROOT_AUTH,
        now: float = NOW,
        raw: bytes | None = None,
        peer: str | None = "192.0.2.1",
    ) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        reply = self.app.handle(method, path, auth, data, now, peer=peer)
        assert reply.headers["Content-Type"].startswith("application/json")
        assert b"Traceback" not in reply.body
        return reply.status, json.loads(reply.body), reply.headers


@pytest.fixture
def api(tmp_path: Path, world: KmsWorld) -> Iterator[Api]:
    store = GroupStore(tmp_path / "groups.sqlite3", DATA_KEY)
    store.add_dispatcher("root", ROOT_PASSWORD, role="admin", now=0)
    store.add_dispatcher("dana", DANA_PASSWORD, now=0)
    status: dict[str, Any] = {}
    app = DispatchApplication(GroupManager(store, KeySource(world)), status=lambda g: status, domain="example.org")
    yield Api(app, store, status)
    store.close()


def _assign(api: Api, username: str = "dana", group: str = GROUP) -> None:
    status, doc, _ = api("POST", _path(group, "dispatchers"), {"username": username})
    assert status == 201, doc


def _create(api: Api, uri: str = GROUP, members: list[Any] | None = None) -> dict[str, Any]:
    if members is None:
        members = [{"uri": ALICE}, {"uri": BOB, "priority": 150}, {"uri": CAROL, "role": "dispatcher"}]
    status, doc, _ = api("POST", "/api/groups", {"uri": uri, "name": "Fire ops", "members": members})
    assert status == 201, doc
    group: dict[str, Any] = doc["group"]
    return group


# --- DispatchApplication.handle -------------------------------------------------------------------------------


def test_health_needs_no_login(api: Api) -> None:
    status, doc, headers = api("GET", "/api/health", auth=None)
    assert (status, doc["status"], doc["domain"]) == (200, "ok", "example.org")
    assert headers["Cache-Control"] == "no-store"


def test_login_failures(api: Api) -> None:
    status, doc, headers = api("GET", "/api/groups", auth=None)
    assert status == 401 and doc == {"error": "login required"} and "Basic" in headers["WWW-Authenticate"]
    for bad in ("Bearer x", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode()):
        assert api("GET", "/api/groups", auth=bad)[0] == 401
    status, doc, _ = api("GET", "/api/groups", auth=_basic("root", "wrong password"))
    assert (status, doc["error"]) == (401, "wrong username or password")
    assert api("GET", "/api/groups", auth=_basic("nobody", "whatever!"))[0] == 401


def test_account_lockout_is_429(api: Api) -> None:
    for i in range(kms_store.LOCKOUT_AFTER):
        assert api("GET", "/api/groups", auth=_basic("dana", "wrong password"), now=NOW + i)[0] == 401
    status, doc, headers = api("GET", "/api/groups", auth=DANA_AUTH, now=NOW + 5)
    assert status == 429 and "locked" in doc["error"] and int(headers["Retry-After"]) > 0
    assert api("GET", "/api/groups", auth=DANA_AUTH, now=NOW + 5 + kms_store.LOCKOUT_MIN)[0] == 200


def test_address_throttle_is_429(api: Api) -> None:
    for i in range(api_module.IP_FAILURE_LIMIT):
        assert api("GET", "/api/groups", auth=_basic(f"guess{i}", "whatever!"), peer="198.51.100.7")[0] == 401
    status, doc, _ = api("GET", "/api/groups", auth=ROOT_AUTH, peer="198.51.100.7")
    assert status == 429 and "address" in doc["error"]
    assert api("GET", "/api/groups", auth=ROOT_AUTH, peer="198.51.100.8")[0] == 200  # others are not affected
    later = NOW + api_module.IP_FAILURE_WINDOW + 1
    assert api("GET", "/api/groups", auth=ROOT_AUTH, peer="198.51.100.7", now=later)[0] == 200


def test_an_attacker_elsewhere_cannot_lock_the_dispatcher_out(api: Api) -> None:
    assert api("GET", "/api/groups", auth=DANA_AUTH, peer="192.0.2.1")[0] == 200  # Dana's usual address
    for i in range(3 * kms_store.LOCKOUT_AFTER):  # one guess per lock period keeps the attacker's lock going
        api("GET", "/api/groups", auth=_basic("dana", "wrong password"), peer="203.0.113.66", now=NOW + 60 * i)
    later = NOW + 60 * 3 * kms_store.LOCKOUT_AFTER
    status, doc, headers = api("GET", "/api/groups", auth=DANA_AUTH, peer="203.0.113.66", now=later - 59)
    assert status == 429 and "locked for logins from there" in doc["error"] and int(headers["Retry-After"]) > 0
    assert api("GET", "/api/groups", auth=DANA_AUTH, peer="192.0.2.1", now=later)[0] == 200
    assert api("GET", "/api/groups", auth=DANA_AUTH, peer="198.51.100.9", now=later)[0] == 200


def test_a_spray_is_cut_by_the_global_budget(api: Api) -> None:
    statuses = [  # one guess for each of 100 names from each of 1000 addresses, all at once
        api("GET", "/api/groups", auth=_basic(f"user{i % 100}", "Winter2026!"), peer=f"10.0.{i // 250}.{i % 250}")[0]
        for i in range(1000)
    ]
    assert statuses.count(401) == 30 and statuses.count(429) == 970  # only the budget's 30 were checked
    status, doc, headers = api("GET", "/api/groups", auth=ROOT_AUTH, peer="198.51.100.9", now=NOW)
    assert status == 429 and "on this server" in doc["error"] and headers["Retry-After"] == "1"
    assert api("GET", "/api/groups", auth=ROOT_AUTH, peer="198.51.100.9", now=NOW + 1)[0] == 200


def test_create_list_and_show(api: Api, world: KmsWorld) -> None:
    group = _create(api)
    assert group["uri"] == GROUP and group["created_by"] == "root" and group["max_burst"] == 30.0
    assert [(m["uri"], m["priority"], m["role"]) for m in group["members"]] == [
        (ALICE, 100, "member"),
        (BOB, 150, "member"),
        (CAROL, 100, "dispatcher"),
    ]
    key = api.store.active_key(GROUP)
    assert key is not None and group["key"]["gmk_id"] == key[0].gmk_id.hex()
    assert key[0].gmk.hex() not in json.dumps(group)
    for member in (ALICE, BOB, CAROL):  # every member was keyed
        assert world.receive(member, api.store.imessages_for(member)[0].data).key == key[0].gmk

    _create(api, "sip:rescue@example.org", [])
    status, doc, _ = api("GET", "/api/groups")
    assert status == 200
    assert [(g["uri"], g["members"]) for g in doc["groups"]] == [(GROUP, 3), ("sip:rescue@example.org", 0)]
    assert (doc["groups"][0]["owner"], doc["groups"][0]["org"]) == ("root", "default")
    _assign(api)  # dana sees the groups it is assigned to only
    status, doc, _ = api("GET", "/api/groups", auth=DANA_AUTH)
    assert status == 200 and [(g["uri"], g["members"]) for g in doc["groups"]] == [(GROUP, 3)]

    api.status.update(present=[ALICE, BOB], joined=[ALICE], talker=ALICE, queue=[BOB])
    status, doc, _ = api("GET", _path(GROUP), auth=DANA_AUTH)
    assert status == 200
    assert doc["group"]["status"] == {
        "present": [ALICE, BOB],
        "joined": [ALICE],
        "talker": ALICE,
        "queue": [BOB],
        "alerts": [],
    }
    assert api("GET", "/api/groups/" + GROUP)[0] == 200  # an unencoded URI works too
    assert api("GET", _path(GROUP) + "/")[0] == 200


def test_status_source_failure_gives_empty_status(api: Api) -> None:
    _create(api, members=[])

    def broken(group: str) -> dict[str, Any]:
        raise RuntimeError("floor control is down")

    api.app.status = broken
    status, doc, _ = api("GET", _path(GROUP))
    assert status == 200 and doc["group"]["status"] == {
        "present": [],
        "joined": [],
        "talker": None,
        "queue": [],
        "alerts": [],
    }


def test_create_errors(api: Api) -> None:
    _create(api)
    status, doc, _ = api("POST", "/api/groups", {"uri": GROUP, "name": "again", "members": []})
    assert (status, doc["error"]) == (409, f"group {GROUP} already exists")
    elevated = {"uri": "sip:x@example.org", "name": "x", "members": [{"uri": ALICE, "priority": 200}]}
    status, doc, _ = api("POST", "/api/groups", elevated, auth=DANA_AUTH)
    assert status == 403 and "admin" in doc["error"]
    cases: list[tuple[bytes, str]] = [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2]", "JSON object"),
        (b'{"name": "x"}', "missing uri"),
        (b'{"uri": "sip:x@example.org", "name": "x", "colour": "red"}', "unknown field colour"),
        (b'{"uri": "x", "name": "x"}', "bad group URI"),
        (b'{"uri": "sip:x@example.org", "name": ""}', "group name"),
        (b'{"uri": "sip:x@example.org", "name": "x", "members": "alice"}', "members must be a list"),
        (b'{"uri": "sip:x@example.org", "name": "x", "members": ["sip:a@b"]}', "members[0] must be an object"),
        (b'{"uri": "sip:x@example.org", "name": "x", "members": [{"uri": "sip:a@b", "priority": 999}]}', "priority"),
        (b'{"uri": "sip:x@example.org", "name": "x", "members": [{"uri": "sip:a@b", "role": "boss"}]}', "role"),
        (b'{"uri": "sip:x@example.org", "name": "x", "members": [{"priority": 1}]}', "members[0]: missing uri"),
        (b'{"uri": "sip:x@example.org", "name": "x", "max_burst": -5}', "max_burst"),
    ]
    for raw, message in cases:
        status, doc, _ = api("POST", "/api/groups", raw=raw)
        assert status == 400 and message in doc["error"], (raw, doc)
    assert [g.uri for g in api.store.groups()] == [GROUP]


def test_body_limit_paths_and_methods(api: Api) -> None:
    status, doc, _ = api("POST", "/api/groups", raw=b"x" * (MAX_BODY + 1))
    assert status == 413 and "larger" in doc["error"]
    for path in ("/", "/api", "/api/nothing", "/api/groups/x/y", "/api/groups//members", "/api/groups/a/members/b/c"):
        assert api("GET", path)[0] == 404, path
    status, _, headers = api("PUT", "/api/groups")
    assert status == 405 and headers["Allow"] == "GET, POST"
    assert api("GET", _path("not a uri"))[0] == 400
    assert api("GET", "/api/groups/%ff")[0] == 404
    status, doc, _ = api("GET", _path("sip:nothing@example.org"))
    assert (status, doc["error"]) == (404, "no group sip:nothing@example.org")


def test_member_endpoints(api: Api, world: KmsWorld) -> None:
    _create(api, members=[{"uri": ALICE}, {"uri": BOB}])
    old = api.store.active_key(GROUP)
    assert old is not None
    _assign(api)

    status, doc, headers = api("POST", _path(GROUP, "members"), {"uri": DAVE, "priority": 40}, auth=DANA_AUTH)
    assert status == 201 and doc["member"]["uri"] == DAVE and doc["key"]["gmk_id"] == old[0].gmk_id.hex()
    assert headers["Location"] == _path(GROUP, "members", DAVE)
    assert world.receive(DAVE, api.store.imessages_for(DAVE)[0].data).key == old[0].gmk
    assert api("POST", _path(GROUP, "members"), {"uri": DAVE})[0] == 409
    assert api("POST", _path("sip:none@example.org", "members"), {"uri": DAVE})[0] == 404
    assert api("POST", _path(GROUP, "members"), {"uri": "dave"})[0] == 400

    status, doc, _ = api("GET", _path(GROUP, "members"))
    assert [m["uri"] for m in doc["members"]] == [ALICE, BOB, DAVE]
    status, doc, _ = api("GET", _path(GROUP, "members", DAVE))
    assert (status, doc["member"]["priority"]) == (200, 40)
    assert api("GET", _path(GROUP, "members", CAROL))[0] == 404

    status, doc, _ = api("PATCH", _path(GROUP, "members", DAVE), {"priority": 90, "role": "dispatcher"})
    assert (status, doc["member"]["priority"], doc["member"]["role"]) == (200, 90, "dispatcher")
    assert api("PATCH", _path(GROUP, "members", DAVE), {})[0] == 400
    assert api("PATCH", _path(GROUP, "members", DAVE), {"role": "king"})[0] == 400
    assert api("PATCH", _path(GROUP, "members", DAVE), {"priority": "high"})[0] == 400
    assert api("PATCH", _path(GROUP, "members", CAROL), {"priority": 1})[0] == 404

    status, doc, _ = api("DELETE", _path(GROUP, "members", BOB), auth=DANA_AUTH)
    new = api.store.active_key(GROUP)
    assert new is not None and new[0].gmk != old[0].gmk
    assert status == 200 and doc["rekeyed"] is True and doc["key"]["gmk_id"] == new[0].gmk_id.hex()
    assert api.store.imessages_for(BOB) == []
    for member in (ALICE, DAVE):
        data = api.store.imessages_for(member)[0].data
        assert world.receive(member, data).key == new[0].gmk
        with pytest.raises((WrongRecipient, DecryptionFailed)):
            world.receive(BOB, data)
    assert api("DELETE", _path(GROUP, "members", BOB))[0] == 404


def test_delete_group(api: Api) -> None:
    _create(api)
    assert api("DELETE", _path(GROUP), auth=DANA_AUTH)[0] == 404  # dana may not even see it
    _assign(api)
    assert api("DELETE", _path(GROUP), auth=DANA_AUTH)[0] == 403  # assigned: manages members, may not delete
    status, doc, _ = api("DELETE", _path(GROUP))
    assert (status, doc) == (200, {"deleted": GROUP})
    assert api("DELETE", _path(GROUP))[0] == 404
    assert api.store.imessages_for(ALICE) == []
    assert ("root", "group-deleted") in [(a.actor, a.event) for a in api.store.audit_log()]


def test_missing_keys_and_internal_errors(api: Api, world: KmsWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    api.app.manager.keys = KeySource(world, provisioned=set())
    status, doc, _ = api("POST", "/api/groups", {"uri": GROUP, "name": "x", "members": []})
    assert status == 503 and "ptt-kms grant" in doc["error"]

    def bug(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(api.app.manager, "create_group", bug)
    status, doc, _ = api("POST", "/api/groups", {"uri": GROUP, "name": "x", "members": []})
    assert (status, doc) == (500, {"error": "internal error"})


# --- the CLI against a real HTTPS server ----------------------------------------------------------------------

RUNNER = """
import json, sys
from pathlib import Path

from twisted.internet import endpoints, reactor
from twisted.python.threadpool import ThreadPool

from ptt.crypto.kms import MasterSecrets, derive_user_keys
from ptt.mikey.imessage import IdentityKeys, KmsDomain
from server.dispatch.api import DispatchApplication, make_dispatch_site
from server.groups.manager import GroupManager
from server.groups.store import GroupStore
from server.tls import server_tls_options

root = Path(sys.argv[1])
config = json.loads((root / "config.json").read_text())
master = MasterSecrets(**{k: bytes.fromhex(v) for k, v in config["master"].items()})
domain = KmsDomain("kms.example.org", master.kpak, master.z_public, config["period"], 0)


class Source:
    def keys_for(self, uri, now):
        period = domain.period_number(now)
        keys = derive_user_keys(domain.uid(uri, period), master)
        return IdentityKeys(uri, domain, period, keys.ssk, keys.pvt, keys.rsk)

    def domain(self):
        return domain


store = GroupStore(root / "groups.sqlite3", bytes.fromhex(config["data_key"]))
status = config["status"]
app = DispatchApplication(GroupManager(store, Source()), status=lambda group: status, domain="example.org")
pool = ThreadPool(minthreads=1, maxthreads=1, name="dispatch-worker")
pool.start()
reactor.addSystemEventTrigger("after", "shutdown", pool.stop)
context = server_tls_options(root / "tls-key.pem", root / "tls-cert.pem")
endpoint = endpoints.SSL4ServerEndpoint(reactor, 0, context, interface="127.0.0.1")
listening = endpoint.listen(make_dispatch_site(app, pool))
listening.addCallback(lambda port: print("listening", port.getHost().port, flush=True))
reactor.run()
"""

LIVE_STATUS = {"present": [ALICE, CAROL], "joined": [ALICE], "talker": ALICE, "queue": [CAROL]}


@dataclass
class Server:
    root: Path
    port: int
    process: subprocess.Popen[str]

    @property
    def cacert(self) -> Path:
        return self.root / "tls-cert.pem"

    def store(self) -> GroupStore:
        return GroupStore(self.root / "groups.sqlite3", DATA_KEY)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, world: KmsWorld) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("dispatch")
    key, cert = make_self_signed("127.0.0.1", san_dns=["localhost"], san_ips=["127.0.0.1"])
    write_key_and_certificate(key, cert, root / "tls-key.pem", root / "tls-cert.pem")
    master = world.master
    config = {
        "master": {f: getattr(master, f).hex() for f in ("ksak", "kpak", "z_secret", "z_public")},
        "period": PERIOD,
        "data_key": DATA_KEY.hex(),
        "status": LIVE_STATUS,
    }
    (root / "config.json").write_text(json.dumps(config))
    (root / "runner.py").write_text(RUNNER)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(passwords, "SCRYPT_N", 2**8)
        with GroupStore(root / "groups.sqlite3", DATA_KEY) as store:
            store.add_dispatcher("root", ROOT_PASSWORD, role="admin", now=time.time())
            store.add_dispatcher("dana", DANA_PASSWORD, now=time.time())
            store.add_dispatcher("nina", NINA_PASSWORD, now=time.time())
    credentials = (("root", ROOT_PASSWORD), ("dana", DANA_PASSWORD), ("nina", NINA_PASSWORD), ("wrong", "not the pw"))
    for name, password in credentials:
        (root / f"{name}.password").write_text(password + "\n")
    env = {k: v for k, v in os.environ.items() if k != cli.PASSWORD_ENV}
    process = subprocess.Popen(
        [sys.executable, str(root / "runner.py"), str(root)],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("listening"):
        process.kill()
        raise AssertionError("the dispatch server did not start:\n" + line + process.stdout.read())
    yield Server(root, int(line.split()[1]), process)
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _cli(
    server: Server, capsys: pytest.CaptureFixture[str], *args: str, user: str = "root", password: str | None = None
) -> tuple[int, str, str]:
    argv = ["--server", f"https://127.0.0.1:{server.port}", "--cacert", str(server.cacert), "--user", user]
    password_file = server.root / f"{password or user}.password"
    code = cli.main([*argv, "--password-file", str(password_file), *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_cli_manages_a_group_over_tls(server: Server, world: KmsWorld, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(
        server,
        capsys,
        *("group", "create", "fire-ops", "--member", "alice", "--member", BOB, "--dispatcher", "carol"),
        *("--priority", "carol=200"),
    )
    assert code == 0, err
    assert out.startswith(f"created group {GROUP} (fire-ops) with 3 members; GMK-ID ")

    code, out, _ = _cli(server, capsys, "group", "list", user="dana")
    assert code == 0 and out.strip() == "no groups"  # not dana's group, and dana is not assigned to it
    code, out, _ = _cli(server, capsys, "group", "assign", "fire-ops", "dana")
    assert code == 0 and out.strip() == f"dana may now manage {GROUP}; assigned: dana"

    code, out, _ = _cli(server, capsys, "group", "list", user="dana")
    assert code == 0 and GROUP in out and "fire-ops" in out

    code, out, _ = _cli(server, capsys, "group", "show", GROUP, user="dana")
    assert code == 0
    assert f"talking  {ALICE}" in out and f"queue    {CAROL}" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("sip:")}
    assert rows[ALICE] == ["100", "member", "yes", "yes", "talking"]
    assert rows[BOB] == ["100", "member", "no", "no"]
    assert rows[CAROL] == ["200", "dispatcher", "yes", "no", "queued", "1"]

    code, out, _ = _cli(server, capsys, "group", "add-member", "fire-ops", "dave", "--priority", "50", user="dana")
    assert code == 0 and f"added {DAVE} to {GROUP} (priority 50, member)" in out
    code, out, _ = _cli(server, capsys, "group", "set-priority", GROUP, DAVE, "60", user="dana")
    assert code == 0 and out.strip() == f"priority of {DAVE} in {GROUP} is now 60"

    with server.store() as store:
        before = store.active_key(GROUP)
    assert before is not None
    code, out, _ = _cli(server, capsys, "group", "remove-member", GROUP, "bob", user="dana")
    assert code == 0 and f"removed {BOB} from {GROUP}; the group was rekeyed" in out

    # what the server stored: a new GMK for the remaining members; Bob has nothing and can open nothing
    with server.store() as store:
        after = store.active_key(GROUP)
        assert after is not None and after[0].gmk != before[0].gmk
        assert after[0].gmk_id.hex() in out
        assert [m.uri for m in store.members(GROUP)] == [ALICE, CAROL, DAVE]
        assert store.imessages_for(BOB) == []
        now = time.time()
        for member in (ALICE, CAROL, DAVE):
            data = store.imessages_for(member)[0].data
            assert world.receive(member, data, group=GROUP, now=now).key == after[0].gmk
            with pytest.raises((WrongRecipient, DecryptionFailed)):
                world.receive(BOB, data, group=GROUP, now=now)

    code, _, err = _cli(server, capsys, "group", "delete", GROUP, user="dana")
    assert code == 2 and "may delete it" in err and "(HTTP 403)" in err
    code, out, _ = _cli(server, capsys, "audit")
    assert code == 0 and "hash chain verified" in out and "member-removed" in out and "dana" in out
    code, _, err = _cli(server, capsys, "audit", user="dana")
    assert code == 2 and "(HTTP 403)" in err
    code, out, _ = _cli(server, capsys, "group", "delete", "fire-ops")
    assert code == 0 and out.strip() == f"deleted group {GROUP}"
    code, _, err = _cli(server, capsys, "group", "show", GROUP)
    assert code == 2 and err.strip() == f"ptt-dispatch: error: no group {GROUP} (HTTP 404)"


def test_cli_non_owner_is_refused_and_keys_nobody(
    server: Server, world: KmsWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    """Over the real server: a dispatcher that neither owns nor is assigned to a group can neither add a member to
    it nor remove one (404, as if the group did not exist); an assigned one cannot make a member pre-emptive (403);
    the would-be member gets no key and the group is not rekeyed."""
    group, eve = "sip:e2e@example.org", "sip:eve@example.org"
    code, _, err = _cli(server, capsys, "group", "create", group, "--member", ALICE, user="dana")
    assert code == 0, err  # dana owns it
    with server.store() as store:
        before = store.active_key(group)
    assert before is not None

    code, _, err = _cli(server, capsys, "group", "add-member", group, eve, user="nina")
    assert code == 2 and err.strip() == f"ptt-dispatch: error: no group {group} (HTTP 404)"
    code, _, err = _cli(server, capsys, "group", "remove-member", group, ALICE, user="nina")
    assert code == 2 and "(HTTP 404)" in err
    code, _, err = _cli(server, capsys, "group", "assign", group, "nina", user="dana")
    assert code == 2 and "(HTTP 403)" in err  # only an admin assigns
    code, _, err = _cli(server, capsys, "group", "assign", group, "nina")
    assert code == 0, err
    code, _, err = _cli(server, capsys, "group", "add-member", group, eve, "--role", "dispatcher", user="nina")
    assert code == 2 and "needs an admin account (HTTP 403)" in err

    with server.store() as store:
        assert [m.uri for m in store.members(group)] == [ALICE]
        assert store.imessages_for(eve) == []  # no key for eve
        after = store.active_key(group)
        assert after is not None and after[0].gmk_id == before[0].gmk_id  # no rekey either
        assert world.receive(ALICE, store.imessages_for(ALICE)[0].data, group=group, now=time.time()).key == (
            before[0].gmk
        )
    code, _, err = _cli(server, capsys, "group", "delete", group, user="dana")
    assert code == 0, err


def test_cli_errors(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = _cli(server, capsys, "group", "list", user="root", password="wrong")
    assert code == 2 and "wrong username or password (HTTP 401)" in err

    monkeypatch.setenv(cli.PASSWORD_ENV, DANA_PASSWORD)  # the password from the environment
    base = ["--server", f"https://127.0.0.1:{server.port}", "--user", "dana"]
    assert cli.main([*base, "--cacert", str(server.cacert), "group", "list"]) == 0
    capsys.readouterr()

    key, cert = make_self_signed("127.0.0.1", san_dns=[], san_ips=["127.0.0.1"])
    write_key_and_certificate(key, cert, tmp_path / "other-key.pem", tmp_path / "other-cert.pem")
    assert cli.main([*base, "--cacert", str(tmp_path / "other-cert.pem"), "group", "list"]) == 2
    assert "is not trusted" in capsys.readouterr().err

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    argv = ["--server", f"https://127.0.0.1:{closed}", "--user", "dana", "--cacert", str(server.cacert)]
    assert cli.main([*argv, "group", "list"]) == 2
    assert "connection refused" in capsys.readouterr().err

    assert cli.main(["--server", f"http://127.0.0.1:{server.port}", "--user", "dana", "group", "list"]) == 2
    assert "https://" in capsys.readouterr().err
    assert cli.main([*base, "--cacert", str(tmp_path / "missing.pem"), "group", "list"]) == 2
    assert "CA certificate file" in capsys.readouterr().err
    assert cli.main([*base, "--cacert", str(server.cacert), "group", "create", "x y", "--member", "a"]) == 2
    assert "neither a URI" in capsys.readouterr().err
    args = ["group", "create", "g", "--member", "a", "--priority", "b=5"]
    assert cli.main([*base, "--cacert", str(server.cacert), "--domain", "example.org", *args]) == 2
    assert "not a --member" in capsys.readouterr().err
    assert cli.main([*base, "group", "set-priority", "g", "a", "300"]) == 2  # a usage error
    assert "0 to 255" in capsys.readouterr().err


def test_tls_and_body_limit_of_the_real_server(server: Server) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # that is the point
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", server.port)) as raw, pytest.raises(ssl.SSLError):
        old.wrap_socket(raw, server_hostname="127.0.0.1")

    context = ssl.create_default_context(cafile=str(server.cacert))
    connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=30)
    try:
        connection.request("POST", "/api/groups", body=b"x" * (2 * MAX_BODY), headers={"Authorization": ROOT_AUTH})
        response = connection.getresponse()
        assert response.status == 413 and "larger" in json.loads(response.read())["error"]
    finally:
        connection.close()
