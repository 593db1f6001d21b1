"""Issue 13, done when: a simulated site of hosts in network namespaces (``tests/site.py``), every server on a host
of its own reached by its public name with certificates from the site's CA (verified by name, not pinned):

    kms.site.test       ptt-kms (https://kms.site.test:8443)
    db.site.test        PostgreSQL on TCP, password logins (scram-sha-256) from the site's network
    node1.site.test     ptt-server --listen 0.0.0.0 --public-name node1.site.test --database postgresql://…@db…
    node2.site.test     (the host of a second node, when ptt-server has several)
    console.site.test   ptt-dispatch (a dispatcher's desk)
    alice-pc, bob-pc    ptt-client provisions from the KMS by enrolment, ptt-headless joins and talks

Alice and Bob provision, get the node's client-info, join a group the dispatcher created and each hears the other;
a client dialling a name the node's (or the KMS's) certificate does not carry refuses it at once.

Several nodes: ``init_node`` (the data directory) and ``start_node`` (serve) are apart, and the site already has a
host node2.site.test, so a test can add a second node with ``start_node(ptt, "node2", "node2", node_name="node2")``
(its data directory from the planned multi-node ``ptt-server init --node NAME --data-key FILE``), kill the host of
the node owning the group (``ptt.site.kill_host("node1")``, or cut its cable: ``ptt.site.disconnect("node1")``) and
check from the clients' reports that the call goes on.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bench.harness import Daemon, clean_env
from tests.postgres import find_binaries, start_postgres
from tests.site import Site, finish, site_available
from tests.testca import CertificateAuthority

pytestmark = [
    pytest.mark.skipif(site_available() is not None, reason=f"network namespaces: {site_available()}"),
    pytest.mark.skipif(find_binaries() is None, reason="PostgreSQL is not installed (apt-get install postgresql)"),
    pytest.mark.xdist_group("site"),  # the tests share one site: keep them on one worker
]

HOSTS = ["kms", "db", "node1", "node2", "console", "alice-pc", "bob-pc"]  # node2: for a second node (idle here)
DOMAIN = "site.test"
USERS = {"alice": "alice-pc", "bob": "bob-pc"}
SERVER_URI = f"sip:ptt-server@{DOMAIN}"
GROUP_DOMAIN = f"groups.{DOMAIN}"
GROUP = f"sip:fire@{GROUP_DOMAIN}"
KMS = "server.kms.cli"
SERVER = "server.main"
DISPATCH_PORT = 8444  # ptt-server's default ports: each node has an address of its own
CLIENT_TIMEOUT = 60.0


@dataclass
class Node:
    """One group server node: its host, data directory and, once started, its process."""

    name: str
    host: str
    data: Path
    daemon: Daemon | None = None


@dataclass
class PttSite:
    """The site and what runs on it: the CA, shared files (enrolment, tokens, passwords), the database, nodes."""

    site: Site
    ca: CertificateAuthority
    files: Path
    database_url: str = ""
    kms: Daemon | None = None
    nodes: dict[str, Node] = field(default_factory=dict)

    @property
    def ca_file(self) -> Path:
        return self.files / "ca.pem"

    def fqdn(self, host: str) -> str:
        return self.site.hosts[host].fqdn

    def certificate(self, host: str, *names: str) -> tuple[Path, Path]:
        """A certificate from the site's CA for ``host``'s name (and ``names``): chain and key files."""
        return self.ca.issue([self.fqdn(host), *names]).write(self.files, host)


# --- the servers -----------------------------------------------------------------------------------------------------


def start_database(ptt: PttSite) -> None:
    """PostgreSQL on the db host, listening on its address; a role with a password and a database for the nodes."""
    db = ptt.site.hosts["db"]
    network = db.address.rsplit(".", 1)[0] + ".0/24"
    server = start_postgres(listen=db.address, password_network=network, netns=db.netns)
    ptt.site.on_close(server.stop)
    password = secrets.token_urlsafe(18)
    server.create_role("ptt_site", password)
    server.create_database("ptt_site", owner="ptt_site")
    ptt.database_url = f"postgresql://ptt_site:{password}@{db.fqdn}/ptt_site"


def start_kms(ptt: PttSite) -> None:
    """The KMS on its host (public name kms.site.test, a certificate from the site's CA), the users' and the group
    server's accounts, and the enrolment file clients and nodes start from."""
    site, files = ptt.site, ptt.files
    kms = ["-m", KMS, "--data", str(site.root / "kms")]
    chain, key = ptt.certificate("kms")
    site.check("kms", *kms, "init", "--domain", DOMAIN, "--kms-uri", ptt.fqdn("kms"), "--listen", "0.0.0.0",
               "--public-name", ptt.fqdn("kms"), "--tls-cert", str(chain), "--tls-key", str(key),
               "--tls-ca", str(ptt.ca_file))  # fmt: skip
    for user in USERS:
        (files / f"{user}.pw").write_text(f"{user}-password-x\n")
        site.check("kms", *kms, "user", "add", user, "--uri", f"sip:{user}@{DOMAIN}",
                   "--password-file", str(files / f"{user}.pw"))  # fmt: skip
    site.check("kms", *kms, "user", "add", "ptt-server", "--uri", SERVER_URI, "--service",
               "--secret-out", str(files / "server.token"))  # fmt: skip
    site.check("kms", *kms, "grant", "ptt-server", f"sip:*@{GROUP_DOMAIN}")
    site.check("kms", *kms, "export-enrolment", "--out", str(files / "enrol.json"))
    ptt.kms = site.start("kms", [*kms, "serve"], ready="listening on")


def init_node(
    ptt: PttSite,
    name: str,
    host: str,
    *,
    node_name: str | None = None,
    tls_names: tuple[str, ...] = (),
    extra_init_args: tuple[str, ...] = (),
) -> Node:
    """The data directory of a group server node on ``host`` (run there, as it reaches the database): listening on
    every address, public name the host's, a certificate from the site's CA naming it and ``tls_names`` (e.g. a
    name all nodes share), the site's database.

    Every node shares the KMS account, server URI and database. ``node_name`` gives ``--node NAME`` and, from the
    second node on, ``--data-key`` (the first node's data key): the planned multi-node ``ptt-server init``."""
    data = ptt.site.root / "nodes" / name
    chain, key = ptt.certificate(host, *tls_names)
    cluster = [option for tls_name in tls_names for option in ("--tls-name", tls_name)]
    if node_name is not None:
        cluster += ["--node", node_name]
        if ptt.nodes:
            cluster += ["--data-key", str(next(iter(ptt.nodes.values())).data / "data.key")]
    ptt.site.check(
        host, "-m", SERVER, "--data", str(data), "init", "--kms-enrolment", str(ptt.files / "enrol.json"),
        "--kms-user", "ptt-server", "--kms-secret-file", str(ptt.files / "server.token"), "--server-uri", SERVER_URI,
        "--domain", GROUP_DOMAIN, "--listen", "0.0.0.0", "--public-name", ptt.fqdn(host),
        "--database", ptt.database_url, "--tls-cert", str(chain), "--tls-key", str(key), "--tls-ca", str(ptt.ca_file),
        *cluster, *extra_init_args,
    )  # fmt: skip
    node = Node(name, host, data)
    ptt.nodes[name] = node
    return node


def start_node(
    ptt: PttSite,
    name: str,
    host: str,
    *,
    node_name: str | None = None,
    tls_names: tuple[str, ...] = (),
    extra_init_args: tuple[str, ...] = (),
) -> Node:
    """``init_node`` unless done, then serve on ``host``; ready once it listens (it has its keys from the KMS)."""
    node = ptt.nodes.get(name) or init_node(
        ptt, name, host, node_name=node_name, tls_names=tls_names, extra_init_args=extra_init_args
    )
    node.daemon = ptt.site.start(host, ["-m", SERVER, "--data", str(node.data), "serve", "--workers", "1"],
                                 ready="listening:")  # fmt: skip
    return node


# --- dispatchers and clients -----------------------------------------------------------------------------------------


def dispatch(ptt: PttSite, node: Node, *args: str) -> str:
    """``ptt-dispatch`` from the console host, at the node's public name, verifying it against the site's CA."""
    server = f"https://{ptt.fqdn(node.host)}:{DISPATCH_PORT}"
    command = ["-m", "server.dispatch.cli", "--server", server, "--cacert", str(ptt.ca_file), "--user", "admin"]
    return ptt.site.check("console", *command, *args, env=clean_env(PTT_DISPATCH_PASSWORD="admin-password-x"))


def keystore_args(ptt: PttSite, user: str) -> list[str]:
    return ["--keystore", str(ptt.files / f"{user}.ks"), "--passphrase-file", str(ptt.files / "ks.pw")]


def provision(ptt: PttSite) -> None:
    """Every user provisions on their own host from the KMS by its enrolment file (at the same time)."""
    (ptt.files / "ks.pw").write_text("keystore-passphrase\n")
    running = {}
    for user, host in USERS.items():
        enrolment = ["--enrolment", str(ptt.files / "enrol.json")]
        account = ["--user", user, "--password-file", str(ptt.files / f"{user}.pw"), "--uri", f"sip:{user}@{DOMAIN}"]
        running[user] = ptt.site.spawn(host, "-m", "client.cli", *keystore_args(ptt, user), "provision", *enrolment,
                                       *account)  # fmt: skip
    for user, process in running.items():
        code, output = finish(process, CLIENT_TIMEOUT)
        assert code == 0, f"provisioning {user} failed:\n{output}"


def headless(ptt: PttSite, user: str, server_info: Path, script: str) -> subprocess.Popen[str]:
    """``ptt-headless`` for ``user`` on the user's host; the process (its report goes to ``files/USER.json``)."""
    return ptt.site.spawn(USERS[user], "-m", "client.headless", *keystore_args(ptt, user), "--server-info",
                          str(server_info), "--uri", f"sip:{user}@{DOMAIN}", "--script", script,
                          "--report", str(ptt.files / f"{user}.json"))  # fmt: skip


def report(ptt: PttSite, user: str) -> dict[str, Any]:
    return dict(json.loads((ptt.files / f"{user}.json").read_text()))


# --- the site --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ptt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PttSite]:
    root = tmp_path_factory.mktemp("site")
    started = time.monotonic()
    with Site(HOSTS, root, domain=DOMAIN) as site:
        files = root / "files"
        files.mkdir()
        deployment = PttSite(site, CertificateAuthority("Site Test Root CA"), files)
        deployment.ca.write_root(deployment.ca_file)
        start_database(deployment)
        start_kms(deployment)
        node = start_node(deployment, "node1", "node1", node_name="node1")
        start_node(deployment, "node2", "node2", node_name="node2")  # the same store: the same groups
        (files / "admin.pw").write_text("admin-password-x\n")
        site.check("node1", "-m", SERVER, "--data", str(node.data), "dispatcher", "add", "admin", "--role", "admin",
                   "--password-file", str(files / "admin.pw"))  # fmt: skip
        for name, other in deployment.nodes.items():
            site.check(other.host, "-m", SERVER, "--data", str(other.data), "client-info", "--out",
                       str(files / f"{name}.json"))  # fmt: skip
        provision(deployment)
        members = [a for user in USERS for a in ("--member", f"sip:{user}@{DOMAIN}")]
        dispatch(deployment, node, "group", "create", "fire", *members)
        print(f"site up in {time.monotonic() - started:.1f} s")
        try:
            yield deployment
        except BaseException:
            print(site.logs())
            raise


def owner(ptt: PttSite, group: str) -> str:
    """The node holding the group's lease, as the database says (asked from node2's host, which reaches it)."""
    query = (
        "import psycopg, sys; c = psycopg.connect(sys.argv[1]); r = c.execute('SELECT node FROM ptt_leases "
        "WHERE group_uri = %s AND expires > clock_timestamp()', (sys.argv[2],)).fetchone(); print(r[0] if r else '')"
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        name = ptt.site.check("node2", "-c", query, ptt.database_url, group).strip()
        if name:
            return name
        time.sleep(0.5)
    raise AssertionError(f"nobody serves {group}")


def start_together(ptt: PttSite, name: str, users: tuple[str, ...], timeout: float = 60) -> None:
    """Once the dispatcher sees every one of ``users`` joined in GROUP (asked at node1, whichever node serves it),
    create the file their scripts wait for (``wait-file``): their next steps start together, however long each
    took to start on a loaded machine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = dispatch(ptt, ptt.nodes["node1"], "group", "show", GROUP).splitlines()
        joined = {line.split()[0] for line in shown if len(line.split()) >= 5 and line.split()[4] == "yes"}
        if {f"sip:{u}@{DOMAIN}" for u in users} <= joined:
            (ptt.files / name).touch()
            return
        time.sleep(0.3)
    raise AssertionError(f"{users} did not all join within {timeout} s:\n{ptt.site.logs()[-4000:]}")


def test_clients_on_two_hosts_talk_through_the_nodes_by_their_public_names(ptt: PttSite) -> None:
    info = json.loads((ptt.files / "node1.json").read_text())
    assert info["host"] == "node1.site.test"
    assert info["tls_ca"] == ptt.ca_file.read_text()  # verified against the site's CA, not a pinned certificate
    assert [(n["name"], n["host"]) for n in info["nodes"]] == [
        ("node1", "node1.site.test"),
        ("node2", "node2.site.test"),
    ]
    enrolment = json.loads((ptt.files / "enrol.json").read_text())
    assert enrolment["base_url"] == "https://kms.site.test:8443"

    # alice logs in at node1, bob at node2: one of them reaches the group's call through the other node
    go = ptt.files / "go-talk"
    alice = headless(ptt, "alice", ptt.files / "node1.json", f"join {GROUP}; wait-file {go}; talk 2; wait 4")
    bob = headless(ptt, "bob", ptt.files / "node2.json", f"join {GROUP}; wait-file {go}; wait 2.5; talk 2; wait 1.5")
    start_together(ptt, go.name, ("alice", "bob"))
    for user, process in (("alice", alice), ("bob", bob)):
        code, output = finish(process, CLIENT_TIMEOUT)
        assert code == 0, f"{user}: {output}"
    a, b = report(ptt, "alice"), report(ptt, "bob")
    assert a["sent"] >= 90 and b["sent"] >= 90
    logs = ptt.site.logs()
    (ptt.files / "site-logs.txt").write_text(logs)
    logs = logs[-3000:]
    assert b["received"].get("alice", 0) >= 0.9 * a["sent"], (a["received"], b, logs)
    assert a["received"].get("bob", 0) >= 0.9 * b["sent"], (a, b["received"], logs)


def test_the_database_takes_only_password_logins_from_the_site(ptt: PttSite) -> None:
    without_password = "postgresql://ptt_site@" + ptt.database_url.partition("@")[2]
    connect = "import psycopg, sys; psycopg.connect(sys.argv[1], connect_timeout=5).close()"
    ptt.site.check("node1", "-c", connect, ptt.database_url)
    refused = ptt.site.run("node1", "-c", connect, without_password)
    assert refused.returncode != 0 and "password" in refused.stderr, refused.stderr


def test_a_client_refuses_a_node_whose_certificate_does_not_name_the_host_it_dialled(ptt: PttSite) -> None:
    # imposter.site.test resolves to node1's address, whose certificate (from the trusted CA) names node1 only
    ptt.site.add_name("imposter.site.test", "node1")
    info = json.loads((ptt.files / "node1.json").read_text())
    wrong = ptt.files / "imposter.json"
    # without the other nodes: a client that has them would log the refusal and go on at the next node
    wrong.write_text(json.dumps({**{k: v for k, v in info.items() if k != "nodes"}, "host": "imposter.site.test"}))
    started = time.monotonic()
    code, output = finish(headless(ptt, "bob", wrong, f"join {GROUP}; wait 1"), CLIENT_TIMEOUT)
    took = time.monotonic() - started
    assert code == 2, output
    # "ptt-headless: 0: connection lost before login: VerificationError(errors=[DNSMismatch(…'imposter.site.test'…"
    assert "before login" in output and "DNSMismatch" in output and "imposter.site.test" in output, output
    assert took < 15, f"refusing took {took:.1f} s"


def test_a_client_refuses_a_kms_whose_certificate_does_not_name_the_host_it_dialled(ptt: PttSite) -> None:
    ptt.site.add_name("imposter.site.test", "kms")
    enrolment = json.loads((ptt.files / "enrol.json").read_text())
    wrong = ptt.files / "imposter-enrol.json"
    wrong.write_text(json.dumps({**enrolment, "base_url": "https://imposter.site.test:8443"}))
    keystore = ["--keystore", str(ptt.files / "imposter.ks"), "--passphrase-file", str(ptt.files / "ks.pw")]
    account = ["--user", "bob", "--password-file", str(ptt.files / "bob.pw"), "--uri", f"sip:bob@{DOMAIN}"]
    started = time.monotonic()
    done = ptt.site.run("bob-pc", "-m", "client.cli", *keystore, "provision", "--enrolment", str(wrong), *account)
    took = time.monotonic() - started
    # "ptt-client: provisioning failed: [<…Failure service_identity.exceptions.VerificationError: …DNSMismatch…>]"
    assert done.returncode != 0 and "DNSMismatch" in done.stderr and "imposter.site.test" in done.stderr, done.stderr
    assert took < 15, f"refusing took {took:.1f} s"


def test_the_call_goes_on_when_the_host_of_its_node_dies(ptt: PttSite) -> None:
    """Last (it kills a node): bob is logged in at the node serving the group, alice at the other one and talks in
    short bursts; the serving node's host loses every process (kill -9); bob reconnects to the other node, the
    other node takes the lease, and both hear each other again within the failover time."""
    serving = owner(ptt, GROUP)
    other = next(name for name in ptt.nodes if name != serving)
    go = ptt.files / "go-failover"
    alice = headless(ptt, "alice", ptt.files / f"{other}.json", f"join {GROUP}; wait-file {go}; talk-loop 15")
    bob = headless(ptt, "bob", ptt.files / f"{serving}.json", f"join {GROUP}; wait-file {go}; wait 11; talk 2; wait 4")
    start_together(ptt, go.name, ("alice", "bob"))
    time.sleep(4)
    killed_at = time.time()
    ptt.site.kill_host(ptt.nodes[serving].host)
    outputs = {}
    for user, process in (("alice", alice), ("bob", bob)):
        code, outputs[user] = finish(process, CLIENT_TIMEOUT)
        assert code == 0, f"{user}: {outputs[user]}"
    a, b = report(ptt, "alice"), report(ptt, "bob")
    assert owner(ptt, GROUP) == other
    heard = b["arrivals"].get("alice", [])
    assert [t for t in heard if t < killed_at], f"bob heard nothing before the kill: {b['received']}"
    after = [t for t in heard if t > killed_at]
    assert after, f"bob heard nothing after the kill:\n{outputs['bob']}"
    assert after[0] - killed_at < 6.0, f"bob heard alice again {after[0] - killed_at:.1f} s after the kill"
    assert a["received"].get("bob", 0) >= 80, (a["received"], b["sent"])  # and alice hears bob's burst
