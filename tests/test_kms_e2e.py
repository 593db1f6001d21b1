"""The KMS and the provisioning client as real processes on 127.0.0.1, driven by their command lines."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import pytest

from bench.harness import Daemon, free_ports, run
from client.keystore import Keystore
from client.provisioning import accept_key_prov
from ptt.kmsformat.enrolment import Enrolment
from ptt.kmsformat.model import SignatureInvalid, StaleResponse
from server.kms.store import KmsStore
from tests.postgres import PostgresServer

ROOT = Path(__file__).resolve().parent.parent
PASSPHRASE = b"keystore passphrase"
USERS = {
    "alice": "sip:alice@example.org",
    "bob": "sip:bob@example.org",
    "carol": "sip:carol@example.org",
    "dispatch": "sip:dispatch@example.org",
}
GROUP = "sip:fire-ops@example.org"
FORM = "application/x-www-form-urlencoded"


@dataclass
class Kms:
    root: Path
    port: int
    daemon: Daemon = field(init=False)

    def __post_init__(self) -> None:
        self.daemon = Daemon(
            ["-m", "server.kms.cli", "--data", str(self.data), "serve"], "listening on", start_timeout=30
        )

    @property
    def data(self) -> Path:
        return self.root / "kms"

    @property
    def enrolment(self) -> Path:
        return self.root / "enrolment.json"

    def admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run("-m", "server.kms.cli", "--data", str(self.data), *args)

    def start(self) -> None:
        self.daemon.start()

    def stop(self) -> None:
        self.daemon.stop()


def _password_file(root: Path, name: str, password: str) -> Path:
    path = root / f"{name}.password"
    path.write_text(password + "\n")
    return path


@pytest.fixture(scope="module")
def kms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kms]:
    root = tmp_path_factory.mktemp("kms-e2e")
    server = Kms(root, free_ports(1)[0])
    out = server.admin("init", "--domain", "example.org", "--kms-uri", "kms.example.org", "--port", str(server.port))
    assert out.returncode == 0, out.stderr
    for name, uri in USERS.items():
        pw = _password_file(root, name, f"{name}-secret-password")
        out = server.admin("user", "add", name, "--uri", uri, "--password-file", str(pw))
        assert out.returncode == 0, out.stderr
    _password_file(root, "wrong", "not-the-password")
    (root / "passphrase").write_bytes(PASSPHRASE)
    out = server.admin("export-enrolment", "--out", str(server.enrolment))
    assert out.returncode == 0, out.stderr
    server.start()
    yield server
    server.stop()


def provision(kms: Kms, user: str, *uris: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    keystore = kms.root / f"{user}.keystore"
    args = [
        "-m",
        "client.cli",
        "--keystore",
        str(keystore),
        "--passphrase-file",
        str(kms.root / "passphrase"),
        "provision",
        "--enrolment",
        str(kms.enrolment),
        "--user",
        user,
        "--password-file",
        str(kms.root / f"{password or user}.password"),
    ]
    for uri in uris or (USERS[user],):
        args += ["--uri", uri]
    return run(*args)


def keystore(kms: Kms, user: str) -> Keystore:
    return Keystore.open(kms.root / f"{user}.keystore", PASSPHRASE)


def test_two_users_provision(kms: Kms) -> None:
    for user in ("alice", "bob"):
        out = provision(kms, user)
        assert out.returncode == 0, out.stderr
        assert f"provisioned {USERS[user]}" in out.stdout
        store = keystore(kms, user)
        assert store.enrolment is not None
        current = store.enrolment.certificate.domain().period_number(time.time())
        assert store.periods(USERS[user]) == [current, current + 1]
        path = kms.root / f"{user}.keystore"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        held = store.identity_keys(USERS[user], current)
        assert held is not None
        raw = path.read_bytes()
        assert held.rsk.hex().encode() not in raw and held.ssk.hex().encode() not in raw.lower()


def _keys(kms: Kms, user: str) -> subprocess.CompletedProcess[str]:
    keystore = str(kms.root / f"{user}.keystore")
    return run("-m", "client.cli", "--keystore", keystore, "--passphrase-file", str(kms.root / "passphrase"), "keys")


def test_trusted_domain_reaches_the_client_at_provisioning(kms: Kms) -> None:
    partner = kms.root / "partner"
    assert run("-m", "server.kms.cli", "--data", str(partner), "init", "--domain", "partner.org",
               "--kms-uri", "kms.partner.org").returncode == 0  # fmt: skip
    enrolment = kms.root / "partner-enrolment.json"
    out = run("-m", "server.kms.cli", "--data", str(partner), "export-enrolment", "--out", str(enrolment))
    assert out.returncode == 0, out.stderr
    out = kms.admin("trust-domain", str(enrolment), "--user-domain", "partner.org")
    assert out.returncode == 0 and "trusting KMS kms.partner.org for users in partner.org" in out.stdout
    try:
        assert provision(kms, "alice").returncode == 0
        assert "external KMS kms.partner.org for users in partner.org" in _keys(kms, "alice").stdout
        trust = keystore(kms, "alice").trust()
        assert trust.kms_for("sip:x@partner.org").kms_uri == "kms.partner.org"
    finally:
        assert kms.admin("untrust-domain", "kms.partner.org").returncode == 0
    assert provision(kms, "alice").returncode == 0
    out = _keys(kms, "alice")
    assert "kms.partner.org" not in out.stdout and "no external KMS trusted" in out.stdout
    assert keystore(kms, "alice").external == {}


def test_wrong_password_is_refused(kms: Kms) -> None:
    (kms.root / "bob.keystore").unlink(missing_ok=True)
    assert provision(kms, "bob").returncode == 0
    assert provision(kms, "bob").returncode == 0  # the second run refreshes instead of sending the password
    grants = [e for e in kms.admin("audit", "log").stdout.splitlines() if "\ttoken\tbob\t" in e]
    assert "refresh_token grant" in grants[-1] and "password grant" in grants[-2], grants
    # a keystore that logged in holds a refresh token (sealed under its passphrase): it logs in without the password
    assert provision(kms, "bob", password="wrong").returncode == 0
    (kms.root / "bob.keystore").unlink()  # a first login is the password's
    out = provision(kms, "bob", password="wrong")
    assert out.returncode == 6
    assert "IdMS answered 400 (login failed, invalid_grant)" in out.stderr


def test_lockout_after_repeated_failures(kms: Kms) -> None:
    for _ in range(5):
        assert provision(kms, "carol", password="wrong").returncode == 6
    out = provision(kms, "carol")  # the right password, but the account is locked
    assert out.returncode == 6
    assert "429" in out.stderr and "locked" in out.stderr


def test_another_users_identity_is_refused(kms: Kms) -> None:
    out = provision(kms, "alice", USERS["bob"])
    assert out.returncode == 6
    assert "403" in out.stderr and USERS["bob"] in out.stderr


def test_group_identity_only_when_granted(kms: Kms) -> None:
    out = provision(kms, "dispatch", USERS["dispatch"], GROUP)
    assert out.returncode == 6 and "403" in out.stderr
    assert kms.admin("grant", "dispatch", GROUP).returncode == 0
    out = provision(kms, "dispatch", USERS["dispatch"], GROUP)
    assert out.returncode == 0, out.stderr
    assert f"provisioned {GROUP}" in out.stdout
    assert kms.admin("revoke", "dispatch", GROUP).returncode == 0
    assert provision(kms, "dispatch", GROUP).returncode == 6


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TLS 1.0/1.1 are deprecated: that is the point
def test_tls_is_pinned_and_at_least_1_2(kms: Kms) -> None:
    """Our client context can still speak TLS 1.1 (checked by hand against a permissive server), so the
    refusal below is the KMS's doing."""
    context = ssl.create_default_context(cafile=str(kms.data / "tls-cert.pem"))
    with (
        socket.create_connection(("127.0.0.1", kms.port)) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", kms.port)) as raw, pytest.raises(ssl.SSLError):
        old.wrap_socket(raw, server_hostname="127.0.0.1")


def _https(kms: Kms, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    context = ssl.create_default_context(cafile=str(kms.data / "tls-cert.pem"))
    connection = http.client.HTTPSConnection("127.0.0.1", kms.port, context=context, timeout=30)
    connection.request("POST", path, body, headers)
    response = connection.getresponse()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def _access_token(kms: Kms, user: str) -> str:
    form = urlencode({"grant_type": "password", "username": user, "password": f"{user}-secret-password"})
    status, headers, body = _https(kms, "/idms/token", form.encode(), {"Content-Type": FORM})
    assert status == 200 and headers["cache-control"] == "no-store", body
    token: str = json.loads(body)["access_token"]
    return token


def _raw_keyprov(kms: Kms, user: str) -> bytes:
    headers = {"Authorization": f"Bearer {_access_token(kms, user)}"}
    status, _, body = _https(kms, "/keymanagement/identity/v1/keyprov", b"", headers)
    assert status == 200, body
    return body


def test_token_login_over_https(kms: Kms) -> None:
    """The IdMS on the KMS's port: a token fetches keys; HTTP Basic is off by default and says where to go; a
    disabled user's token is refused at once (the running KMS reads the shared store)."""
    basic = "Basic " + base64.b64encode(b"bob:bob-secret-password").decode()
    status, headers, _ = _https(kms, "/keymanagement/identity/v1/keyprov", b"", {"Authorization": basic})
    assert status == 401 and "/idms/token" in headers["www-authenticate"]
    token = _access_token(kms, "bob")
    keyprov = "/keymanagement/identity/v1/keyprov"
    assert _https(kms, keyprov, b"", {"Authorization": f"Bearer {token}"})[0] == 200
    assert kms.admin("user", "disable", "bob").returncode == 0
    try:
        status, headers, _ = _https(kms, keyprov, b"", {"Authorization": f"Bearer {token}"})
        assert status == 401 and 'error="invalid_token"' in headers["www-authenticate"]
        assert "disabled" in headers["www-authenticate"]
    finally:
        assert kms.admin("user", "enable", "bob").returncode == 0


def test_real_responses_tampered_or_replayed_are_refused(kms: Kms) -> None:
    enrolment = Enrolment.from_json(kms.enrolment.read_bytes())
    body = _raw_keyprov(kms, "alice")
    key_sets, when = accept_key_prov(body, enrolment, USERS["alice"], time.time(), None)
    assert len(key_sets) == 2
    start = body.index(b"<UserSigningKeySSK")
    digit = body.index(b">", start) + 5
    tampered = body[:digit] + (b"0" if body[digit : digit + 1] != b"0" else b"1") + body[digit + 1 :]
    with pytest.raises(SignatureInvalid):
        accept_key_prov(tampered, enrolment, USERS["alice"], time.time(), None)
    with pytest.raises(StaleResponse):  # the same response again: a replay
        accept_key_prov(body, enrolment, USERS["alice"], time.time(), when)


def test_master_secrets_and_private_keys_are_private(kms: Kms) -> None:
    for name in ("master-secrets.json", "tls-key.pem", "signing-key.pem"):
        assert stat.S_IMODE((kms.data / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(kms.data.stat().st_mode) == 0o700


def test_restart_loses_nothing_and_clients_work_offline(kms: Kms) -> None:
    assert provision(kms, "alice").returncode == 0
    before = keystore(kms, "alice")
    kms.stop()
    try:
        out = run(
            "-m",
            "client.cli",
            "--keystore",
            str(kms.root / "alice.keystore"),
            "--passphrase-file",
            str(kms.root / "passphrase"),
            "keys",
        )
        assert out.returncode == 0 and USERS["alice"] in out.stdout  # offline: the keystore is enough
        out = provision(kms, "alice")
        assert out.returncode == 5 and "cannot reach the KMS" in out.stderr  # client.errors.Exit.UNREACHABLE
    finally:
        kms.start()
    assert provision(kms, "alice").returncode == 0  # the account survived the restart
    after = keystore(kms, "alice")
    for period in before.periods(USERS["alice"]):
        old, new = before.key_sets[(USERS["alice"], period)], after.key_sets[(USERS["alice"], period)]
        assert (old.ssk, old.pvt, old.rsk) == (new.ssk, new.pvt, new.rsk)
    log = kms.admin("audit", "log").stdout
    assert "keyprov" in log and "alice" in log


def test_a_kms_on_postgresql_provisions_keys(tmp_path: Path, postgres_server: PostgresServer) -> None:
    """``ptt-kms init --database postgresql://…``, then serve: the admin commands (also while it serves) and the
    service share the PostgreSQL store, and clients provision their keys over HTTPS."""
    url = postgres_server.create_database("kms_e2e_postgresql")
    server = Kms(tmp_path, free_ports(1)[0])
    out = server.admin("init", "--domain", "example.org", "--kms-uri", "kms.example.org", "--port", str(server.port),
                       "--database", url)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert not (server.data / "kms.sqlite3").exists()
    alice = _password_file(tmp_path, "alice", "alice-secret-password")
    assert server.admin("user", "add", "alice", "--uri", USERS["alice"], "--password-file", str(alice)).returncode == 0
    assert server.admin("export-enrolment", "--out", str(server.enrolment)).returncode == 0
    (tmp_path / "passphrase").write_bytes(PASSPHRASE)
    server.start()
    try:
        out = provision(server, "alice")
        assert out.returncode == 0, out.stderr
        bob = _password_file(tmp_path, "bob", "bob-secret-password")  # an account added while the KMS runs
        assert server.admin("user", "add", "bob", "--uri", USERS["bob"], "--password-file", str(bob)).returncode == 0
        out = provision(server, "bob")
        assert out.returncode == 0, out.stderr
    finally:
        server.stop()
    for user in ("alice", "bob"):
        held = keystore(server, user)
        assert held.enrolment is not None
        current = held.enrolment.certificate.domain().period_number(time.time())
        assert held.periods(USERS[user]) == [current, current + 1]
    with KmsStore(url) as store:  # what the service recorded is in PostgreSQL
        assert sorted((r.username, r.period_no) for r in store.issued()) == sorted(
            (user, period) for user in ("alice", "bob") for period in (current, current + 1)
        )
        assert [e.event for e in store.audit_log() if e.username == "bob"][:2] == ["account-added", "login"]
