"""Logins turned against their owners, attacked on real processes (KMS, group server, clients; bench/harness.py).

An attacker on another source address (127.0.0.2 and up: the loopback network is a /8, so a client socket can be
bound to any of them) sends wrong passwords for the group server's KMS account, for a KMS user and for the
dispatcher admin, then sprays guesses from 200 addresses. Before issue 12's rules, five wrong passwords locked
``ptt-server`` at the KMS for everyone (``group create`` answered 503, key renewal failed the same way) and a
spray got 23 guesses/s while slowing legitimate KMS requests tenfold. Now:

- the group server's account is a service account (a generated token) that wrong guesses cannot lock, so
  ``group create`` (which has the server fetch the new group identity's keys from the KMS) and a restart (which
  renews every identity's keys) keep working;
- a human account is locked only for the attacker's address: the owner provisions from its own;
- the global failure budget refuses most of a spray before any scrypt work, and the owner's usual requests stay
  fast.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from bench.harness import System, run, start_system, stop_system
from ptt.kmsformat.enrolment import Enrolment

KEYPROV = "/keymanagement/identity/v1/keyprov"
TOKEN = "/idms/token"
ATTACKER = "127.0.0.2"
PROBES = tuple(f"sip:probe{i}@example.org" for i in range(3))


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    running = start_system(tmp_path_factory.mktemp("login-attack"), group_grants=PROBES)
    yield running
    stop_system(running)


def _kms_address(system: System) -> tuple[str, int]:
    url = Enrolment.from_json((system.root / "enrol.json").read_bytes()).base_url
    host, _, port = url.removeprefix("https://").partition(":")
    return host, int(port.split("/")[0])


def _post(address: tuple[str, int], path: str, user: str, password: str, *, source: str = "127.0.0.1",
          method: str = "POST") -> tuple[int, str, str | None]:  # fmt: skip
    """One request on a fresh TLS connection from ``source``: (status, body, Retry-After)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the attacker does not care whom it talks to
    connection = http.client.HTTPSConnection(*address, timeout=30, context=context, source_address=(source, 0))
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        connection.request(method, path, body=b"", headers={"Authorization": f"Basic {token}"})
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace"), response.getheader("Retry-After")
    finally:
        connection.close()


def _kms_post(
    address: tuple[str, int], user: str, password: str, *, source: str = "127.0.0.1"
) -> tuple[int, str, str | None]:
    """A KMS login as clients make it since issue 14: the password grant at the IdMS (where passwords are checked
    now: 400 invalid_grant for a wrong one, 429 when a rule refuses), then keyprov with the access token."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection(*address, timeout=30, context=context, source_address=(source, 0))
    form = urlencode({"grant_type": "password", "username": user, "password": password}).encode()
    try:
        connection.request("POST", TOKEN, body=form, headers={"Content-Type": "application/x-www-form-urlencoded"})
        response = connection.getresponse()
        body = response.read().decode("utf-8", "replace")
        if response.status != 200:
            return response.status, body, response.getheader("Retry-After")
        bearer = "Bearer " + json.loads(body)["access_token"]
        connection.request("POST", KEYPROV, body=b"", headers={"Authorization": bearer})
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace"), response.getheader("Retry-After")
    finally:
        connection.close()


def _password(system: System, user: str) -> str:
    return (system.root / f"{user}.pw").read_text().strip()


def test_an_attacker_elsewhere_locks_nobody_out(system: System) -> None:
    kms = _kms_address(system)
    dispatch = ("127.0.0.1", system.dispatch_port)
    # Ten wrong passwords each: the group server's KMS account, a KMS user, the dispatcher admin.
    server = [_kms_post(kms, "ptt-server", f"guess-{i}", source=ATTACKER)[0] for i in range(6)]
    alice = [_kms_post(kms, "alice", f"guess-{i}", source=ATTACKER) for i in range(6)]
    admin = [_post(dispatch, "/api/groups", "admin", f"guess-{i}", source=ATTACKER, method="GET") for i in range(6)]
    assert server == [400] * 6  # a service account is never locked, not even for the attacker
    assert [s for s, _, _ in alice] == [400] * 5 + [429]  # the IdMS: 400 invalid_grant (RFC 6749 §5.2)
    assert [s for s, _, _ in admin] == [401] * 5 + [429]
    for _, body, retry in (alice[-1], admin[-1]):  # the refusal says what happened and when to retry
        assert "locked for logins from there" in body and "try again in" in body and retry is not None
        assert 25 <= int(retry) <= 30
    # ... and the attacker is still locked out with the right password, from there
    assert _kms_post(kms, "alice", _password(system, "alice"), source=ATTACKER)[0] == 429

    # The owners, from their own address, are not: the admin creates a group, which has the group server fetch
    # the new group identity's keys from the KMS with its (service) account ...
    created = system.dispatch("group", "create", PROBES[0], "--member", "sip:alice@example.org")
    assert created.returncode == 0, created.stdout + created.stderr
    shown = system.dispatch("group", "show", PROBES[0])
    assert shown.returncode == 0 and "sip:alice@example.org" in shown.stdout
    # ... Alice provisions (renews) her keys ...
    out = run("-m", "client.cli", "--keystore", str(system.root / "alice.ks"), "--passphrase-file",
              str(system.root / "ks.pw"), "provision", "--enrolment", str(system.root / "enrol.json"), "--user",
              "alice", "--password-file", str(system.root / "alice.pw"), "--uri", "sip:alice@example.org")  # fmt: skip
    assert out.returncode == 0, out.stderr
    # ... and the group server renews every identity's keys at start (as at a key period's change).
    system.server.stop()
    system.server.log.clear()
    system.server.start()
    created = system.dispatch("group", "create", PROBES[1], "--member", "sip:bob@example.org")
    assert created.returncode == 0, created.stdout + created.stderr
    assert "not provisioned" not in system.server.output()
    kms_log = system.kms.output()
    assert "login of 'alice' from 127.0.0.2 refused" in kms_log and "locked" in kms_log


def _latencies(address: tuple[str, int], password: str, count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.monotonic()
        status, _, _ = _kms_post(address, "bob", password)
        assert status == 200
        times.append(time.monotonic() - start)
    return times


def test_a_spray_is_cut_by_the_global_budget(system: System) -> None:
    kms = _kms_address(system)
    bob = _password(system, "bob")  # Bob's usual address (he provisioned from it): a known source
    before = _latencies(kms, bob, 5)
    results: list[int] = []
    stop = time.monotonic() + 6.0

    def spray(worker: int) -> None:
        i = 0
        while time.monotonic() < stop:
            source = f"127.0.{1 + worker}.{10 + i % 200}"  # 200 addresses per worker
            user = ("alice", "bob", "carol", "admin", "root")[i % 5]
            try:
                results.append(_kms_post(kms, user, f"Spring{2000 + i}!", source=source)[0])
            except OSError:
                results.append(0)
            i += 1

    workers = [threading.Thread(target=spray, args=(w,)) for w in range(4)]
    started = time.monotonic()
    for w in workers:
        w.start()
    time.sleep(1.0)  # the budget is spent: from here on the spray is refused
    during = _latencies(kms, bob, 5)
    for w in workers:
        w.join()
    elapsed = time.monotonic() - started
    checked, refused = results.count(400), results.count(429)
    print(f"spray: {len(results)} guesses in {elapsed:.1f} s, {checked} checked (400), {refused} refused (429); "
          f"bob's keyprov median {statistics.median(before) * 1000:.0f} ms before, "
          f"{statistics.median(during) * 1000:.0f} ms during")  # fmt: skip
    assert results.count(0) == 0
    assert checked <= 30 + 2 * elapsed + 5  # the budget: 30 at once, then 2 a second
    assert refused > 0  # the budget cut the spray (how many guesses get out depends on the machine's load)
    # Bob's requests are not held up behind unbounded scrypt work (before: tenfold); loosely, on a shared machine
    assert statistics.median(during) <= statistics.median(before) + 1.0
    # the new rules keep the owner's own address working even now
    assert _kms_post(kms, "bob", bob)[0] == 200
    assert "on this server" in system.kms.output()


def test_the_server_credential_is_a_generated_token(system: System) -> None:
    token = (system.root / "server.token").read_text().strip()
    assert len(token) >= 43 and (system.root / "server.token").stat().st_mode & 0o077 == 0
    listed = run("-m", "server.kms.cli", "--data", str(system.root / "kms"), "user", "list")
    assert any(line.startswith("ptt-server") and "service" in line for line in listed.stdout.splitlines())
    # and the group server refuses to be set up with a person's password
    (system.root / "weak.pw").write_text("server-password-x\n")
    refused = run("-m", "server.main", "--data", str(system.root / "server2"), "init", "--kms-enrolment",
                  str(system.root / "enrol.json"), "--kms-user", "ptt-server", "--kms-secret-file",
                  str(system.root / "weak.pw"), "--server-uri", "sip:ptt-server@example.org")  # fmt: skip
    assert refused.returncode == 2 and "--service" in refused.stderr
    assert not Path(system.root / "server2" / "kms-password").exists()
