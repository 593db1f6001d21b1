"""The main job until the KMS and the group server exist: one MIKEY-SAKKE group keying, end to end.

Creates a KMS domain in a temporary directory (master secrets 0600, public certificate), issues keys for a
group identity (the group manager) and two users for the current key period, builds a GMK I_MESSAGE for
each member signed as the group, and then, as each member, verifies and decrypts it and prints the SRTP key
ID (MKI = GMK-ID || GUK-ID) it would send with. Keys never appear in the output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from ptt.crypto import eccsi, kms, sakke
from ptt.groupkeys import make_group_key
from ptt.mikey.imessage import IdentityKeys, KmsDomain, ReplayCache, receive_i_message
from ptt.ts33180 import DEFAULT_KEY_PERIOD, CsId, srtp_master_key_and_salt, srtp_mki


def _write_private(path: Path, content: dict[str, object]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(content, f, indent=1)


def create_domain(directory: Path, kms_uri: str) -> KmsDomain:
    master = kms.generate_master_secrets()
    _write_private(directory / "master-secrets.json", {"ksak": master.ksak.hex(), "z": master.z_secret.hex()})
    certificate = {
        "KmsUri": kms_uri,
        "UserIdFormat": 2,
        "UserKeyPeriod": DEFAULT_KEY_PERIOD,
        "UserKeyOffset": 0,
        "PubAuthKey": master.kpak.hex(),
        "PubEncKey": master.z_public.hex(),
        "ParameterSet": 1,
    }
    (directory / "kms-certificate.json").write_text(json.dumps(certificate, indent=1))
    return load_domain(directory)


def load_domain(directory: Path) -> KmsDomain:
    cert = json.loads((directory / "kms-certificate.json").read_text())
    return KmsDomain(
        cert["KmsUri"],
        bytes.fromhex(cert["PubAuthKey"]),
        bytes.fromhex(cert["PubEncKey"]),
        cert["UserKeyPeriod"],
        cert["UserKeyOffset"],
    )


def issue_keys(directory: Path, domain: KmsDomain, uri: str, period_no: int) -> Path:
    secrets = json.loads((directory / "master-secrets.json").read_text())
    master = kms.MasterSecrets(
        ksak=bytes.fromhex(secrets["ksak"]), kpak=domain.kpak, z_secret=bytes.fromhex(secrets["z"]), z_public=domain.z
    )
    material = kms.issue_user_keys(domain.uid(uri, period_no), master)
    path = directory / f"keys-{hashlib.sha256(uri.encode()).hexdigest()[:12]}.json"
    _write_private(
        path,
        {
            "uri": uri,
            "period_no": period_no,
            "ssk": material.ssk.hex(),
            "pvt": material.pvt.hex(),
            "rsk": material.rsk.hex(),
        },
    )
    return path


def load_keys(path: Path, domain: KmsDomain) -> IdentityKeys:
    data = json.loads(path.read_text())
    keys = IdentityKeys(
        data["uri"],
        domain,
        data["period_no"],
        bytes.fromhex(data["ssk"]),
        bytes.fromhex(data["pvt"]),
        bytes.fromhex(data["rsk"]),
    )
    # what every client does with keys from a KMS: RFC 6507 §5.1.2 and RFC 6508 §6.1.2
    if not eccsi.validate_signing_key(keys.uid, keys.ssk, keys.pvt, domain.kpak):
        raise SystemExit(f"{keys.uri}: signing key fails validation")
    if not sakke.validate_rsk(keys.uid, keys.rsk, domain.z):
        raise SystemExit(f"{keys.uri}: RSK fails validation")
    return keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kms-uri", default="kms.example.org")
    parser.add_argument("--group", default="sip:fire-ops@example.org")
    parser.add_argument("--member", action="append", help="member URI (repeatable)")
    args = parser.parse_args(argv)
    members = args.member or ["sip:alice@example.org", "sip:bob@example.org"]
    now = time.time()
    with tempfile.TemporaryDirectory(prefix="ptt-kms-") as tmp:
        directory = Path(tmp)
        domain = create_domain(directory, args.kms_uri)
        period = domain.period_number(now)
        print(f"KMS domain {domain.kms_uri} in {directory} (key period {period}, {domain.key_period} s)")
        paths = {uri: issue_keys(directory, domain, uri, period) for uri in [args.group, *members]}
        print(f"issued ECCSI and SAKKE keys for {args.group} (group manager) and {', '.join(members)}")

        manager = load_keys(paths[args.group], domain)
        group_key = make_group_key()
        from ptt.groupkeys import build_gmk_messages

        started = time.perf_counter()
        messages = build_gmk_messages(manager, group_key, members, now=now)
        took = (time.perf_counter() - started) * 1e3
        print(
            f"group manager: GMK-ID {group_key.gmk_id.hex()}, {len(messages)} I_MESSAGEs signed as "
            f"{args.group} in {took:.1f} ms"
        )

        fingerprints = set()
        for uri in members:
            member = load_keys(paths[uri], domain)
            received = receive_i_message(
                messages[uri],
                responder=member,
                expected_initiators=args.group,
                trusted_kms={domain.kms_uri: domain},
                now=time.time(),
                replay_cache=ReplayCache(),
            )
            master_key, _ = srtp_master_key_and_salt(received.key, CsId.GROUP_CALL, received.csb_id, received.rand)
            fingerprints.add(hashlib.sha256(received.key).hexdigest())
            print(
                f"{uri}: I_MESSAGE ({len(messages[uri])} octets) verified from {received.initiator_uri}, "
                f"GMK-ID {received.key_id.hex()}, GUK-ID {received.csb_id.hex()}, "
                f"SRTP key ID (MKI) {srtp_mki(received.key_id, received.csb_id).hex()}, "
                f"SRTP master key derived ({len(master_key)} octets)"
            )
        same = len(fingerprints) == 1
        print(f"all members hold the same GMK: {'yes' if same else 'NO'}")
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
