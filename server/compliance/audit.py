"""``ptt-audit`` (issue 17): an auditor turns a group's recordings into WAV files, one per burst, with talker and
time, and a report; the run is appended to the KMS's audit chain before anything is opened.

  ptt-audit --export DIR --enrolment ENROLMENT.json --rsk PERIOD=FILE [--rsk ...] --out DIR
            [--since T] [--until T] --kms-data KMSDIR --auditor NAME [--password-file F]

``--export`` is what the server operator gave (``ptt-server recording export GROUP --member COMPLIANCE``):
ciphertext and the archived GMK I_MESSAGEs addressed to the compliance identity. ``--rsk`` are that identity's
RSKs of the key periods concerned (``ptt-kms audit export-rsk``: an auditor account, past periods only, each export
in the same audit chain). The GMK I_MESSAGEs are checked as any member checks them (the group's signature under
the enrolled KMS, addressed to the compliance identity's UID) and decrypt the bursts (``ptt.playback``); the Opus is
decoded as the client does (``client.history``). A burst that does not open is listed in the report with why.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from client.history import decode_rtp, write_wav
from ptt.kmsformat.enrolment import Enrolment
from ptt.mikey.imessage import IdentityKeys
from ptt.playback import decrypt_burst, open_archived_keys
from ptt.recording import RecordingFormatError, parse_burst
from server.kms.commands.audit import record_audit_run
from server.kms.commands.common import CliError, read_password

__all__ = ["main"]


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def _rsks(specs: list[str], identity: str, enrolment: Enrolment) -> list[IdentityKeys]:
    domain = enrolment.certificate.domain()
    keys = []
    for spec in specs:
        period, _, path = spec.partition("=")
        if not period.isdigit() or not path:
            raise CliError(f"--rsk {spec!r}: expected PERIOD=FILE")
        try:
            rsk = bytes.fromhex(Path(path).read_text().strip())
        except (OSError, ValueError) as exc:
            raise CliError(f"--rsk {spec!r}: cannot read an RSK ({exc})") from None
        keys.append(IdentityKeys(identity, domain, int(period), rsk=rsk))
    return keys


def run_audit(args: argparse.Namespace) -> dict[str, Any]:
    export = Path(args.export)
    document = json.loads((export / "export.json").read_text())
    group, identity = str(document["group"]), str(document["member"])
    enrolment = Enrolment.from_json(Path(args.enrolment).read_bytes())
    holder = _rsks(args.rsk, identity, enrolment)
    since = args.since if args.since is not None else float(document["since"])
    until = args.until if args.until is not None else float(document["until"])
    bursts = [b for b in document["bursts"] if since <= float(b["started"]) <= until]
    password = read_password(args.password_file, new=False, prompt=f"password of auditor {args.auditor}: ")
    detail = (
        f"{group}: {len(bursts)} bursts {_utc(since)}..{_utc(until)} as {identity}, "
        f"periods {','.join(str(k.period_no) for k in holder)}"
    )
    record_audit_run(Path(args.kms_data), args.auditor, password, detail, now=time.time())
    messages = [base64.b64decode(k["data"]) for k in document["keys"]]
    keys, refused = open_archived_keys(messages, group=group, holder_keys=holder, domain=enrolment.certificate.domain())
    out = Path(args.out)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    entries = []
    for burst in bursts:
        entry: dict[str, Any] = {
            "id": burst["id"],
            "talker": burst["talker"],
            "started": burst["started"],
            "ended": burst["ended"],
            "started_utc": _utc(float(burst["started"])),
            "packets": burst["packets"],
        }
        try:
            packets = parse_burst((export / Path(burst["file"]).name).read_bytes())
        except (OSError, RecordingFormatError) as exc:
            entries.append({**entry, "decrypted": 0, "error": f"unreadable: {exc}"})
            continue
        opened = decrypt_burst(packets, keys)
        entry.update(decrypted=len(opened.rtp), failed=opened.failed)
        if opened.rtp:
            user = str(burst["talker"]).partition(":")[2].partition("@")[0] or "talker"
            stamp = datetime.fromtimestamp(float(burst["started"]), UTC).strftime("%Y%m%dT%H%M%S")
            name = f"burst-{burst['id']}-{stamp}-{user}.wav"
            write_wav(out / name, decode_rtp(opened.rtp))
            entry.update(wav=name, sha256=hashlib.sha256((out / name).read_bytes()).hexdigest())
        else:
            entry["error"] = "; ".join(opened.reasons[:1] + refused[:1]) or "no key"
        entries.append(entry)
    report = {
        "group": group,
        "identity": identity,
        "since": since,
        "until": until,
        "auditor": args.auditor,
        "run_at": time.time(),
        "keys_opened": len(keys),
        "keys_refused": refused,
        "bursts": entries,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    lines = [f"audit of {group} as {identity}, {_utc(since)} .. {_utc(until)}, by {args.auditor}"]
    for e in entries:
        lines.append(f"#{e['id']}  {e['started_utc']}  {e['talker']}  {e.get('wav') or 'NOT OPENED: ' + e['error']}")
    (out / "report.txt").write_text("\n".join(lines) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ptt-audit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", required=True, help="the directory ptt-server recording export wrote")
    parser.add_argument("--enrolment", required=True, help="the KMS enrolment file (its domain's public keys)")
    parser.add_argument("--rsk", action="append", default=[], metavar="PERIOD=FILE", help="from export-rsk")
    parser.add_argument("--since", type=float, help="Unix time (default: the export's)")
    parser.add_argument("--until", type=float, help="Unix time (default: the export's)")
    parser.add_argument("--out", required=True, help="where the WAV files and the report go")
    parser.add_argument("--kms-data", required=True, help="the KMS data directory (the run goes in its audit log)")
    parser.add_argument("--auditor", required=True, help="the auditor account")
    parser.add_argument("--password-file", help="the auditor's password (or $PTT_KMS_PASSWORD)")
    args = parser.parse_args(argv)
    if not args.rsk:
        parser.error("give at least one --rsk PERIOD=FILE")
    try:
        report = run_audit(args)
    except (CliError, OSError, ValueError, KeyError) as exc:
        print(f"ptt-audit: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the account store's refusals (wrong password, locked) carry their own message
        if type(exc).__module__.startswith("server."):
            print(f"ptt-audit: {exc}", file=sys.stderr)
            return 2
        raise
    opened = sum(1 for b in report["bursts"] if b.get("wav"))
    print(f"{opened} of {len(report['bursts'])} bursts written to {args.out} (report.txt, report.json)")
    return 0 if opened == len(report["bursts"]) else 1


if __name__ == "__main__":
    sys.exit(main())
