"""``ptt-kms user add|remove|passwd|disable|enable|list``, ``grant`` and ``revoke``: accounts and what they may
be keyed for.

``user add NAME --service`` makes a service account (a program's, e.g. the group server's): its credential is a
generated 256-bit token, written to ``--secret-out FILE`` (0600) or printed, never a password a person chose; wrong
guesses cannot lock it. ``user passwd`` of a service account makes it a new token."""

from __future__ import annotations

import argparse
from pathlib import Path

from server.kms.commands import common
from server.kms.commands.common import CliError, DataDir, open_store, read_password
from server.kms.secrets import write_private_file

__all__ = [
    "cmd_grant",
    "cmd_revoke",
    "cmd_user_add",
    "cmd_user_disable",
    "cmd_user_list",
    "cmd_user_passwd",
    "cmd_user_remove",
]


def _give_token(name: str, token: str, secret_out: str | None) -> None:
    if secret_out:
        try:
            write_private_file(Path(secret_out), token.encode() + b"\n")
        except OSError as e:
            raise CliError(f"cannot write the token to {secret_out}: {e.strerror}") from None
        print(f"the service token of {name} is in {secret_out} (give it to the program as its KMS password)")
    else:
        print(f"the service token of {name} (give it to the program as its KMS password; it is not shown again):")
        print(token)


def cmd_user_add(args: argparse.Namespace) -> int:
    dd = DataDir(Path(args.data))
    roles = set(args.role or ["user"])
    if "user" in roles and not args.uri:
        raise CliError("an account with the 'user' role needs --uri (its own identity)")
    if args.service and args.password_file:
        raise CliError("a service account gets a generated token: give --secret-out, not --password-file")
    if args.secret_out and not args.service:
        raise CliError("--secret-out is for service accounts (--service)")
    with open_store(dd) as store:
        if store.account(args.name) is not None:
            raise CliError(f"account {args.name!r} already exists")
        if args.service:
            token = store.add_service_account(args.name, uri=args.uri, roles=roles, now=common.clock())
        else:
            password = read_password(args.password_file, new=True, prompt=f"password for {args.name}: ")
            store.add_account(args.name, password, uri=args.uri, roles=roles, now=common.clock())
    print(f"account {args.name} added ({', '.join(sorted(roles))}{'; service' if args.service else ''})")
    if args.service:
        _give_token(args.name, token, args.secret_out)
    return 0


def cmd_user_remove(args: argparse.Namespace) -> int:
    with open_store(DataDir(Path(args.data))) as store:
        store.remove_account(args.name, now=common.clock())
    print(f"account {args.name} removed")
    return 0


def cmd_user_passwd(args: argparse.Namespace) -> int:
    with open_store(DataDir(Path(args.data))) as store:
        account = store.account(args.name)
        if account is None:
            raise CliError(f"no account {args.name!r}")
        if account.service or args.service:
            if args.password_file:
                raise CliError(f"{args.name} is a service account: it gets a generated token, not --password-file")
            token = store.new_service_token(args.name, now=common.clock())
            print(f"{args.name} has a new service token (the old one no longer works)")
            _give_token(args.name, token, args.secret_out)
            return 0
        if args.secret_out:
            raise CliError("--secret-out is for service accounts (--service)")
        password = read_password(args.password_file, new=True, prompt=f"new password for {args.name}: ")
        store.set_password(args.name, password, now=common.clock())
    print(f"password of {args.name} changed")
    return 0


def cmd_user_disable(args: argparse.Namespace) -> int:
    disable = args.command == "disable"
    with open_store(DataDir(Path(args.data))) as store:
        store.set_disabled(args.name, disable, now=common.clock())
    print(f"account {args.name} {'disabled' if disable else 'enabled'}")
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    with open_store(DataDir(Path(args.data))) as store:
        accounts = store.accounts()
        if not accounts:
            print("no accounts")
            return 0
        rows = [("NAME", "ROLES", "URI", "STATE", "GRANTS")]
        for a in accounts:
            others = [f"{u} ({k})" for u, k in store.grants(a.username).items() if k != "self"]
            state = ("disabled" if a.disabled else "active") + (",service" if a.service else "")
            rows.append((a.username, ",".join(sorted(a.roles)), a.uri or "-", state, ", ".join(others) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    return 0


def cmd_grant(args: argparse.Namespace) -> int:
    with open_store(DataDir(Path(args.data))) as store:
        store.grant(args.name, args.uri, args.kind, now=common.clock())
    print(f"{args.name} may now fetch the keys of {args.uri} ({args.kind})")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    with open_store(DataDir(Path(args.data))) as store:
        store.revoke(args.name, args.uri, now=common.clock())
    print(f"{args.name} may no longer fetch the keys of {args.uri}")
    return 0
