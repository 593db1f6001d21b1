"""Two KMS domains that trust each other, then no server at all: an ad-hoc group with a member of each.

Real processes on 127.0.0.1: `ptt-kms` for example.org and for partner.org (each `trust-domain`s the other's
enrolment for its user domain), `ptt-client provision` (which fetches the certificate cache), the KMSs stopped,
then `ptt-client adhoc create` (Alice, example.org) and `adhoc join` (Erin, partner.org) as the README shows
them, keying only (`--no-audio`). Refusals (an untrusted KMS, a partner KMS signing as one of our users) are
tested in test_adhoc_engine.py and test_adhoc_shell.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import ROOT, Daemon, clean_env, free_ports, run

DOMAINS = {"example": "example.org", "partner": "partner.org"}


def kms_cli(root: Path, name: str) -> list[str]:
    return ["-m", "server.kms.cli", "--data", str(root / f"kms-{name}")]


def client(root: Path, user: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "client.cli",
        "--keystore",
        str(root / f"{user}.ks"),
        "--passphrase-file",
        str(root / "ks.pw"),
        *args,
    ]


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("domains")
    (root / "ks.pw").write_text("keystore-passphrase\n")
    users = {"alice": "example", "erin": "partner"}
    ports = dict(zip(DOMAINS, free_ports(2), strict=True))
    for name, domain in DOMAINS.items():
        out = run(
            *kms_cli(root, name), "init", "--domain", domain, "--kms-uri", f"kms.{domain}", "--port", str(ports[name])
        )
        assert out.returncode == 0, out.stderr
        assert run(*kms_cli(root, name), "export-enrolment", "--out", str(root / f"{name}.json")).returncode == 0
    for name, other in (("example", "partner"), ("partner", "example")):
        out = run(*kms_cli(root, name), "trust-domain", str(root / f"{other}.json"), "--user-domain", DOMAINS[other])
        assert out.returncode == 0 and f"for users in {DOMAINS[other]}" in out.stdout, out.stderr
    for user, name in users.items():
        (root / f"{user}.pw").write_text(f"{user}-password-x\n")
        out = run(
            *kms_cli(root, name),
            "user",
            "add",
            user,
            "--uri",
            f"sip:{user}@{DOMAINS[name]}",
            "--password-file",
            str(root / f"{user}.pw"),
        )
        assert out.returncode == 0, out.stderr
    daemons = [Daemon([*kms_cli(root, name), "serve"], "listening on", start_timeout=30) for name in DOMAINS]
    for daemon in daemons:
        daemon.start()
    try:
        for user, name in users.items():
            provision = client(
                root,
                user,
                "provision",
                "--enrolment",
                str(root / f"{name}.json"),
                "--user",
                user,
                "--password-file",
                str(root / f"{user}.pw"),
                "--uri",
                f"sip:{user}@{DOMAINS[name]}",
            )
            out = subprocess.run(provision, cwd=ROOT, capture_output=True, text=True, timeout=120, env=clean_env())
            assert out.returncode == 0, out.stdout + out.stderr
    finally:
        for daemon in daemons:
            daemon.stop()
    return root


def adhoc(root: Path, user: str, domain: str, port: int, *args: str) -> subprocess.Popen[str]:
    command = client(
        root,
        user,
        "adhoc",
        *args,
        "--uri",
        f"sip:{user}@{domain}",
        "--interface",
        "127.0.0.1",
        "--discovery",
        f"239.255.80.99:{port}",
        "--no-audio",
        "--report",
        str(root / f"{user}.json"),
    )
    return subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env()
    )


def test_keys_list_the_partner_kms_after_provisioning(provisioned: Path) -> None:
    out = subprocess.run(
        client(provisioned, "alice", "keys"), cwd=ROOT, capture_output=True, text=True, timeout=60, env=clean_env()
    )
    assert out.returncode == 0 and "kms.partner.org" in out.stdout and "partner.org" in out.stdout, out.stdout


def test_a_partner_domain_member_is_keyed_with_no_server_running(provisioned: Path) -> None:
    (port,) = free_ports(1)
    erin = adhoc(provisioned, "erin", "partner.org", port, "join", "joint", "--script", "wait-keyed 20; wait 1; quit")
    alice = adhoc(
        provisioned,
        "alice",
        "example.org",
        port,
        "create",
        "joint",
        "--member",
        "sip:erin@partner.org",
        "--script",
        "wait-keyed 20; wait 1.5; quit",
    )
    outputs = {}
    for name, process in (("alice", alice), ("erin", erin)):
        outputs[name], _ = process.communicate(timeout=90)
        assert process.returncode == 0, outputs[name]
        assert "not keyed" not in outputs[name], outputs[name]
    alice_view = json.loads((provisioned / "alice.json").read_text())["adhoc"]
    erin_view = json.loads((provisioned / "erin.json").read_text())["adhoc"]
    (group,) = alice_view
    assert group["manager"] == "sip:alice@example.org" and group["role"] == "manager"
    assert all(m["keyed"] for m in group["members"]), group
    (joined,) = erin_view
    assert joined["uri"] == group["uri"] and joined["gmk_id"] == group["gmk_id"] and joined["role"] == "member"
