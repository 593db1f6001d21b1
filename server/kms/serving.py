"""Serving the KMS (``ptt-kms serve``): in one process, or a supervisor and N worker processes on one port
(``server.kms.prefork``: SO_REUSEPORT, each worker its own reactor, request thread and store connection). Both print
the same ready line, "KMS URI listening on https://HOST:PORT", once every worker listens."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from twisted.python.threadpool import ThreadPool

from ptt.crypto.kms import MasterSecrets
from server.kms.site import build_application, load_application, make_site
from server.kms.store import KmsStore
from server.tls import server_tls_options

__all__ = ["main"]

_LOG_FORMAT = "%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"


def _start_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT, stream=sys.stderr)
    _start_twisted_logging()


def _start_twisted_logging() -> None:
    from twisted.python import log as twisted_log

    twisted_log.PythonLoggingObserver("twisted").start()


def main(
    data_dir: Path,
    passphrase: bytes | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int = 1,
) -> int:
    """Run the KMS in the foreground until SIGINT/SIGTERM: one process (``workers`` 1), or a supervisor and
    ``workers`` worker processes on the one port (``server.kms.prefork``)."""
    if workers > 1:
        return _main_workers(Path(data_dir), passphrase, host, port, workers)
    from twisted.internet import endpoints
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    _start_logging()
    app, store = load_application(Path(data_dir), passphrase)
    listen_host = host or store.get_setting("host") or "127.0.0.1"
    listen_port = port if port is not None else int(store.get_setting("port") or 8443)
    pool = ThreadPool(minthreads=1, maxthreads=1, name="kms-worker")
    pool.start()
    reactor.addSystemEventTrigger("after", "shutdown", pool.stop)
    reactor.addSystemEventTrigger("after", "shutdown", store.close)
    endpoint = endpoints.SSL4ServerEndpoint(
        reactor,
        listen_port,
        server_tls_options(Path(data_dir) / "tls-key.pem", Path(data_dir) / "tls-cert.pem"),
        interface=listen_host,
    )

    def listening(port_obj: Any) -> None:
        address = port_obj.getHost()
        print(f"KMS {app.config.kms_uri} listening on https://{address.host}:{address.port}", flush=True)

    def failed(failure: object) -> None:
        print(f"KMS could not listen on {listen_host}:{listen_port}: {failure}", file=sys.stderr, flush=True)
        reactor.stop()

    endpoint.listen(make_site(app, pool)).addCallbacks(listening, failed)
    reactor.run()
    return 0


def _main_workers(data_dir: Path, passphrase: bytes | None, host: str | None, port: int | None, workers: int) -> int:
    # The supervisor imports no reactor and keeps no store open across fork (a PostgreSQL pool has threads).
    from server.kms.commands.common import DataDir
    from server.kms.prefork import Supervisor, reuseport_socket
    from server.kms.secrets import read_master_secrets

    logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT, stream=sys.stderr)
    master = read_master_secrets(data_dir / "master-secrets.json", passphrase)  # once: scrypt is slow
    with KmsStore(DataDir(data_dir).database()) as store:
        kms_uri = store.get_setting("kms_uri")
        listen_host = host or store.get_setting("host") or "127.0.0.1"
        listen_port = port if port is not None else int(store.get_setting("port") or 8443)
    if not kms_uri:
        raise SystemExit(f"{data_dir}: not an initialised KMS (run: ptt-kms --data {data_dir} init ...)")
    try:  # held, not listening, while the supervisor runs: the port (or the one port 0 chose) stays ours
        reservation = reuseport_socket(listen_host, listen_port)
    except OSError as exc:
        print(f"KMS could not listen on {listen_host}:{listen_port}: {exc}", file=sys.stderr, flush=True)
        return 1
    bound = reservation.getsockname()[1]
    shown = f"[{listen_host}]" if ":" in listen_host else listen_host

    def worker_main(index: int, ready_fd: int) -> int:
        reservation.close()
        return _serve_worker(data_dir, master, listen_host, bound, workers, index, ready_fd)

    supervisor = Supervisor(
        workers, worker_main, f"KMS {kms_uri} listening on https://{shown}:{bound} ({workers} workers)"
    )
    try:
        return supervisor.run()
    finally:
        reservation.close()


def _serve_worker(
    data_dir: Path, master: MasterSecrets, host: str, port: int, workers: int, index: int, ready_fd: int
) -> int:
    """One worker process: its own reactor, store, thread and SO_REUSEPORT socket; 'ready' on ``ready_fd``."""
    from twisted.internet import reactor as _reactor
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from server.kms.prefork import reuseport_socket, steer_by_source_address

    reactor: Any = _reactor
    _start_twisted_logging()
    app, store = build_application(data_dir, master, workers)
    pool = ThreadPool(minthreads=1, maxthreads=1, name=f"kms-worker-{index}")
    pool.start()
    reactor.addSystemEventTrigger("after", "shutdown", pool.stop)
    reactor.addSystemEventTrigger("after", "shutdown", store.close)
    sock = reuseport_socket(host, port)
    sock.listen(128)
    sock.setblocking(False)
    steer_by_source_address(sock, workers)
    tls = server_tls_options(data_dir / "tls-key.pem", data_dir / "tls-cert.pem")
    tls_factory: Any = TLSMemoryBIOFactory  # what listenSSL wraps a site in (zope interfaces defeat mypy)
    reactor.adoptStreamPort(sock.fileno(), sock.family, tls_factory(tls, False, make_site(app, pool)))
    sock.close()  # the reactor holds its own duplicate
    os.write(ready_fd, f"ready {index} {os.getpid()}\n".encode())
    reactor.run()
    return 0
