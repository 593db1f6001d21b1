"""KMS benchmark (issue 14): key provisioning over real HTTPS with 1 and N ``ptt-kms serve`` workers, and bulk
issuance, on this machine.

Run with ``.venv/bin/python -m bench.kms [--quick] [--users 3000] [--runs 3] [--workers 1,2]`` (or ``scripts/bench
kms``). A KMS domain is made with the real command line (``ptt-kms init``, ``user add-many``: service accounts,
whose password check is one SHA-256 as for the group server's account), the current and the next period are
precomputed (``ptt-kms issue``), then for each worker count a real ``ptt-kms serve --workers W`` listens on
127.0.0.1 and ``bench.kmsclients`` (``--clients`` processes, ``--threads`` keep-alive TLS connections each, from
127.0.1.x addresses so that the KMS's source-address steering spreads them over the workers) drives it:

  keyprov   each user, already holding an access token, POSTs its KmsRequest to keyprov once: one response carries
            the key sets of the current and the next period (what a client fetches per user and period change)
  renewal   each user's whole monthly renewal as ``ptt-client provision --watch`` makes it: refresh_token grant at
            the IdMS (a new access token; the refresh token rotates), keyprov (a renewal needs no init: the key sets
            are checked against the enrolled certificate, and init is asked only if they fail)

Each run counts users/s (users / wall time from the start signal to the last answer), the latency of each
keyprov (keyprov mode) or whole renewal (renewal mode) as p50/p95, and the CPU seconds the KMS (supervisor and
workers) and the clients used; the 1-minute load average at the start of each run is printed (a shared machine
gives a run only part of the cores). Every answer must be 200 with a signed KmsResponse; one per run is parsed and
verified as the client does (``client.provisioning.accept_key_prov``).

Bulk issuance: ``bench.kmsbulk.measure_bulk`` (in-process ``issue_period`` with 1 and N processes) over
``--bulk-users`` service accounts, users/s and the time 2 M users would take at the median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.clusterproc import tree_cpu_seconds
from bench.harness import Daemon, free_ports, run
from bench.kmsbulk import SUBSCRIBERS, make_store, measure_bulk
from bench.kmsclients import ClientPool, RunResult
from ptt.crypto import kms

TARGET_HTTPS = 300.0  # users/s over HTTPS on this 2-core machine (issue 14)
TARGET_BULK = 1100.0  # users/s of bulk issuance: 2 M users in about 30 min


@dataclass
class Measured:
    mode: str
    workers: int
    result: RunResult
    kms_cpu: float
    load: float


def make_domain(root: Path, users: int, port: int) -> dict[str, str]:
    """A KMS domain with ``users`` service accounts and both periods precomputed; the accounts' secrets."""
    data = root / "kms"

    def admin(*args: str) -> None:
        out = run("-m", "server.kms.cli", "--data", str(data), *args, timeout=1800)
        if out.returncode != 0:
            raise SystemExit(f"ptt-kms {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")

    admin("init", "--domain", "example.org", "--kms-uri", "kms.example.org", "--port", str(port))
    admin("user", "add-many", "--prefix", "u", "--count", str(users), "--tokens-out", str(root / "tokens"))
    for period in ("current", "next"):
        admin("issue", "--period", period)
    lines = (root / "tokens").read_text().splitlines()
    return dict(line.split() for line in lines)


def measure_serving(
    root: Path, port: int, secrets: dict[str, str], args: argparse.Namespace, workers: int
) -> list[Measured]:
    data = root / "kms"
    enrolment = json.loads(run("-m", "server.kms.cli", "--data", str(data), "export-enrolment").stdout)
    daemon = Daemon(
        ["-m", "server.kms.cli", "--data", str(data), "serve", "--workers", str(workers)],
        "listening on",
        start_timeout=60,
    )
    daemon.start()
    assert daemon.process is not None
    measured = []
    try:
        pool = ClientPool(
            port=port,
            cafile=data / "tls-cert.pem",
            enrolment=enrolment,
            secrets=secrets,
            processes=args.clients,
            threads=args.threads,
        )
        with pool:
            for mode in ("keyprov", "renewal"):
                for _ in range(args.runs):
                    pool.prepare(mode)  # tokens fetched beforehand, not timed
                    load = os.getloadavg()[0]
                    before = tree_cpu_seconds(daemon.process.pid)
                    result = pool.go()
                    kms_cpu = tree_cpu_seconds(daemon.process.pid) - before
                    measured.append(Measured(mode, workers, result, kms_cpu, load))
                    print(f"  {workers} worker(s) {mode:8}  {_line(measured[-1])}", flush=True)
    finally:
        daemon.stop()
    return measured


def _line(m: Measured) -> str:
    r = m.result
    return (
        f"{r.rate:6.0f} users/s  p50 {r.percentile(50):6.1f} ms  p95 {r.percentile(95):6.1f} ms  "
        f"CPU: KMS {m.kms_cpu:5.1f} s, clients {r.client_cpu:5.1f} s over {r.seconds:4.1f} s  load {m.load:.1f}"
    )


def _summary(runs: list[Measured]) -> tuple[float, str]:
    rates = sorted(m.result.rate for m in runs)
    median = statistics.median(rates)
    p50 = statistics.median(m.result.percentile(50) for m in runs)
    p95 = statistics.median(m.result.percentile(95) for m in runs)
    loads = ", ".join(f"{m.load:.1f}" for m in runs)
    text = (
        f"min {rates[0]:5.0f}  median {median:5.0f}  max {rates[-1]:5.0f} users/s  p50 {p50:5.1f} ms  "
        f"p95 {p95:6.1f} ms  (load {loads})"
    )
    return median, text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 run, 600 users, bulk over 2000 users")
    parser.add_argument("--users", type=int, help="users provisioned per run (default 3000)")
    parser.add_argument("--runs", type=int, help="runs per worker count and mode (default 3)")
    parser.add_argument("--workers", default=f"1,{os.cpu_count() or 1}", help="comma-separated worker counts")
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--threads", type=int, default=4, help="keep-alive connections per client process")
    parser.add_argument("--bulk-users", type=int, help="accounts for the bulk issuance runs (default 5000)")
    args = parser.parse_args(argv)
    args.users = args.users or (600 if args.quick else 3000)
    args.runs = args.runs or (1 if args.quick else 3)
    args.bulk_users = args.bulk_users or (2000 if args.quick else 5000)
    counts = sorted({int(w) for w in args.workers.split(",")})
    cores = os.cpu_count() or 1
    print(f"KMS over HTTPS: {args.users} users per run, {args.runs} runs, {args.clients} client processes x "
          f"{args.threads} connections, {cores} cores, load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    results: dict[tuple[str, int], list[Measured]] = {}
    with tempfile.TemporaryDirectory(prefix="ptt-bench-kms-") as tmp:
        root = Path(tmp)
        port = free_ports(1)[0]
        started = time.monotonic()
        secrets = make_domain(root, args.users, port)
        print(f"  domain: {args.users} accounts, 2 periods precomputed in {time.monotonic() - started:.0f} s")
        for workers in counts:
            for m in measure_serving(root, port, secrets, args, workers):
                results.setdefault((m.mode, m.workers), []).append(m)
        print(f"\nBulk issuance: {args.bulk_users} users, {args.runs} runs", flush=True)
        master = kms.generate_master_secrets()
        bulk: dict[int, list[float]] = {}
        with make_store(root / "bulk.sqlite3", args.bulk_users) as store:
            period = 1_000_000
            for workers in counts:
                bulk_runs = measure_bulk(store, master, workers, args.runs, period)
                period += args.runs + 1
                bulk[workers] = sorted(r.rate for r in bulk_runs)
                loads = ", ".join(f"{r.load:.1f}" for r in bulk_runs)
                shown = ", ".join(f"{r.rate:.0f}" for r in bulk_runs)
                print(f"  {workers} worker(s): {shown} users/s (load {loads})", flush=True)
    print("\n== KMS: medians of the runs above (users/s; one user = one response with 2 periods' key sets)")
    for (mode, workers), runs in sorted(results.items(), key=lambda kv: (kv[0][0] != "keyprov", kv[0][1])):
        median, text = _summary(runs)
        ratio = median / TARGET_HTTPS
        print(f"HTTPS {mode:8} {workers} worker(s)  {text}  target {TARGET_HTTPS:.0f}: {ratio:.2f}x  "
              f"2 M users in {SUBSCRIBERS / median / 60:.0f} min")  # fmt: skip
    for workers, bulk_rates in bulk.items():
        median = statistics.median(bulk_rates)
        print(f"bulk issuance {workers} worker(s)  min {bulk_rates[0]:5.0f}  median {median:5.0f}  "
              f"max {bulk_rates[-1]:5.0f} "
              f"users/s  target {TARGET_BULK:.0f}: {median / TARGET_BULK:.2f}x  "
              f"2 M users in {SUBSCRIBERS / median / 60:.0f} min")  # fmt: skip
    if len(counts) > 1:
        one, most = counts[0], counts[-1]
        for mode in ("keyprov", "renewal"):
            if (mode, one) in results and (mode, most) in results:
                ratio = _summary(results[(mode, most)])[0] / _summary(results[(mode, one)])[0]
                print(f"{mode}: {most} workers / {one} worker = {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
