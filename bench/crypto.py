"""Crypto and key-distribution benchmark: medians against the targets of the foundation issue.

Run with ``scripts/bench`` (or ``.venv/bin/python -m bench.crypto [--quick]``). Prints one line per operation
with the median time, the target and the ratio (target / measured: above 1 means the target is met).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from ptt.crypto import eccsi, kms, sakke
from ptt.crypto.pairing import MillerLines, miller_lines
from ptt.crypto.params import SAKKE_CURVE
from ptt.groupkeys import make_group_key
from ptt.mikey.imessage import IdentityKeys, KmsDomain
from ptt.ts33180 import uid
from server.workers import CryptoPool

Op = Callable[[], Any]


def median_ms(op: Op, runs: int, setup: Callable[[], None] | None = None) -> float:
    samples = []
    for _ in range(runs):
        if setup is not None:
            setup()
        start = time.perf_counter()
        op()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def report(name: str, value_ms: float, target_ms: float | None, unit: str = "ms") -> None:
    if target_ms is None:
        print(f"{name:<48} {value_ms:10.3f} {unit}")
    else:
        ratio = target_ms / value_ms
        verdict = "ok" if ratio >= 1 else "MISSED"
        print(f"{name:<48} {value_ms:10.3f} {unit}   target <= {target_ms:g} {unit}   ratio {ratio:5.2f}  {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer runs (smoke test)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    runs = 30 if args.quick else 200
    heavy_runs = 10 if args.quick else 60

    print(f"ptt crypto benchmark: {os.cpu_count()} cores, python {sys.version.split()[0]}, medians")
    start = time.perf_counter()
    master = kms.generate_master_secrets()
    ident = uid("sip:alice@example.org", "kms.example.org", 2592000, 0, 1500)
    keys = kms.issue_user_keys(ident, master)
    sakke.encapsulate(bytes(16), ident, master.z_public)  # builds the P and Z tables
    print(f"{'one-off table set-up (P, Z, G, KPAK, g)':<48} {(time.perf_counter() - start) * 1e3:10.1f} ms")

    message = os.urandom(600)
    signature = eccsi.sign(message, ident, keys.ssk, keys.pvt, master.kpak)
    report("ECCSI sign", median_ms(lambda: eccsi.sign(message, ident, keys.ssk, keys.pvt, master.kpak), runs), 0.5)
    report("ECCSI verify", median_ms(lambda: eccsi.verify(message, signature, ident, master.kpak), runs), 1.5)
    report(
        "ECCSI signing-key validation (RFC 6507 5.1.2)",
        median_ms(lambda: eccsi.validate_signing_key(ident, keys.ssk, keys.pvt, master.kpak), runs),
        None,
    )

    ssv = os.urandom(16)
    encapsulated = sakke.encapsulate(ssv, ident, master.z_public)
    report("SAKKE encapsulate", median_ms(lambda: sakke.encapsulate(ssv, ident, master.z_public), heavy_runs), 3.0)
    report(
        "SAKKE decapsulate (RSK lines cached)",
        median_ms(lambda: sakke.decapsulate(encapsulated, ident, keys.rsk, master.z_public), heavy_runs),
        8.0,
    )
    report(
        "SAKKE decapsulate (first with a new RSK)",
        median_ms(
            lambda: sakke.decapsulate(encapsulated, ident, keys.rsk, master.z_public),
            heavy_runs // 2,
            setup=miller_lines.cache_clear,
        ),
        None,
    )
    report(
        "SAKKE RSK validation (RFC 6508 6.1.2, cold)",
        median_ms(
            lambda: sakke.validate_rsk(ident, keys.rsk, master.z_public),
            heavy_runs // 2,
            setup=miller_lines.cache_clear,
        ),
        None,
    )
    point = SAKKE_CURVE.decode(encapsulated[:257])
    lines = miller_lines(keys.rsk)
    report("pairing, fixed argument precomputed", median_ms(lambda: lines.evaluate(*point), heavy_runs), None)
    rsk_point = SAKKE_CURVE.decode(keys.rsk)
    report(
        "pairing, cold (incl. line precomputation)",
        median_ms(lambda: MillerLines(rsk_point), heavy_runs // 2)
        + median_ms(lambda: lines.evaluate(*point), heavy_runs // 2),
        None,
    )

    domain = KmsDomain(kms_uri="kms.example.org", kpak=master.kpak, z=master.z_public)
    manager_uri = "sip:fire-ops@example.org"
    manager_uid = domain.uid(manager_uri, domain.period_number(time.time()))
    ssk, pvt = kms.issue_signing_key(manager_uid, master)
    manager = IdentityKeys(
        uri=manager_uri, domain=domain, period_no=domain.period_number(time.time()), ssk=ssk, pvt=pvt
    )
    pool = CryptoPool(None, args.workers, domains=[domain])  # the pool ptt-server runs (no reactor needed here)
    try:
        distributor = pool.distributor
        distributor.distribute(manager, make_group_key(), ["sip:warm@example.org"] * args.workers * 2)
        for members in (100, 1000):
            uris = [f"sip:user{i}@example.org" for i in range(members)]
            samples = []
            for _ in range(1 if args.quick else 3):
                start = time.perf_counter()
                messages = distributor.distribute(manager, make_group_key(), uris)
                samples.append((time.perf_counter() - start) * 1e3)
                assert len(messages) == members
            target = 2000.0 if members == 1000 else None
            report(
                f"GMK distribution to {members} members ({args.workers} workers)", statistics.median(samples), target
            )
    finally:
        pool.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
