"""``ptt-dispatch``: manage groups over the dispatcher API (HTTPS with the standard library's http.client).

    ptt-dispatch --server https://127.0.0.1:8444 --cacert CERT.pem --user NAME [--password-file F] COMMAND

    group create NAME-OR-URI --member URI [--member URI ...] [--priority URI=N] [--dispatcher URI]
    group list
    group show URI                              members, who is present, who is talking, the queue
    group add-member URI MEMBER [--priority N] [--role dispatcher]
    group remove-member URI MEMBER              (the group is rekeyed)
    group set-priority URI MEMBER N
    group set-role URI MEMBER member|dispatcher  (dispatcher: may pre-empt a talker; needs an admin)
    group delete URI
    group assign URI ACCOUNT                    let a dispatcher account manage the group (admins)
    group unassign URI ACCOUNT
    group emergency show|cancel|watch URI [MEMBER]   emergency alerts (server/dispatch/emergency_cli.py)
    group broadcast grant|revoke URI MEMBER     the broadcast group call right
    group recording on|off|show URI [--retention DAYS]   encrypted recording (server/dispatch/recording_cli.py)
    audit [--limit N]                           the audit log of your organisation, its chain checked (admins)

Who may do what (organisations, owners, assigned dispatchers, the priority ceiling, the pre-emptive role) is the
server's (``server.dispatch.policy``); a refusal prints the server's reason with HTTP 403 or 404.

A bare NAME (no ':') stands for sip:NAME@DOMAIN, the domain from --domain or the server's /api/health. The
password comes from --password-file, else $PTT_DISPATCH_PASSWORD, else a prompt on the terminal. The server's
certificate is checked against --cacert (else the system's trusted CAs); TLS 1.2 or later. User errors print one
line on stderr and exit with status 2; no tracebacks.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from server.dispatch import emergency_cli, recording_cli
from server.dispatch.apiclient import PASSWORD_ENV as PASSWORD_ENV  # re-exported: where the password may come from
from server.dispatch.apiclient import ApiClient, CliError, Session, group_path, password_reader

PROG = "ptt-dispatch"
DEFAULT_SERVER = "https://127.0.0.1:8444"


# --- output ---


def _when(seconds: Any) -> str:
    try:
        return datetime.fromtimestamp(float(seconds), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _gmk(key: Any) -> str:
    if not isinstance(key, dict):
        return "no key"
    return f"GMK-ID {key.get('gmk_id')} (key period {key.get('period_no')})"


# --- commands ---


def _priority_pair(text: str) -> tuple[str, int]:
    uri, sep, value = text.rpartition("=")
    if not sep or not uri:
        raise argparse.ArgumentTypeError(f"expected URI=N, not {text!r}")
    return uri, _priority(value)


def _priority(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"priority must be an integer from 0 to 255, not {text!r}") from None
    if not 0 <= value <= 255:
        raise argparse.ArgumentTypeError(f"priority must be from 0 to 255, not {value}")
    return value


def _cmd_create(session: Session, args: argparse.Namespace) -> int:
    uri = session.uri(args.group)
    if args.name:
        name = args.name
    elif ":" not in args.group:
        name = args.group
    else:
        name = uri.split(":", 1)[1].split("@", 1)[0] or uri
    members: dict[str, dict[str, Any]] = {}
    for member in args.member:
        members.setdefault(session.uri(member), {})
    for dispatcher in args.dispatcher:
        members.setdefault(session.uri(dispatcher), {})["role"] = "dispatcher"
    for who, priority in args.priority:
        member_uri = session.uri(who)
        if member_uri not in members:
            raise CliError(f"--priority names {member_uri}, which is not a --member or --dispatcher")
        members[member_uri]["priority"] = priority
    body: dict[str, Any] = {"uri": uri, "name": name, "members": [{"uri": u, **m} for u, m in members.items()]}
    if args.max_burst is not None:
        body["max_burst"] = args.max_burst
    group = session.client.request("POST", "/api/groups", body)["group"]
    count = len(group.get("members", []))
    plural = "" if count == 1 else "s"
    print(f"created group {group['uri']} ({group['name']}) with {count} member{plural}; {_gmk(group.get('key'))}")
    return 0


def _cmd_list(session: Session, args: argparse.Namespace) -> int:
    groups = session.client.request("GET", "/api/groups")["groups"]
    if not groups:
        print("no groups")
        return 0
    rows = [["GROUP", "NAME", "MEMBERS", "MAX BURST"]]
    rows += [[g["uri"], g["name"], str(g["members"]), f"{g['max_burst']:g} s"] for g in groups]
    print(_table(rows))
    return 0


def _cmd_show(session: Session, args: argparse.Namespace) -> int:
    group = session.client.request("GET", group_path(session.uri(args.group)))["group"]
    status = group.get("status") or {}
    present, joined = set(status.get("present", [])), set(status.get("joined", []))
    talker, queue = status.get("talker"), list(status.get("queue", []))
    print(f"group    {group['uri']} ({group['name']})")
    print(f"created  {_when(group['created_at'])} by {group['created_by']}; max burst {group['max_burst']:g} s")
    print(f"owner    {group.get('owner') or '-'} (organisation {group.get('org')})")
    print(f"assigned {', '.join(group.get('dispatchers') or []) or '-'}")
    key = group.get("key")
    since = f", since {_when(key['created_at'])}" if isinstance(key, dict) else ""
    print(f"key      {_gmk(key)}{since}")
    print(f"talking  {talker or '-'}")
    print(f"queue    {', '.join(queue) if queue else '-'}")
    alerts = [emergency_cli.alert_line(a) for a in status.get("alerts", [])]
    print(f"alerts   {'; '.join(alerts) if alerts else '-'}")
    members = group.get("members", [])
    if not members:
        print("no members")
        return 0
    rows = [["MEMBER", "PRIORITY", "ROLE", "PRESENT", "JOINED", "FLOOR"]]
    for m in members:
        floor = (
            "talking" if m["uri"] == talker else (f"queued {queue.index(m['uri']) + 1}" if m["uri"] in queue else "")
        )
        yes = {True: "yes", False: "no"}
        rows.append([m["uri"], str(m["priority"]), m["role"], yes[m["uri"] in present], yes[m["uri"] in joined], floor])
    print()
    print(_table(rows))
    return 0


def _cmd_add_member(session: Session, args: argparse.Namespace) -> int:
    group, member = session.uri(args.group), session.uri(args.member)
    body: dict[str, Any] = {"uri": member, "role": args.role}
    if args.priority is not None:
        body["priority"] = args.priority
    reply = session.client.request("POST", group_path(group, "members"), body)
    added = reply["member"]
    print(f"added {added['uri']} to {group} (priority {added['priority']}, {added['role']})")
    print(f"sent the current {_gmk(reply.get('key'))}")
    return 0


def _cmd_remove_member(session: Session, args: argparse.Namespace) -> int:
    group, member = session.uri(args.group), session.uri(args.member)
    reply = session.client.request("DELETE", group_path(group, "members", member))
    print(f"removed {member} from {group}; the group was rekeyed: new {_gmk(reply.get('key'))}")
    return 0


def _cmd_set_priority(session: Session, args: argparse.Namespace) -> int:
    group, member = session.uri(args.group), session.uri(args.member)
    reply = session.client.request("PATCH", group_path(group, "members", member), {"priority": args.priority})
    print(f"priority of {member} in {group} is now {reply['member']['priority']}")
    return 0


def _cmd_set_role(session: Session, args: argparse.Namespace) -> int:
    group, member = session.uri(args.group), session.uri(args.member)
    reply = session.client.request("PATCH", group_path(group, "members", member), {"role": args.role})
    print(f"role of {member} in {group} is now {reply['member']['role']}")
    return 0


def _cmd_delete(session: Session, args: argparse.Namespace) -> int:
    group = session.uri(args.group)
    session.client.request("DELETE", group_path(group))
    print(f"deleted group {group}")
    return 0


def _cmd_assign(session: Session, args: argparse.Namespace) -> int:
    group = session.uri(args.group)
    reply = session.client.request("POST", group_path(group, "dispatchers"), {"username": args.account})
    print(f"{args.account} may now manage {group}; assigned: {', '.join(reply['dispatchers'])}")
    return 0


def _cmd_unassign(session: Session, args: argparse.Namespace) -> int:
    group = session.uri(args.group)
    reply = session.client.request("DELETE", group_path(group, "dispatchers", args.account))
    print(f"{args.account} no longer manages {group}; assigned: {', '.join(reply['dispatchers']) or '-'}")
    return 0


def _cmd_audit(session: Session, args: argparse.Namespace) -> int:
    reply = session.client.request("GET", f"/api/audit?limit={args.limit}")
    chain = reply["chain"]
    verdict = "verified" if chain.get("ok") else f"BROKEN ({chain.get('reason')})"
    print(f"audit log of {reply['org']}: hash chain {verdict}")
    records = reply["records"]
    if records:
        rows = [["ID", "WHEN", "WHO", "EVENT", "DETAIL"]]
        rows += [[str(r["id"]), _when(r["at"]), r["actor"] or "-", r["event"], r["detail"]] for r in records]
        print(_table(rows))
    return 0 if chain.get("ok") else 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Manage push-to-talk groups over the dispatcher API.")
    p.add_argument("--server", default=DEFAULT_SERVER, help=f"the dispatcher API's base URL (default {DEFAULT_SERVER})")
    p.add_argument("--cacert", metavar="CERT.pem", help="trust this certificate (else the system's CAs)")
    p.add_argument("--user", required=True, metavar="NAME", help="dispatcher account")
    p.add_argument("--password-file", metavar="F", help=f"file holding the password (else ${PASSWORD_ENV} or a prompt)")
    p.add_argument("--domain", help="domain of bare names (default: the server's)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds to wait for the server")
    sub = p.add_subparsers(dest="area", required=True)
    group = sub.add_parser("group", help="groups and their members").add_subparsers(dest="command", required=True)

    create = group.add_parser("create", help="create a group and key its members")
    create.add_argument("group", metavar="NAME-OR-URI")
    create.add_argument("--member", action="append", default=[], metavar="URI")
    create.add_argument("--dispatcher", action="append", default=[], metavar="URI", help="a member who may pre-empt")
    create.add_argument("--priority", action="append", default=[], type=_priority_pair, metavar="URI=N")
    create.add_argument("--name", help="display name (default: the bare name)")
    create.add_argument("--max-burst", type=float, metavar="S", help="longest talk burst in seconds (default 30)")
    create.set_defaults(func=_cmd_create)

    group.add_parser("list", help="list the groups").set_defaults(func=_cmd_list)

    show = group.add_parser("show", help="members, presence and floor of a group")
    show.add_argument("group", metavar="URI")
    show.set_defaults(func=_cmd_show)

    add = group.add_parser("add-member", help="add a member (it is sent the current group key)")
    add.add_argument("group", metavar="URI")
    add.add_argument("member", metavar="MEMBER")
    add.add_argument("--priority", type=_priority, metavar="N")
    add.add_argument("--role", choices=("member", "dispatcher"), default="member")
    add.set_defaults(func=_cmd_add_member)

    remove = group.add_parser("remove-member", help="remove a member (the group is rekeyed)")
    remove.add_argument("group", metavar="URI")
    remove.add_argument("member", metavar="MEMBER")
    remove.set_defaults(func=_cmd_remove_member)

    priority = group.add_parser("set-priority", help="change a member's floor priority (0-255)")
    priority.add_argument("group", metavar="URI")
    priority.add_argument("member", metavar="MEMBER")
    priority.add_argument("priority", type=_priority, metavar="N")
    priority.set_defaults(func=_cmd_set_priority)

    role = group.add_parser("set-role", help="change a member's role (dispatcher: may pre-empt; admins)")
    role.add_argument("group", metavar="URI")
    role.add_argument("member", metavar="MEMBER")
    role.add_argument("role", choices=("member", "dispatcher"))
    role.set_defaults(func=_cmd_set_role)

    delete = group.add_parser("delete", help="delete a group")
    delete.add_argument("group", metavar="URI")
    delete.set_defaults(func=_cmd_delete)

    assign = group.add_parser("assign", help="let a dispatcher account manage the group (admins)")
    assign.add_argument("group", metavar="URI")
    assign.add_argument("account", metavar="ACCOUNT")
    assign.set_defaults(func=_cmd_assign)

    unassign = group.add_parser("unassign", help="take the group away from a dispatcher account (admins)")
    unassign.add_argument("group", metavar="URI")
    unassign.add_argument("account", metavar="ACCOUNT")
    unassign.set_defaults(func=_cmd_unassign)
    emergency_cli.add_commands(group)  # group emergency show|cancel|watch, group broadcast grant|revoke
    recording_cli.add_commands(group)  # group recording on|off|show (issue 17)

    audit = sub.add_parser("audit", help="the audit log of your organisation (admins)")
    audit.add_argument("--limit", type=int, default=50, metavar="N", help="the last N records (default 50)")
    audit.set_defaults(func=_cmd_audit)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, message already printed)
        return e.code if isinstance(e.code, int) else 2
    handler: Callable[[Session, argparse.Namespace], int] = args.func
    try:
        client = ApiClient(
            args.server,
            cacert=args.cacert,
            user=args.user,
            password=password_reader(args.password_file),
            timeout=args.timeout,
        )
        return handler(Session(client, args.domain), args)
    except CliError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
    except (KeyError, TypeError, AttributeError) as e:
        print(f"{PROG}: error: unexpected answer from the server ({e!r})", file=sys.stderr)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
