"""``ptt-kms status`` and ``audit log|verify`` (what an operator reads and checks), ``audit export-rsk`` (an
auditor's access to a past key period's RSK, issue 17: only known identities, only past periods of this domain),
and the record of an audit run (``ptt-audit``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ptt.crypto.kms import issue_rsk
from ptt.kmsformat.model import KmsFormatError
from ptt.kmsformat.xml import parse_certificate
from ptt.ts33180 import period_bounds, period_number, uid
from server.auditchain import parse_anchor
from server.kms.commands import common
from server.kms.commands.common import (
    CliError,
    DataDir,
    DomainSettings,
    fingerprint,
    open_store,
    read_passphrase,
    read_password,
    stored_domain,
    utc,
)
from server.kms.commands.trust import describe_trust
from server.kms.material import certificate_fingerprint, load_certificate
from server.kms.secrets import is_encrypted, read_master_secrets, read_public_keys, write_private_file
from server.kms.store import KmsStore

__all__ = ["allowed_periods", "cmd_audit_log", "cmd_audit_verify", "cmd_export_rsk", "cmd_status", "record_audit_run"]


def cmd_status(args: argparse.Namespace) -> int:
    dd = DataDir(Path(args.data))
    now = common.clock()
    with open_store(dd) as store:
        domain = stored_domain(store)
        current = period_number(now, domain.key_period, domain.key_period_offset)
        _, end = period_bounds(current, domain.key_period, domain.key_period_offset)
        kpak, _ = read_public_keys(dd.secrets)
        print(f"domain          {domain.name}")
        print(f"KMS URI         {domain.kms_uri}")
        print(
            f"base URL        {domain.base_url}  (listens on {store.get_setting('host')}:{store.get_setting('port')})"
        )
        print(f"KPAK SHA-256    {fingerprint(kpak)}")
        print(f"TLS SHA-256     {certificate_fingerprint(load_certificate(dd.tls_cert))}")
        print(f"master secrets  {'encrypted' if is_encrypted(dd.secrets) else 'not encrypted'}")
        print(f"database        {store.location}")
        print(f"key period      {domain.key_period} s, offset {domain.key_period_offset} s")
        print(f"current period  {current}, ends {utc(end)}")
        print(f"accounts        {len(store.accounts())}, grants {store.grant_count()}")
        trusted = store.trusted_domains()
        print("trusted domains" if trusted else "trusted domains none")
        for t in trusted:
            try:
                print(f"  {describe_trust(parse_certificate(t.certificate_xml))}")
            except KmsFormatError as exc:  # status must still show the rest
                print(f"  KMS {t.kms_uri}: unreadable certificate ({exc})")
        events = store.audit_log(args.events)
        print("recent audit events" if events else "no audit events")
        for e in events:
            print(f"  {utc(e.at)}  {e.event:<22} {e.username or '-':<16} {e.detail}")
    return 0


def cmd_audit_log(args: argparse.Namespace) -> int:
    with open_store(DataDir(Path(args.data))) as store:
        for e in store.audit_log(args.limit):
            print(f"{utc(e.at)}\t{e.event}\t{e.username or '-'}\t{e.detail}")
    return 0


def allowed_periods(store: KmsStore, domain: DomainSettings, now: float) -> range:
    """The key periods an RSK may be exported for: from the one the domain was initialised in (its certificate's
    start: an earlier period belongs to no domain of these master secrets) up to the one before the current."""
    current = period_number(now, domain.key_period, domain.key_period_offset)
    created = store.get_setting("cert_valid_from")
    first = period_number(float(created), domain.key_period, domain.key_period_offset) if created else current
    return range(first, current)


def cmd_export_rsk(args: argparse.Namespace) -> int:
    """Lawful/compliance access to a past RSK: an auditor logs in; only an identity the KMS knows, only for a past
    period in which the domain existed; every export and refusal is in the audit log's hash chain."""
    dd = DataDir(Path(args.data))
    with open_store(dd) as store:
        domain = stored_domain(store)
        password = read_password(args.password_file, new=False, prompt=f"password of auditor {args.auditor}: ")
        now = common.clock()
        account = store.authenticate(args.auditor, password, now=now)
        what = f"RSK of {args.user} for period {args.period}"

        def refuse(reason: str, message: str) -> CliError:
            store.audit("rsk-export-refused", username=args.auditor, detail=f"{what}: {reason}", now=now)
            return CliError(message)

        if "auditor" not in account.roles:
            raise refuse("not an auditor", f"account {args.auditor!r} does not have the auditor role")
        allowed = allowed_periods(store, domain, now)
        if args.period >= allowed.stop:
            raise refuse(
                "not a past period", f"period {args.period} is not in the past (the current is {allowed.stop})"
            )
        if args.period < allowed.start:
            raise refuse(
                "before the domain existed",
                f"period {args.period} is before this KMS domain existed (its first period is {allowed.start})",
            )
        if not store.known_identity(args.user):
            raise refuse("unknown identity", f"{args.user} is not an identity this KMS knows (no account or grant)")
        master = read_master_secrets(dd.secrets, read_passphrase(dd, args.passphrase_file))
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


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Walk the audit log's hash chain; print the head to write down (``--anchor`` checks a head written earlier)."""
    try:
        anchor = parse_anchor(args.anchor) if args.anchor else None
    except ValueError as exc:
        raise CliError(str(exc)) from None
    with open_store(DataDir(Path(args.data))) as store:
        check = store.verify_audit(anchor=anchor)
    if not check.ok:
        print(f"audit log BROKEN at record {check.broken_at}: {check.reason} ({check.records} records verified)")
        return 1
    print(f"audit log intact: {check.records} records, head {check.head_id}:{check.head.hex()}")
    return 0


def record_audit_run(data: Path, auditor: str, password: str, detail: str, *, now: float) -> None:
    """An audit run (``ptt-audit``) appends itself to the KMS's audit chain; the auditor must log in as one."""
    with open_store(DataDir(data)) as store:
        account = store.authenticate(auditor, password, now=now)
        if "auditor" not in account.roles:
            store.audit("audit-run-refused", username=auditor, detail=f"{detail}: not an auditor", now=now)
            raise CliError(f"account {auditor!r} does not have the auditor role")
        store.audit("audit-run", username=auditor, detail=detail, now=now)
