"""``ptt-kms``: set up and administer a KMS domain, and run the KMS.

    ptt-kms [--data DIR] init --domain D --kms-uri U [...]     create the domain (master secrets, TLS, signing key)
    ptt-kms user add|remove|passwd|disable|enable|list          accounts of users, admins, auditors, services
    ptt-kms grant NAME URI / revoke NAME URI                    which identities' keys an account may fetch
    ptt-kms export-enrolment [--out FILE]                       what clients need to trust this KMS
    ptt-kms trust-domain FILE [--user-domain D ...]             serve another domain's certificate in the cert cache
    ptt-kms untrust-domain KMS-URI                              stop serving it
    ptt-kms status                                              domain, key period, counts, recent audit events
    ptt-kms audit export-rsk | log | verify                     compliance access to past keys; the audit log
    ptt-kms issue [--period next] [--workers N]                  precompute a period's key sets for every identity
    ptt-kms basic-login on|off                                  allow HTTP Basic login (clients before access tokens)
    ptt-kms serve [--workers N]                                 run the HTTPS service and its IdMS (N worker processes)

User errors print one line on stderr and exit with status 2; no tracebacks.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ptt.kmsformat.model import KmsFormatError
from ptt.ts33180 import DEFAULT_KEY_PERIOD
from server.accounts import AccountError
from server.kms.commands.accounts import (
    cmd_grant,
    cmd_revoke,
    cmd_user_add,
    cmd_user_disable,
    cmd_user_list,
    cmd_user_passwd,
    cmd_user_remove,
)
from server.kms.commands.audit import cmd_audit_log, cmd_audit_verify, cmd_export_rsk, cmd_status
from server.kms.commands.common import DEFAULT_DATA, PASSWORD_ENV, PROG, CliError, DataDir, fingerprint, utc
from server.kms.commands.init import cmd_basic_login, cmd_init, cmd_serve
from server.kms.commands.issue import cmd_issue, cmd_user_add_many
from server.kms.commands.trust import cmd_export_enrolment, cmd_trust_domain, cmd_untrust_domain
from server.kms.domain import domain_certificate
from server.kms.material import MaterialError
from server.kms.secrets import SecretsFileError
from server.kms.store import GRANT_KINDS, ROLES, StoreError

__all__ = ["PASSWORD_ENV", "CliError", "DataDir", "domain_certificate", "main"]  # domain_certificate: server.kms.domain

_fingerprint, _utc = fingerprint, utc  # the names the CLI's tests format expected output with


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
    init.add_argument(
        "--listen",
        "--host",
        dest="host",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 or :: for every interface)",
    )
    init.add_argument("--port", type=int, default=8443, help="port to listen on (default 8443)")
    init.add_argument(
        "--public-name",
        metavar="NAME",
        help="DNS name or address clients connect to (the enrolment's base URL https://NAME:PORT, named by the TLS "
        "certificate; default: the listen address, required when listening on a wildcard address)",
    )
    init.add_argument("--base-url", help="URL clients use, if not https://PUBLIC-NAME:PORT (e.g. behind a proxy)")
    init.add_argument(
        "--tls-name", action="append", metavar="DNS", help="another name the TLS certificate must name (repeatable)"
    )
    init.add_argument("--days", type=int, default=3650, help="validity of generated certificates (default 3650)")
    init.add_argument("--passphrase-file", metavar="F", help="encrypt the master secrets under this passphrase")
    init.add_argument(
        "--tls-cert",
        metavar="PEM",
        help="the operator's own TLS certificate (from a CA; leaf first, then intermediates), which must name the "
        "public name; default: a generated self-signed one, which clients pin",
    )
    init.add_argument("--tls-key", metavar="PEM", help="the private key (EC) of --tls-cert")
    init.add_argument(
        "--tls-ca", metavar="PEM", help="the CA bundle clients trust for --tls-cert (default: the system's CAs)"
    )
    init.add_argument(
        "--database",
        metavar="URL",
        help="the KMS store (accounts, grants, records, audit log): postgresql://USER@HOST/DB (several KMS processes "
        "may share it) or sqlite:///PATH (default: kms.sqlite3 in the data directory); kept in kms.json, used by "
        "every command; the master secrets and keys stay in files here",
    )
    init.add_argument(
        "--allow-basic-login",
        action="store_true",
        help="also accept HTTP Basic login on every KMS request (clients from before IdMS access tokens; off by "
        "default; later: ptt-kms basic-login on|off)",
    )
    init.add_argument(
        "--access-token-lifetime",
        type=int,
        default=600,
        metavar="S",
        help="lifetime of the IdMS's access tokens, seconds (default 600)",
    )
    init.add_argument("--force", action="store_true", help="replace an existing domain's secrets and keys")
    init.set_defaults(func=cmd_init)

    user = sub.add_parser("user", help="accounts").add_subparsers(dest="command", required=True, metavar="ACTION")
    add = user.add_parser("add", help="add an account")
    add.add_argument("name")
    add.add_argument("--uri", help="the account's own identity (required for the user role)")
    add.add_argument("--role", action="append", choices=sorted(ROLES), help="repeatable; default user")
    add.add_argument("--password-file", metavar="F")
    add.add_argument(
        "--service", action="store_true", help="a program's account (the group server's): a generated 256-bit token"
    )
    add.add_argument("--secret-out", metavar="F", help="write a service account's token here (0600; default stdout)")
    add.set_defaults(func=cmd_user_add)
    remove = user.add_parser("remove", help="remove an account and its grants")
    remove.add_argument("name")
    remove.set_defaults(func=cmd_user_remove)
    passwd = user.add_parser("passwd", help="set a new password or service token (also lifts lockouts)")
    passwd.add_argument("name")
    passwd.add_argument("--password-file", metavar="F")
    passwd.add_argument("--service", action="store_true", help="make it a service account with a generated token")
    passwd.add_argument("--secret-out", metavar="F", help="write a service account's token here (0600)")
    passwd.set_defaults(func=cmd_user_passwd)
    for action in ("disable", "enable"):
        toggle = user.add_parser(action, help=f"{action} logins of an account")
        toggle.add_argument("name")
        toggle.set_defaults(func=cmd_user_disable)
    user.add_parser("list", help="list accounts").set_defaults(func=cmd_user_list)
    many = user.add_parser("add-many", help="add many service accounts at once (tests, benchmarks)")
    many.add_argument("--prefix", required=True, help="account names are PREFIX0, PREFIX1, ...")
    many.add_argument("--count", required=True, type=_non_negative, metavar="N")
    many.add_argument("--start", type=_non_negative, default=0, metavar="I", help="the first number (default 0)")
    many.add_argument("--uri-template", metavar="T", help="each account's URI (default 'sip:{name}@DOMAIN')")
    many.add_argument("--tokens-out", metavar="F", help="write 'NAME TOKEN' lines here (0600)")
    many.set_defaults(func=cmd_user_add_many)

    grant = sub.add_parser("grant", help="let an account fetch the keys of an identity (e.g. a group)")
    grant.add_argument("name")
    grant.add_argument("uri")
    grant.add_argument("--kind", default="group-manager", choices=sorted(GRANT_KINDS))
    grant.set_defaults(func=cmd_grant)
    revoke = sub.add_parser("revoke", help="withdraw a grant")
    revoke.add_argument("name")
    revoke.add_argument("uri")
    revoke.set_defaults(func=cmd_revoke)

    export = sub.add_parser("export-enrolment", help="write the enrolment JSON clients need")
    export.add_argument("--out", metavar="FILE", help="default: stdout")
    export.add_argument("--base-url", help="URL clients use (default: the one given at init)")
    export.set_defaults(func=cmd_export_enrolment)
    trust = sub.add_parser("trust-domain", help="trust another KMS domain (its enrolment JSON or certificate XML)")
    trust.add_argument("file")
    trust.add_argument(
        "--user-domain",
        action="append",
        metavar="DOMAIN",
        help="a domain of the users that KMS keys (repeat; default: the certificate's list, else its KMS URI "
        "without 'kms.')",
    )
    trust.set_defaults(func=cmd_trust_domain)
    untrust = sub.add_parser("untrust-domain", help="stop trusting another KMS domain")
    untrust.add_argument("kms_uri")
    untrust.set_defaults(func=cmd_untrust_domain)

    status = sub.add_parser("status", help="domain, key period, accounts, trusted domains, recent events")
    status.add_argument("--events", type=_non_negative, default=10, metavar="N", help="audit events to show")
    status.set_defaults(func=cmd_status)

    audit = sub.add_parser("audit", help="compliance access and the audit log")
    audit_sub = audit.add_subparsers(dest="command", required=True, metavar="ACTION")
    rsk = audit_sub.add_parser("export-rsk", help="an auditor exports a user's RSK of a past key period")
    rsk.add_argument("--auditor", required=True, metavar="NAME")
    rsk.add_argument("--user", required=True, metavar="URI")
    rsk.add_argument("--period", required=True, type=_non_negative, metavar="N")
    rsk.add_argument("--password-file", metavar="F", help=f"the auditor's password (or ${PASSWORD_ENV})")
    rsk.add_argument("--passphrase-file", metavar="F", help="the master secrets passphrase")
    rsk.add_argument("--out", metavar="FILE", help="write the RSK (hex) to FILE, mode 0600 (default: stdout)")
    rsk.set_defaults(func=cmd_export_rsk)
    verify = audit_sub.add_parser("verify", help="check the audit log's hash chain; print its head")
    verify.add_argument("--anchor", metavar="ID:HASH", help="a head printed earlier: it must still be there")
    verify.set_defaults(func=cmd_audit_verify)
    log = audit_sub.add_parser("log", help="print the audit log")
    log.add_argument("--limit", type=_non_negative, default=100)
    log.set_defaults(func=cmd_audit_log)

    issue = sub.add_parser(
        "issue", help="precompute a period's key sets for every identity (resumable), so keyprov need not derive"
    )
    issue.add_argument("--period", metavar="P", help="next (default), current, or a period number")
    issue.add_argument("--workers", type=_non_negative, metavar="N", help="processes (default: one per core)")
    issue.add_argument("--batch", type=_non_negative, default=250, metavar="N", help="identities per transaction")
    issue.add_argument(
        "--purge-before",
        metavar="P",
        help="delete precomputed key sets of periods before P (each run deletes those before the current one); "
        "alone, only purge",
    )
    issue.add_argument("--passphrase-file", metavar="F", help="the master secrets passphrase")
    issue.set_defaults(func=cmd_issue)

    basic = sub.add_parser("basic-login", help="allow or refuse HTTP Basic login (clients before access tokens)")
    basic.add_argument("state", choices=["on", "off"])
    basic.set_defaults(func=cmd_basic_login)

    serve = sub.add_parser("serve", help="run the KMS HTTPS service")
    serve.add_argument("--passphrase-file", metavar="F", help="the master secrets passphrase")
    serve.add_argument(
        "--workers",
        type=_non_negative,
        metavar="N",
        help="worker processes on the one port (SO_REUSEPORT; default: one per core; 1: a single process)",
    )
    serve.set_defaults(func=cmd_serve)
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
