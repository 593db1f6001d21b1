"""``ptt-kms init`` (master secrets, TLS and signing keys, the domain's settings) and ``ptt-kms serve``."""

from __future__ import annotations

import argparse
import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ptt.crypto.kms import generate_master_secrets
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
    certificate_fingerprint,
    load_certificate,
    load_private_key,
    make_self_signed,
    write_key_and_certificate,
)
from server.kms.secrets import write_master_secrets
from server.kms.store import KmsStore

__all__ = ["cmd_init", "cmd_serve"]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _default_base_url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0", "::"):
        host = "localhost"  # a wildcard is no address to connect to; the operator should give --base-url
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def _given_tls(cert_path: str, key_path: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = load_private_key(Path(key_path), check_mode=False)  # copied to a 0600 file below
    cert = load_certificate(Path(cert_path))
    if cert.public_key() != key.public_key():
        raise CliError(f"the certificate {cert_path} is not for the key {key_path}")
    return key, cert


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
    base_url = args.base_url or _default_base_url(args.host, args.port)
    url = urlsplit(base_url)
    if url.scheme != "https" or not url.hostname:
        raise CliError(f"--base-url must be an https URL with a host, got {base_url!r}")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CliError("--tls-cert and --tls-key go together")
    given_tls = _given_tls(args.tls_cert, args.tls_key) if args.tls_cert else None
    passphrase = read_secret_file(args.passphrase_file, "passphrase") if args.passphrase_file else None

    existing = dd.secrets.exists()
    if dd.db.is_file():
        with KmsStore(dd.db) as store:
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

    if given_tls is None:
        host = url.hostname
        dns = unique(["localhost"] + ([] if _is_ip(host) else [host]) + list(args.tls_name or []))
        ips = unique(["127.0.0.1"] + ([host] if _is_ip(host) else []))
        if _is_ip(args.host) and args.host not in ("0.0.0.0", "::"):
            ips = unique([*ips, args.host])
        tls_key, tls_cert = make_self_signed(host, san_dns=dns, san_ips=ips, days=args.days)
    else:
        tls_key, tls_cert = given_tls
    write_key_and_certificate(tls_key, tls_cert, dd.tls_key, dd.tls_cert)
    signing_key, signing_cert = make_self_signed(
        f"{args.kms_uri} response signing", san_dns=[], san_ips=[], days=args.days, tls_server=False
    )
    write_key_and_certificate(signing_key, signing_cert, dd.signing_key, dd.signing_cert)

    with KmsStore(dd.db) as store:
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
        ):
            store.set_setting(key, value)
        store.audit(
            "domain-reinitialised" if existing else "domain-initialised",
            username=None,
            detail=f"{args.kms_uri} KPAK {fingerprint(master.kpak)[:23]}",
            now=now,
        )
    os.chmod(dd.db, 0o600)
    print(f"KMS domain {args.domain} initialised in {dd.root}")
    print(f"  KMS URI                 {args.kms_uri}")
    print(f"  base URL                {base_url}")
    print(f"  KPAK SHA-256            {fingerprint(master.kpak)}")
    print(f"  TLS certificate SHA-256 {certificate_fingerprint(tls_cert)}")
    print(f"  master secrets          {'encrypted' if passphrase else 'NOT encrypted (no --passphrase-file)'}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    dd = DataDir(Path(args.data))
    with open_store(dd) as store:
        stored_domain(store)
    passphrase = read_passphrase(dd, args.passphrase_file)
    from server.kms import service  # Twisted only for this command

    return service.main(dd.root, passphrase)
