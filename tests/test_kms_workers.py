"""Several KMS workers on one port (``ptt-kms serve --workers 2``) and bulk issuance (``ptt-kms issue``) as real
processes: a worker killed mid-request loses nothing, the supervisor replaces it and stops cleanly; an interrupted
``issue`` run resumes."""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.harness import ROOT, Daemon, clean_env, free_ports, run
from server.kms.service import STALL_ENV
from server.kms.store import KmsStore

USERS = 8


@dataclass
class Site:
    data: Path
    port: int
    tokens: dict[str, str]
    stall_marker: Path

    def admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run("-m", "server.kms.cli", "--data", str(self.data), *args)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    port = free_ports(1)[0]
    s = Site(tmp_path / "kms", port, {}, tmp_path / "stalled.pid")
    out = s.admin("init", "--domain", "example.org", "--kms-uri", "kms.example.org", "--port", str(port))
    assert out.returncode == 0, out.stderr
    out = s.admin("user", "add-many", "--prefix", "u", "--count", str(USERS), "--tokens-out", str(tmp_path / "t"))
    assert out.returncode == 0, out.stderr
    s.tokens = dict(line.split() for line in (tmp_path / "t").read_text().splitlines())
    return s


@pytest.fixture
def workers(site: Site) -> Iterator[Daemon]:
    daemon = Daemon(
        ["-m", "server.kms.cli", "--data", str(site.data), "serve", "--workers", "2"],
        "listening on",
        extra_env={STALL_ENV: str(site.stall_marker)},
        start_timeout=60,
    )
    daemon.start()
    yield daemon
    daemon.stop()


def keyprov(site: Site, user: str, attempts: int = 5) -> tuple[int, bytes, int]:
    """(status, body, failed attempts) of a keyprov as ``user``, retried on a lost connection as a client does."""
    context = ssl.create_default_context(cafile=str(site.data / "tls-cert.pem"))
    form = urllib.parse.urlencode({"grant_type": "password", "username": user, "password": site.tokens[user]})
    access = ""
    for failed in range(attempts):
        connection = http.client.HTTPSConnection("127.0.0.1", site.port, context=context, timeout=60)
        try:
            if not access:  # the IdMS first (HTTP Basic is off for a new domain), then the KMS with the token
                headers = {"Content-Type": "application/x-www-form-urlencoded"}
                connection.request("POST", "/idms/token", body=form, headers=headers)
                token_reply = connection.getresponse()
                if token_reply.status != 200:  # refused at the IdMS (bad password, locked out)
                    return token_reply.status, token_reply.read(), failed
                access = json.loads(token_reply.read())["access_token"]
            connection.request(
                "POST", "/keymanagement/identity/v1/keyprov", headers={"Authorization": f"Bearer {access}"}
            )
            reply = connection.getresponse()
            return reply.status, reply.read(), failed
        except (ConnectionError, http.client.HTTPException, ssl.SSLError, TimeoutError):
            time.sleep(0.2)
        finally:
            connection.close()
    raise AssertionError(f"keyprov of {user} failed {attempts} times")


def children(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def test_a_worker_killed_mid_request_loses_nothing(site: Site, workers: Daemon) -> None:
    assert workers.process is not None
    supervisor = workers.process.pid
    before = children(supervisor)
    assert len(before) == 2
    results: dict[str, tuple[int, bytes, int]] = {}
    threads = [threading.Thread(target=lambda u=user: results.__setitem__(u, keyprov(site, u))) for user in site.tokens]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while not site.stall_marker.exists() or not site.stall_marker.read_text().endswith("\n"):
        assert time.monotonic() < deadline, "no worker stalled in a keyprov"
        time.sleep(0.05)
    stalled = int(site.stall_marker.read_text())
    assert stalled in before  # a worker, stalled inside its keyprov transaction
    os.kill(stalled, signal.SIGKILL)
    for t in threads:
        t.join(90)
    assert {u: r[0] for u, r in results.items()} == dict.fromkeys(site.tokens, 200)
    assert any(r[2] for r in results.values())  # the stalled request's client had to retry
    assert all(b"<KeyProvisioned" in body or b"KeyProv" in body for _, body, _ in results.values())

    # the store: every answered keyprov has its two issue records and its audit event; the killed one left nothing
    with KmsStore(site.data / "kms.sqlite3") as store:
        audited = [e for e in store.audit_log(1000) if e.event == "keyprov"]
        issued = store.issued()
    assert sorted(e.username or "" for e in audited) == sorted(site.tokens)
    assert len(issued) == 2 * len(audited)
    for e in audited:
        assert len([r for r in issued if r.username == e.username]) == 2

    # the supervisor replaced the worker: two workers again, the killed one not among them, and both serve
    deadline = time.monotonic() + 30
    while len(children(supervisor)) != 2 or stalled in children(supervisor):
        assert time.monotonic() < deadline, workers.output()
        time.sleep(0.1)
    log = workers.output()
    assert f"(pid {stalled}) died: killed by SIGKILL; restarting it" in log
    assert "listening again" in log
    for user in list(site.tokens)[:4]:
        assert keyprov(site, user)[0] == 200

    # SIGTERM stops every worker and the supervisor cleanly
    workers_now = children(supervisor)
    workers.process.send_signal(signal.SIGTERM)
    assert workers.process.wait(20) == 0
    for pid in workers_now:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    with pytest.raises(ConnectionRefusedError):
        http.client.HTTPConnection("127.0.0.1", site.port, timeout=5).connect()


def test_every_connection_from_one_address_meets_the_same_login_rules(site: Site, workers: Daemon) -> None:
    # the kernel hands each connection to the worker its source address chooses, so the 5 failures all count
    password = site.data.parent / "carol.pw"
    password.write_text("carol-secret-password\n")
    out = site.admin("user", "add", "carol", "--uri", "sip:carol@example.org", "--password-file", str(password))
    assert out.returncode == 0, out.stderr
    site.tokens["carol"] = "wrong-password"
    for _ in range(5):
        assert keyprov(site, "carol")[0] == 400  # OAuth 2.0 invalid_grant
    site.tokens["carol"] = "carol-secret-password"
    status, body, _ = keyprov(site, "carol")
    assert status == 429 and b"locked" in body
    assert "cannot steer" not in workers.output()


def test_serve_workers_refuses_a_port_in_use(site: Site) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", site.port))
        taken.listen()
        out = site.admin("serve", "--workers", "2")
    assert out.returncode != 0
    assert "could not listen" in out.stderr


def test_an_interrupted_issue_run_resumes(site: Site) -> None:
    out = site.admin("user", "add-many", "--prefix", "bulk", "--count", "1500")
    assert out.returncode == 0, out.stderr
    cmd = [sys.executable, "-m", "server.kms.cli", "--data", str(site.data), "issue", "--workers", "2"]
    process = subprocess.Popen([*cmd, "--batch", "20"], cwd=ROOT, env=clean_env(), stderr=subprocess.PIPE, text=True)
    with KmsStore(site.data / "kms.sqlite3") as store:
        deadline = time.monotonic() + 60
        while not store.precomputed_counts():
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 130
        (period, partial), *_ = store.precomputed_counts().items()
        assert 0 < partial < USERS + 1500
        out = site.admin("issue", "--workers", "2", "--period", str(period))
        assert out.returncode == 0, out.stderr
        assert f"{partial} were there already, {USERS + 1500} identities in all" in out.stdout
        assert store.precomputed_counts() == {period: USERS + 1500}
        assert store.identities_without_keys(period) == []
    assert "ETA" in out.stderr
