"""``ptt-kms init --database URL``: the store in a database of the operator's choice (PostgreSQL, or a SQLite
file elsewhere), named in ``kms.json`` and opened by every command; run in-process."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from server.kms import cli
from server.kms.commands.common import DataDir
from server.kms.store import KmsStore


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def _url(database_url: str) -> str:
    """The fixture's database as an operator writes it (a SQLite file as sqlite:///path)."""
    return database_url if "://" in database_url else f"sqlite://{database_url}"


def test_init_database_is_used_by_every_command(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _url(database_url)
    data = tmp_path / "kms-data"
    init = ("--data", str(data), "init", "--domain", "example.org", "--kms-uri", "kms.example.org")
    code, out, err = _run(capsys, *init, "--database", url)
    assert code == 0, err
    assert "database" in out and "kms.example.org" in out
    assert not (data / "kms.sqlite3").exists()  # the store is where the URL says, not in the data directory
    assert (data / "master-secrets.json").is_file()  # the secrets stay in files here
    config = data / "kms.json"
    assert json.loads(config.read_text()) == {"database": url}
    assert stat.S_IMODE(config.stat().st_mode) == 0o600  # a PostgreSQL URL may hold a password
    assert DataDir(data).database() == url

    password = tmp_path / "pw"
    password.write_text("alice-secret-password\n")
    assert _run(capsys, "--data", str(data), "user", "add", "alice", "--uri", "sip:alice@example.org",
                "--password-file", str(password))[0] == 0  # fmt: skip
    assert _run(capsys, "--data", str(data), "grant", "alice", "sip:fire@example.org")[0] == 0
    code, out, _ = _run(capsys, "--data", str(data), "status")
    assert code == 0 and "accounts        1, grants 2" in out
    assert ("postgresql://" if "postgresql" in url else database_url) in out  # where the store is
    with KmsStore(database_url) as store:  # what the commands wrote is in that database
        assert store.get_setting("kms_uri") == "kms.example.org"
        assert store.grants("alice") == {"sip:alice@example.org": "self", "sip:fire@example.org": "group-manager"}

    code, _, err = _run(capsys, *init, "--force")  # re-initialising keeps the database, and so the accounts
    assert code == 0, err
    assert json.loads(config.read_text()) == {"database": url}
    code, out, _ = _run(capsys, "--data", str(data), "user", "list")
    assert code == 0 and "alice" in out
    with KmsStore(database_url) as store:
        assert [e.event for e in store.audit_log()][-1] == "domain-reinitialised"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://kms@db.example.org/kms", "unsupported database URL"),
        ("sqlite://", "sqlite:// needs a path"),
        ("sqlite:///nonexistent-directory/kms.sqlite3", "cannot open the SQLite database"),
    ],
)
def test_init_refuses_a_database_it_cannot_use(
    url: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "kms-data"
    code, out, err = _run(
        capsys, "--data", str(data), "init", "--domain", "example.org", "--kms-uri", "kms.example.org",
        "--database", url,
    )  # fmt: skip
    assert code == 2 and out == ""
    assert err.startswith("ptt-kms: error: ") and message in err
    assert not data.exists()  # nothing written before the database is known to work
