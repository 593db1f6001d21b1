"""Floor access time in a busy group while the server does heavy work elsewhere: does its reactor ever wait?

Run with ``.venv/bin/python -m bench.floorload [--quick] [--runs N] [--json OUT]``: starts a real KMS and group
server in a temporary directory (``bench.harness``). In the group ``fire``, alice presses and releases PTT like a
person (``floor-latency`` of the headless client: hold 0.2-0.4 s with audio at 50 packets/s, release, pause
0.1-0.3 s) while bob and carol listen; every Floor Request → Floor Granted time is measured at alice and matched,
by the request's wall-clock time, to the phase it fell in:

  no load     nothing else happens (the reference; again at the end, ``no load (end)``)
  (a) create  a dispatcher creates a 1000-member group over the dispatch API (``ptt-dispatch group create``; the
              members are URIs of the domain no one provisioned, the server SAKKE-encrypts to any of them), then
              removes members one by one, each removal a rekey of the rest
  (b) logins  200 clients connect to the control channel at once, each logs in (ECCSI signature over the server's
              challenge) and sends its CSK I_MESSAGE; they are the group's first 200 members, so each is also sent
              its stored GMK I_MESSAGE (``bench.loadgen``: one process, CSKs prebuilt before any phase starts);
              three such storms back to back, the 200 disconnecting before each (a server restart's reconnects)
  (c) flood   one of them sends CSK I_MESSAGEs for 10 seconds, 64 outstanding at a time (as fast as the server
              reads them): 300 distinct ones first, then the same again (replays)

Per phase: count, p50/p95/max, requests left without a Granted after 10 s (``lost``: counted as over 50 ms),
the 1-minute load average at its end; targets (each load phase) p95 <= 10 ms and max <= 50 ms, printed beside
the no-load figures of the same run. ``--runs N`` repeats everything on a fresh system and ends with min/median/max
over the runs. The machine is shared: figures are only comparable to the no-load ones measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import GROUP, ROOT, System, clean_env, start_system, stop_system
from bench.loadgen import member_uri

BIG_GROUP = "sip:big@example.org"
TARGET_P95_MS = 10.0
TARGET_MAX_MS = 50.0
HOLD = "0.2-0.4"
PAUSE = "0.1-0.3"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


@dataclass
class Phase:
    name: str
    start: float = 0.0
    end: float = 0.0
    latencies: list[float] = field(default_factory=list)
    lost: int = 0
    load: float = float("nan")
    note: str = ""

    @property
    def loaded(self) -> bool:
        return not self.name.startswith("no load")

    def figures(self) -> dict[str, float]:
        if not self.latencies:
            return {"p50": float("nan"), "p95": float("nan"), "max": float("nan")}
        worst = max(self.latencies) if not self.lost else float("inf")
        return {"p50": percentile(self.latencies, 0.5), "p95": percentile(self.latencies, 0.95), "max": worst}

    def verdict(self) -> str:
        f = self.figures()
        if not self.latencies:
            return "NO SAMPLES"
        return "OK" if f["p95"] <= TARGET_P95_MS and f["max"] <= TARGET_MAX_MS else "MISSED"


class Talker:
    """The headless talker's stdout, read on a thread: (request wall time, latency ms or None if lost)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.samples: list[tuple[float, float | None]] = []
        self.other: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            parts = line.split()
            if len(parts) == 4 and parts[0] == "floor-latency":
                self.samples.append((float(parts[2]), None if parts[3] == "lost" else float(parts[3])))
            else:
                self.other.append(line)

    def wait_samples(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.samples) < count:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"the talker produced {len(self.samples)} samples: {''.join(self.other)[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._thread.join(5)


class LoadGen:
    """``bench.loadgen`` as a subprocess, one command at a time."""

    def __init__(self, root: Path, logins: int, storms: int, flood_unique: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen", "--root", str(root), "--logins", str(logins),
             "--storms", str(storms), "--flood-unique", str(flood_unique)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=clean_env(),
        )  # fmt: skip
        self.ready = self._line(timeout=600)

    def _line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        if not result or not result[0]:
            raise RuntimeError(f"bench.loadgen did not answer: {self.stderr()}")
        return result[0].strip()

    def command(self, line: str, timeout: float = 300) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self._line(timeout)

    def stderr(self) -> str:
        if self.process.poll() is None:
            self.process.kill()
        _, err = self.process.communicate(timeout=10)
        return err[-2000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
                self.process.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


def code_root(system: System) -> str:
    """Where the server processes import their code from (a worktree measured with another tree's venv)."""
    out = subprocess.run(
        [sys.executable, "-c", "import server.main, ptt; print(server.main.__file__)"],
        cwd=ROOT, capture_output=True, text=True, env=clean_env(), timeout=60,
    )  # fmt: skip
    return out.stdout.strip() or out.stderr.strip()


def run_once(args: argparse.Namespace, tmp: Path) -> list[Phase]:
    system = start_system(tmp, group_grants=(BIG_GROUP,))
    print(f"  server code: {code_root(system)}", flush=True)
    listeners: list[subprocess.Popen[str]] = []
    talker: Talker | None = None
    loadgen: LoadGen | None = None
    phases: list[Phase] = []
    try:
        loadgen = LoadGen(tmp, args.logins, args.storms, args.flood_unique)
        print(f"  load generator: {loadgen.ready.split()[-1]} s to issue {args.logins} identities' keys and "
              f"build {args.logins * args.storms + args.flood_unique} CSK I_MESSAGEs", flush=True)  # fmt: skip
        listeners = [system.client(u, f"join {GROUP}; wait 100000") for u in ("bob", "carol")]
        talker = Talker(system.client("alice", f"join {GROUP}; wait 1; floor-latency 1000000 {HOLD} {PAUSE}"))
        talker.wait_samples(5, timeout=120)
        time.sleep(1.0)

        def phase(name: str, work: Any) -> None:
            current = Phase(name, start=time.time())
            current.note = work() or ""
            current.end = time.time()
            current.load = loadavg()
            phases.append(current)
            print(f"  {name}: {current.end - current.start:.1f} s {current.note}", flush=True)
            time.sleep(args.settle)

        phase("no load", lambda: time.sleep(args.idle))
        phase("(a) create+rekey", lambda: create_and_rekey(system, args))
        phase("(b) logins", lambda: " | ".join(loadgen.command("login") for _ in range(args.storms)) if loadgen else "")
        phase("(c) CSK flood", lambda: loadgen.command(f"flood {args.flood_seconds}") if loadgen else "")
        phase("no load (end)", lambda: time.sleep(args.idle))
    finally:
        if talker is not None:
            talker.stop()
        for p in listeners:
            p.terminate()
        for p in listeners:
            try:
                p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
        if loadgen is not None:
            loadgen.stop()
        stop_system(system)
    assert talker is not None
    for wall, latency in talker.samples:
        for current in phases:
            if current.start <= wall <= current.end:
                if latency is None:
                    current.lost += 1
                else:
                    current.latencies.append(latency)
    return phases


def create_and_rekey(system: System, args: argparse.Namespace) -> str:
    members = [a for i in range(args.members) for a in ("--member", member_uri(i))]
    started = time.perf_counter()
    out = system.dispatch("--timeout", "600", "group", "create", "big", *members, timeout=660)
    if out.returncode != 0:
        raise RuntimeError(f"group create failed: {out.stderr[-2000:]}")
    created = time.perf_counter() - started
    rekeys = []
    for i in range(args.rekeys):
        started = time.perf_counter()
        out = system.dispatch(
            "--timeout", "600", "group", "remove-member", BIG_GROUP, member_uri(args.members - 1 - i), timeout=660
        )
        if out.returncode != 0:
            raise RuntimeError(f"remove-member failed: {out.stderr[-2000:]}")
        rekeys.append(time.perf_counter() - started)
    return f"(create of {args.members} members {created:.1f} s, rekeys " + ", ".join(f"{r:.1f}" for r in rekeys) + " s)"


def fmt(value: float) -> str:
    return "  lost" if value == float("inf") else ("   n/a" if value != value else f"{value:6.1f}")


def print_run(phases: list[Phase]) -> None:
    reference = next((p for p in phases if not p.loaded), None)
    ref = reference.figures() if reference else None
    print(f"  {'phase':<18} {'n':>4} {'lost':>4} {'p50':>6} {'p95':>6} {'max':>6}  load1  "
          f"targets p95 <= {TARGET_P95_MS:.0f} ms, max <= {TARGET_MAX_MS:.0f} ms")  # fmt: skip
    for p in phases:
        f = p.figures()
        line = f"  {p.name:<18} {len(p.latencies):>4} {p.lost:>4} {fmt(f['p50'])} {fmt(f['p95'])} {fmt(f['max'])}"
        line += f"  {p.load:5.2f}"
        if p.loaded and ref is not None:
            line += f"  {p.verdict():<7} (no load: p95 {fmt(ref['p95']).strip()}, max {fmt(ref['max']).strip()})"
        print(line, flush=True)


def print_summary(runs: list[list[Phase]]) -> None:
    print(f"\nover {len(runs)} runs: min / median / max of each phase's figures (ms; load = 1-min load average)")
    names = [p.name for p in runs[0]]
    for name in names:
        per_run = [next(p for p in run if p.name == name) for run in runs]
        cells = []
        for key in ("p50", "p95", "max"):
            values = [p.figures()[key] for p in per_run]
            cells.append(f"{key} {fmt(min(values)).strip()}/{fmt(statistics.median(values)).strip()}/"
                         f"{fmt(max(values)).strip()}")  # fmt: skip
        loads = [p.load for p in per_run]
        lost = sum(p.lost for p in per_run)
        verdicts = "".join("+" if p.verdict() == "OK" else "-" for p in per_run) if per_run[0].loaded else ""
        print(f"  {name:<18} " + "   ".join(cells) + f"   load {min(loads):.2f}/{statistics.median(loads):.2f}/"
              f"{max(loads):.2f}   lost {lost}" + (f"   OK per run: {verdicts}" if verdicts else ""))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter quiet phases and flood (same load sizes)")
    parser.add_argument("--runs", type=int, default=1, help="repeat on a fresh system and summarise")
    parser.add_argument("--members", type=int, default=1000, help="members of the group created in (a)")
    parser.add_argument("--rekeys", type=int, default=2, help="members removed (each a rekey) after the create")
    parser.add_argument("--logins", type=int, default=200, help="clients logging in at once in (b)")
    parser.add_argument("--storms", type=int, default=3, help="login storms in (b), back to back")
    parser.add_argument("--flood-seconds", type=float, help="length of (c) (default 10 s, --quick 5 s)")
    parser.add_argument("--flood-unique", type=int, default=300, help="distinct CSK messages of the flood")
    parser.add_argument("--idle", type=float, help="length of the no-load phases (default 20 s, --quick 8 s)")
    parser.add_argument("--settle", type=float, default=2.0, help="quiet seconds between phases (not measured)")
    parser.add_argument("--json", help="write every run's samples and figures to this file")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the system (finally blocks) on kill
    args.idle = args.idle if args.idle is not None else (8.0 if args.quick else 20.0)
    args.flood_seconds = args.flood_seconds if args.flood_seconds is not None else (5.0 if args.quick else 10.0)
    if args.logins > args.members - args.rekeys:
        parser.error("--logins must not exceed the members left after the rekeys")
    print(f"floor access time in a busy group (loopback, SRTCP; talker paced hold {HOLD} s, pause {PAUSE} s)")
    print(f"while the server works elsewhere; {os.cpu_count()} cores, load {loadavg():.2f} at start", flush=True)
    runs: list[list[Phase]] = []
    for number in range(1, args.runs + 1):
        print(f"\nrun {number}/{args.runs}", flush=True)
        with tempfile.TemporaryDirectory(prefix="ptt-bench-floorload-") as tmp:
            phases = run_once(args, Path(tmp))
        runs.append(phases)
        print_run(phases)
        if args.json:
            Path(args.json).write_text(json.dumps([[asdict(p) for p in run] for run in runs], indent=1))
    if len(runs) > 1:
        print_summary(runs)
    return 0  # MISSED is reported, not an error: the other benchmarks carry on


if __name__ == "__main__":
    raise SystemExit(main())
