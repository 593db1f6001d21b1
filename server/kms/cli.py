"""``ptt-kms``: set up and administer a KMS domain, and run the KMS.

    ptt-kms [--data DIR] init --domain D --kms-uri U [...]     create the domain (master secrets, TLS, signing key)
    ptt-kms user add|remove|passwd|disable|enable|list          accounts of users, admins and auditors
    ptt-kms grant NAME URI / revoke NAME URI                    which identities' keys an account may fetch
    ptt-kms export-enrolment [--out FILE]                       what clients need to trust this KMS
    ptt-kms trust-domain FILE [--user-domain D ...]             serve another domain's certificate in the cert cache
    ptt-kms untrust-domain KMS-URI                              stop serving it
    ptt-kms status                                              domain, key period, counts, recent audit events
    ptt-kms audit export-rsk | log                              compliance access to past keys; the audit log
    ptt-kms serve                                               run the HTTPS service

User errors print one line on stderr and exit with status 2; no tracebacks.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import ipaddress
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ptt.crypto.kms import generate_master_secrets, issue_rsk
from ptt.kmsformat.enrolment import Enrolment
from ptt.kmsformat.model import KmsCertificate, KmsFormatError
from ptt.kmsformat.trust import user_domains
from ptt.kmsformat.xml import certificate_to_xml, parse_certificate
from ptt.ts33180 import DEFAULT_KEY_PERIOD, period_bounds, period_number, uid
from server.accounts import AccountError
from server.kms.domain import CERTIFICATE_YEARS, certificate_validity, domain_certificate
from server.kms.material import (
    MaterialError,
    certificate_fingerprint,
    certificate_pem,
    load_certificate,
    load_private_key,
    make_self_signed,
    write_key_and_certificate,
)
from server.kms.secrets import (
    SecretsFileError,
    is_encrypted,
    read_master_secrets,
    read_public_keys,
    write_master_secrets,
    write_private_file,
)
from server.kms.store import GRANT_KINDS, ROLES, KmsStore, StoreError

__all__ = ["CliError", "DataDir", "domain_certificate", "main"]  # domain_certificate: see server.kms.domain

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
        return self.root / "kms.sqlite3"

    @property
    def tls_key(self) -> Path:
        return self.root / "tls-key.pem"

    @property
    def tls_cert(self) -> Path:
        return self.root / "tls-cert.pem"

    @property
    def signing_key(self) -> Path:
        return self.root / "signing-key.pem"

    @property
    def signing_cert(self) -> Path:
        return self.root / "signing-cert.pem"


# --- helpers ---


def _fingerprint(data: bytes) -> str:
    return ":".join(f"{b:02X}" for b in hashlib.sha256(data).digest())


def _read_secret_file(path: str, what: str) -> bytes:
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


def _password(password_file: str | None, *, new: bool, prompt: str) -> str:
    """From --password-file, else $PTT_KMS_PASSWORD, else the terminal (twice for a new password)."""
    if password_file:
        return _decode_password(_read_secret_file(password_file, "password"), password_file)
    env = os.environ.get(PASSWORD_ENV)
    if env:
        return env
    if not sys.stdin.isatty():
        raise CliError(f"no password: give --password-file, set {PASSWORD_ENV}, or run on a terminal")
    first = getpass.getpass(prompt)
    if new and getpass.getpass("again: ") != first:
        raise CliError("the passwords differ")
    return first


def _passphrase(dd: DataDir, passphrase_file: str | None) -> bytes | None:
    """The master-secrets passphrase: from the file, else asked on the terminal if the file is encrypted."""
    if passphrase_file:
        return _read_secret_file(passphrase_file, "passphrase")
    if not is_encrypted(dd.secrets):
        return None
    if not sys.stdin.isatty():
        raise CliError(f"{dd.secrets} is encrypted: give --passphrase-file")
    return getpass.getpass("master secrets passphrase: ").encode("utf-8")


def _open_store(dd: DataDir) -> KmsStore:
    if not dd.root.is_dir():
        raise CliError(f"no KMS data directory {dd.root} (create one with '{PROG} --data {dd.root} init ...')")
    if not dd.db.is_file():
        raise CliError(f"{dd.root} holds no KMS database (create one with '{PROG} --data {dd.root} init ...')")
    return KmsStore(dd.db)


@dataclass(frozen=True)
class _Domain:
    name: str
    kms_uri: str
    key_period: int
    key_period_offset: int
    base_url: str


def _domain(store: KmsStore) -> _Domain:
    kms_uri = store.get_setting("kms_uri")
    if not kms_uri:
        raise CliError(f"{store.path} has no KMS domain (run '{PROG} init' first)")
    try:
        key_period = int(store.get_setting("key_period") or DEFAULT_KEY_PERIOD)
        offset = int(store.get_setting("key_period_offset") or 0)
    except ValueError:
        raise CliError(f"{store.path}: the key period settings are not numbers") from None
    return _Domain(store.get_setting("domain") or "", kms_uri, key_period, offset, store.get_setting("base_url") or "")


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


# --- init ---


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


def _cmd_init(args: argparse.Namespace) -> int:
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
    passphrase = _read_secret_file(args.passphrase_file, "passphrase") if args.passphrase_file else None

    existing = dd.secrets.exists()
    if dd.db.is_file():
        with KmsStore(dd.db) as store:
            existing = existing or store.get_setting("kms_uri") is not None
    if existing and not args.force:
        raise CliError(
            f"{dd.root} already holds a KMS domain; --force replaces its master secrets and keys "
            "(every key issued so far stops working; accounts and grants are kept)"
        )

    now = clock()
    dd.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(dd.root, 0o700)
    master = generate_master_secrets()
    write_master_secrets(dd.secrets, master, passphrase)

    if given_tls is None:
        host = url.hostname
        dns = _unique(["localhost"] + ([] if _is_ip(host) else [host]) + list(args.tls_name or []))
        ips = _unique(["127.0.0.1"] + ([host] if _is_ip(host) else []))
        if _is_ip(args.host) and args.host not in ("0.0.0.0", "::"):
            ips = _unique([*ips, args.host])
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
            detail=f"{args.kms_uri} KPAK {_fingerprint(master.kpak)[:23]}",
            now=now,
        )
    os.chmod(dd.db, 0o600)
    print(f"KMS domain {args.domain} initialised in {dd.root}")
    print(f"  KMS URI                 {args.kms_uri}")
    print(f"  base URL                {base_url}")
    print(f"  KPAK SHA-256            {_fingerprint(master.kpak)}")
    print(f"  TLS certificate SHA-256 {certificate_fingerprint(tls_cert)}")
    print(f"  master secrets          {'encrypted' if passphrase else 'NOT encrypted (no --passphrase-file)'}")
    return 0


# --- accounts and grants ---


def _cmd_user_add(args: argparse.Namespace) -> int:
    dd = DataDir(Path(args.data))
    roles = set(args.role or ["user"])
    if "user" in roles and not args.uri:
        raise CliError("an account with the 'user' role needs --uri (its own identity)")
    with _open_store(dd) as store:
        if store.account(args.name) is not None:
            raise CliError(f"account {args.name!r} already exists")
        password = _password(args.password_file, new=True, prompt=f"password for {args.name}: ")
        store.add_account(args.name, password, uri=args.uri, roles=roles, now=clock())
    print(f"account {args.name} added ({', '.join(sorted(roles))})")
    return 0


def _cmd_user_remove(args: argparse.Namespace) -> int:
    with _open_store(DataDir(Path(args.data))) as store:
        store.remove_account(args.name, now=clock())
    print(f"account {args.name} removed")
    return 0


def _cmd_user_passwd(args: argparse.Namespace) -> int:
    with _open_store(DataDir(Path(args.data))) as store:
        if store.account(args.name) is None:
            raise CliError(f"no account {args.name!r}")
        password = _password(args.password_file, new=True, prompt=f"new password for {args.name}: ")
        store.set_password(args.name, password, now=clock())
    print(f"password of {args.name} changed")
    return 0


def _cmd_user_disable(args: argparse.Namespace) -> int:
    disable = args.command == "disable"
    with _open_store(DataDir(Path(args.data))) as store:
        store.set_disabled(args.name, disable, now=clock())
    print(f"account {args.name} {'disabled' if disable else 'enabled'}")
    return 0


def _cmd_user_list(args: argparse.Namespace) -> int:
    with _open_store(DataDir(Path(args.data))) as store:
        accounts = store.accounts()
        if not accounts:
            print("no accounts")
            return 0
        rows = [("NAME", "ROLES", "URI", "STATE", "GRANTS")]
        for a in accounts:
            others = [f"{u} ({k})" for u, k in store.grants(a.username).items() if k != "self"]
            state = "disabled" if a.disabled else "active"
            rows.append((a.username, ",".join(sorted(a.roles)), a.uri or "-", state, ", ".join(others) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    return 0


def _cmd_grant(args: argparse.Namespace) -> int:
    with _open_store(DataDir(Path(args.data))) as store:
        store.grant(args.name, args.uri, args.kind, now=clock())
    print(f"{args.name} may now fetch the keys of {args.uri} ({args.kind})")
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    with _open_store(DataDir(Path(args.data))) as store:
        store.revoke(args.name, args.uri, now=clock())
    print(f"{args.name} may no longer fetch the keys of {args.uri}")
    return 0


# --- enrolment and trusted domains ---


def _cmd_export_enrolment(args: argparse.Namespace) -> int:
    dd = DataDir(Path(args.data))
    with _open_store(dd) as store:
        domain = _domain(store)
        valid_from, valid_to = certificate_validity(store.settings())
    kpak, z = read_public_keys(dd.secrets)
    base_url = args.base_url or domain.base_url
    if not base_url:
        raise CliError("no base URL: give --base-url https://HOST:PORT")
    enrolment = Enrolment(
        kms_uri=domain.kms_uri,
        base_url=base_url,
        tls_cert_pem=certificate_pem(load_certificate(dd.tls_cert)),
        signing_cert_pem=certificate_pem(load_certificate(dd.signing_cert)),
        certificate=domain_certificate(
            domain.kms_uri, domain.key_period, domain.key_period_offset, kpak, z, valid_from, valid_to
        ),
    )
    data = enrolment.to_json()
    if args.out:
        Path(args.out).write_bytes(data)
        print(f"enrolment for {domain.kms_uri} at {base_url} written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(data.decode("utf-8"))
        if not data.endswith(b"\n"):
            sys.stdout.write("\n")
    return 0


def _certificate_from_file(path: str) -> KmsCertificate:
    """A KmsCertificate from an enrolment JSON file or a standalone KmsCertificate XML document."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}") from None
    try:
        if data.lstrip().startswith(b"{"):
            return Enrolment.from_json(data).certificate
        return parse_certificate(data)
    except (KmsFormatError, ValueError) as e:
        raise CliError(f"{path} is neither an enrolment file nor a KmsCertificate: {e}") from None


# A DNS name: dot-separated labels of letters, digits and inner hyphens (RFC 1123), lower case once normalised.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\Z")


def _user_domain(text: str) -> str:
    """A ``--user-domain`` value, lower-cased (a trailing root dot dropped), or a CliError."""
    domain = text.lower().removesuffix(".")
    if len(domain) > 253 or not _DOMAIN_RE.match(domain):
        raise CliError(f"--user-domain {text!r} is not a domain name (letters, digits, hyphens and dots)")
    return domain


def _within(domain: str, parent: str) -> bool:
    return domain == parent or domain.endswith("." + parent)


def _describe_trust(certificate: KmsCertificate) -> str:
    return f"KMS {certificate.kms_uri} for users in {', '.join(user_domains(certificate))}"


def _cmd_trust_domain(args: argparse.Namespace) -> int:
    given = _unique([_user_domain(d) for d in args.user_domain or []])
    with _open_store(DataDir(Path(args.data))) as store:
        domain = _domain(store)
        certificate = _certificate_from_file(args.file)
        if certificate.kms_uri == domain.kms_uri:
            raise CliError(f"{args.file} is this KMS's own certificate ({domain.kms_uri})")
        # Role External: the cache vouches for another KMS. Its KmsDomainList names the user domains it speaks for
        # (ptt.kmsformat.trust); without --user-domain the file's own list stays, or the client derives one.
        certificate = replace(certificate, role="External", kms_domains=tuple(given or certificate.kms_domains))
        # Clients let an External KMS speak for these domains instead of us: never for our own users.
        own = domain.name.lower().removesuffix(".")
        for bound in user_domains(certificate):
            if own and _within(own, bound):
                raise CliError(f"user domain {bound} would hand this domain's own users ({own}) to another KMS")
        # Stored as we serialise it, so the certificate cache only ever serves XML we can parse.
        store.add_trusted_certificate(certificate.kms_uri, certificate_to_xml(certificate), now=clock())
    print(f"trusting {_describe_trust(certificate)} (KPAK SHA-256 {_fingerprint(certificate.pub_auth_key)})")
    return 0


def _cmd_untrust_domain(args: argparse.Namespace) -> int:
    with _open_store(DataDir(Path(args.data))) as store:
        store.remove_trusted_certificate(args.kms_uri, now=clock())
    print(f"no longer trusting KMS {args.kms_uri}")
    return 0


# --- status and audit ---


def _cmd_status(args: argparse.Namespace) -> int:
    dd = DataDir(Path(args.data))
    now = clock()
    with _open_store(dd) as store:
        domain = _domain(store)
        current = period_number(now, domain.key_period, domain.key_period_offset)
        _, end = period_bounds(current, domain.key_period, domain.key_period_offset)
        kpak, _ = read_public_keys(dd.secrets)
        print(f"domain          {domain.name}")
        print(f"KMS URI         {domain.kms_uri}")
        print(
            f"base URL        {domain.base_url}  (listens on {store.get_setting('host')}:{store.get_setting('port')})"
        )
        print(f"KPAK SHA-256    {_fingerprint(kpak)}")
        print(f"TLS SHA-256     {certificate_fingerprint(load_certificate(dd.tls_cert))}")
        print(f"master secrets  {'encrypted' if is_encrypted(dd.secrets) else 'not encrypted'}")
        print(f"key period      {domain.key_period} s, offset {domain.key_period_offset} s")
        print(f"current period  {current}, ends {_utc(end)}")
        print(f"accounts        {len(store.accounts())}, grants {store.grant_count()}")
        trusted = store.trusted_domains()
        print("trusted domains" if trusted else "trusted domains none")
        for t in trusted:
            try:
                print(f"  {_describe_trust(parse_certificate(t.certificate_xml))}")
            except KmsFormatError as exc:  # status must still show the rest
                print(f"  KMS {t.kms_uri}: unreadable certificate ({exc})")
        events = store.audit_log(args.events)
        print("recent audit events" if events else "no audit events")
        for e in events:
            print(f"  {_utc(e.at)}  {e.event:<22} {e.username or '-':<16} {e.detail}")
    return 0


def _cmd_audit_log(args: argparse.Namespace) -> int:
    with _open_store(DataDir(Path(args.data))) as store:
        for e in store.audit_log(args.limit):
            print(f"{_utc(e.at)}\t{e.event}\t{e.username or '-'}\t{e.detail}")
    return 0


def _cmd_export_rsk(args: argparse.Namespace) -> int:
    """Lawful/compliance access to a past RSK: an auditor logs in; current and future periods are refused."""
    dd = DataDir(Path(args.data))
    with _open_store(dd) as store:
        domain = _domain(store)
        password = _password(args.password_file, new=False, prompt=f"password of auditor {args.auditor}: ")
        now = clock()
        account = store.authenticate(args.auditor, password, now=now)
        what = f"RSK of {args.user} for period {args.period}"
        if "auditor" not in account.roles:
            store.audit("rsk-export-refused", username=args.auditor, detail=f"{what}: not an auditor", now=now)
            raise CliError(f"account {args.auditor!r} does not have the auditor role")
        current = period_number(now, domain.key_period, domain.key_period_offset)
        if args.period >= current:
            store.audit("rsk-export-refused", username=args.auditor, detail=f"{what}: not a past period", now=now)
            raise CliError(f"period {args.period} is not in the past (the current period is {current})")
        master = read_master_secrets(dd.secrets, _passphrase(dd, args.passphrase_file))
        user_id = uid(args.user, domain.kms_uri, domain.key_period, domain.key_period_offset, args.period)
        # The RSK alone (the same one derive_user_keys gives): an auditor decrypts, and must not get signing keys.
        rsk = issue_rsk(user_id, master)
        line = rsk.hex() + "\n"
        if args.out:
            write_private_file(Path(args.out), line.encode("ascii"))
        store.record_issue(args.auditor, args.user, args.period, user_id, now=now, kind="audit-rsk")
        store.audit("rsk-exported", username=args.auditor, detail=what, now=now)
    if args.out:
        print(f"{what} written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(line)
    return 0


# --- serve ---


def _cmd_serve(args: argparse.Namespace) -> int:
    dd = DataDir(Path(args.data))
    with _open_store(dd) as store:
        _domain(store)
    passphrase = _passphrase(dd, args.passphrase_file)
    from server.kms import service  # Twisted only for this command

    return service.main(dd.root, passphrase)


# --- argument parsing ---


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Administer and run a MIKEY-SAKKE KMS (TS 33.180).")
    p.add_argument("--data", default=DEFAULT_DATA, metavar="DIR", help=f"data directory (default ./{DEFAULT_DATA})")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = sub.add_parser("init", help="create a KMS domain: master secrets, TLS and signing keys, database")
    init.add_argument("--domain", required=True, help="the domain name, e.g. example.org")
    init.add_argument("--kms-uri", required=True, help="the KMS URI, e.g. kms.example.org")
    init.add_argument("--key-period", type=int, default=DEFAULT_KEY_PERIOD, metavar="S", help="key period, seconds")
    init.add_argument("--key-offset", type=int, default=0, metavar="S", help="key period offset, seconds")
    init.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    init.add_argument("--port", type=int, default=8443, help="port to listen on (default 8443)")
    init.add_argument("--base-url", help="URL clients use (default https://HOST:PORT)")
    init.add_argument("--tls-name", action="append", metavar="DNS", help="another DNS name for the TLS certificate")
    init.add_argument("--days", type=int, default=3650, help="validity of generated certificates (default 3650)")
    init.add_argument("--passphrase-file", metavar="F", help="encrypt the master secrets under this passphrase")
    init.add_argument("--tls-cert", metavar="PEM", help="use this TLS certificate instead of a self-signed one")
    init.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    init.add_argument("--force", action="store_true", help="replace an existing domain's secrets and keys")
    init.set_defaults(func=_cmd_init)

    user = sub.add_parser("user", help="accounts").add_subparsers(dest="command", required=True, metavar="ACTION")
    add = user.add_parser("add", help="add an account")
    add.add_argument("name")
    add.add_argument("--uri", help="the account's own identity (required for the user role)")
    add.add_argument("--role", action="append", choices=sorted(ROLES), help="repeatable; default user")
    add.add_argument("--password-file", metavar="F")
    add.set_defaults(func=_cmd_user_add)
    remove = user.add_parser("remove", help="remove an account and its grants")
    remove.add_argument("name")
    remove.set_defaults(func=_cmd_user_remove)
    passwd = user.add_parser("passwd", help="set a new password (also lifts a lockout)")
    passwd.add_argument("name")
    passwd.add_argument("--password-file", metavar="F")
    passwd.set_defaults(func=_cmd_user_passwd)
    for action in ("disable", "enable"):
        toggle = user.add_parser(action, help=f"{action} logins of an account")
        toggle.add_argument("name")
        toggle.set_defaults(func=_cmd_user_disable)
    user.add_parser("list", help="list accounts").set_defaults(func=_cmd_user_list)

    grant = sub.add_parser("grant", help="let an account fetch the keys of an identity (e.g. a group)")
    grant.add_argument("name")
    grant.add_argument("uri")
    grant.add_argument("--kind", default="group-manager", choices=sorted(GRANT_KINDS))
    grant.set_defaults(func=_cmd_grant)
    revoke = sub.add_parser("revoke", help="withdraw a grant")
    revoke.add_argument("name")
    revoke.add_argument("uri")
    revoke.set_defaults(func=_cmd_revoke)

    export = sub.add_parser("export-enrolment", help="write the enrolment JSON clients need")
    export.add_argument("--out", metavar="FILE", help="default: stdout")
    export.add_argument("--base-url", help="URL clients use (default: the one given at init)")
    export.set_defaults(func=_cmd_export_enrolment)
    trust = sub.add_parser("trust-domain", help="trust another KMS domain (its enrolment JSON or certificate XML)")
    trust.add_argument("file")
    trust.add_argument(
        "--user-domain",
        action="append",
        metavar="DOMAIN",
        help="a domain of the users that KMS keys (repeat; default: the certificate's list, else its KMS URI "
        "without 'kms.')",
    )
    trust.set_defaults(func=_cmd_trust_domain)
    untrust = sub.add_parser("untrust-domain", help="stop trusting another KMS domain")
    untrust.add_argument("kms_uri")
    untrust.set_defaults(func=_cmd_untrust_domain)

    status = sub.add_parser("status", help="domain, key period, accounts, trusted domains, recent events")
    status.add_argument("--events", type=_non_negative, default=10, metavar="N", help="audit events to show")
    status.set_defaults(func=_cmd_status)

    audit = sub.add_parser("audit", help="compliance access and the audit log")
    audit_sub = audit.add_subparsers(dest="command", required=True, metavar="ACTION")
    rsk = audit_sub.add_parser("export-rsk", help="an auditor exports a user's RSK of a past key period")
    rsk.add_argument("--auditor", required=True, metavar="NAME")
    rsk.add_argument("--user", required=True, metavar="URI")
    rsk.add_argument("--period", required=True, type=_non_negative, metavar="N")
    rsk.add_argument("--password-file", metavar="F", help=f"the auditor's password (or ${PASSWORD_ENV})")
    rsk.add_argument("--passphrase-file", metavar="F", help="the master secrets passphrase")
    rsk.add_argument("--out", metavar="FILE", help="write the RSK (hex) to FILE, mode 0600 (default: stdout)")
    rsk.set_defaults(func=_cmd_export_rsk)
    log = audit_sub.add_parser("log", help="print the audit log")
    log.add_argument("--limit", type=_non_negative, default=100)
    log.set_defaults(func=_cmd_audit_log)

    serve = sub.add_parser("serve", help="run the KMS HTTPS service")
    serve.add_argument("--passphrase-file", metavar="F", help="the master secrets passphrase")
    serve.set_defaults(func=_cmd_serve)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, message already printed)
        return e.code if isinstance(e.code, int) else 2
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        return handler(args)
    except (CliError, StoreError, AccountError, SecretsFileError, MaterialError, KmsFormatError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"{PROG}: error: {where}{e.strerror or e}", file=sys.stderr)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
