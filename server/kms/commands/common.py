"""What every ``ptt-kms`` command shares: the data directory, the user error, passwords and passphrases, opening
the store, the domain's settings, and small formatting helpers.

``clock`` is the wall clock of every command: a module attribute here so tests can move it (the commands call
``common.clock()``).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ptt.ts33180 import DEFAULT_KEY_PERIOD
from server.kms.secrets import is_encrypted, write_private_file
from server.kms.store import KmsStore, StoreError

__all__ = [
    "DEFAULT_DATA",
    "PASSWORD_ENV",
    "PROG",
    "CliError",
    "DataDir",
    "DomainSettings",
    "clock",
    "fingerprint",
    "open_store",
    "read_passphrase",
    "read_password",
    "read_secret_file",
    "stored_domain",
    "unique",
    "utc",
]

PROG = "ptt-kms"
DEFAULT_DATA = "kms-data"
PASSWORD_ENV = "PTT_KMS_PASSWORD"

clock: Callable[[], float] = time.time
"""The wall clock of every command (a module attribute so tests can move it)."""


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


@dataclass(frozen=True)
class DataDir:
    """The files of a KMS data directory."""

    root: Path

    @property
    def secrets(self) -> Path:
        return self.root / "master-secrets.json"

    @property
    def db(self) -> Path:
        """The store's SQLite file, unless ``kms.json`` names another database."""
        return self.root / "kms.sqlite3"

    @property
    def config(self) -> Path:
        """``kms.json``: where the store is (``{"database": URL}``), written by ``init --database``."""
        return self.root / "kms.json"

    def database(self) -> str | Path:
        """Where the store is: ``kms.json``'s ``database`` URL, or the SQLite file here."""
        if not self.config.exists():
            return self.db
        try:
            config = json.loads(self.config.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read {self.config}: {exc}") from None
        url = config.get("database") if isinstance(config, dict) else None
        if url is not None and not isinstance(url, str):
            raise StoreError(f"{self.config}: 'database' must be a URL string")
        return url or self.db

    def set_database(self, url: str) -> None:
        """Name the store's database in ``kms.json`` (0600: a PostgreSQL URL may hold a password)."""
        write_private_file(self.config, (json.dumps({"database": url}, indent=1) + "\n").encode())

    @property
    def tls_key(self) -> Path:
        return self.root / "tls-key.pem"

    @property
    def tls_cert(self) -> Path:
        return self.root / "tls-cert.pem"

    @property
    def tls_ca(self) -> Path:
        """The CA bundle clients trust for an operator's TLS certificate (absent: pinned or system CAs)."""
        return self.root / "tls-ca.pem"

    @property
    def signing_key(self) -> Path:
        return self.root / "signing-key.pem"

    @property
    def signing_cert(self) -> Path:
        return self.root / "signing-cert.pem"

    @property
    def idms_key(self) -> Path:
        """The IdMS's P-256 key (0600): signs the access tokens (made at init, or by serve if missing)."""
        return self.root / "idms-key.pem"


def fingerprint(data: bytes) -> str:
    return ":".join(f"{b:02X}" for b in hashlib.sha256(data).digest())


def read_secret_file(path: str, what: str) -> bytes:
    """The first line of ``path`` without its line ending (so ``echo secret > file`` works)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CliError(f"cannot read the {what} file {path}: {e.strerror}") from None
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not line:
        raise CliError(f"the {what} file {path} is empty")
    return line


def _decode_password(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"the password in {source} is not UTF-8") from None


def read_password(password_file: str | None, *, new: bool, prompt: str) -> str:
    """From --password-file, else $PTT_KMS_PASSWORD, else the terminal (twice for a new password)."""
    if password_file:
        return _decode_password(read_secret_file(password_file, "password"), password_file)
    env = os.environ.get(PASSWORD_ENV)
    if env:
        return env
    if not sys.stdin.isatty():
        raise CliError(f"no password: give --password-file, set {PASSWORD_ENV}, or run on a terminal")
    first = getpass.getpass(prompt)
    if new and getpass.getpass("again: ") != first:
        raise CliError("the passwords differ")
    return first


def read_passphrase(dd: DataDir, passphrase_file: str | None) -> bytes | None:
    """The master-secrets passphrase: from the file, else asked on the terminal if the file is encrypted."""
    if passphrase_file:
        return read_secret_file(passphrase_file, "passphrase")
    if not is_encrypted(dd.secrets):
        return None
    if not sys.stdin.isatty():
        raise CliError(f"{dd.secrets} is encrypted: give --passphrase-file")
    return getpass.getpass("master secrets passphrase: ").encode("utf-8")


def open_store(dd: DataDir) -> KmsStore:
    """The store of an initialised data directory: its SQLite file, or the database ``kms.json`` names."""
    if not dd.root.is_dir():
        raise CliError(f"no KMS data directory {dd.root} (create one with '{PROG} --data {dd.root} init ...')")
    database = dd.database()
    if database == dd.db and not dd.db.is_file():
        raise CliError(f"{dd.root} holds no KMS database (create one with '{PROG} --data {dd.root} init ...')")
    return KmsStore(database)


@dataclass(frozen=True)
class DomainSettings:
    name: str
    kms_uri: str
    key_period: int
    key_period_offset: int
    base_url: str


def stored_domain(store: KmsStore) -> DomainSettings:
    kms_uri = store.get_setting("kms_uri")
    if not kms_uri:
        raise CliError(f"{store.location} has no KMS domain (run '{PROG} init' first)")
    try:
        key_period = int(store.get_setting("key_period") or DEFAULT_KEY_PERIOD)
        offset = int(store.get_setting("key_period_offset") or 0)
    except ValueError:
        raise CliError(f"{store.location}: the key period settings are not numbers") from None
    return DomainSettings(
        store.get_setting("domain") or "", kms_uri, key_period, offset, store.get_setting("base_url") or ""
    )


def utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))
