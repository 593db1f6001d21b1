"""``ptt-kms``, run in-process on temporary data directories."""

from __future__ import annotations

import json
import sqlite3
import stat
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from cryptography import x509

from ptt.crypto.sakke import validate_rsk
from ptt.kmsformat.enrolment import Enrolment
from ptt.kmsformat.model import KmsRequest
from ptt.kmsformat.signing import verify_signed_response
from ptt.kmsformat.trust import KmsTrust
from ptt.kmsformat.validation import check_cert_cache
from ptt.kmsformat.xml import certificate_to_xml, parse_certificate, request_to_xml
from ptt.ts33180 import period_bounds, period_number, uid
from server.kms import cli, material
from server.kms.commands import common
from server.kms.domain import certificate_validity
from server.kms.secrets import is_encrypted, read_master_secrets, read_public_keys
from server.kms.store import KmsStore, LoginFailed

KMS_URI = "kms.example.org"
PERIOD = 3600  # short key periods keep "past period" close to now


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _secret_file(tmp_path: Path, name: str, content: str) -> str:
    path = tmp_path / name
    path.write_text(content + "\n")
    return str(path)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture
def data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """An initialised domain (plain master secrets)."""
    directory = tmp_path / "kms-data"
    code, _, err = _run(
        capsys, "--data", str(directory), "init", "--domain", "example.org", "--kms-uri", KMS_URI,
        "--key-period", str(PERIOD),
    )  # fmt: skip
    assert code == 0, err
    return directory


def _store(directory: Path) -> KmsStore:
    return KmsStore(directory / "kms.sqlite3")


# --- init ---


def test_init_creates_files_with_private_modes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "new" / "kms-data"
    code, out, _ = _run(
        capsys, "--data", str(directory), "init", "--domain", "example.org", "--kms-uri", KMS_URI,
        "--key-offset", "5", "--port", "9443", "--tls-name", "kms.example.org",
    )  # fmt: skip
    assert code == 0
    assert _mode(directory) == 0o700
    for name in ("master-secrets.json", "tls-key.pem", "signing-key.pem", "idms-key.pem", "kms.sqlite3"):
        assert _mode(directory / name) == 0o600, name
    for name in ("tls-cert.pem", "signing-cert.pem"):
        assert (directory / name).is_file()
    assert not is_encrypted(directory / "master-secrets.json")

    tls_cert = material.load_certificate(directory / "tls-cert.pem")
    kpak, _ = read_public_keys(directory / "master-secrets.json")
    assert KMS_URI in out
    assert material.certificate_fingerprint(tls_cert) in out
    assert cli._fingerprint(kpak) in out
    san = tls_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "kms.example.org"}
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    material.load_private_key(directory / "signing-key.pem")

    with _store(directory) as store:
        assert store.settings() == {
            "base_url": "https://127.0.0.1:9443",
            "domain": "example.org",
            "host": "127.0.0.1",
            "key_period": "2592000",
            "key_period_offset": "5",
            "kms_uri": KMS_URI,
            "port": "9443",
            "cert_valid_from": store.settings()["cert_valid_from"],
            "cert_valid_to": str(int(store.settings()["cert_valid_from"]) + 10 * 365 * 86400),
            "basic_login": "off",  # issue 14: IdMS access tokens only, unless --allow-basic-login
            "access_token_lifetime": "600",
        }
        assert [e.event for e in store.audit_log()] == ["domain-initialised"]


def test_init_with_passphrase_encrypts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "d"
    passphrase = _secret_file(tmp_path, "pp", "a long passphrase")
    code, out, _ = _run(
        capsys, "--data", str(directory), "init", "--domain", "d", "--kms-uri", KMS_URI, "--passphrase-file", passphrase
    )
    assert code == 0 and "encrypted" in out
    assert is_encrypted(directory / "master-secrets.json")
    master = read_master_secrets(directory / "master-secrets.json", b"a long passphrase")
    assert master.kpak == read_public_keys(directory / "master-secrets.json")[0]


def test_init_refuses_to_overwrite(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (data / "master-secrets.json").read_bytes()
    code, _, err = _run(capsys, "--data", str(data), "init", "--domain", "x", "--kms-uri", "kms.x")
    assert code == 2
    assert "already holds a KMS domain" in err and "--force" in err
    assert (data / "master-secrets.json").read_bytes() == before
    code, _, _ = _run(capsys, "--data", str(data), "init", "--domain", "x", "--kms-uri", "kms.x", "--force")
    assert code == 0
    assert (data / "master-secrets.json").read_bytes() != before
    with _store(data) as store:
        assert store.get_setting("kms_uri") == "kms.x"
        assert store.audit_log()[-1].event == "domain-reinitialised"


def test_init_with_given_tls_material(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key, cert = material.make_self_signed("kms.corp", san_dns=["kms.corp"], san_ips=[])
    material.write_key_and_certificate(key, cert, tmp_path / "k.pem", tmp_path / "c.pem")
    (tmp_path / "k.pem").chmod(0o640)  # e.g. group ssl-cert: accepted as input, stored 0600
    directory = tmp_path / "d"
    args = ["--data", str(directory), "init", "--domain", "d", "--kms-uri", KMS_URI, "--public-name", "kms.corp"]
    code, _, _ = _run(capsys, *args, "--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "k.pem"))
    assert code == 0
    assert material.load_certificate(directory / "tls-cert.pem") == cert
    assert _mode(directory / "tls-key.pem") == 0o600

    _, other = material.make_self_signed("other", san_dns=[], san_ips=[])
    (tmp_path / "other.pem").write_bytes(material.certificate_pem(other))
    other_dir = ["--data", str(tmp_path / "e"), "init", "--domain", "d", "--kms-uri", KMS_URI]
    code, _, err = _run(
        capsys, *other_dir, "--tls-cert", str(tmp_path / "other.pem"), "--tls-key", str(tmp_path / "k.pem")
    )
    assert code == 2 and "is not for the key" in err
    code, _, err = _run(capsys, *other_dir, "--tls-cert", str(tmp_path / "c.pem"))
    assert code == 2 and "go together" in err
    assert not (tmp_path / "e").exists()  # nothing written when the arguments are refused


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--key-period", "0"], "--key-period"),
        (["--key-offset", "-1"], "--key-offset"),
        (["--port", "70000"], "--port"),
        (["--base-url", "http://kms:80"], "https URL"),
    ],
)
def test_init_argument_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    code, _, err = _run(capsys, "--data", str(tmp_path / "d"), "init", "--domain", "d", "--kms-uri", KMS_URI, *extra)
    assert code == 2 and message in err


# --- accounts and grants ---


def test_user_add_list_remove(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pw = _secret_file(tmp_path, "pw", "alice's password")
    d = ["--data", str(data)]
    assert _run(capsys, *d, "user", "add", "alice", "--uri", "sip:alice@example.org", "--password-file", pw)[0] == 0
    code, _, _ = _run(
        capsys, *d, "user", "add", "audrey", "--role", "auditor", "--role", "admin", "--password-file", pw
    )
    assert code == 0
    code, _, err = _run(capsys, *d, "user", "add", "alice", "--uri", "sip:alice@example.org", "--password-file", pw)
    assert code == 2 and "already exists" in err
    code, _, err = _run(capsys, *d, "user", "add", "bob", "--password-file", pw)
    assert code == 2 and "needs --uri" in err
    code, _, err = _run(
        capsys, *d, "user", "add", "bob", "--uri", "sip:bob@example.org", "--password-file", "/nonexistent"
    )
    assert code == 2 and "cannot read the password file" in err

    code, out, _ = _run(capsys, *d, "user", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ROLES", "URI", "STATE", "GRANTS"]
    assert lines[1].split() == ["alice", "user", "sip:alice@example.org", "active", "-"]
    assert lines[2].split() == ["audrey", "admin,auditor", "-", "active", "-"]

    with _store(data) as store:
        assert store.authenticate("alice", "alice's password", now=time.time()).uri == "sip:alice@example.org"
    assert _run(capsys, *d, "user", "remove", "alice")[0] == 0
    code, _, err = _run(capsys, *d, "user", "remove", "alice")
    assert code == 2 and "no account 'alice'" in err
    with _store(data) as store:
        assert [a.username for a in store.accounts()] == ["audrey"]


def test_password_from_environment_and_passwd(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = ["--data", str(data)]
    monkeypatch.setenv(cli.PASSWORD_ENV, "from the environment")
    assert _run(capsys, *d, "user", "add", "carol", "--uri", "sip:carol@example.org")[0] == 0
    monkeypatch.delenv(cli.PASSWORD_ENV)
    code, _, err = _run(capsys, *d, "user", "passwd", "carol")  # no file, no variable, stdin is not a terminal
    assert code == 2 and "no password" in err
    assert (
        _run(capsys, *d, "user", "passwd", "carol", "--password-file", _secret_file(tmp_path, "p", "newer one"))[0] == 0
    )
    code, _, err = _run(capsys, *d, "user", "passwd", "dave", "--password-file", str(tmp_path / "p"))
    assert code == 2 and "no account" in err
    code, _, err = _run(capsys, *d, "user", "passwd", "carol", "--password-file", _secret_file(tmp_path, "s", "short"))
    assert code == 2 and "at least 8" in err
    with _store(data) as store:
        assert store.authenticate("carol", "newer one", now=time.time()).username == "carol"


def test_service_account_gets_a_generated_token(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = ["--data", str(data)]
    out_file = tmp_path / "server.token"
    code, out, err = _run(capsys, *d, "user", "add", "ptt-server", "--uri", "sip:ptt-server@example.org", "--service",
                          "--secret-out", str(out_file))  # fmt: skip
    assert code == 0, err
    token = out_file.read_text().strip()
    assert len(token) == 43 and _mode(out_file) == 0o600 and token not in out and "service" in out
    code, out, _ = _run(capsys, *d, "user", "list")
    assert any(line.startswith("ptt-server") and "active,service" in line for line in out.splitlines())
    # without --secret-out the token is printed once
    code, out, _ = _run(capsys, *d, "user", "add", "bot", "--role", "admin", "--service")
    printed = out.strip().splitlines()[-1]
    assert code == 0 and len(printed) == 43
    # passwd of a service account makes a new token; the old one stops working
    code, out, err = _run(capsys, *d, "user", "passwd", "ptt-server", "--secret-out", str(out_file))
    assert code == 0, err
    new = out_file.read_text().strip()
    with _store(data) as store:
        assert store.authenticate("ptt-server", new, now=time.time()).service
        with pytest.raises(LoginFailed):
            store.authenticate("ptt-server", token, now=time.time())
    # a person's password is not taken for a service account, nor --secret-out for a person's account
    pw = _secret_file(tmp_path, "pw", "a person's password")
    code, _, err = _run(capsys, *d, "user", "add", "svc", "--role", "admin", "--service", "--password-file", pw)
    assert code == 2 and "--secret-out" in err
    code, _, err = _run(capsys, *d, "user", "passwd", "ptt-server", "--password-file", pw)
    assert code == 2 and "service account" in err
    code, _, err = _run(capsys, *d, "user", "add", "eve", "--role", "admin", "--password-file", pw, "--secret-out", "x")
    assert code == 2 and "--service" in err


def test_user_disable_enable(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = ["--data", str(data)]
    _run(
        capsys,
        *d,
        "user",
        "add",
        "erin",
        "--uri",
        "sip:erin@x",
        "--password-file",
        _secret_file(tmp_path, "p", "pw-erin-1"),
    )
    assert _run(capsys, *d, "user", "disable", "erin")[0] == 0
    assert "disabled" in _run(capsys, *d, "user", "list")[1]
    assert _run(capsys, *d, "user", "enable", "erin")[0] == 0
    with _store(data) as store:
        account = store.account("erin")
        assert account is not None and not account.disabled


def test_grant_and_revoke(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = ["--data", str(data)]
    pw = _secret_file(tmp_path, "pw", "gm password")
    _run(capsys, *d, "user", "add", "gm", "--uri", "sip:gm@example.org", "--password-file", pw)
    assert _run(capsys, *d, "grant", "gm", "sip:fire-ops@example.org")[0] == 0
    with _store(data) as store:
        assert store.grants("gm") == {"sip:fire-ops@example.org": "group-manager", "sip:gm@example.org": "self"}
    assert "sip:fire-ops@example.org (group-manager)" in _run(capsys, *d, "user", "list")[1]
    assert _run(capsys, *d, "revoke", "gm", "sip:fire-ops@example.org")[0] == 0
    code, _, err = _run(capsys, *d, "revoke", "gm", "sip:fire-ops@example.org")
    assert code == 2 and "no grant" in err
    code, _, err = _run(capsys, *d, "grant", "nobody", "sip:fire-ops@example.org")
    assert code == 2 and "no account" in err
    with _store(data) as store:
        assert not store.may_key("gm", "sip:fire-ops@example.org")


# --- enrolment and trusted domains ---


def test_export_enrolment(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "enrolment.json"
    assert _run(capsys, "--data", str(data), "export-enrolment", "--out", str(out_file))[0] == 0
    enrolment = Enrolment.from_json(out_file.read_bytes())
    kpak, z = read_public_keys(data / "master-secrets.json")
    assert enrolment.kms_uri == KMS_URI
    assert enrolment.base_url == "https://127.0.0.1:8443"
    assert enrolment.tls_cert == material.load_certificate(data / "tls-cert.pem")
    assert enrolment.signing_cert == material.load_certificate(data / "signing-cert.pem")
    cert = enrolment.certificate
    assert (cert.kms_uri, cert.pub_auth_key, cert.pub_enc_key) == (KMS_URI, kpak, z)
    assert (cert.user_key_period, cert.user_key_offset) == (PERIOD, 0)
    with _store(data) as store:
        valid_from, valid_to = certificate_validity(store.settings())
    assert valid_from is not None and valid_to is not None and valid_to > valid_from
    assert cert == cli.domain_certificate(KMS_URI, PERIOD, 0, kpak, z, valid_from, valid_to)
    assert cert.valid_from is not None and cert.revoked is False

    code, out, _ = _run(capsys, "--data", str(data), "export-enrolment", "--base-url", "https://kms.example.org:443")
    assert code == 0
    assert Enrolment.from_json(out.encode()).base_url == "https://kms.example.org:443"


def test_export_enrolment_needs_no_passphrase(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "d"
    pp = _secret_file(tmp_path, "pp", "a long passphrase")
    _run(capsys, "--data", str(directory), "init", "--domain", "d", "--kms-uri", KMS_URI, "--passphrase-file", pp)
    code, out, _ = _run(capsys, "--data", str(directory), "export-enrolment")
    assert code == 0 and Enrolment.from_json(out.encode()).kms_uri == KMS_URI


def test_trust_domain(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other"
    _run(capsys, "--data", str(other), "init", "--domain", "other.org", "--kms-uri", "kms.other.org")
    _run(capsys, "--data", str(other), "export-enrolment", "--out", str(tmp_path / "other.json"))
    third = Enrolment.from_json((tmp_path / "other.json").read_bytes()).certificate
    d = ["--data", str(data)]

    code, out, _ = _run(capsys, *d, "trust-domain", str(tmp_path / "other.json"))
    assert code == 0
    assert (
        out
        == f"trusting KMS kms.other.org for users in other.org (KPAK SHA-256 {cli._fingerprint(third.pub_auth_key)})\n"
    )
    with _store(data) as store:
        [stored] = store.trusted_certificates()
    # served as an External KMS; no KmsDomainList given or in the file: clients derive other.org from its URI
    assert parse_certificate(stored) == replace(third, role="External", kms_domains=())

    # A standalone KmsCertificate XML document works as well.
    xml_cert = cli.domain_certificate("kms.third.org", 86400, 0, third.pub_auth_key, third.pub_enc_key)
    (tmp_path / "third.xml").write_bytes(certificate_to_xml(xml_cert))
    assert _run(capsys, *d, "trust-domain", str(tmp_path / "third.xml"))[0] == 0
    with _store(data) as store:
        assert [parse_certificate(c).kms_uri for c in store.trusted_certificates()] == [
            "kms.other.org",
            "kms.third.org",
        ]

    _run(capsys, *d, "export-enrolment", "--out", str(tmp_path / "own.json"))
    code, _, err = _run(capsys, *d, "trust-domain", str(tmp_path / "own.json"))
    assert code == 2 and "own certificate" in err
    (tmp_path / "junk.txt").write_text("hello")
    code, _, err = _run(capsys, *d, "trust-domain", str(tmp_path / "junk.txt"))
    assert code == 2 and "neither an enrolment file nor a KmsCertificate" in err
    code, _, err = _run(capsys, *d, "trust-domain", str(tmp_path / "missing.json"))
    assert code == 2 and "cannot read" in err

    assert _run(capsys, *d, "untrust-domain", "kms.third.org")[0] == 0
    code, _, err = _run(capsys, *d, "untrust-domain", "kms.third.org")
    assert code == 2 and "not a trusted domain" in err


@pytest.fixture
def partner(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """The enrolment file of another domain, partner.org (KMS kms.partner.org)."""
    directory = tmp_path / "partner-data"
    assert (
        _run(capsys, "--data", str(directory), "init", "--domain", "partner.org", "--kms-uri", "kms.partner.org")[0]
        == 0
    )
    path = tmp_path / "partner-enrolment.json"
    assert _run(capsys, "--data", str(directory), "export-enrolment", "--out", str(path))[0] == 0
    return path


def _trusted(data: Path) -> list[tuple[str, str, tuple[str, ...]]]:
    with _store(data) as store:
        certificates = [parse_certificate(c) for c in store.trusted_certificates()]
    return [(c.kms_uri, c.role, c.kms_domains) for c in certificates]


def test_trust_domain_with_user_domains(
    data: Path, partner: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = ["--data", str(data)]
    code, out, err = _run(
        capsys, *d, "trust-domain", str(partner), "--user-domain", "Partner.ORG", "--user-domain", "ops.partner-2.net.",
        "--user-domain", "partner.org",
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("trusting KMS kms.partner.org for users in partner.org, ops.partner-2.net (KPAK SHA-256 ")
    assert _trusted(data) == [("kms.partner.org", "External", ("partner.org", "ops.partner-2.net"))]

    # Without --user-domain the certificate's own list is kept (here a standalone XML certificate carrying one).
    certificate = replace(Enrolment.from_json(partner.read_bytes()).certificate, kms_domains=("partner.com",))
    (tmp_path / "partner.xml").write_bytes(certificate_to_xml(certificate))
    code, out, _ = _run(capsys, *d, "trust-domain", str(tmp_path / "partner.xml"))
    assert code == 0 and "for users in partner.com (" in out
    assert _trusted(data) == [("kms.partner.org", "External", ("partner.com",))]
    # ... and trusting the enrolment again (no list in it) replaces the stored one: bound to its URI's domain
    assert _run(capsys, *d, "trust-domain", str(partner))[0] == 0
    assert _trusted(data) == [("kms.partner.org", "External", ())]

    code, out, _ = _run(capsys, *d, "status")
    assert code == 0
    assert "trusted domains\n  KMS kms.partner.org for users in partner.org\n" in out


@pytest.mark.parametrize(
    "domain",
    ["", ".", "-partner.org", "partner-.org", "partner..org", ".partner.org", "part ner.org", " partner.org",
     "partner.org/x", "*.partner.org", "part_ner.org", "pärtner.org", "a" * 64 + ".org", "a." * 127 + "org",
     "example.org", "EXAMPLE.org.", "org"],
)  # fmt: skip
def test_trust_domain_refuses_bad_user_domains(
    domain: str, data: Path, partner: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not a DNS name, or one that would let the partner speak for this domain's own users (example.org)."""
    # one argument with "=": a value starting with "-" is not taken for an option
    code, out, err = _run(capsys, "--data", str(data), "trust-domain", str(partner), f"--user-domain={domain}")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("ptt-kms: error: ")
    assert _trusted(data) == []


def test_trust_domain_allows_long_valid_names(data: Path, partner: Path, capsys: pytest.CaptureFixture[str]) -> None:
    longest = "a" * 63 + ".partner.org"
    assert _run(capsys, "--data", str(data), "trust-domain", str(partner), "--user-domain", longest)[0] == 0
    assert _trusted(data) == [("kms.partner.org", "External", (longest,))]


def _access_token(app: Any, user: str, password: str, now: float) -> str:
    form = urlencode({"grant_type": "password", "username": user, "password": password}).encode()
    reply = app.handle(method="POST", path="/idms/token", authorization=None, body=form, peer="127.0.0.1", now=now)
    assert reply.status == 200, reply.body
    token: str = json.loads(reply.body)["access_token"]
    return token


def test_cert_cache_serves_the_trusted_domain(
    data: Path, partner: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the CLI stores is what the service signs into the certificate cache, and what a client accepts."""
    from server.kms import service, site

    d = ["--data", str(data)]
    password = "alice password"
    pw = _secret_file(tmp_path, "alice-pw", password)
    assert _run(capsys, *d, "user", "add", "alice", "--uri", "sip:alice@example.org", "--password-file", pw)[0] == 0
    assert _run(capsys, *d, "trust-domain", str(partner), "--user-domain", "partner.org")[0] == 0
    app, store = site.load_application(data, None)
    try:
        now = time.time()
        request = KmsRequest(
            "sip:alice@example.org", KMS_URI, datetime.fromtimestamp(now, UTC), app.config.base_url + "certcache"
        )
        reply = app.handle(
            method="POST",
            path=service.PREFIX + "certcache",
            authorization="Bearer " + _access_token(app, "alice", password, now),
            body=request_to_xml(request),
            peer="127.0.0.1",
            now=now,
        )
    finally:
        store.close()
    assert reply.status == 200, reply.body
    response = verify_signed_response(reply.body, material.load_certificate(data / "signing-cert.pem"))
    [certificate] = check_cert_cache(
        response,
        expected_kms_uri=KMS_URI,
        expected_user_uri="sip:alice@example.org",
        now=datetime.fromtimestamp(now, UTC),
    )
    assert (certificate.kms_uri, certificate.role, certificate.kms_domains) == (
        "kms.partner.org",
        "External",
        ("partner.org",),
    )
    assert certificate.pub_auth_key == Enrolment.from_json(partner.read_bytes()).certificate.pub_auth_key
    own = Enrolment.from_json(_run(capsys, *d, "export-enrolment")[1].encode()).certificate.domain()
    trust = KmsTrust.of(own, [certificate])
    assert trust.kms_for("sip:x@partner.org").kms_uri == "kms.partner.org"
    assert trust.kms_for("sip:alice@example.org").kms_uri == KMS_URI


def test_status(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = ["--data", str(data)]
    _run(
        capsys,
        *d,
        "user",
        "add",
        "gm",
        "--uri",
        "sip:gm@example.org",
        "--password-file",
        _secret_file(tmp_path, "p", "gm password"),
    )
    _run(capsys, *d, "grant", "gm", "sip:group@example.org")
    code, out, _ = _run(capsys, *d, "status")
    assert code == 0
    current = period_number(time.time(), PERIOD, 0)
    _, end = period_bounds(current, PERIOD, 0)
    assert "example.org" in out and KMS_URI in out
    assert f"current period  {current}, ends {cli._utc(end)}" in out
    assert f"key period      {PERIOD} s, offset 0 s" in out
    assert "accounts        1, grants 2" in out
    assert "trusted domains none" in out
    assert "not encrypted" in out
    assert "grant" in out and "domain-initialised" in out  # recent audit events


# --- compliance export of past RSKs ---


@pytest.fixture
def with_accounts(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    d = ["--data", str(data)]
    pw = _secret_file(tmp_path, "auditor-pw", "auditor password")
    assert _run(capsys, *d, "user", "add", "audrey", "--role", "auditor", "--password-file", pw)[0] == 0
    pw = _secret_file(tmp_path, "user-pw", "alice password")
    assert _run(capsys, *d, "user", "add", "alice", "--uri", "sip:alice@example.org", "--password-file", pw)[0] == 0
    return data


def _export(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    return _run(
        capsys, "--data", str(data), "audit", "export-rsk", "--user", "sip:alice@example.org",
        "--password-file", str(tmp_path / "auditor-pw"), *extra,
    )  # fmt: skip


def _later(monkeypatch: pytest.MonkeyPatch, periods: int = 3) -> float:
    """Move the commands' clock ``periods`` key periods past the domain's start (its earlier periods are refused)."""
    shifted = time.time() + periods * PERIOD
    monkeypatch.setattr(common, "clock", lambda: shifted)
    return shifted


def test_export_rsk_of_a_past_period(
    with_accounts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    past = period_number(_later(monkeypatch), PERIOD, 0) - 2
    out_file = tmp_path / "rsk.hex"
    code, _, err = _export(
        with_accounts, tmp_path, capsys, "--auditor", "audrey", "--period", str(past), "--out", str(out_file)
    )
    assert code == 0, err
    assert _mode(out_file) == 0o600
    rsk = bytes.fromhex(out_file.read_text().strip())
    user_id = uid("sip:alice@example.org", KMS_URI, PERIOD, 0, past)
    z = read_public_keys(with_accounts / "master-secrets.json")[1]
    assert validate_rsk(user_id, rsk, z)
    assert not validate_rsk(uid("sip:alice@example.org", KMS_URI, PERIOD, 0, past + 1), rsk, z)

    code, out, _ = _export(with_accounts, tmp_path, capsys, "--auditor", "audrey", "--period", str(past))
    assert code == 0 and bytes.fromhex(out.strip()) == rsk  # stdout, and the same key again

    with _store(with_accounts) as store:
        events = [e for e in store.audit_log() if e.event == "rsk-exported"]
        assert len(events) == 2
        assert events[0].username == "audrey"
        assert "sip:alice@example.org" in events[0].detail and str(past) in events[0].detail
        assert rsk.hex() not in "".join(e.detail for e in store.audit_log())
        [record, _] = store.issued("sip:alice@example.org")
        assert (record.username, record.period_no, record.uid, record.kind) == ("audrey", past, user_id, "audit-rsk")


def test_export_rsk_refusals(
    with_accounts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = period_number(time.time(), PERIOD, 0)  # the domain was initialised in this period
    current = period_number(_later(monkeypatch), PERIOD, 0)
    past = str(current - 1)
    # An account without the auditor role (with its own, correct password).
    export = ["--data", str(with_accounts), "audit", "export-rsk", "--user", "sip:alice@example.org", "--period", past]
    code, out, err = _run(capsys, *export, "--auditor", "alice", "--password-file", str(tmp_path / "user-pw"))
    assert code == 2 and "auditor role" in err and out == ""
    # A wrong password.
    wrong = _secret_file(tmp_path, "wrong", "not the password")
    code, out, err = _run(capsys, *export, "--auditor", "audrey", "--password-file", wrong)
    assert code == 2 and "wrong username or password" in err and out == ""
    # The current and a future period.
    for period in (current, current + 1):
        code, out, err = _export(with_accounts, tmp_path, capsys, "--auditor", "audrey", "--period", str(period))
        assert code == 2 and "not in the past" in err and out == ""
    # Before the domain existed (period 0: 1970; the period before its initialisation), and an unknown identity.
    for period in (0, first - 1):
        code, out, err = _export(with_accounts, tmp_path, capsys, "--auditor", "audrey", "--period", str(period))
        assert code == 2 and "before this KMS domain existed" in err and out == ""
    code, out, err = _run(
        capsys, *export[:4], "--user", "sip:nobody@example.org", "--period", past,
        "--auditor", "audrey", "--password-file", str(tmp_path / "auditor-pw"),
    )  # fmt: skip
    assert code == 2 and "not an identity this KMS knows" in err and out == ""
    with _store(with_accounts) as store:
        events = [(e.event, e.username) for e in store.audit_log()]
        assert events.count(("rsk-export-refused", "alice")) == 1
        assert events.count(("login-failed", "audrey")) == 1
        assert events.count(("rsk-export-refused", "audrey")) == 5
        assert store.verify_audit().ok
        assert ("rsk-exported", "audrey") not in events
        assert store.issued() == []


def test_the_audit_log_is_a_verified_hash_chain(
    with_accounts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    past = str(period_number(_later(monkeypatch), PERIOD, 0) - 1)
    assert _export(with_accounts, tmp_path, capsys, "--auditor", "audrey", "--period", past)[0] == 0
    code, out, _ = _run(capsys, "--data", str(with_accounts), "audit", "verify")
    assert code == 0 and "audit log intact" in out
    head = out.split("head ")[1].strip().rstrip(")")
    assert _run(capsys, "--data", str(with_accounts), "audit", "verify", "--anchor", head)[0] == 0
    db = sqlite3.connect(with_accounts / "kms.sqlite3")
    with db:  # an insider edits the export's record to hide whose key it was
        db.execute("UPDATE audit SET detail = 'nothing' WHERE event = 'rsk-exported'")
    db.close()
    code, out, _ = _run(capsys, "--data", str(with_accounts), "audit", "verify")
    assert code == 1 and "BROKEN" in out and "hash does not match" in out
    db = sqlite3.connect(with_accounts / "kms.sqlite3")
    with db:  # or deletes it, and the records after it, and re-chains nothing: the anchor shows the cut
        db.execute("DELETE FROM audit WHERE id >= (SELECT id FROM audit WHERE event = 'rsk-exported')")
    db.close()
    code, out, _ = _run(capsys, "--data", str(with_accounts), "audit", "verify", "--anchor", head)
    assert code == 1 and "anchored record is missing" in out


def test_export_rsk_with_encrypted_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "d"
    pp = _secret_file(tmp_path, "pp", "a long passphrase")
    d = ["--data", str(directory)]
    _run(
        capsys, *d, "init", "--domain", "d", "--kms-uri", KMS_URI, "--key-period", str(PERIOD), "--passphrase-file", pp
    )
    _run(
        capsys,
        *d,
        "user",
        "add",
        "audrey",
        "--role",
        "auditor",
        "--password-file",
        _secret_file(tmp_path, "auditor-pw", "auditor password"),
    )
    _run(capsys, *d, "user", "add", "alice", "--uri", "sip:alice@example.org", "--password-file", _secret_file(
        tmp_path, "alice-pw", "alice password"))  # fmt: skip
    past = str(period_number(_later(monkeypatch), PERIOD, 0) - 1)
    args = ["--auditor", "audrey", "--period", past]
    code, _, err = _export(directory, tmp_path, capsys, *args)
    assert code == 2 and "--passphrase-file" in err
    code, _, err = _export(
        directory, tmp_path, capsys, *args, "--passphrase-file", _secret_file(tmp_path, "bad", "wrong")
    )
    assert code == 2 and "wrong passphrase" in err
    code, out, _ = _export(directory, tmp_path, capsys, *args, "--passphrase-file", pp)
    assert code == 0 and len(bytes.fromhex(out.strip())) == 257


# --- serve and errors ---


def test_serve_wires_the_service(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from server.kms import serving

    calls: list[tuple[Path, bytes | None, int]] = []

    def fake_main(data_dir: Path, passphrase: bytes | None = None, *, workers: int = 1) -> int:
        calls.append((data_dir, passphrase, workers))
        return 0

    monkeypatch.setattr(serving, "main", fake_main)
    assert _run(capsys, "--data", str(data), "serve")[0] == 0
    assert calls == [(data, None, os.cpu_count() or 1)]  # one worker per core by default
    code, _, _ = _run(capsys, "--data", str(data), "serve", "--passphrase-file", _secret_file(tmp_path, "pp", "x" * 12))
    assert code == 0  # the service itself refuses a passphrase for plain secrets; the CLI only passes it on
    assert calls[-1][:2] == (data, b"x" * 12)
    assert _run(capsys, "--data", str(data), "serve", "--workers", "1")[0] == 0
    assert calls[-1] == (data, None, 1)


def test_missing_data_directory_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["status"], ["user", "list"], ["export-enrolment"], ["serve"]):
        code, out, err = _run(capsys, "--data", str(tmp_path / "nowhere"), *argv)
        assert code == 2
        assert err.startswith("ptt-kms: error: no KMS data directory") and "init" in err
        assert out == ""
    (tmp_path / "empty").mkdir()
    code, _, err = _run(capsys, "--data", str(tmp_path / "empty"), "status")
    assert code == 2 and "holds no KMS database" in err
    assert not (tmp_path / "empty" / "kms.sqlite3").exists()  # looking did not create one


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(capsys)[0] == 2
    assert _run(capsys, "frobnicate")[0] == 2
    assert _run(capsys, "audit", "export-rsk", "--auditor", "a", "--user", "u", "--period", "-1")[0] == 2
    code, out, _ = _run(capsys, "--help")
    assert code == 0 and "export-enrolment" in out
