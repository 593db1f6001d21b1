"""``ptt-server recording export GROUP --member URI [--since T] [--until T] --out DIR`` (issue 17): what an auditor
needs of a group's recordings, ciphertext only, as the server holds it: every burst in the range (its SRTP file and
metadata) and the archived GMK I_MESSAGEs addressed to one member (the organisation's compliance identity). Nothing
in it opens without that member's RSK, which only the KMS gives (``ptt-kms audit export-rsk``). The export is
written to the group store's audit log.

DIR/export.json: {group, member, since, until, exported_at, bursts: [{id, talker, ssrc, started, ended, gmk_ids,
packets, file}], keys: [{gmk_id, data (base64), created_at}]}; DIR/burst-ID.pttr: the stored bursts as they are.
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from pathlib import Path
from typing import Any

from server.groups.mediablobs import media_blobs

__all__ = ["add_commands", "cmd_recording_export"]


def cmd_recording_export(args: argparse.Namespace, store: Any, recordings: Path) -> int:
    group, member = args.group, args.member
    if store.group(group) is None:
        raise ValueError(f"no group {group}")
    since = args.since if args.since is not None else 0.0
    until = args.until if args.until is not None else time.time()
    bursts = store.bursts(group, since=since, until=until, limit=100_000)
    keys = store.archived_keys(group, member)
    if not keys:
        raise ValueError(f"{member} never held a key of {group} while it was recorded: nothing it could open")
    out = Path(args.out)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    listed = []
    blobs = media_blobs(recordings, store)  # files on one host, the shared store with several nodes
    for burst in bursts:
        name = f"burst-{burst.id}.pttr"
        (out / name).write_bytes(blobs.get(burst.path))
        listed.append({**burst.to_json(), "file": name})
    document = {
        "group": group,
        "member": member,
        "since": since,
        "until": until,
        "exported_at": time.time(),
        "bursts": listed,
        "keys": [
            {"gmk_id": k.gmk_id.hex(), "data": base64.b64encode(k.data).decode(), "created_at": k.created_at}
            for k in keys
        ],
    }
    (out / "export.json").write_text(json.dumps(document, indent=1))
    store.audit(
        "recording-export",
        actor=None,
        detail=f"{group}: {len(listed)} bursts {since:.0f}..{until:.0f} with the keys of {member}",
        now=time.time(),
    )
    print(f"{len(listed)} bursts of {group} and {len(keys)} key messages of {member} exported to {out}")
    return 0


def add_commands(sub: Any) -> None:
    recording = sub.add_parser("recording", help="recorded bursts (ciphertext) for an auditor")
    rsub = recording.add_subparsers(dest="action", required=True)
    export = rsub.add_parser("export", help="a group's bursts and one member's key messages, as stored")
    export.add_argument("group")
    export.add_argument("--member", required=True, help="whose archived key messages (the compliance identity)")
    export.add_argument("--since", type=float, help="Unix time (default: the beginning)")
    export.add_argument("--until", type=float, help="Unix time (default: now)")
    export.add_argument("--out", required=True)
