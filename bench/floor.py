"""Floor access time (Floor Request → Floor Granted) on loopback through the real server: p50/p95.

Run with ``.venv/bin/python -m bench.floor [--rounds N]``: starts a KMS and a group server in a temporary
directory, one headless client joins the group and requests and releases the floor N times (each request sent
SRTCP-protected over UDP to the relay, arbitrated by the floor control server, Granted returned the same way)
while two more members listen. Target: p95 <= 10 ms (MCPTT KPI: access < 300 ms).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench.harness import GROUP, start_system, stop_system, wait_all


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ptt-bench-floor-") as tmp:
        system = start_system(Path(tmp))
        try:
            listeners = [system.client(u, f"join {GROUP}; wait {3 + args.rounds * 0.02:.1f}") for u in ("bob", "carol")]
            talker = system.client("alice", f"join {GROUP}; wait 1; floor-latency {args.rounds}")
            wait_all([talker, *listeners], timeout=120 + args.rounds)
            latencies = system.report("alice")["floor_latency_ms"]
        finally:
            stop_system(system)
    p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
    print(f"floor access time over {len(latencies)} requests (loopback, 3 members, SRTCP):")
    mean = statistics.mean(latencies)
    print(f"  p50 {p50:.2f} ms   p95 {p95:.2f} ms   mean {mean:.2f} ms   max {max(latencies):.2f} ms")
    print(f"  target p95 <= 10 ms: ratio {10.0 / p95:.2f} {'ok' if p95 <= 10 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
