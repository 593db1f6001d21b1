"""``ptt-kms init`` (master secrets, TLS and signing keys, the domain's settings) and ``ptt-kms serve``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from ptt.crypto.kms import generate_master_secrets
from ptt.kmsformat.enrolment import SYSTEM_TRUST
from server.kms.commands import common
from server.kms.commands.common import (
    CliError,
    DataDir,
    fingerprint,
    open_store,
    read_passphrase,
    read_secret_file,
    stored_domain,
    unique,
)
from server.kms.domain import CERTIFICATE_YEARS
from server.kms.material import (
    WILDCARD_ADDRESSES,
    MaterialError,
    certificate_fingerprint,
    make_self_signed,
    private_key_pem,
    tls_material,
    write_key_and_certificate,
)
from server.kms.secrets import write_master_secrets, write_private_file
from server.kms.store import KmsStore

__all__ = ["cmd_basic_login", "cmd_init", "cmd_serve"]


def _public_name(host: str, public_name: str | None) -> str:
    if public_name:
        if any(c.isspace() for c in public_name) or "/" in public_name or public_name.startswith("["):
            raise CliError(f"--public-name must be a DNS name or an address, not {public_name!r}")
        return public_name
    if host in WILDCARD_ADDRESSES:
        raise CliError(f"--listen {host} is no address clients can use: give --public-name NAME (or --base-url)")
    return host


def _default_base_url(host: str, port: int) -> str:
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def cmd_init(args: argparse.Namespace) -> int:
    dd = DataDir(Path(args.data))
    for name, value in (("--domain", args.domain), ("--kms-uri", args.kms_uri)):
        if not value or value != value.strip():
            raise CliError(f"{name} must be non-empty, without surrounding spaces")
    if args.key_period <= 0:
        raise CliError("--key-period must be positive")
    if args.key_offset < 0:
        raise CliError("--key-offset must not be negative")
    if not 0 < args.port < 65536:
        raise CliError("--port must be 1-65535")
    if not 60 <= args.access_token_lifetime <= 86400:
        raise CliError("--access-token-lifetime must be 60-86400 seconds")
    base_url = args.base_url or _default_base_url(_public_name(args.host, args.public_name), args.port)
    url = urlsplit(base_url)
    if url.scheme != "https" or not url.hostname:
        raise CliError(f"--base-url must be an https URL with a host, got {base_url!r}")
    try:
        tls = tls_material(
            unique([url.hostname, *(args.tls_name or [])]),
            args.host,
            cert_path=args.tls_cert,
            key_path=args.tls_key,
            ca_path=args.tls_ca,
            days=args.days,
        )
    except MaterialError as exc:
        raise CliError(str(exc)) from None
    passphrase = read_secret_file(args.passphrase_file, "passphrase") if args.passphrase_file else None

    database = args.database or dd.database()  # re-initialising keeps the database (and its accounts)
    existing = dd.secrets.exists()
    if args.database or database != dd.db or dd.db.is_file():  # a bad URL or an unreachable server: refused here
        with KmsStore(database) as store:
            existing = existing or store.get_setting("kms_uri") is not None
    if existing and not args.force:
        raise CliError(
            f"{dd.root} already holds a KMS domain; --force replaces its master secrets and keys "
            "(every key issued so far stops working; accounts and grants are kept)"
        )

    now = common.clock()
    dd.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(dd.root, 0o700)
    master = generate_master_secrets()
    write_master_secrets(dd.secrets, master, passphrase)

    tls.write(dd.tls_key, dd.tls_cert)
    tls_cert = tls.chain[0]
    if tls.ca not in (None, SYSTEM_TRUST):
        assert tls.ca is not None
        dd.tls_ca.write_text(tls.ca)
    else:
        dd.tls_ca.unlink(missing_ok=True)
    signing_key, signing_cert = make_self_signed(
        f"{args.kms_uri} response signing", san_dns=[], san_ips=[], days=args.days, tls_server=False
    )
    write_key_and_certificate(signing_key, signing_cert, dd.signing_key, dd.signing_cert)
    write_private_file(dd.idms_key, private_key_pem(ec.generate_private_key(ec.SECP256R1())))

    if args.database:
        dd.set_database(args.database)
    with KmsStore(database) as store:
        location = store.location
        for key, value in (
            ("domain", args.domain),
            ("kms_uri", args.kms_uri),
            ("key_period", str(args.key_period)),
            ("key_period_offset", str(args.key_offset)),
            ("base_url", base_url),
            ("host", args.host),
            ("port", str(args.port)),
            ("cert_valid_from", str(int(now))),
            ("cert_valid_to", str(int(now) + CERTIFICATE_YEARS * 365 * 86400)),
            ("basic_login", "on" if args.allow_basic_login else "off"),
            ("access_token_lifetime", str(args.access_token_lifetime)),
        ):
            store.set_setting(key, value)
        trust = "pinned" if tls.ca is None else "system" if tls.ca == SYSTEM_TRUST else "ca"
        if trust != "pinned" or store.get_setting("tls_trust"):  # absent: pinned, as before issue 13
            store.set_setting("tls_trust", trust)
        store.audit(
            "domain-reinitialised" if existing else "domain-initialised",
            username=None,
            detail=f"{args.kms_uri} KPAK {fingerprint(master.kpak)[:23]}",
            now=now,
        )
        if store.path is not None:
            os.chmod(store.path, 0o600)
    print(f"KMS domain {args.domain} initialised in {dd.root}")
    print(f"  KMS URI                 {args.kms_uri}")
    print(f"  base URL                {base_url}  (listening on {args.host}:{args.port})")
    print(f"  KPAK SHA-256            {fingerprint(master.kpak)}")
    print(f"  TLS certificate SHA-256 {certificate_fingerprint(tls_cert)}")
    print(f"  master secrets          {'encrypted' if passphrase else 'NOT encrypted (no --passphrase-file)'}")
    print(f"  database                {location}")
    print(f"  login                   IdMS access tokens ({args.access_token_lifetime} s)"
          f"{', HTTP Basic too' if args.allow_basic_login else ''}")  # fmt: skip
    return 0


def cmd_basic_login(args: argparse.Namespace) -> int:
    """Allow or refuse HTTP Basic login on the KMS endpoints (clients from before access tokens); the running
    service reads it at its next start."""
    dd = DataDir(Path(args.data))
    with open_store(dd) as store:
        stored_domain(store)
        store.set_setting("basic_login", args.state)
        store.audit("basic-login", username=None, detail=args.state, now=common.clock())
    print(f"HTTP Basic login {args.state} (restart 'ptt-kms serve' to apply)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    dd = DataDir(Path(args.data))
    with open_store(dd) as store:
        stored_domain(store)
    passphrase = read_passphrase(dd, args.passphrase_file)
    from server.kms import serving  # Twisted only for this command

    workers = args.workers or os.cpu_count() or 1
    return serving.main(dd.root, passphrase, workers=workers)
