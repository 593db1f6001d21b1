"""``ptt-kms user add|remove|passwd|disable|enable|list``, ``grant`` and ``revoke``: accounts and what they may
be keyed for."""

from __future__ import annotations

import argparse
from pathlib import Path

from server.kms.commands import common
from server.kms.commands.common import CliError, DataDir, open_store, read_password

__all__ = [
    "cmd_grant",
    "cmd_revoke",
    "cmd_user_add",
    "cmd_user_disable",
    "cmd_user_list",
    "cmd_user_passwd",
    "cmd_user_remove",
]


def cmd_user_add(args: argparse.Namespace) -> int:
    dd = DataDir(Path(args.data))
    roles = set(args.role or ["user"])
    if "user" in roles and not args.uri:
        raise CliError("an account with the 'user' role needs --uri (its own identity)")
    with open_store(dd) as store:
        if store.account(args.name) is not None:
            raise CliError(f"account {args.name!r} already exists")
        password = read_password(args.password_file, new=True, prompt=f"password for {args.name}: ")
        store.add_account(args.name, password, uri=args.uri, roles=roles, now=common.clock())
    print(f"account {args.name} added ({', '.join(sorted(roles))})")
    return 0


def cmd_user_remove(args: argparse.Namespace) -> int:
    with open_store(DataDir(Path(args.data))) as store:
        store.remove_account(args.name, now=common.clock())
    print(f"account {args.name} removed")
    return 0


def cmd_user_passwd(args: argparse.Namespace) -> int:
    with open_store(DataDir(Path(args.data))) as store:
        if store.account(args.name) is None:
            raise CliError(f"no account {args.name!r}")
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
            state = "disabled" if a.disabled else "active"
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
