"""The KMS's Twisted adapter and loading: ``KmsResource`` runs ``KmsApplication.handle`` on the request thread,
``make_site`` is its web site, ``build_application``/``load_application`` make the application of a data directory
made by ``ptt-kms init`` (each worker process makes its own)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from twisted.python.threadpool import ThreadPool
from twisted.web import server

from ptt.crypto.kms import MasterSecrets
from server.kms.domain import certificate_validity
from server.kms.idms import DEFAULT_ACCESS_TOKEN_LIFETIME
from server.kms.service import DomainConfig, KmsApplication
from server.kms.store import KmsStore
from server.web import HttpReply, ThreadedResource, make_threaded_site

__all__ = ["KmsResource", "build_application", "load_application", "make_site"]

log = logging.getLogger("ptt.kms")


class KmsResource(ThreadedResource):
    def __init__(self, app: KmsApplication, pool: ThreadPool, clock: Callable[[], float]) -> None:
        super().__init__(
            lambda r: app.handle(
                method=r.method, path=r.path, authorization=r.authorization, body=r.body, peer=r.peer, now=r.now
            ),
            pool,
            clock,
            HttpReply(500, b"internal error\n", {"Content-Type": "text/plain"}),
            "KMS",
        )
        self.app = app


def make_site(app: KmsApplication, pool: ThreadPool, clock: Callable[[], float] = time.time) -> server.Site:
    site = make_threaded_site(KmsResource(app, pool, clock))
    # No access log line per request: the audit table records every login, token and key issue (who, what,
    # when), and at national scale (~1000 requests/s) the line cost a tenth of a worker (bench.kms, py-spy).
    site.log = lambda request: None  # type: ignore[method-assign]
    return site


def load_application(data_dir: Path, passphrase: bytes | None) -> tuple[KmsApplication, KmsStore]:
    from server.kms.secrets import read_master_secrets

    return build_application(data_dir, read_master_secrets(Path(data_dir) / "master-secrets.json", passphrase))


def build_application(data_dir: Path, master: MasterSecrets, workers: int = 1) -> tuple[KmsApplication, KmsStore]:
    """The application of a data directory, with its store opened here (each worker process opens its own). One of
    ``workers`` worker processes gets 1/N of the login rules' account-wide and global budgets, so the whole KMS
    still allows what one process would (``LoginLimits.shared_by``)."""
    from server.kms.commands.common import DataDir
    from server.kms.material import load_certificate, load_or_create_private_key, load_private_key

    dd = DataDir(data_dir)
    store = KmsStore(dd.database(), check_same_thread=False)  # kms.json's database, or the file here
    kms_uri = store.get_setting("kms_uri")
    if not kms_uri:
        store.close()
        raise SystemExit(f"{data_dir}: not an initialised KMS (run: ptt-kms --data {data_dir} init ...)")
    if workers > 1:
        from server.accounts.guard import LIMITS, LoginGuard

        store.login_guard = LoginGuard(limits=LIMITS.shared_by(workers))
    config = DomainConfig(
        kms_uri=kms_uri,
        key_period=int(store.get_setting("key_period") or 2592000),
        key_period_offset=int(store.get_setting("key_period_offset") or 0),
        base_url=store.get_setting("base_url") or "",
        valid_from=certificate_validity(store.settings())[0],
        valid_to=certificate_validity(store.settings())[1],
        allow_basic_login=store.get_setting("basic_login") == "on",
        access_token_lifetime=int(store.get_setting("access_token_lifetime") or DEFAULT_ACCESS_TOKEN_LIFETIME),
    )
    app = KmsApplication(
        store,
        master,
        config,
        load_private_key(Path(data_dir) / "signing-key.pem"),
        load_certificate(Path(data_dir) / "signing-cert.pem"),
        load_or_create_private_key(dd.idms_key),  # a domain from before issue 14 gets its key here
    )
    if config.allow_basic_login:
        log.warning("HTTP Basic login is on (clients from before access tokens); 'ptt-kms basic-login off' ends it")
    return app, store
