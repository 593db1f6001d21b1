"""``ptt-dispatch group emergency|broadcast ...`` (issue 16): a dispatcher sees and cancels members' emergency and
imminent peril alerts, and gives or takes the right to make broadcast group calls.

    group emergency show URI                    the alerts: who, which level, since when; the last cancellations
    group emergency cancel URI MEMBER           cancel the member's alert
    group emergency ack URI MEMBER              acknowledge it (seen and being handled; issue 15)
    group emergency watch URI [--interval S] [--count N]   print each alert raised or cancelled as it happens
    group broadcast grant|revoke URI MEMBER     the member's broadcast group call right
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from typing import Any

from server.dispatch.apiclient import Session, group_path

__all__ = ["add_commands", "alert_line"]


def _when(seconds: Any) -> str:
    try:
        return datetime.fromtimestamp(float(seconds), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def alert_line(alert: dict[str, Any]) -> str:
    """One alert as a line: ``URI LEVEL since WHEN`` (+ ``cancelled WHEN by WHO``)."""
    line = f"{alert.get('uri')} {alert.get('level')} since {_when(alert.get('since'))}"
    if alert.get("call"):
        line += " (with a call)"
    if alert.get("acked_by"):
        line += f"; acknowledged {_when(alert.get('acked_at'))} by {alert.get('acked_by')}"
    if alert.get("active") is False:
        line += f"; cancelled {_when(alert.get('cancelled_at'))} by {alert.get('cancelled_by') or '-'}"
    return line


def _alerts(session: Session, group: str) -> list[dict[str, Any]]:
    return list(session.client.request("GET", group_path(group, "alerts"))["alerts"])


def _cmd_show(session: Session, args: argparse.Namespace) -> int:
    group = session.uri(args.group)
    alerts = _alerts(session, group)
    active = [a for a in alerts if a.get("active")]
    print(f"{group}: {'EMERGENCY' if any(a['level'] == 'emergency' for a in active) else 'no emergency'}")
    for alert in sorted(alerts, key=lambda a: (not a.get("active"), a.get("since", 0))):
        print(("  ACTIVE    " if alert.get("active") else "  cancelled ") + alert_line(alert))
    return 0


def _cmd_cancel(session: Session, args: argparse.Namespace) -> int:
    group, member = session.uri(args.group), session.uri(args.member)
    reply = session.client.request("DELETE", group_path(group, "alerts", member))
    print(f"cancelled: {alert_line(reply['cancelled'])}")
    return 0


def _cmd_ack(session: Session, args: argparse.Namespace) -> int:
    group, member = session.uri(args.group), session.uri(args.member)
    reply = session.client.request("POST", group_path(group, "alerts", member, "ack"))
    print(f"acknowledged: {alert_line(reply['acknowledged'])}")
    return 0


def _cmd_watch(session: Session, args: argparse.Namespace) -> int:
    group = session.uri(args.group)
    seen: dict[str, dict[str, Any]] = {}
    rounds = 0
    while args.count is None or rounds < args.count:
        for alert in _alerts(session, group):
            uri = str(alert.get("uri"))
            if seen.get(uri) != alert:
                state = "RAISED" if alert.get("active") else "CANCELLED"
                print(f"{state} {alert_line(alert)}", flush=True)
                if alert.get("active"):
                    sys.stdout.write("\a")
                seen[uri] = alert
        rounds += 1
        if args.count is None or rounds < args.count:
            time.sleep(args.interval)
    return 0


def _cmd_broadcast(session: Session, args: argparse.Namespace) -> int:
    group, member = session.uri(args.group), session.uri(args.member)
    method = "PUT" if args.action == "grant" else "DELETE"
    reply = session.client.request(method, group_path(group, "members", member, "broadcast"))
    right = "may" if reply["member"].get("broadcast") else "may not"
    print(f"{member} {right} make broadcast group calls in {group}")
    return 0


def add_commands(group: Any) -> None:
    """The ``emergency`` and ``broadcast`` commands under ``group`` (its subparsers)."""
    emergency = group.add_parser("emergency", help="members' emergency and imminent peril alerts")
    sub = emergency.add_subparsers(dest="emergency_command", required=True)
    show = sub.add_parser("show", help="the alerts of a group: who, which level, since when")
    show.add_argument("group")
    show.set_defaults(func=_cmd_show)
    cancel = sub.add_parser("cancel", help="cancel a member's alert")
    cancel.add_argument("group")
    cancel.add_argument("member")
    cancel.set_defaults(func=_cmd_cancel)
    ack = sub.add_parser("ack", help="acknowledge a member's alert (seen, being handled)")
    ack.add_argument("group")
    ack.add_argument("member")
    ack.set_defaults(func=_cmd_ack)
    watch = sub.add_parser("watch", help="print alerts as they are raised and cancelled (terminal bell on each)")
    watch.add_argument("group")
    watch.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between looks (1)")
    watch.add_argument("--count", type=int, metavar="N", help="stop after N looks (default: until Ctrl-C)")
    watch.set_defaults(func=_cmd_watch)
    broadcast = group.add_parser("broadcast", help="a member's right to make broadcast group calls")
    broadcast.add_argument("action", choices=("grant", "revoke"))
    broadcast.add_argument("group")
    broadcast.add_argument("member")
    broadcast.set_defaults(func=_cmd_broadcast)
