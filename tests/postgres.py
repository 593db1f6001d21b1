"""A real PostgreSQL for the tests: Debian's ``initdb``/``pg_ctl`` in a temporary directory, one server per test
session (per xdist worker), a fresh database per test module, stopped at the end.

The server listens on a unix socket in its directory only (no TCP port; ``start_postgres(listen=...)`` adds one with
password logins, for the simulated site of ``tests/site.py``), trusts local connections and runs as a
non-root user: the current one, or ``postgres`` (else ``nobody``) through ``runuser`` when the tests run as root,
since PostgreSQL refuses to run as root. Without the binaries the tests that need it are skipped with the reason.

Use: ``from tests.postgres import database_url, postgres_server, postgres_url`` in a test module (fixtures), then
take ``database_url``: each test runs twice, on a new SQLite file and on an emptied PostgreSQL database (the
server starts only when a PostgreSQL test first needs it). ``raw(url)`` reaches the tables behind the store's back
(tampering tests), ``dump(url)`` is every stored octet, ``integrity_errors(url)`` what a violated constraint raises.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "PostgresServer",
    "database_url",
    "dump",
    "find_binaries",
    "integrity_errors",
    "postgres_server",
    "postgres_url",
    "raw",
    "start_postgres",
]

_SUPERUSER = "ptt"
_INIT = ("--encoding=UTF8", "--locale=C")
_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")  # a throwaway server: speed only


def find_binaries() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` holding ``initdb`` and ``pg_ctl`` (``$PTT_PG_BIN`` first)."""
    candidates = [os.environ.get("PTT_PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: [int(x) for x in re.findall(r"\d+", p)])[
        ::-1
    ]
    for candidate in candidates:
        if candidate and all(os.access(Path(candidate, b), os.X_OK) for b in ("initdb", "pg_ctl")):
            return Path(candidate)
    return None


def _run_as() -> list[str]:
    """The command prefix that runs PostgreSQL as a non-root user ([] when we are not root)."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        raise RuntimeError("the tests run as root and there is no runuser to start PostgreSQL as another user")
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        return [runuser, "-u", user, "--"]
    raise RuntimeError("the tests run as root and there is no 'postgres' or 'nobody' user to run PostgreSQL as")


@dataclass
class PostgresServer:
    """A running server: its directory (data in ``data/``, the socket in ``run/``) and how to reach it."""

    root: Path
    bin: Path
    prefix: list[str]
    databases: list[str] = field(default_factory=list)

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{_SUPERUSER}@/{database}?host={self.socket_dir}"

    def create_database(self, name: str, *, owner: str | None = None) -> str:
        """A new, empty database (owned by the role ``owner`` if given); its URL."""
        import psycopg

        for identifier in (name, owner or _SUPERUSER):
            _check_identifier(identifier)
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name}")
            conn.execute(f"CREATE DATABASE {name}" + (f" OWNER {owner}" if owner else ""))
        self.databases.append(name)
        return self.url(name)

    def create_role(self, name: str, password: str) -> None:
        """A login role with a password (stored as a SCRAM-SHA-256 verifier), for logins over TCP."""
        import psycopg
        from psycopg import sql

        _check_identifier(name)
        with psycopg.connect(self.url(), autocommit=True) as conn:
            statement = sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name), sql.Literal(password))
            conn.execute(statement)

    def stop(self) -> None:
        subprocess.run(
            [*self.prefix, str(self.bin / "pg_ctl"), "stop", "-D", str(self.root / "data"), "-m", "immediate", "-s"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(self.root, ignore_errors=True)


def _check_identifier(name: str) -> None:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"bad database or role name {name!r}")


def start_postgres(
    *, listen: str | None = None, password_network: str | None = None, netns: str | None = None
) -> PostgresServer:
    """Initialise and start a server in a new temporary directory (``pytest.skip`` if PostgreSQL is missing).

    By default it listens on its unix socket only. With ``listen`` (an address) it also listens on TCP port 5432
    there, started inside the network namespace ``netns`` if given (the address is that namespace's), and takes
    password logins (scram-sha-256) from the network ``password_network`` (``10.78.0.0/24``). Logins on the unix
    socket stay trusted: the test administers the server through it."""
    binaries = find_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg (3) is not installed")
    prefix = _run_as()
    root = Path(tempfile.mkdtemp(prefix="ptt-pg-"))
    os.chmod(root, 0o755)
    (root / "run").mkdir()
    if prefix:
        user = prefix[2]
        entry = pwd.getpwnam(user)
        for path in (root, root / "run"):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    server = PostgresServer(root, binaries, prefix)
    data = root / "data"
    log = root / "postgres.log"
    authentication = ["--auth-local=trust", "--auth-host=scram-sha-256"] if listen else ["--auth=trust"]
    in_netns = ["ip", "netns", "exec", netns] if netns else []
    try:
        subprocess.run(
            [*prefix, str(binaries / "initdb"), "-D", str(data), "-U", _SUPERUSER, *authentication, "--no-sync",
             *_INIT],
            check=True,
            capture_output=True,
        )  # fmt: skip
        if listen and password_network:
            with open(data / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all {password_network} scram-sha-256\n")
        settings = (f"listen_addresses='{listen or ''}'", f"unix_socket_directories='{root / 'run'}'", *_SETTINGS)
        options = " ".join(f"-c {s}" for s in settings)
        subprocess.run(
            [*in_netns, *prefix, str(binaries / "pg_ctl"), "start", "-D", str(data), "-l", str(log), "-w", "-s", "-o",
             options],
            check=True,
            capture_output=True,
        )  # fmt: skip
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or b"").decode(errors="replace").strip()
        if log.exists():
            detail += "\n" + log.read_text(errors="replace")[-2000:]
        server.stop()
        raise RuntimeError(f"PostgreSQL did not start: {detail}") from None
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A fresh database for the test module."""
    name = re.sub(r"[^a-z0-9_]", "_", request.module.__name__.rsplit(".", 1)[-1].lower())
    return postgres_server.create_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty store database: a SQLite file, or the module's PostgreSQL database emptied."""
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite3")
    url: str = request.getfixturevalue("postgres_url")
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return url


class _Raw:
    def __init__(self, conn: Any, postgres: bool) -> None:
        self.conn, self.postgres = conn, postgres

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        from server.sqldb import Dialect

        return self.conn.execute(Dialect.postgres(sql) if self.postgres else sql, tuple(parameters))


@contextmanager
def raw(url: str) -> Iterator[_Raw]:
    """A connection of its own to the database at ``url`` (``?`` placeholders); commits at the end."""
    from server.sqldb import is_postgres_url

    if is_postgres_url(url):
        import psycopg

        with psycopg.connect(url) as conn:
            yield _Raw(conn, True)
        return
    import sqlite3

    db = sqlite3.connect(url)
    try:
        with db:
            yield _Raw(db, False)
    finally:
        db.close()


def integrity_errors(url: str) -> tuple[type[Exception], ...]:
    import sqlite3

    import psycopg

    return (sqlite3.IntegrityError, psycopg.IntegrityError)


def dump(url: str) -> bytes:
    """Every octet stored: the SQLite files (main and WAL), or every value of every table in PostgreSQL."""
    from server.sqldb import is_postgres_url

    if not is_postgres_url(url):
        path = Path(url)
        return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    out = []
    with raw(url) as db:
        tables = [t for (t,) in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                out += [v if isinstance(v, bytes) else str(v).encode() for v in row if v is not None]
    return b"\x00".join(out)
