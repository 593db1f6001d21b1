"""``ptt-kms issue`` (bulk issuance: a period's key sets for every keyable identity, ahead of its rollover) and
``ptt-kms user add-many`` (many service accounts at once, to load a KMS for a test or a benchmark)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ptt.ts33180 import period_number
from server.kms.bulk import issue_period
from server.kms.commands import common
from server.kms.commands.common import CliError, DataDir, open_store, read_passphrase, stored_domain
from server.kms.issuance import IssuanceDomain
from server.kms.progress import Progress, format_duration
from server.kms.secrets import read_master_secrets, write_private_file

__all__ = ["cmd_issue", "cmd_user_add_many", "parse_period"]


def parse_period(text: str, current: int) -> int:
    """'current', 'next' or a period number."""
    if text == "current":
        return current
    if text == "next":
        return current + 1
    try:
        value = int(text)
    except ValueError:
        raise CliError(f"a period is 'current', 'next' or a number, not {text!r}") from None
    if value < 0:
        raise CliError("a period number must not be negative")
    return value


def cmd_issue(args: argparse.Namespace) -> int:
    dd = DataDir(Path(args.data))
    workers = args.workers or os.cpu_count() or 1
    if workers < 1 or args.batch < 1:
        raise CliError("--workers and --batch must be at least 1")
    with open_store(dd) as store:
        settings = stored_domain(store)
        domain = IssuanceDomain(settings.kms_uri, settings.key_period, settings.key_period_offset)
        now = common.clock()
        current = period_number(now, domain.key_period, domain.key_period_offset)
        purge_before = current if args.purge_before is None else parse_period(args.purge_before, current)
        purged = store.purge_precomputed(purge_before, now=now)
        if purged or args.purge_before is not None:
            print(f"purged {purged} precomputed key sets of periods before {purge_before}")
        if args.purge_before is not None and args.period is None:
            return 0
        period = parse_period(args.period or "next", current)
        if period < current:
            raise CliError(f"period {period} is over (the current period is {current}); keyprov never serves it")
        master = read_master_secrets(dd.secrets, read_passphrase(dd, args.passphrase_file))

        def progress(total: int, done: int) -> Progress:
            return Progress(f"period {period}", total, sys.stderr, done=done)

        summary = issue_period(store, master, domain, period, workers=workers, batch=args.batch, progress=progress)
        detail = f"period {period}: {summary.added} added, {summary.identities} keyable, {workers} workers"
        store.audit("keys-precomputed", username=None, detail=detail, now=common.clock())
    print(
        f"period {period}: {summary.added} key sets added in {format_duration(summary.seconds)} "
        f"({summary.rate:.0f}/s, {workers} workers); {summary.already} were there already, "
        f"{summary.identities} identities in all"
    )
    return 0


def cmd_user_add_many(args: argparse.Namespace) -> int:
    """Service accounts PREFIX<start>…PREFIX<start+count-1>, each keyed for its own URI, in transactions of 1000."""
    dd = DataDir(Path(args.data))
    if args.count < 1:
        raise CliError("--count must be at least 1")
    written: list[str] = []
    with open_store(dd) as store:
        settings = stored_domain(store)
        template = args.uri_template or "sip:{name}@" + (settings.name or settings.kms_uri)
        if "{name}" not in template:
            raise CliError("--uri-template must contain {name}")
        names = [f"{args.prefix}{i}" for i in range(args.start, args.start + args.count)]
        for first in range(0, len(names), 1000):
            chunk = names[first : first + 1000]
            tokens = store.add_service_accounts([(n, template.format(name=n)) for n in chunk], now=common.clock())
            written += [f"{n} {t}\n" for n, t in zip(chunk, tokens, strict=True)]
    if args.tokens_out:
        write_private_file(Path(args.tokens_out), "".join(written).encode())
        print(f"{len(names)} service accounts added; their tokens ('NAME TOKEN' lines) are in {args.tokens_out}")
    else:
        print(f"{len(names)} service accounts added (tokens not kept: give --tokens-out FILE to keep them)")
    return 0
