"""Encrypted recording end to end with real processes (KMS, group server, headless clients, ptt-dispatch,
ptt-server recording export, ptt-audit; harness in bench/harness.py): a recorded group, three bursts of speech from
Alice; Bob, offline all along, comes back and replays them (cross-correlation with what was spoken ≥ 0.8); Carol,
removed before the third burst, cannot have it nor open it; Dave, added after the second, gets only the third; the
server's store holds no plaintext and nothing any of its keys opens; an auditor with the compliance identity's
exported RSK reproduces the three bursts as WAV with their talker and time; exports outside the allowed periods are
refused; tampering with the KMS's audit log is detected."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.harness import GROUP, System, run, start_system, stop_system, wait_all
from client.codec import OpusEncoder
from client.headless_history import read_frames
from client.keystore import Keystore
from ptt.groupkeys import GroupKey
from ptt.playback import decrypt_burst, open_archived_keys
from ptt.recording import parse_burst
from ptt.ts33180 import period_number
from server.groups.datakey import gmk_ad
from server.groups.store import GroupStore, read_data_key
from server.kms import cli as kms_cli
from server.kms.commands import common
from tests.audio_harness import read_wav, speech_match, speech_wav

ALICE, BOB, CAROL, DAVE = (f"sip:{u}@example.org" for u in ("alice", "bob", "carol", "dave"))
COMPLIANCE = "sip:compliance@example.org"
TEXTS = (
    "Engine four is at the north gate, water supply is good.",
    "Send a second ambulance to the main square, two casualties.",
    "All units, the fire on the third floor is under control.",
)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    running = start_system(tmp_path_factory.mktemp("recording"), outsiders=("dave", "compliance"))
    yield running
    stop_system(running)


def keystore(system: System, user: str) -> Keystore:
    return Keystore.open(system.root / f"{user}.ks", (system.root / "ks.pw").read_bytes().rstrip(b"\n"))


def dispatch(system: System, *args: str) -> str:
    out = system.dispatch(*args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def match(reference: Path, heard: Path) -> float:
    ref = read_wav(reference)
    return speech_match(ref, read_wav(heard), max_lag_s=1.0).score


def server_store(system: System) -> GroupStore:
    data = system.root / "server"
    return GroupStore(data / "server.sqlite3", read_data_key(data / "data.key"))


def test_recording_replay_and_compliance_audit(system: System, tmp_path: Path) -> None:
    speech = [speech_wav(text, tmp_path / f"speech{i}.wav") for i, text in enumerate(TEXTS)]
    dispatch(system, "group", "add-member", "fire", COMPLIANCE)
    assert "recording on" in dispatch(system, "group", "recording", "on", "fire", "--retention", "30")
    assert "recording on, kept 30 days" in dispatch(system, "group", "recording", "show", "fire")

    # Alice speaks twice while Carol listens and Bob is offline; then Carol is removed, Dave added; a third burst.
    carol = system.client("carol", f"join {GROUP}; wait 14")
    alice = system.client(
        "alice", f"join {GROUP}; wait 1; talk-wav {speech[0]}; wait 1.5; talk-wav {speech[1]}; wait 2.5"
    )
    wait_all([alice, carol])
    dispatch(system, "group", "remove-member", "fire", CAROL)
    dispatch(system, "group", "add-member", "fire", DAVE)
    alice = system.client("alice", f"join {GROUP}; wait 1; talk-wav {speech[2]}; wait 2.5")
    wait_all([alice])
    assert system.report("carol")["received"] == {}  # real audio, not the synthetic tags
    assert system.report("carol")["stats"]["media_in"] > 100  # Carol heard the first two bursts live

    # Bob comes back and replays everything; Carol and Dave replay what they were keyed for.
    replays = {u: tmp_path / f"replay-{u}" for u in ("bob", "carol", "dave")}
    clients = [system.client(u, f"wait 0.5; history {GROUP} {replays[u]}") for u in replays]
    wait_all(clients, timeout=120)
    bob = system.report("bob")["history"]
    assert [b["talker"] for b in bob] == [ALICE] * 3, bob
    assert all(b["failed"] == 0 and b["decrypted"] == b["packets"] for b in bob), bob
    scores = [match(ref, Path(b["wav"])) for ref, b in zip(speech, bob, strict=True)]
    print(f"replay cross-correlation with what was spoken: {', '.join(f'{s:.3f}' for s in scores)}")
    assert min(scores) >= 0.8, scores
    carol_replay = system.report("carol")["history"]
    assert [b["id"] for b in carol_replay] == [b["id"] for b in bob[:2]]  # the third is not hers to fetch
    assert [b["id"] for b in system.report("dave")["history"]] == [bob[2]["id"]]  # nor the first two Dave's

    store = server_store(system)
    try:
        bursts = store.bursts(GROUP)
        files = {b.id: parse_burst((system.root / "server" / "recordings" / b.path).read_bytes()) for b in bursts}
        archived = {u: store.archived_keys(GROUP, u) for u in (ALICE, BOB, CAROL, DAVE, COMPLIANCE)}
        assert store.active_key(GROUP) is None
    finally:
        store.close()
    assert [b.id for b in bursts] == [b["id"] for b in bob]
    third = files[bursts[2].id]

    # Carol, removed before the third burst: even with its ciphertext, none of her keys opens it.
    carol_keys, refused = open_archived_keys(
        [k.data for k in archived[CAROL]],
        group=GROUP,
        holder_keys=keystore(system, "carol").held_keys(CAROL),
        domain=keystore(system, "carol").enrolment.certificate.domain(),  # type: ignore[union-attr]
    )
    assert len(carol_keys) == 2 and not refused
    assert decrypt_burst(third, carol_keys).rtp == []
    assert len(decrypt_burst(files[bursts[0].id], carol_keys).rtp) == bursts[0].packets

    # The server: no plaintext audio, and nothing it holds opens any burst.
    stored = b"".join(p for f in files.values() for _, p in f)
    encoder = OpusEncoder()
    for frame in read_frames(speech[0])[5:60]:
        opus = encoder.encode(frame)
        assert len(opus) < 8 or opus[:16] not in stored  # the encoded speech never appears in clear
    server_ks = Keystore.open(
        system.root / "server" / "keystore", (system.root / "server" / "keystore.pass").read_bytes()
    )
    server_domain = server_ks.enrolment.certificate.domain()  # type: ignore[union-attr]
    every_message = [k.data for keys in archived.values() for k in keys]
    for identity in server_ks.identities():
        opened, _ = open_archived_keys(
            every_message, group=GROUP, holder_keys=server_ks.held_keys(identity), domain=server_domain
        )
        assert opened == [], identity
    data_key = read_data_key(system.root / "server" / "data.key")
    db = sqlite3.connect(system.root / "server" / "server.sqlite3")
    rows = [(str(g), bytes(i), bytes(r), s) for g, i, r, s in db.execute(
        "SELECT group_uri, gmk_id, rand, sealed_gmk FROM group_keys")]  # fmt: skip
    db.close()
    candidates = [GroupKey(gmk=data_key[:16], gmk_id=i, rand=r) for _, i, r, _ in rows]  # its data key as a GMK
    for group, gmk_id, rand, sealed_gmk in rows:  # and every GMK it still keeps sealed (none of a recorded group)
        if sealed_gmk is not None:
            sealed_gmk = bytes(sealed_gmk)
            gmk = AESGCM(data_key).decrypt(sealed_gmk[:12], sealed_gmk[12:], gmk_ad(group, gmk_id, rand))
            candidates.append(GroupKey(gmk=gmk, gmk_id=gmk_id, rand=rand))
    assert all(s is None for g, _, _, s in rows if g == GROUP)
    for f in files.values():
        assert decrypt_burst(f, candidates).rtp == []

    # Compliance: the auditor exports the compliance identity's RSK for the (now past) period, ptt-audit.
    audit_dir = tmp_path / "audit"
    kms_data = system.root / "kms"
    (system.root / "audrey.pw").write_text("audrey-password-x\n")
    added = run("-m", "server.kms.cli", "--data", str(kms_data), "user", "add", "audrey", "--role", "auditor",
                "--password-file", str(system.root / "audrey.pw"))  # fmt: skip
    assert added.returncode == 0, added.stderr
    domain = keystore(system, "bob").enrolment.certificate.domain()  # type: ignore[union-attr]
    period = domain.period_number(bursts[0].started)
    rsk_file = tmp_path / "compliance.rsk"
    refused_exports = _export_rsks(kms_data, system.root / "audrey.pw", period, domain.key_period, rsk_file)
    assert refused_exports == {"current": 2, "zero": 2, "unknown": 2, "granted": 0}
    export_dir = tmp_path / "export"
    out = run("-m", "server.main", "--data", str(system.root / "server"), "recording", "export", GROUP,
              "--member", COMPLIANCE, "--out", str(export_dir))  # fmt: skip
    assert out.returncode == 0, out.stderr
    out = run(
        "-m", "server.compliance.audit", "--export", str(export_dir), "--enrolment", str(system.root / "enrol.json"),
        "--rsk", f"{period}={rsk_file}", "--out", str(audit_dir), "--kms-data", str(kms_data),
        "--auditor", "audrey", "--password-file", str(system.root / "audrey.pw"),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads((audit_dir / "report.json").read_text())
    assert [(b["id"], b["talker"], b["started"]) for b in report["bursts"]] == [
        (b.id, b.talker, b.started) for b in bursts
    ]
    audit_scores = [match(ref, audit_dir / b["wav"]) for ref, b in zip(speech, report["bursts"], strict=True)]
    print(f"audit cross-correlation: {', '.join(f'{s:.3f}' for s in audit_scores)}")
    assert min(audit_scores) >= 0.8
    assert "alice" in report["bursts"][0]["wav"] and (audit_dir / "report.txt").read_text().count(ALICE) == 3

    # Every export and the audit run are in the KMS's hash chain; editing it is detected.
    verify = run("-m", "server.kms.cli", "--data", str(kms_data), "audit", "verify")
    assert verify.returncode == 0 and "intact" in verify.stdout, verify.stdout
    log = run("-m", "server.kms.cli", "--data", str(kms_data), "audit", "log").stdout
    assert "audit-run" in log and "rsk-exported" in log and log.count("rsk-export-refused") == 3
    db = sqlite3.connect(kms_data / "kms.sqlite3")
    with db:
        db.execute("UPDATE audit SET username = 'nobody' WHERE event = 'audit-run'")
    db.close()
    verify = run("-m", "server.kms.cli", "--data", str(kms_data), "audit", "verify")
    assert verify.returncode == 1 and "BROKEN" in verify.stdout


def _export_rsks(kms_data: Path, password: Path, period: int, key_period: int, out: Path) -> dict[str, int]:
    """Run export-rsk in this process with the KMS's clock one period later (the bursts' period is then past):
    the current period, period 0 and an unknown identity are refused; the compliance identity's is written."""
    results: dict[str, int] = {}
    later = time.time() + key_period
    original = common.clock
    common.clock = lambda: later
    try:
        base = ["--data", str(kms_data), "audit", "export-rsk", "--auditor", "audrey", "--password-file", str(password)]
        current = period_number(later, key_period, 0)
        results["current"] = kms_cli.main([*base, "--user", COMPLIANCE, "--period", str(current)])
        results["zero"] = kms_cli.main([*base, "--user", COMPLIANCE, "--period", "0"])
        results["unknown"] = kms_cli.main([*base, "--user", "sip:nobody@example.org", "--period", str(period)])
        results["granted"] = kms_cli.main([*base, "--user", COMPLIANCE, "--period", str(period), "--out", str(out)])
    finally:
        common.clock = original
    return results
