"""Several group-server nodes over one PostgreSQL database on 127.0.0.1, as real processes: a KMS, N nodes
(``ptt-server init --database URL --node NAME``, the later ones with the first one's ``--data-key``), users
provisioned, for the cluster's end-to-end test and benchmark. ``start_cluster(root, url, nodes=2)``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import ROOT, Daemon, clean_env, free_ports, run

DOMAIN = "example.org"


@dataclass
class Node:
    name: str
    data: Path
    dispatch_port: int
    control_port: int
    relay_port: int
    daemon: Daemon

    def kill(self) -> None:
        """kill -9: no clean leave, its leases must expire."""
        process = self.daemon.process
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        self.daemon.process = None


@dataclass
class Cluster:
    root: Path
    database: str
    kms: Daemon
    nodes: list[Node] = field(default_factory=list)

    def dispatch(self, *args: str, node: int = 0, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        target = self.nodes[node]
        return run(
            "-m", "server.dispatch.cli", "--server", f"https://127.0.0.1:{target.dispatch_port}",
            "--cacert", str(target.data / "tls-cert.pem"), "--user", "admin", *args,
            env=clean_env(PTT_DISPATCH_PASSWORD="admin-password-x"), timeout=timeout,
        )  # fmt: skip

    def api(self, node: int, user: str = "admin") -> Any:
        """A dispatcher API client of node ``node``: the dispatcher ``admin`` that creates the groups, or ``ops``
        (role admin)."""
        from server.dispatch.apiclient import ApiClient

        target = self.nodes[node]
        return ApiClient(f"https://127.0.0.1:{target.dispatch_port}", cacert=str(target.data / "tls-cert.pem"),
                         user=user, password=lambda: f"{user}-password-x", timeout=120)  # fmt: skip

    def node_stats(self) -> dict[str, dict[str, Any]]:
        """Every running node's counters (``GET /api/node``: relay drops by reason, floor, rounds and fencing)."""
        running = [(i, n.name) for i, n in enumerate(self.nodes) if n.daemon.process is not None]
        return {name: self.api(i, "ops").request("GET", "/api/node") for i, name in running}

    def server_info(self, node: int) -> Path:
        """A client-info file that names node ``node`` first (the others follow, as client-info lists them)."""
        path = self.root / f"server-{node}.json"
        if not path.exists():
            out = run("-m", "server.main", "--data", str(self.nodes[node].data), "client-info", "--out", str(path))
            assert out.returncode == 0, out.stderr
        return path

    def client(self, user: str, script: str, *, node: int, report: str | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                sys.executable, "-m", "client.headless", "--keystore", str(self.root / f"{user}.ks"),
                "--passphrase-file", str(self.root / "ks.pw"), "--server-info", str(self.server_info(node)),
                "--uri", f"sip:{user}@{DOMAIN}", "--script", script,
                "--report", str(self.root / f"{report or user}.json"),
            ],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env(),
        )  # fmt: skip

    def owner(self, group: str) -> str | None:
        """The node holding ``group``'s lease now (by the database's clock)."""
        import psycopg

        with psycopg.connect(self.database, autocommit=True) as conn:
            row = conn.execute(
                "SELECT node FROM ptt_leases WHERE group_uri = %s AND expires > clock_timestamp()", (group,)
            ).fetchone()
        return str(row[0]) if row else None

    def wait_owned(self, groups: list[str], timeout: float = 30) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            owners = {g: self.owner(g) for g in groups}
            if all(owners.values()):
                return {g: str(o) for g, o in owners.items()}
            time.sleep(0.2)
        raise AssertionError(f"groups not all served within {timeout} s: {owners}")

    def start_together(self, name: str, group: str, users: tuple[str, ...], *, node: int, timeout: float = 60) -> None:
        """Once the dispatcher (at node ``node``) sees every one of ``users`` joined in ``group``, create the file
        ``root/name`` their scripts wait for (``wait-file``), so their next steps start together."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = self.dispatch("group", "show", group, node=node).stdout.splitlines()
            joined = {line.split()[0] for line in shown if len(line.split()) >= 5 and line.split()[4] == "yes"}
            if {f"sip:{u}@{DOMAIN}" for u in users} <= joined:
                (self.root / name).touch()
                return
            time.sleep(0.3)
        raise AssertionError(f"{users} did not all join {group} within {timeout} s")

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def stop(self) -> None:
        for node in self.nodes:
            node.daemon.stop()
        self.kms.stop()


def start_cluster(
    root: Path, database: str, *, nodes: int = 2, users: tuple[str, ...] = ("alice", "bob", "carol"),
    groups: tuple[str, ...] = (), workers: int | None = None, server_env: dict[str, str] | None = None,
) -> Cluster:  # fmt: skip
    """A KMS, ``nodes`` group-server nodes on ``database`` (PostgreSQL), ``users`` provisioned; the server's KMS
    account is granted ``groups`` (group URIs) and ``sip:*@DOMAIN``-style names the tests create."""
    root.mkdir(parents=True, exist_ok=True)
    (kms_port,) = free_ports(1)
    for name in (*users, "admin", "ops"):
        (root / f"{name}.pw").write_text(f"{name}-password-x\n")
    (root / "ks.pw").write_text("keystore-passphrase\n")
    kms = ["-m", "server.kms.cli", "--data", str(root / "kms")]
    out = run(*kms, "init", "--domain", DOMAIN, "--kms-uri", f"kms.{DOMAIN}", "--port", str(kms_port))
    assert out.returncode == 0, out.stderr
    for user in users:
        out = run(*kms, "user", "add", user, "--uri", f"sip:{user}@{DOMAIN}", "--password-file",
                  str(root / f"{user}.pw"))  # fmt: skip
        assert out.returncode == 0, out.stderr
    out = run(*kms, "user", "add", "ptt-server", "--uri", f"sip:ptt-server@{DOMAIN}", "--service",
              "--secret-out", str(root / "server.token"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    for group in groups:
        assert run(*kms, "grant", "ptt-server", group).returncode == 0
    assert run(*kms, "export-enrolment", "--out", str(root / "enrol.json")).returncode == 0
    kms_daemon = Daemon([*kms, "serve"], "listening on")
    kms_daemon.start()
    cluster = Cluster(root, database, kms_daemon)
    try:
        for index in range(nodes):
            cluster.nodes.append(_init_node(cluster, index, workers, server_env or {}))
        for node in cluster.nodes:
            node.daemon.start()
        for user in users:
            out = run(
                "-m", "client.cli", "--keystore", str(root / f"{user}.ks"), "--passphrase-file", str(root / "ks.pw"),
                "provision", "--enrolment", str(root / "enrol.json"), "--user", user, "--password-file",
                str(root / f"{user}.pw"), "--uri", f"sip:{user}@{DOMAIN}",
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _init_node(cluster: Cluster, index: int, workers: int | None, env: dict[str, str]) -> Node:
    root = cluster.root
    dispatch_port, control_port, relay_port = free_ports(3)
    name = f"node{index + 1}"
    data = root / name
    shared_key = ["--data-key", str(root / "node1" / "data.key")] if index else []
    out = run(
        "-m", "server.main", "--data", str(data), "init", "--kms-enrolment", str(root / "enrol.json"),
        "--kms-user", "ptt-server", "--kms-secret-file", str(root / "server.token"),
        "--server-uri", f"sip:ptt-server@{DOMAIN}", "--dispatch-port", str(dispatch_port),
        "--control-port", str(control_port), "--relay-port", str(relay_port), "--database", cluster.database,
        "--node", name, *shared_key,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    if index == 0:
        out = run("-m", "server.main", "--data", str(data), "dispatcher", "add", "admin", "--password-file",
                  str(root / "admin.pw"))  # fmt: skip
        assert out.returncode == 0, out.stderr
        out = run("-m", "server.main", "--data", str(data), "dispatcher", "add", "ops", "--role", "admin",
                  "--password-file", str(root / "ops.pw"))  # fmt: skip
        assert out.returncode == 0, out.stderr  # an admin account: GET /api/node
    serve = ["-m", "server.main", "--data", str(data), "serve"]
    if workers is not None:
        serve += ["--workers", str(workers)]
    # A restarted node provisions the keys of every group it held before it listens: 450 groups take minutes.
    daemon = Daemon(serve, "listening:", extra_env=env, start_timeout=600.0)
    return Node(name, data, dispatch_port, control_port, relay_port, daemon)


def arrivals_after(report: dict[str, Any], sender: str, moment: float) -> list[float]:
    return [t for t in report.get("arrivals", {}).get(sender, []) if t > moment]
