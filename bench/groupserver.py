"""The group server's state for ``bench.groups``: a process that creates groups through the server's own path and
reports its RSS. Run as a script (``python bench/groupserver.py N MEMBERS``) so that ``PYTHONPATH`` may point it at
another tree (the reference: the code before a change), whose ``ptt``/``server``/``client`` it then imports.

What it holds is what ``server.service.makeService`` holds for its groups: the group store (SQLite, sealed with a
data key), the ``GroupManager`` signing each group's GMK I_MESSAGEs as the group's identity, the ``GroupCall``
(``set_group`` for each change, as ``CallShell.group_changed`` does) and, per group identity, the key sets the KMS
provisions (current and next key period), validated as ``client.provisioning`` validates them (RFC 6507 §5.1.2,
RFC 6508 §6.1.2) and kept in a ``client.keystore.Keystore``. The HTTPS hop is left out; the KMS's issuing runs
here (its P and G tables, ~14 MB, are ones the server's validation builds anyway). The server seals its whole
keystore to disk after each identity's provisioning; that is done here at the checkpoints and at the end only (at
10 000 groups one save takes seconds: ``save_s``), so the RSS after a save is measured but not its cost per group.

Prints one JSON object per line: ``{"stage": ..., "groups": n, "rss_mb": ..., ...}``.
"""

from __future__ import annotations

import gc
import json
import sys
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def emit(stage: str, groups: int, **extra: object) -> None:
    gc.collect()
    print(json.dumps({"stage": stage, "groups": groups, "rss_mb": round(rss_mb(), 1), **extra}), flush=True)


def main(argv: list[str]) -> int:
    count, members = int(argv[0]), int(argv[1])
    checkpoints = {int(c) for c in argv[2].split(",")} if len(argv) > 2 else set()
    emit("interpreter", 0)
    # the imports makeService makes (server.service, its parts): an empty server holds these
    from client.keystore import Keystore, StoredKeySet
    from ptt.crypto import eccsi, kms, sakke
    from ptt.groupcall import GroupCall
    from ptt.groupinfo import RelayAddress
    from ptt.mikey.imessage import IdentityKeys, KmsDomain
    from ptt.relaycore import RelayCore
    from server import service  # noqa: F401  (what the server imports at start-up)
    from server.callshell import group_info
    from server.groups.manager import GroupChange, GroupManager, MemberSpec
    from server.groups.store import GroupStore
    from server.keydistribution import GroupKeyDistributor

    master = kms.generate_master_secrets()
    domain = KmsDomain("kms.example.org", master.kpak, master.z_public, 2592000, 0)

    class Keys:
        """The keystore's part of ``ServerKeys``: key sets per (identity, period), provisioned on first use."""

        def __init__(self, keystore: Keystore) -> None:
            self.key_sets = keystore.key_sets

        def domain(self) -> KmsDomain:
            return domain

        def keys_for(self, group_uri: str, now: float) -> IdentityKeys | None:
            period = domain.period_number(now)
            if (group_uri, period) not in self.key_sets:
                for p in (period, period + 1):  # a keyprov answer: the current and the next key period
                    ident = domain.uid(group_uri, p)
                    material = kms.issue_user_keys(ident, master)  # the KMS's work (not the server's)
                    if not eccsi.validate_signing_key(ident, material.ssk, material.pvt, domain.kpak):
                        raise RuntimeError("SSK/PVT invalid")
                    if not sakke.validate_rsk(ident, material.rsk, domain.z):
                        raise RuntimeError("RSK invalid")
                    self.key_sets[(group_uri, p)] = StoredKeySet(
                        group_uri, p, ident, material.ssk, material.pvt, material.rsk, None, None
                    )
            stored = self.key_sets[(group_uri, period)]
            return IdentityKeys(group_uri, domain, period, stored.ssk, stored.pvt, stored.rsk)

    with tempfile.TemporaryDirectory(prefix="ptt-bench-groups-") as tmp:
        store = GroupStore(Path(tmp) / "server.sqlite3", bytes(32))
        call = GroupCall(RelayCore(), RelayAddress("127.0.0.1", 9))

        def changed(change: GroupChange) -> None:  # CallShell.group_changed, no member online
            if change.record is not None:
                call.set_group(group_info(change.record, change.members, change.alerts), time.time())
            if change.messages:
                call.imessages(change.group, change.gmk_id, change.messages, lambda member: False)

        distributor = GroupKeyDistributor(workers=1, domains=[domain])
        keystore = Keystore(Path(tmp) / "keystore", b"bench")
        manager = GroupManager(store, Keys(keystore), distributor=distributor, on_change=changed)

        def saved() -> float:
            start = time.perf_counter()
            keystore.save()
            return round(time.perf_counter() - start, 3)

        import ptt

        emit("empty", 0, code=str(Path(ptt.__file__).parent.parent))
        times: list[float] = []
        now = time.time()
        for index in range(count):
            specs = [MemberSpec(f"sip:user{index * members + m}@example.org") for m in range(members)]
            start = time.perf_counter()
            manager.create_group(f"sip:group{index}@example.org", f"Group {index}", specs, created_by="bench", now=now)
            times.append(time.perf_counter() - start)
            if index + 1 in checkpoints:
                emit("checkpoint", index + 1, save_s=saved())
        emit("idle", count, save_s=saved(), create_ms=[round(t * 1e3, 2) for t in times])
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
