"""KMS storage: the SQLite store (accounts, lockout, grants, audit, issuance, trusted domains), the master secrets
file and the TLS/signing material."""

from __future__ import annotations

import json
import os
import ssl
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from ptt.crypto.kms import MasterSecrets, generate_master_secrets
from server.accounts import passwords
from server.kms import material, secrets, store
from server.kms.material import MaterialError
from server.kms.secrets import SecretsFileError
from server.kms.store import AccountError, KmsStore, LockedOut, LoginFailed, StoreError
from tests.postgres import dump, integrity_errors, raw

PASSWORD = "correct horse battery"


@pytest.fixture
def kms(database_url: str) -> Iterator[KmsStore]:
    """A new store on each backend: a SQLite file, or an emptied PostgreSQL database."""
    s = KmsStore(database_url)
    yield s
    s.close()


@pytest.fixture
def scrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the password scrypt evaluations (their cost parameter N, one entry each)."""
    calls: list[int] = []
    real: Callable[[bytes, bytes, int, int, int], bytes] = passwords._scrypt

    def counting(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
        calls.append(n)
        return real(password, salt, n, r, p)

    monkeypatch.setattr(passwords, "_scrypt", counting)
    return calls


# --- accounts ---


def test_add_account_grants_own_identity(kms: KmsStore) -> None:
    kms.add_account("alice", PASSWORD, uri="sip:alice@example.org", roles={"user", "admin"}, now=10.0)
    account = kms.account("alice")
    assert account == store.Account("alice", "sip:alice@example.org", frozenset({"user", "admin"}), False)
    assert kms.grants("alice") == {"sip:alice@example.org": "self"}
    assert kms.may_key("alice", "sip:alice@example.org")
    assert not kms.may_key("alice", "sip:bob@example.org")
    assert kms.account("nobody") is None


def test_account_without_identity_and_default_role(kms: KmsStore) -> None:
    kms.add_account("audrey", PASSWORD, uri=None, roles={"auditor"}, now=1.0)
    kms.add_account("bob", PASSWORD, uri="sip:bob@example.org", now=1.0)
    assert kms.grants("audrey") == {}
    assert [(a.username, a.roles) for a in kms.accounts()] == [
        ("audrey", frozenset({"auditor"})),
        ("bob", frozenset({"user"})),
    ]


def test_add_account_refusals(kms: KmsStore) -> None:
    kms.add_account("alice", PASSWORD, uri="sip:alice@example.org", now=1.0)
    with pytest.raises(AccountError, match="already exists"):
        kms.add_account("alice", "another password", uri="sip:x@example.org", now=2.0)
    with pytest.raises(AccountError, match="bad account name"):
        kms.add_account("al ice", PASSWORD, uri=None, now=2.0)
    with pytest.raises(AccountError, match="bad account name"):
        kms.add_account("", PASSWORD, uri=None, now=2.0)
    with pytest.raises(AccountError, match="roles"):
        kms.add_account("carol", PASSWORD, uri=None, roles={"root"}, now=2.0)
    with pytest.raises(AccountError, match="roles"):
        kms.add_account("carol", PASSWORD, uri=None, roles=set(), now=2.0)
    with pytest.raises(AccountError, match="at least 8"):
        kms.add_account("carol", "short", uri=None, now=2.0)
    assert [a.username for a in kms.accounts()] == ["alice"]


def test_remove_account_removes_its_grants(kms: KmsStore) -> None:
    kms.add_account("alice", PASSWORD, uri="sip:alice@example.org", now=1.0)
    kms.grant("alice", "sip:group@example.org", now=2.0)
    kms.remove_account("alice", now=3.0)
    assert kms.account("alice") is None
    assert kms.grants("alice") == {}
    assert not kms.may_key("alice", "sip:group@example.org")
    assert kms.grant_count() == 0
    with pytest.raises(AccountError, match="no account"):
        kms.remove_account("alice", now=4.0)
    with pytest.raises(LoginFailed):
        kms.authenticate("alice", PASSWORD, now=5.0)


def test_set_password(kms: KmsStore) -> None:
    kms.add_account("alice", PASSWORD, uri=None, roles={"admin"}, now=1.0)
    kms.set_password("alice", "a new passphrase", now=2.0)
    with pytest.raises(LoginFailed):
        kms.authenticate("alice", PASSWORD, now=3.0)
    assert kms.authenticate("alice", "a new passphrase", now=4.0).username == "alice"
    with pytest.raises(AccountError, match="no account"):
        kms.set_password("bob", "whatever123", now=5.0)
    with pytest.raises(AccountError, match="at least"):
        kms.set_password("alice", "short", now=5.0)


# --- authentication ---


def test_authenticate_ok_wrong_and_unknown(kms: KmsStore, scrypt_calls: list[int]) -> None:
    kms.add_account("alice", PASSWORD, uri="sip:alice@example.org", now=1.0)
    scrypt_calls.clear()
    account = kms.authenticate("alice", PASSWORD, now=2.0)
    assert account.uri == "sip:alice@example.org" and account.roles == {"user"}
    with pytest.raises(LoginFailed) as wrong:
        kms.authenticate("alice", PASSWORD + "!", now=3.0)
    with pytest.raises(LoginFailed) as unknown:
        kms.authenticate("mallory", PASSWORD, now=4.0)
    # The same message and the same scrypt work (one evaluation at the same cost) whether or not the name exists.
    assert str(wrong.value) == str(unknown.value) == "wrong username or password"
    assert scrypt_calls == [passwords.SCRYPT_N] * 3


def test_password_is_unicode_normalised(kms: KmsStore) -> None:
    kms.add_account("zoe", "caf\u00e9 au lait", uri=None, roles={"admin"}, now=1.0)
    assert kms.authenticate("zoe", "cafe\u0301 au lait", now=2.0).username == "zoe"


def test_lockout_grows_and_does_not_check_the_password(kms: KmsStore, scrypt_calls: list[int]) -> None:
    kms.add_account("alice", PASSWORD, uri="sip:alice@example.org", now=0.0)
    t = 1000.0
    for _ in range(store.LOCKOUT_AFTER - 1):
        with pytest.raises(LoginFailed):
            kms.authenticate("alice", "wrong password", now=t)
    assert kms.authenticate("alice", PASSWORD, now=t).username == "alice"  # not yet locked; resets the count
    for _ in range(store.LOCKOUT_AFTER - 1):
        with pytest.raises(LoginFailed):
            kms.authenticate("alice", "wrong password", now=t)

    expected = [30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0, 3600.0]
    for lock in expected:
        with pytest.raises(LoginFailed):  # the failure that (re)locks the account
            kms.authenticate("alice", "wrong password", now=t)
        scrypt_calls.clear()
        with pytest.raises(LockedOut) as locked:
            kms.authenticate("alice", PASSWORD, now=t + 1.0)  # even the right password is refused ...
        assert locked.value.retry_after == pytest.approx(lock - 1.0)
        assert scrypt_calls == []  # ... without being checked
        t += lock  # the lock has just run out

    assert kms.authenticate("alice", PASSWORD, now=t).username == "alice"
    for _ in range(store.LOCKOUT_AFTER - 1):  # success reset the count: four more failures do not lock
        with pytest.raises(LoginFailed):
            kms.authenticate("alice", "wrong password", now=t)
    assert kms.authenticate("alice", PASSWORD, now=t).username == "alice"


def test_lock_is_per_source_and_set_password_lifts_it(database_url: str) -> None:
    with KmsStore(database_url) as kms:
        kms.add_account("alice", PASSWORD, uri=None, roles={"admin"}, now=0.0)
        for _ in range(store.LOCKOUT_AFTER):
            with pytest.raises(LoginFailed):
                kms.authenticate("alice", "wrong password", now=10.0, source="192.0.2.66")
        with pytest.raises(LockedOut, match="locked for logins from there"):
            kms.authenticate("alice", PASSWORD, now=20.0, source="192.0.2.66")
        assert kms.authenticate("alice", PASSWORD, now=20.0, source="192.0.2.1").username == "alice"
        # the failures are counted for the operator; the locks live in the login guard (in memory)
        assert ("login-failed", "alice") in {(r.event, r.username) for r in kms.audit_log(20)}
        with KmsStore(database_url) as cli:  # another process (ptt-kms user passwd) sets a new password
            cli.set_password("alice", "fresh password", now=21.0)
        assert kms.authenticate("alice", "fresh password", now=22.0, source="192.0.2.66").username == "alice"


def test_service_account(kms: KmsStore, scrypt_calls: list[int]) -> None:
    token = kms.add_service_account("ptt-server", uri="sip:ptt-server@example.org", now=0.0)
    assert len(token) >= 43
    account = kms.account("ptt-server")
    assert account is not None and account.service and kms.may_key("ptt-server", "sip:ptt-server@example.org")
    assert token.encode() not in dump(kms.url)
    for i in range(3 * store.LOCKOUT_AFTER):  # wrong guesses from one address never lock it (for anyone)
        with pytest.raises(LoginFailed):
            kms.authenticate("ptt-server", f"guess number {i}", now=1.0, source="192.0.2.66")
    assert kms.authenticate("ptt-server", token, now=1.0, source="192.0.2.1").username == "ptt-server"
    assert scrypt_calls == []  # a token is checked with one SHA-256
    new = kms.new_service_token("ptt-server", now=2.0)
    with pytest.raises(LoginFailed):
        kms.authenticate("ptt-server", token, now=3.0)
    assert kms.authenticate("ptt-server", new, now=3.0).service
    kms.set_password("ptt-server", "now a person's password", now=4.0)  # back to a password account
    account = kms.account("ptt-server")
    assert account is not None and not account.service
    with pytest.raises(AccountError, match="already exists"):
        kms.add_service_account("ptt-server", uri=None, roles={"admin"}, now=5.0)


def test_disabled_account_cannot_log_in_or_key(kms: KmsStore) -> None:
    kms.add_account("alice", PASSWORD, uri="sip:alice@example.org", now=0.0)
    kms.set_disabled("alice", True, now=1.0)
    assert kms.account("alice") == store.Account("alice", "sip:alice@example.org", frozenset({"user"}), True)
    with pytest.raises(LoginFailed, match="disabled"):
        kms.authenticate("alice", PASSWORD, now=2.0)
    assert not kms.may_key("alice", "sip:alice@example.org")
    kms.set_disabled("alice", False, now=3.0)
    assert kms.authenticate("alice", PASSWORD, now=4.0).username == "alice"
    assert kms.may_key("alice", "sip:alice@example.org")


def test_hash_is_self_describing_and_upgraded_on_login(kms: KmsStore, monkeypatch: pytest.MonkeyPatch) -> None:
    kms.add_account("alice", PASSWORD, uri=None, roles={"admin"}, now=0.0)

    def stored() -> str:
        with raw(kms.url) as db:
            return str(db.execute("SELECT password_hash FROM accounts").fetchone()[0])

    assert stored().startswith(f"scrypt${2**14}$8$1$")
    monkeypatch.setattr(passwords, "SCRYPT_N", 2**12)
    kms.authenticate("alice", PASSWORD, now=1.0)  # the old hash still verifies ...
    assert stored().startswith(f"scrypt${2**12}$8$1$")  # ... and is replaced by one at the current cost
    assert kms.authenticate("alice", PASSWORD, now=2.0).username == "alice"


# --- grants ---


def test_grants(kms: KmsStore) -> None:
    kms.add_account("gm", PASSWORD, uri="sip:gm@example.org", now=0.0)
    kms.grant("gm", "sip:fire-ops@example.org", now=1.0)
    kms.grant("gm", "sip:police@example.org", "group-manager", now=1.0)
    assert kms.grants("gm") == {
        "sip:fire-ops@example.org": "group-manager",
        "sip:gm@example.org": "self",
        "sip:police@example.org": "group-manager",
    }
    assert kms.may_key("gm", "sip:fire-ops@example.org")
    assert kms.grant_count() == 3
    kms.revoke("gm", "sip:fire-ops@example.org", now=2.0)
    assert not kms.may_key("gm", "sip:fire-ops@example.org")
    assert not kms.may_key("nobody", "sip:police@example.org")
    with pytest.raises(AccountError, match="no grant"):
        kms.revoke("gm", "sip:fire-ops@example.org", now=3.0)
    with pytest.raises(AccountError, match="no account"):
        kms.grant("nobody", "sip:police@example.org", now=3.0)
    with pytest.raises(AccountError, match="kind"):
        kms.grant("gm", "sip:police@example.org", "owner", now=3.0)
    with pytest.raises(AccountError, match="empty"):
        kms.grant("gm", "", now=3.0)


# --- audit and issuance ---


def test_audit_log_records_events_but_no_secrets(kms: KmsStore) -> None:
    kms.add_account("alice", PASSWORD, uri="sip:alice@example.org", now=1.0)
    kms.authenticate("alice", PASSWORD, now=2.0)
    with pytest.raises(LoginFailed):
        kms.authenticate("alice", "wrong horse battery", now=3.0)
    with pytest.raises(LoginFailed):
        kms.authenticate("eve", "eves own password", now=4.0)
    kms.grant("alice", "sip:g@example.org", now=5.0)
    kms.revoke("alice", "sip:g@example.org", now=6.0)
    kms.set_password("alice", "the second password", now=7.0)
    kms.audit("keyprov", username="alice", detail="sip:alice@example.org", now=8.0)
    kms.remove_account("alice", now=9.0)

    log = kms.audit_log()
    assert [(r.at, r.event, r.username) for r in log] == [
        (1.0, "account-added", "alice"),
        (2.0, "login", "alice"),
        (3.0, "login-failed", "alice"),
        (4.0, "login-failed", None),
        (5.0, "grant", "alice"),
        (6.0, "revoke", "alice"),
        (7.0, "password-changed", "alice"),
        (8.0, "keyprov", "alice"),
        (9.0, "account-removed", "alice"),
    ]
    assert "eve" in log[3].detail
    assert [r.event for r in kms.audit_log(2)] == ["keyprov", "account-removed"]  # the latest, oldest first
    everything = dump(kms.url)
    for secret in (PASSWORD, "wrong horse battery", "eves own password", "the second password"):
        assert secret.encode() not in everything


def test_issuance_records(kms: KmsStore) -> None:
    kms.record_issue("alice", "sip:alice@example.org", 700, b"\x01" * 32, now=1.0)
    kms.record_issue("gm", "sip:group@example.org", 700, b"\x02" * 32, now=2.0)
    kms.record_issue("audrey", "sip:alice@example.org", 699, b"\x03" * 32, now=3.0, kind="audit-rsk")
    assert kms.issued("sip:alice@example.org") == [
        store.IssueRecord(1.0, "alice", "sip:alice@example.org", 700, b"\x01" * 32, "keyprov"),
        store.IssueRecord(3.0, "audrey", "sip:alice@example.org", 699, b"\x03" * 32, "audit-rsk"),
    ]
    assert [r.username for r in kms.issued()] == ["alice", "gm", "audrey"]
    assert kms.issued("sip:nobody@example.org") == []


# --- trusted domains and settings ---


def test_trusted_certificates(kms: KmsStore) -> None:
    kms.add_trusted_certificate("kms.b.example", b"<KmsCertificate>b1</KmsCertificate>", now=1.0)
    kms.add_trusted_certificate("kms.a.example", b"<KmsCertificate>a</KmsCertificate>", now=2.0)
    kms.add_trusted_certificate("kms.b.example", b"<KmsCertificate>b2</KmsCertificate>", now=3.0)  # replaces
    assert kms.trusted_certificates() == [b"<KmsCertificate>a</KmsCertificate>", b"<KmsCertificate>b2</KmsCertificate>"]
    assert [(d.kms_uri, d.added) for d in kms.trusted_domains()] == [("kms.a.example", 2.0), ("kms.b.example", 3.0)]
    kms.remove_trusted_certificate("kms.a.example")
    assert kms.trusted_certificates() == [b"<KmsCertificate>b2</KmsCertificate>"]
    with pytest.raises(StoreError, match="not a trusted domain"):
        kms.remove_trusted_certificate("kms.a.example")


def test_settings(kms: KmsStore) -> None:
    assert kms.get_setting("kms_uri") is None
    kms.set_setting("kms_uri", "kms.example.org")
    kms.set_setting("key_period", "2592000")
    kms.set_setting("kms_uri", "kms2.example.org")
    assert kms.get_setting("kms_uri") == "kms2.example.org"
    assert kms.settings() == {"key_period": "2592000", "kms_uri": "kms2.example.org"}


# --- the database ---


def test_wal_mode_and_schema_version(kms: KmsStore) -> None:
    assert kms.schema_version() == store.SCHEMA_VERSION
    if kms.backend == "postgresql":
        assert kms.journal_mode() == "postgresql" and kms.path is None
        return
    assert kms.journal_mode() == "wal"
    with raw(kms.url) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent, seen by other connections


def test_newer_schema_is_refused(database_url: str) -> None:
    KmsStore(database_url).close()
    with raw(database_url) as db:
        if "://" in database_url:
            db.execute("UPDATE schema_version SET version = ?", (store.SCHEMA_VERSION + 1,))
        else:
            db.execute(f"PRAGMA user_version = {store.SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer"):
        KmsStore(database_url)


def test_foreign_keys_are_enforced(kms: KmsStore) -> None:
    with pytest.raises(integrity_errors(kms.url)), kms._tx() as db:  # the store's own connection
        db.execute("INSERT INTO grants (username, identity_uri, kind, granted) VALUES ('ghost', 'u', 'self', 0)")


def test_a_url_that_is_no_database_is_refused() -> None:
    for url in ("mysql://kms@db/kms", "sqlite://"):
        with pytest.raises(StoreError, match="sqlite:///"):
            KmsStore(url)


def test_reopening_loses_nothing(database_url: str) -> None:
    with KmsStore(database_url) as kms:
        kms.set_setting("kms_uri", "kms.example.org")
        kms.add_account("alice", PASSWORD, uri="sip:alice@example.org", now=1.0)
        kms.grant("alice", "sip:group@example.org", now=2.0)
        kms.record_issue("alice", "sip:alice@example.org", 5, b"\x07" * 32, now=3.0)
        kms.add_trusted_certificate("kms.other.org", b"<x/>", now=4.0)
        kms.audit("note", username=None, detail="before restart", now=5.0)
        before = (kms.accounts(), kms.grants("alice"), kms.issued(), kms.trusted_certificates(), kms.audit_log())
    with KmsStore(database_url) as kms:
        after = (kms.accounts(), kms.grants("alice"), kms.issued(), kms.trusted_certificates(), kms.audit_log())
        assert after == before
        assert kms.get_setting("kms_uri") == "kms.example.org"
        assert kms.authenticate("alice", PASSWORD, now=6.0).username == "alice"


# --- the master secrets file ---


@pytest.fixture(scope="module")
def master() -> MasterSecrets:
    return generate_master_secrets()


def _same(a: MasterSecrets, b: MasterSecrets) -> bool:
    return (a.ksak, a.kpak, a.z_secret, a.z_public) == (b.ksak, b.kpak, b.z_secret, b.z_public)


def test_plain_round_trip(tmp_path: Path, master: MasterSecrets) -> None:
    path = tmp_path / "master-secrets.json"
    secrets.write_master_secrets(path, master)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _same(secrets.read_master_secrets(path), master)
    assert not secrets.is_encrypted(path)
    assert secrets.read_public_keys(path) == (master.kpak, master.z_public)
    content = json.loads(path.read_text())
    assert (content["format"], content["version"], content["encryption"]) == (secrets.FORMAT, 1, "none")
    with pytest.raises(SecretsFileError, match="not encrypted, but a passphrase"):
        secrets.read_master_secrets(path, b"a passphrase")


def test_encrypted_round_trip(tmp_path: Path, master: MasterSecrets) -> None:
    path = tmp_path / "master-secrets.json"
    secrets.write_master_secrets(path, master, b"long passphrase")
    text = path.read_text()
    assert master.ksak.hex() not in text and master.z_secret.hex() not in text
    content = json.loads(text)
    assert content["kdf"]["n"] == 2**15 and content["kdf"]["r"] == 8 and content["kdf"]["p"] == 1
    assert len(bytes.fromhex(content["kdf"]["salt"])) == 16
    assert secrets.is_encrypted(path)
    assert secrets.read_public_keys(path) == (master.kpak, master.z_public)  # no passphrase needed
    assert _same(secrets.read_master_secrets(path, b"long passphrase"), master)


def test_encrypted_wrong_or_missing_passphrase(tmp_path: Path, master: MasterSecrets) -> None:
    path = tmp_path / "master-secrets.json"
    secrets.write_master_secrets(path, master, b"long passphrase")
    with pytest.raises(SecretsFileError, match="wrong passphrase"):
        secrets.read_master_secrets(path, b"long passphrasE")
    with pytest.raises(SecretsFileError, match="passphrase is needed"):
        secrets.read_master_secrets(path)
    with pytest.raises(SecretsFileError, match="empty"):
        secrets.write_master_secrets(path, master, b"")


@pytest.mark.parametrize("field", ["ciphertext", "nonce", "kpak", "salt", "version-bump"])
def test_encrypted_tampering_is_detected(tmp_path: Path, master: MasterSecrets, field: str) -> None:
    path = tmp_path / "master-secrets.json"
    secrets.write_master_secrets(path, master, b"long passphrase")
    content = json.loads(path.read_text())

    def flip(hex_text: str) -> str:
        return hex_text[:-1] + ("0" if hex_text[-1] != "0" else "1")

    if field == "salt":
        content["kdf"]["salt"] = flip(content["kdf"]["salt"])
    elif field == "version-bump":
        content["kdf"]["p"] = 2  # a header change, covered by the associated data
    else:
        content[field] = flip(content[field])
    secrets.write_private_file(path, json.dumps(content).encode())
    with pytest.raises(SecretsFileError, match="wrong passphrase, or the file was modified"):
        secrets.read_master_secrets(path, b"long passphrase")


def test_plain_file_with_mismatched_public_key(tmp_path: Path, master: MasterSecrets) -> None:
    path = tmp_path / "master-secrets.json"
    secrets.write_master_secrets(path, master)
    content = json.loads(path.read_text())
    content["kpak"] = generate_master_secrets().kpak.hex()
    secrets.write_private_file(path, json.dumps(content).encode())
    with pytest.raises(SecretsFileError, match="do not match"):
        secrets.read_master_secrets(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "not a master secrets file"),
        (b'{"format": "ptt-kms-master-secrets", "version": 9}', "version 9"),
        (b'{"format": "ptt-kms-master-secrets", "version": 1, "encryption": "rot13"}', "unknown encryption"),
        (b'{"format": "ptt-kms-master-secrets", "version": 1, "encryption": "none"}', "missing"),
    ],
)
def test_malformed_files(tmp_path: Path, text: bytes, message: str) -> None:
    path = tmp_path / "master-secrets.json"
    secrets.write_private_file(path, text)
    with pytest.raises(SecretsFileError, match=message):
        secrets.read_master_secrets(path)


def test_readable_file_is_refused(tmp_path: Path, master: MasterSecrets) -> None:
    path = tmp_path / "master-secrets.json"
    secrets.write_master_secrets(path, master)
    os.chmod(path, 0o644)
    with pytest.raises(SecretsFileError, match=r"mode 0644.*chmod 600"):
        secrets.read_master_secrets(path)
    os.chmod(path, 0o640)
    with pytest.raises(SecretsFileError, match="mode 0640"):
        secrets.read_public_keys(path)
    with pytest.raises(SecretsFileError, match="no master secrets file"):
        secrets.read_master_secrets(tmp_path / "missing.json")


def test_write_private_file_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(b"old")
    os.chmod(path, 0o644)
    secrets.write_private_file(path, b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # replaced, not rewritten in place
    assert os.listdir(tmp_path) == ["key.pem"]  # no temporary files left

    def failing_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space"):
        secrets.write_private_file(path, b"newer")
    assert path.read_bytes() == b"new"  # the old content is intact ...
    assert os.listdir(tmp_path) == ["key.pem"]  # ... and the temporary file is gone


def test_write_private_file_ignores_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        secrets.write_private_file(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o600


# --- TLS and signing material ---


def test_self_signed_tls_certificate() -> None:
    key, cert = material.make_self_signed(
        "kms.example.org", san_dns=["kms.example.org", "localhost"], san_ips=["127.0.0.1"]
    )
    assert isinstance(key.curve, ec.SECP256R1)
    assert cert.public_key() == key.public_key()
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)  # self-signed: its own key signs it
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["kms.example.org", "localhost"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert days == 3650


def test_signing_certificate_has_no_tls_usage() -> None:
    key, cert = material.make_self_signed("kms.example.org signing", san_dns=[], san_ips=[], days=30, tls_server=False)
    assert isinstance(key.curve, ec.SECP256R1)
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 30


def test_pem_files_round_trip(tmp_path: Path) -> None:
    key, cert = material.make_self_signed("x", san_dns=["localhost"], san_ips=[])
    material.write_key_and_certificate(key, cert, tmp_path / "k.pem", tmp_path / "c.pem")
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "c.pem").stat().st_mode) == 0o644
    assert material.load_private_key(tmp_path / "k.pem").private_numbers() == key.private_numbers()
    assert material.load_certificate(tmp_path / "c.pem") == cert
    assert len(material.certificate_fingerprint(cert).split(":")) == 32

    os.chmod(tmp_path / "k.pem", 0o644)
    with pytest.raises(MaterialError, match="chmod 600"):
        material.load_private_key(tmp_path / "k.pem")
    assert material.load_private_key(tmp_path / "k.pem", check_mode=False).public_key() == key.public_key()


def test_bad_material_files(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_bytes(b"-----BEGIN JUNK-----\n")
    os.chmod(tmp_path / "junk.pem", 0o600)
    with pytest.raises(MaterialError, match="not an unencrypted PEM private key"):
        material.load_private_key(tmp_path / "junk.pem")
    with pytest.raises(MaterialError, match="not a PEM certificate"):
        material.load_certificate(tmp_path / "junk.pem")
    with pytest.raises(MaterialError, match="cannot read"):
        material.load_certificate(tmp_path / "missing.pem")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    secrets.write_private_file(tmp_path / "rsa.pem", pem)
    with pytest.raises(MaterialError, match="not an elliptic-curve"):
        material.load_private_key(tmp_path / "rsa.pem")


@pytest.mark.parametrize("server_name", ["localhost", "127.0.0.1"])
def test_tls_certificate_verifies_in_a_real_handshake(tmp_path: Path, server_name: str) -> None:
    """A client pinning the certificate (as the enrolment does) accepts it for localhost and 127.0.0.1."""
    key, cert = material.make_self_signed("localhost", san_dns=["localhost"], san_ips=["127.0.0.1"])
    material.write_key_and_certificate(key, cert, tmp_path / "k.pem", tmp_path / "c.pem")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "c.pem"))
    # Four memory BIOs instead of sockets: each side's output is copied to the other's input.
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(client_in, client_out, server_hostname=server_name)
    server = server_ctx.wrap_bio(server_in, server_out, server_side=True)
    done = [False, False]
    for _ in range(20):
        for i, side in enumerate((client, server)):
            if not done[i]:
                try:
                    side.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if all(done):
            break
    assert all(done)
    assert client.getpeercert() is not None


def test_group_namespace_grant(database_url: str) -> None:
    db = store.KmsStore(database_url)
    db.add_account("server", "server-password", uri="sip:ptt-server@example.org", now=0)
    db.grant("server", "sip:*@groups.example.org", now=1)
    assert db.may_key("server", "sip:fire@groups.example.org")
    assert db.may_key("server", "sip:ptt-server@example.org")  # its own
    for other in (
        "sip:alice@example.org",
        "sip:a@b@groups.example.org",
        "sips:fire@groups.example.org",
        "sip:@groups.example.org",
        "sip:fire@groups.example.org.evil",
    ):
        assert not db.may_key("server", other), other
    for bad in ("sip:*", "sip:fi*@groups.example.org", "*", "sip:*@*"):
        with pytest.raises(store.AccountError):
            db.grant("server", bad, now=2)
    with pytest.raises(store.AccountError):
        db.grant("server", "sip:*@groups.example.org", "self", now=2)
    db.revoke("server", "sip:*@groups.example.org", now=3)
    assert not db.may_key("server", "sip:fire@groups.example.org")
    db.close()
