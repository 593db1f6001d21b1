"""``ptt-client adhoc``'s options and its short commands (add, remove, leave, list, press, release), which talk to
the running ad-hoc client over its control socket and print a readable line (``--json`` for scripts)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from client.errors import Exit, UserError


def cmd_adhoc_control(args: argparse.Namespace) -> int:
    from client import adhoc_app

    path = args.control_socket or adhoc_app.default_socket(args.keystore)
    request: dict[str, Any] = {"cmd": args.adhoc_command}
    for name in ("group", "member"):
        if getattr(args, name, None):
            request[name] = getattr(args, name)
    try:
        reply = adhoc_app.control_request(path, request)
    except (ConnectionError, OSError, ValueError) as exc:
        raise UserError(str(exc), Exit.UNREACHABLE) from None
    if not reply.get("ok"):
        raise UserError(str(reply.get("error", "refused")), Exit.REFUSED)
    if args.json:
        print(json.dumps(reply, indent=1))
    elif args.adhoc_command == "list":
        print_listing(reply)
    else:
        print(describe_reply(args.adhoc_command, request, reply))
    return 0


def describe_reply(command: str, request: dict[str, Any], reply: dict[str, Any]) -> str:
    """One line for a short command's success."""
    group = reply.get("group") or {}
    name = group.get("name") or group.get("uri") or request.get("group") or "the selected group"
    if command == "add":
        return f"added {request['member']} to {name} (revision {group.get('revision')}; it gets the current key)"
    if command == "remove":
        return f"removed {request['member']} from {name} (revision {group.get('revision')}; the others are rekeyed)"
    if command == "leave":
        return f"left {name}"
    return f"{command}: done in {name}"


def print_listing(reply: dict[str, Any]) -> None:
    groups = reply.get("groups", [])
    if not groups:
        print(f"{reply.get('uri')}: no ad-hoc groups")
    for group in groups:
        print(f"{group['name'] or '-'}  {group['uri']}")
        print(f"  {group['role']}, manager {group['manager']}, revision {group['revision']}, media {group['media']}, "
              f"floor {group['floor']}, talking {group['talker'] or '-'}")  # fmt: skip
        width = max(len(m["uri"]) for m in group["members"]) if group["members"] else 0
        for member in group["members"]:
            online = "online" if member["online"] else "away"
            keyed = "keyed" if member["keyed"] else "NOT keyed"
            print(f"    {member['uri']:<{width}}  {online:<6}  {keyed}")


def add_adhoc(sub: Any, run: Any) -> None:
    adhoc = sub.add_parser("adhoc", help="off-network groups: no server, no KMS; keyed and run by the clients")
    adhoc.add_argument("--control-socket", help="the running client's control socket (default: KEYSTORE.adhoc.sock)")
    commands = adhoc.add_subparsers(dest="adhoc_command", required=True)

    def agent_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--uri", help="your identity (default: the keystore's, or uri in client.toml)")
        parser.add_argument("--interface", help="local IPv4 address of the LAN to use (default: the routing table's)")
        parser.add_argument("--discovery", default="239.255.80.84:8450", help="discovery multicast group ADDR:PORT")
        parser.add_argument("--port", type=int, default=0, help="unicast UDP port for key delivery (default: any)")
        parser.add_argument("--priority", type=int, default=0, help="floor priority (0-255; higher pre-empts)")
        parser.add_argument("--input-device", help="microphone (name or part of it; default: the system's)")
        parser.add_argument("--output-device", help="speaker (name or part of it; default: the system's)")
        parser.add_argument("--no-audio", action="store_true", help="no microphone or speaker (keying only)")
        parser.add_argument(
            "--script", help="steps instead of keys: wait S; wait-keyed S; talk S; press; release; quit"
        )
        parser.add_argument("--report", help="write what was sent and heard to this JSON file at exit")
        parser.add_argument("--quiet", action="store_true", help="no status line")
        parser.add_argument("--json", action="store_true", help="group events as JSON lines (for scripts)")
        parser.set_defaults(func=run)

    create = commands.add_parser("create", help="create a group, key its members and talk in it")
    create.add_argument("name")
    create.add_argument("--member", action="append", required=True, help="member identity URI (repeat)")
    create.add_argument("--media", help="media multicast ADDR:PORT (default: random in 239.255.0.0/16)")
    agent_options(create)
    join = commands.add_parser("join", help="wait for ad-hoc groups to be keyed by a nearby manager, and talk")
    join.add_argument("name", nargs="?", help="accept only a group of this name")
    join.add_argument("--accept-from", action="append", help="accept groups only from this manager URI (repeat)")
    agent_options(join)
    for name, text in (("add", "add a member (it gets the current key)"),
                       ("remove", "remove a member (the others are rekeyed)")):  # fmt: skip
        parser = commands.add_parser(name, help=text)
        parser.add_argument("group", help="group name or URI")
        parser.add_argument("member", help="member identity URI")
    leave = commands.add_parser(
        "leave", help="leave a group (its manager rekeys; if you manage it, a member takes over)"
    )
    leave.add_argument("group", help="group name or URI")
    listing = commands.add_parser("list", help="the running client's ad-hoc groups, members and key status")
    for name in ("press", "release"):
        parser = commands.add_parser(name, help=f"PTT {name} in a group (for a hardware button or a script)")
        parser.add_argument("group", nargs="?", help="group name or URI (default: the selected one)")
    for parser in (commands.choices[c] for c in ("add", "remove", "leave", "press", "release")):
        parser.add_argument("--json", action="store_true", help="the reply as JSON")
        parser.set_defaults(func=cmd_adhoc_control)
    listing.add_argument("--json", action="store_true", help="the listing as JSON")
    listing.set_defaults(func=cmd_adhoc_control)
