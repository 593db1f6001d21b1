"""``ptt-dispatch group recording ...`` (issue 17): a dispatcher turns a group's encrypted recording on or off and
sees what was recorded (metadata only: the server cannot play it).

    group recording on URI --retention DAYS     record the group (it is rekeyed), keep bursts DAYS days
    group recording off URI                     stop recording (what was recorded stays until its retention ends)
    group recording show URI                    on or off, retention, the last bursts: talker, start, length
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from server.dispatch.apiclient import Session, group_path

__all__ = ["add_commands"]


def _when(seconds: Any) -> str:
    try:
        return datetime.fromtimestamp(float(seconds), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def _cmd_recording(session: Session, args: argparse.Namespace) -> int:
    group = session.uri(args.group)
    path = group_path(group, "recording")
    if args.action == "on":
        if args.retention is None:
            raise SystemExit("ptt-dispatch: group recording on needs --retention DAYS")
        reply = session.client.request("PUT", path, {"retention_days": args.retention})
        key = reply.get("key") or {}
        days = reply["retention_days"]
        print(f"{group}: recording on, bursts kept {days} days (rekeyed: GMK-ID {key.get('gmk_id')})")
    elif args.action == "off":
        session.client.request("DELETE", path)
        print(f"{group}: recording off (bursts recorded so far stay until their retention ends)")
    else:
        reply = session.client.request("GET", path)
        state = f"on, kept {reply['retention_days']} days" if reply["recording"] else "off"
        print(f"{group}: recording {state}")
        for burst in reply.get("bursts", []):
            seconds = float(burst["ended"]) - float(burst["started"])
            print(f"  #{burst['id']}  {_when(burst['started'])}  {seconds:5.1f} s  {burst['talker']}")
    return 0


def add_commands(group: Any) -> None:
    """The ``recording`` command under ``group`` (its subparsers)."""
    recording = group.add_parser("recording", help="encrypted recording of a group's calls (the server cannot play)")
    recording.add_argument("action", choices=("on", "off", "show"))
    recording.add_argument("group")
    recording.add_argument("--retention", type=int, metavar="DAYS", help="with on: days bursts are kept (1-3650)")
    recording.set_defaults(func=_cmd_recording)
