"""Ad-hoc groups off-network: time from ``adhoc create`` to every member keyed (3 and 20 members), and floor access
time with no server.

Run with ``.venv/bin/python -m bench.adhoc [--quick]`` (root: it makes network namespaces). A KMS provisions 21
users and is stopped; each user then runs ``ptt-client adhoc join --no-audio`` in its own network namespace on one
bridged LAN segment (tests/netns.py). The creator's client is told over its control socket to create groups of 3
and of 20 members; "keyed" is the creator's own measure from making the GMK to each member's signed
acknowledgement (discovery, I_MESSAGE build = SAKKE encapsulation + ECCSI signature per member, unicast delivery,
the member's verification and SAKKE decapsulation, its signed ack), and the wall-clock time seen from outside
(create command → list shows every member keyed, polled every 10 ms). The first group of a run is "cold": each
member's first decapsulation precomputes its RSK's pairing lines (≈ 19 ms). Floor access: Floor Request → the
client's permission to talk on an idle floor (TS 24.380 §7: with nobody talking, nobody answers, so the requester
takes the floor when T201 has expired C201 = 3 times: 3 x 40 ms by default), over SRTCP on the group's multicast.
Contention: two members press at once (exactly one talker?); the other is queued, and the hand-over is the time
from the talker's release to the queued member holding the floor (Floor Granted carrying the queue).
Targets: every member keyed within 1 s (3) / 2 s (20); access p95 ≤ 300 ms (TS 22.179 KPI).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import ROOT, clean_env, provision_offline
from client.adhoc_app import control_request
from tests.netns import Lan, netns_available

PASSPHRASE = "keystore-passphrase"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class Fleet:
    def __init__(self, lan: Lan, root: Path) -> None:
        self.lan, self.root = lan, root
        self.processes: dict[str, subprocess.Popen[str]] = {}

    def socket(self, user: str) -> str:
        return str(self.root / f"{user}.sock")

    def start(self, user: str) -> None:
        env = clean_env(PTT_KEYSTORE_PASSPHRASE=PASSPHRASE)
        command = [
            sys.executable, "-m", "client.cli", "--keystore", str(self.root / f"{user}.ks"), "adhoc",
            "--control-socket", self.socket(user), "join", "--uri", f"sip:{user}@example.org",
            "--interface", self.lan.peers[user].address, "--no-audio", "--quiet",
        ]  # fmt: skip
        self.processes[user] = self.lan.popen(
            user, command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
        )

    def control(self, user: str, cmd: str, **fields: Any) -> dict[str, Any]:
        reply = control_request(self.socket(user), {"cmd": cmd, **fields})
        if not reply.get("ok"):
            raise RuntimeError(f"{user}: {reply}")
        return reply

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        for user in self.processes:
            while True:
                try:
                    self.control(user, "list")
                    break
                except (OSError, ValueError):
                    if time.monotonic() > deadline or self.processes[user].poll() is not None:
                        raise RuntimeError(f"{user}'s client did not start") from None
                    time.sleep(0.1)

    def stop(self) -> None:
        for user, process in self.processes.items():
            if process.poll() is None:
                try:
                    self.control(user, "quit")
                except (OSError, ValueError, RuntimeError):
                    process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def key_group(fleet: Fleet, creator: str, members: list[str], name: str, timeout: float = 30) -> tuple[float, float]:
    """(creator's own create→last ack, in s; wall clock create command → list shows everyone keyed, in s)."""
    start = time.perf_counter()
    uri = fleet.control(creator, "create", name=name, members=[f"sip:{m}@example.org" for m in members])["group"]["uri"]
    while True:
        group = next(g for g in fleet.control(creator, "list")["groups"] if g["uri"] == uri)
        if all(m["keyed"] for m in group["members"]):
            wall = time.perf_counter() - start
            break
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"{name}: not every member keyed after {timeout} s: {group['members']}")
        time.sleep(0.01)
    return max(group["keyed"].values()), wall


def floor_access(fleet: Fleet, talker: str, group: str, rounds: int) -> list[float]:
    before = len(fleet.control(talker, "stats")["access_ms"])
    for _ in range(rounds):
        fleet.control(talker, "press", group=group)
        deadline = time.monotonic() + 5
        while len(fleet.control(talker, "stats")["access_ms"]) <= before:
            if time.monotonic() > deadline:
                raise RuntimeError("floor not granted within 5 s")
            time.sleep(0.01)
        before += 1
        time.sleep(0.05)
        fleet.control(talker, "release", group=group)
        time.sleep(0.15)  # the others see the Release: idle floor for the next round
    return list(fleet.control(talker, "stats")["access_ms"][-rounds:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args(argv)
    reason = netns_available()
    if reason is not None:
        print(f"ad-hoc benchmark skipped: network namespaces unavailable ({reason})")
        return 0
    rounds = 3 if args.quick else 8
    floor_rounds = 15 if args.quick else 60
    users = [f"u{i:02d}" for i in range(21)]
    creator, members = users[0], users[1:]
    with tempfile.TemporaryDirectory(prefix="ptt-bench-adhoc-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        provision_offline(root, users)
        print(f"provisioned {len(users)} users in {time.perf_counter() - started:.1f} s; KMS stopped")
        with Lan(users, prefix="pttb") as lan:
            fleet = Fleet(lan, root)
            try:
                started = time.perf_counter()
                for user in users:
                    fleet.start(user)
                fleet.wait_ready()
                print(f"{len(users)} ad-hoc clients up in {time.perf_counter() - started:.1f} s (one netns each)")
                time.sleep(3)  # a round of Hellos: everyone has been heard, as on a LAN where peers are present
                results: dict[int, list[tuple[float, float]]] = {3: [], 20: []}
                for index in range(rounds):
                    for size in (3, 20):
                        chosen = members[:size] if index % 2 == 0 else members[-size:]
                        results[size].append(key_group(fleet, creator, chosen, f"g{size}-{index}"))
                for size, samples in results.items():
                    cold, warm = samples[0], samples[1:]
                    own = [s[0] * 1000 for s in warm]
                    wall = [s[1] * 1000 for s in warm]
                    target = 1000 if size == 3 else 2000
                    print(
                        f"create → every member keyed, {size:2d} members: creator's measure median "
                        f"{statistics.median(own):.0f} ms (max {max(own):.0f}), wall clock median "
                        f"{statistics.median(wall):.0f} ms (max {max(wall):.0f}); first group after start "
                        f"{cold[0] * 1000:.0f} / {cold[1] * 1000:.0f} ms; target {target} ms, ratio "
                        f"{max(wall) / target:.2f}"
                    )
                pair = [f"sip:{m}@example.org" for m in members[:2]]
                group = fleet.control(creator, "create", name="floor", members=pair)["group"]["uri"]
                time.sleep(1.0)
                access = floor_access(fleet, creator, group, floor_rounds)
                p50, p95 = percentile(access, 0.5), percentile(access, 0.95)
                print(
                    f"off-network floor access (idle floor, 3 members, {len(access)} requests): p50 {p50:.1f} ms, "
                    f"p95 {p95:.1f} ms, max {max(access):.1f} ms; target p95 300 ms, ratio {p95 / 300:.2f}"
                )
                contended = contention(fleet, members[0], members[1], group, 5 if args.quick else 20)
                print(f"simultaneous PTT of two members, {contended[1]} rounds: exactly one talker in {contended[0]}")
                handovers = contended[2]
                if handovers:
                    print(
                        f"the other one queued, then given the floor when the talker released: {len(handovers)} of "
                        f"{contended[1]} rounds, hand-over median {statistics.median(handovers):.0f} ms "
                        f"(max {max(handovers):.0f})"
                    )
                else:
                    print("the other one was never queued (queueing off?)")
            finally:
                fleet.stop()
    return 0


def contention(fleet: Fleet, a: str, b: str, group: str, rounds: int) -> tuple[int, int, list[float]]:
    """Both press at the same moment: how many rounds ended with exactly one of them holding the floor; and, where
    the other was queued, ms from the winner's release to the queued member holding the floor (polled every 5 ms
    over the control sockets, so a few ms high)."""
    good = 0
    handovers: list[float] = []

    def floor_of(user: str) -> str:
        return str(next(g for g in fleet.control(user, "list")["groups"] if g["uri"] == group)["floor"])

    def press(user: str, barrier: threading.Barrier) -> None:
        barrier.wait()
        fleet.control(user, "press", group=group)

    for _ in range(rounds):
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=press, args=(u, barrier)) for u in (a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(0.6)
        floors = [floor_of(u) for u in (a, b)]
        good += floors.count("granted") == 1
        if sorted(floors) == ["granted", "queued"]:
            winner, queued = (a, b) if floors[0] == "granted" else (b, a)
            start = time.perf_counter()
            fleet.control(winner, "release", group=group)
            while floor_of(queued) != "granted" and time.perf_counter() - start < 3:
                time.sleep(0.005)
            if floor_of(queued) == "granted":
                handovers.append((time.perf_counter() - start) * 1000)
        for user in (a, b):
            fleet.control(user, "release", group=group)
        time.sleep(0.3)
    return good, rounds, handovers


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
