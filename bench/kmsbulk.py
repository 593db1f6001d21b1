"""KMS bulk issuance benchmark (issue 14): ``ptt-kms issue`` users/s with 1 and N worker processes, the CPU cost of
one key set, and what keyprov pays per user when it derives or opens a precomputed set.

Run with ``.venv/bin/python -m bench.kmsbulk [--users 5000] [--runs 3] [--workers 1,2]``. Accounts are made by
direct store inserts of service accounts (``KmsStore.add_service_accounts``: SHA-256 token hashes, as ``ptt-kms user
add-many`` does), in a temporary SQLite store. Each run precomputes a fresh period for every user (no resume), and
prints min/median/max users/s with the load average at the start of each run: on a shared machine the load says
how much of the cores the run had. The CPU cost per key set (one process, ``time.process_time``) is the figure
that does not depend on other load; ``cores / cost`` is what an idle machine reaches.

``measure_bulk`` and ``measure_serving`` are importable (``scripts/bench kms``).

Measured on the 2-core development machine (shared; load average 1.3 during these runs), 5000 users, commit of
this file, ``python -m bench.kmsbulk --users 5000 --runs 3``:

    CPU per key set (derive + seal, one process)  1.02 ms  -> idle 2 cores: 1954/s
    bulk, 1 worker   min    980  median    988  max    988 users/s   (load 1.3, 1.3, 1.3);  2 M users in 34 min
    bulk, 2 workers  min   1554  median   1559  max   1584 users/s   (load 1.2, 1.3, 1.4);  2 M users in 21 min
    keyprov key sets per user: derived 2.06 ms, precomputed 0.05 ms

Under a load average of 4-5 (other jobs on both cores) the same 2-worker run gave 370-440 users/s: the rate is
the share of the cores the run gets.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ptt import ts33180
from ptt.crypto import kms
from server.kms.bulk import issue_period
from server.kms.issuance import IssuanceDomain, KeySetSealer
from server.kms.material import make_self_signed
from server.kms.service import DomainConfig, KmsApplication
from server.kms.store import KmsStore

KMS_URI = "kms.example.org"
KEY_PERIOD = ts33180.DEFAULT_KEY_PERIOD
DOMAIN = IssuanceDomain(KMS_URI, KEY_PERIOD, 0)
SUBSCRIBERS = 2_000_000


@dataclass(frozen=True)
class Run:
    users: int
    seconds: float
    load: float  # 1-minute load average at the start

    @property
    def rate(self) -> float:
        return self.users / self.seconds


def make_store(path: Path, users: int) -> KmsStore:
    store = KmsStore(path)
    now = time.time()
    for first in range(0, users, 1000):
        names = [f"u{i}" for i in range(first, min(first + 1000, users))]
        store.add_service_accounts([(n, f"sip:{n}@example.org") for n in names], now=now)
    return store


def measure_bulk(store: KmsStore, master: kms.MasterSecrets, workers: int, runs: int, first_period: int) -> list[Run]:
    """``runs`` bulk issuances of fresh periods with ``workers`` processes."""
    results = []
    for run in range(runs):
        load = os.getloadavg()[0]
        summary = issue_period(store, master, DOMAIN, first_period + run, workers=workers)
        results.append(Run(summary.added, summary.seconds, load))
        store.purge_precomputed(first_period + run + 1, now=time.time())
    return results


def cpu_ms_per_key_set(master: kms.MasterSecrets, count: int = 300) -> float:
    sealer = KeySetSealer(master, DOMAIN)
    sealer.derive_sealed("sip:warm@example.org", 1)  # the tables
    start = time.process_time()
    for i in range(count):
        sealer.derive_sealed(f"sip:c{i}@example.org", 1)
    return (time.process_time() - start) / count * 1e3


def measure_serving(store: KmsStore, master: kms.MasterSecrets, users: int = 200) -> tuple[float, float]:
    """ms per user of keyprov's key sets (current and next period): (derived, precomputed)."""
    key, cert = make_self_signed("bench signing", san_dns=[], san_ips=[], tls_server=False)
    config = DomainConfig(kms_uri=KMS_URI, key_period=KEY_PERIOD, key_period_offset=0, base_url="https://k")
    app = KmsApplication(store, master, config, key, cert)
    now = time.time()
    current = ts33180.period_number(now, KEY_PERIOD, 0)
    identities = [f"sip:u{i}@example.org" for i in range(users)]
    store.purge_precomputed(current + 2, now=now)

    def per_user() -> float:
        start = time.perf_counter()
        for identity in identities:
            app._key_sets(identity, now)
        return (time.perf_counter() - start) / users * 1e3

    app._key_sets("sip:warm@example.org", now)
    derived = per_user()
    for period in (current, current + 1):
        issue_period(store, master, DOMAIN, period, workers=1)
    return derived, per_user()


def _summary(runs: list[Run]) -> str:
    rates = sorted(r.rate for r in runs)
    loads = ", ".join(f"{r.load:.1f}" for r in runs)
    median = statistics.median(rates)
    return (
        f"min {rates[0]:6.0f}  median {median:6.0f}  max {rates[-1]:6.0f} users/s   (load {loads});  "
        f"2 M users in {SUBSCRIBERS / median / 60:.0f} min at the median"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", default=f"1,{os.cpu_count() or 1}", help="comma-separated counts")
    args = parser.parse_args(argv)
    master = kms.generate_master_secrets()
    cores = os.cpu_count() or 1
    print(f"KMS bulk issuance: {args.users} users, {args.runs} runs, {cores} cores, load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp, make_store(Path(tmp) / "kms.sqlite3", args.users) as store:
        cost = cpu_ms_per_key_set(master)
        idle = cores * 1e3 / cost
        print(f"CPU per key set (derive + seal, one process)  {cost:.2f} ms  -> idle {cores} cores: {idle:.0f}/s")
        period = 1_000_000
        for workers in sorted({int(w) for w in args.workers.split(",")}):
            runs = measure_bulk(store, master, workers, args.runs, period)
            period += args.runs + 1
            print(f"bulk, {workers} worker{'s' if workers > 1 else ' '}  {_summary(runs)}")
        derived, precomputed = measure_serving(store, master)
        print(f"keyprov key sets per user: derived {derived:.2f} ms, precomputed {precomputed:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
