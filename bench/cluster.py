"""Cluster benchmark (issue 13): forwarded packets/s and floor access time over 1, 2 and 4 server nodes on this
machine, with the ratio to one node, and the failover time when the node serving a call is killed.

Run with ``.venv/bin/python -m bench.cluster [--quick] [--runs N] [--nodes 1,2,4] [--groups G]`` (or ``scripts/bench
cluster``). A real PostgreSQL is started as in the tests (``tests.postgres.start_postgres``), then for each node
count a fresh database and a fresh cluster (``bench.clusterharness``: a KMS, N ``ptt-server`` nodes with
``--workers 1``). The G groups (``sip:cNNNN@groups.example.org``, 10 members each; the server's KMS account is
granted the namespace) are created through the dispatcher HTTPS API of every node in turn after the nodes started,
so their leases spread by rendezvous hashing; the bench waits until each group has a lease.

Load: ``bench.clusterload``, one process (its docstring says what a member does): the members of every group (G, or
more for saturate mode, below) logged in, spread
round-robin over the nodes, each joined and bound at the relay of the node serving its group (keepalives from the
start of the setup). The generator does not read the media copies: a socket filter drops RTP in the kernel at each
member socket, where it is counted (/proc/net/udp ``drops``), and a C child process, the sink (``bench/sink.c``),
reads only the floor control and passes it to Python; the RTP is sent by another C child, the talker
(``bench/talker.c``: GSO batches from the members' own sockets), so Python does only the signalling (login, join,
floor) and the generator's CPU (below, with its children's) stays small next to the nodes'. Each configuration is
measured ``--runs`` times (3; 1 with ``--quick``) in two modes on the same cluster:

  fixed      the G groups talk (one talker at a time, 2 s bursts, 0.2 s between them) at 50 packets/s: the offered
             load is the same for every node count, so forwarded/s shows whether the nodes keep up with it
  saturate   ``--saturate-groups-per-node`` (225) groups per node talk (per core at most: with more nodes than
             cores, cores x 225 groups), 10-s turns at ``--saturate-rate`` (190) packets/s per talker (under the
             relay's 200/s limit per member): ~385 000 copies/s offered per node, more than one node forwards on a
             core, so forwarded/s is the nodes' capacity. If the machine cannot set up that many members, 180 is
             the fallback. The report says per configuration whether the nodes were saturated: the relays'
             sockets dropped datagrams (the nodes did not read all that was offered) - the ratio of 2 nodes to 1 is
             the nodes' scaling only if 1 node was saturated and the talker sent what it offered

Forwarded/s = media copies the listeners received / seconds (nothing is counted twice: each copy arrives at one
member socket); beside it the packets/s the talkers really sent (a starved generator sends less than it offers:
its pacing makes up at most 0.1 s of arrears) and "delivered", the copies received over sent x 9. Floor p95 =
Floor Request -> Floor Granted at the talker (SRTCP under its CSK), measured on the generator's clock, so its own
lag is included. Per run the CPU seconds used by the nodes (each with its crypto worker; /proc/PID/stat of the
process tree), by the generator (with its sink), and by the whole machine (/proc/stat: the other users of a shared
machine) are printed, with the 1-minute load average: on 2 cores the nodes and the generator compete, and the CPU
split shows where the cores went. Each run's line also shows the sink's share of the generator's CPU and the
datagrams the kernel dropped for a full receive buffer during the run: at the nodes' relay sockets (a node that did
not get the CPU to read them: in saturate mode, the offered load it could not take) and machine-wide
(``RcvbufErrors``, /proc/net/snmp); then the nodes' own counters (``GET /api/node``, ``node_counters``): members
bound, the relays' drops by reason, the rounds and fences of the leases, the slowest round and the least slack
before a lease deadline; and the floor requests denied by cause. The ratio is each configuration's median over the
median of 1 node, measured in the same invocation. Nothing is pinned to a core.

Failover (with 2 nodes, after the load runs, the generator stopped): in the group ``sip:fire@example.org``, alice
talks in short bursts (``ptt-headless ... talk-loop``) from the node that will survive, bob listens at the same
node and carol at the node serving the call; that node is killed (kill -9); the failover time of a listener is its
first packet from alice after the kill minus the kill time (wall clock, the headless report's ``arrivals``). Then
the killed node is restarted and the next kill hits whichever node serves the call then; ``--kills`` (5) of them,
min/median/max per listener kind.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.clusterharness import Cluster, start_cluster
from bench.clusterload import GROUP_HOST, group_uri
from bench.clusterproc import LineProcess, loadavg, machine_cpu_seconds, tree_cpu_seconds, udp_rcvbuf_errors
from bench.clustersink import udp_drops
from bench.failover import measure_failovers
from bench.floorload import percentile
from bench.loadgen import member_uri

FAILOVER_GROUP = "sip:fire@example.org"


@dataclass
class Run:
    mode: str
    forwarded_per_s: float
    sent: int
    received: int
    latencies_ms: list[float]
    lost: int
    node_cpu: float
    generator_cpu: float
    seconds: float
    load: float
    size: int
    machine_cpu: float
    sink_cpu: float = 0.0  # the generator's C sink (part of generator_cpu)
    talker_cpu: float = 0.0  # the generator's C talker (part of generator_cpu)
    groups: int = 0  # groups talking
    drops: dict[str, int] = field(default_factory=dict)  # datagrams the kernel dropped at full receive buffers
    node: dict[str, float] = field(default_factory=dict)  # the nodes' own counters during the run (node_counters)
    denied: dict[str, int] = field(default_factory=dict)  # floor requests denied, by the Deny's phrase
    talker_calls: int = 0  # the talker's system calls (GSO batches)

    def delivered(self) -> float:
        """Copies received over the copies the sent packets should have made (every other member of the group)."""
        return self.received / (self.sent * (self.size - 1)) if self.sent else float("nan")

    def p95(self) -> float:
        return percentile(self.latencies_ms, 0.95) if self.latencies_ms else float("nan")

    def relay_drop_share(self) -> float:
        """Talkers' datagrams the relays' sockets dropped (full receive buffer: the node did not read them)."""
        return self.drops.get("relays", 0) / self.sent if self.sent else 0.0

    def saturated(self) -> bool:
        """The nodes did not take everything offered: more than 1 % of the talkers' packets dropped at the relays."""
        return self.relay_drop_share() > 0.01


@dataclass
class Configuration:
    nodes: int
    runs: list[Run] = field(default_factory=list)
    setup: dict[str, Any] = field(default_factory=dict)
    spread: dict[str, int] = field(default_factory=dict)
    failovers: dict[str, list[float]] = field(default_factory=dict)

    def median(self, mode: str, key: str) -> float:
        values = [_value(r, key) for r in self.runs if r.mode == mode]
        return statistics.median(values) if values else float("nan")


def _value(run: Run, key: str) -> float:
    return run.p95() if key == "p95" else float(getattr(run, key))


def create_groups(cluster: Cluster, groups: int, size: int) -> float:
    """Every group through the dispatcher API, the nodes' APIs taken in turn (four requests at a time)."""
    clients = [cluster.api(i) for i in range(len(cluster.nodes))]

    def create(g: int) -> None:
        members = [{"uri": member_uri(g * size + k)} for k in range(size)]
        body = {"uri": group_uri(g), "name": f"c{g}", "members": members}
        clients[g % len(clients)].request("POST", "/api/groups", body)

    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(create, range(groups)))
    return time.perf_counter() - started


def measure_configuration(args: argparse.Namespace, postgres: Any, nodes: int, work: Path) -> Configuration:
    config = Configuration(nodes)
    url = postgres.create_database(f"cluster_bench_{nodes}")
    root = work / f"nodes-{nodes}"
    users = ("alice", "bob", "carol")
    grants = (f"sip:*@{GROUP_HOST}", FAILOVER_GROUP)
    cluster = start_cluster(root, url, nodes=nodes, users=users, groups=grants, workers=1)
    generator: LineProcess | None = None
    try:
        saturate_groups = saturate_group_count(args, nodes)
        groups = max(args.groups, saturate_groups)
        created = create_groups(cluster, groups, args.size)
        owners = cluster.wait_owned([group_uri(g) for g in range(groups)], timeout=300)
        config.spread = {n.name: sum(1 for o in owners.values() if o == n.name) for n in cluster.nodes}
        print(f"  {groups} groups created in {created:.1f} s, served by {config.spread}", flush=True)
        generator = LineProcess(
            ["-m", "bench.clusterload", "--root", str(root), "--server-info", str(cluster.server_info(0)),
             "--groups", str(groups), "--size", str(args.size)], ready_timeout=900,
        )  # fmt: skip
        print(f"  generator: {generator.ready}", flush=True)
        config.setup = json.loads(generator.command("setup", timeout=900).partition(" ")[2])
        print(f"  setup: {config.setup}", flush=True)
        for number in range(args.runs):
            for mode, rate, talking, burst in (("fixed", 50.0, args.groups, 2.0),
                                               ("saturate", args.saturate_rate, saturate_groups, 10.0)):  # fmt: skip
                run = measure_run(cluster, generator, mode, f"{rate} {talking} {burst}", args.seconds, args.size)
                config.runs.append(run)
                print(f"  run {number + 1} {mode:<8} {run.groups} groups: forwarded {run.forwarded_per_s:6.0f}/s "
                      f"(sent {run.sent / run.seconds:5.0f}/s, delivered {run.delivered():.1%})  floor p95 "
                      f"{run.p95():7.1f} ms (n {len(run.latencies_ms)}, lost {run.lost})  cpu nodes "
                      f"{run.node_cpu:4.1f} s, generator {run.generator_cpu:4.1f} s (sink {run.sink_cpu:3.1f} s, "
                      f"talker {run.talker_cpu:3.1f} s, {run.sent / max(run.talker_calls, 1):.1f} packets per call), "
                      f"machine {run.machine_cpu:4.1f} s in {run.seconds:.1f} s  "
                      f"load {run.load:.2f}  drops " + ", ".join(f"{k} {v}" for k, v in run.drops.items())
                      + f"  saturated: {'yes' if run.saturated() else 'no'}", flush=True)  # fmt: skip
                print("    nodes: " + ", ".join(f"{k} {v:g}" for k, v in run.node.items() if v)
                      + f"; floor denied {run.denied}", flush=True)  # fmt: skip
        generator.stop()
        generator = None
        if nodes == 2 and args.kills:
            config.failovers = measure_failovers(cluster, FAILOVER_GROUP, args.kills)
    finally:
        if generator is not None:
            generator.stop()
        cluster.stop()
    return config


def saturate_group_count(args: argparse.Namespace, nodes: int) -> int:
    """Groups talking in saturate mode: ``--saturate-groups-per-node`` per node, for at most as many nodes as cores
    (more nodes share the same cores: more groups would only add drops, and members past the file limit)."""
    return int(args.saturate_groups_per_node * min(nodes, os.cpu_count() or 1))


def measure_run(cluster: Cluster, generator: LineProcess, mode: str, load: str, seconds: float, size: int) -> Run:
    node_pids = [n.daemon.process.pid for n in cluster.nodes if n.daemon.process is not None]
    relay_ports = {n.relay_port for n in cluster.nodes}
    machine, relay_drops, rcvbuf = machine_cpu_seconds(), udp_drops(relay_ports), udp_rcvbuf_errors()
    before = [tree_cpu_seconds(pid) for pid in node_pids], tree_cpu_seconds(generator.pid)
    stats_before = cluster.node_stats()
    answer = generator.command(f"load {seconds} {load}", timeout=seconds + 120)
    if not answer.startswith("load-done "):
        raise RuntimeError(f"the generator failed: {answer}")
    report = json.loads(answer.partition(" ")[2])
    after = [tree_cpu_seconds(pid) for pid in node_pids], tree_cpu_seconds(generator.pid)
    machine = machine_cpu_seconds() - machine
    drops = {"relays": udp_drops(relay_ports) - relay_drops, "machine": udp_rcvbuf_errors() - rcvbuf}
    elapsed = float(report["seconds"])
    node = node_counters(stats_before, cluster.node_stats())
    return Run(
        mode, report["received"] / elapsed, report["sent"], report["received"], report["latencies_ms"],
        report["lost"], sum(after[0]) - sum(before[0]), after[1] - before[1], elapsed, loadavg(), size, machine,
        float(report.get("sink_cpu", 0.0)), float(report.get("talker_cpu", 0.0)), int(report.get("groups", 0)), drops,
        node, dict(report.get("denied_why", {})), int(report.get("talker_calls", 0)),
    )  # fmt: skip


def node_counters(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, float]:
    """What the nodes counted between two ``Cluster.node_stats``, summed over the nodes: the members bound at the
    end, members unbound for silence (``dead``), datagrams the relays dropped by reason (``fenced``: past the lease
    deadline; ``token``: a keepalive of an unknown binding; ``rtcp``: floor control from an unbound address;
    ``rate``; ``unbound``; ``not_talker``...), floor messages the calls dropped, the rounds that failed and the
    times a node fenced itself and lost groups; with the slowest round and the least time left before a lease
    deadline (since the nodes started)."""
    totals: dict[str, float] = {}
    for name, stats in after.items():
        old = before.get(name, {})
        pairs = [(k.removeprefix("dropped_"), v, old.get("relay", {}).get(k, 0))
                 for k, v in stats["relay"].items() if k.startswith("dropped_") or k == "dead"]  # fmt: skip
        pairs.append(("floor_dropped", stats["floor_dropped"], old.get("floor_dropped", 0)))
        cluster, old_cluster = stats.get("cluster") or {}, old.get("cluster") or {}
        pairs += [(k, cluster[k], old_cluster.get(k, 0)) for k in ("rounds_failed", "fenced", "lost") if k in cluster]
        totals["bound"] = totals.get("bound", 0) + stats["relay"].get("bound", 0)  # members bound at the end
        for key, value, previous in pairs:
            totals[key] = totals.get(key, 0) + value - previous
        if cluster:
            totals["round_max_s"] = max(totals.get("round_max_s", 0.0), cluster["round_max_s"])
            if cluster["slack_min_s"] is not None:
                totals["slack_min_s"] = min(totals.get("slack_min_s", float("inf")), cluster["slack_min_s"])
    return totals


def load_configurations(path: Path) -> list[Configuration]:
    configs = []
    for entry in json.loads(path.read_text()):
        runs = [Run(**run) for run in entry.pop("runs")]
        configs.append(Configuration(**entry, runs=runs))
    return configs


def triple(values: list[float], digits: int = 0) -> str:
    if not values:
        return "n/a"
    return " / ".join(f"{v:.{digits}f}" for v in (min(values), statistics.median(values), max(values)))


def print_report(configs: list[Configuration], args: argparse.Namespace) -> None:
    reference = next((c for c in configs if c.nodes == 1), None)
    print(f"\n{args.groups} groups x {args.size} members in fixed mode (50 packets/s, 2-s turns); saturate: "
          f"{args.saturate_groups_per_node} groups per node (per core at most) at {args.saturate_rate:g} packets/s, "
          f"10-s turns; {args.runs} run(s) of {args.seconds:.0f} s per mode; min / median / max over the runs; "
          "ratio = median / median of 1 node; saturated = more than 1 % of the talkers' packets dropped at the "
          "relays' sockets\n")  # fmt: skip
    print(
        "| nodes | mode | groups | forwarded packets/s | ratio | talkers sent/s | delivered % | floor p95 ms | lost "
        "| CPU s nodes | node cores used | relay drops % | saturated | copies per node CPU s | CPU s generator "
        "(talker) | CPU s machine | load1 |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: "
          "| ---: | ---: |")  # fmt: skip
    for config in configs:
        for mode in ("fixed", "saturate"):
            runs = [r for r in config.runs if r.mode == mode]
            if not runs:
                continue
            ratio = "n/a"
            if reference is not None and reference.median(mode, "forwarded_per_s") > 0:
                ratio = f"{config.median(mode, 'forwarded_per_s') / reference.median(mode, 'forwarded_per_s'):.2f}"
            sent = triple([r.sent / r.seconds for r in runs])
            delivered = triple([100 * r.delivered() for r in runs], 1)
            saturated = sum(1 for r in runs if r.saturated())
            print(f"| {config.nodes} | {mode} | {runs[0].groups} | {triple([r.forwarded_per_s for r in runs])} | "
                  f"{ratio} | {sent} | {delivered} | "
                  f"{triple([r.p95() for r in runs], 1)} | {sum(r.lost for r in runs)} | "
                  f"{triple([r.node_cpu for r in runs], 1)} | {triple([r.node_cpu / r.seconds for r in runs], 2)} | "
                  f"{triple([100 * r.relay_drop_share() for r in runs], 1)} | "
                  f"{'yes' if saturated == len(runs) else 'no' if not saturated else f'{saturated}/{len(runs)}'} | "
                  f"{triple([r.received / r.node_cpu for r in runs])} | "
                  f"{triple([r.generator_cpu for r in runs], 1)} ({triple([r.talker_cpu for r in runs], 1)}) | "
                  f"{triple([r.machine_cpu for r in runs], 1)} | "
                  f"{triple([r.load for r in runs], 2)} |")  # fmt: skip
    if reference is not None:
        one = [r for r in reference.runs if r.mode == "saturate"]
        if one and all(r.saturated() for r in one):
            print("\nsaturate: 1 node was saturated in every run (relay drops): the ratios are the nodes' scaling")
        elif one:
            print("\nsaturate: 1 node was NOT saturated in every run: the ratios show the offered load, not the "
                  "nodes' capacity")  # fmt: skip
    for config in configs:
        if config.failovers:
            print(f"\nfailover with {config.nodes} nodes, {args.kills} kills (kill -9 -> first packet heard), seconds:")
            print("| listener | n | min / median / max |")
            print("| --- | ---: | ---: |")
            for kind, values in config.failovers.items():
                print(f"| {kind} | {len(values)} | {triple(values, 2)} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 run, 40 groups, 8 s per mode, 2 kills")
    parser.add_argument("--runs", type=int, help="runs per configuration and mode (default 3, --quick 1)")
    parser.add_argument("--nodes", default="1,2,4", help="node counts to measure (1 is the ratio's reference)")
    parser.add_argument("--groups", type=int, help="groups (default 200, --quick 40)")
    parser.add_argument("--size", type=int, default=10, help="members per group")
    parser.add_argument("--seconds", type=float, help="seconds per run and mode (default 20, --quick 8)")
    parser.add_argument("--saturate-rate", type=float, default=190.0, help="packets/s per talker in saturate mode")
    parser.add_argument("--saturate-groups-per-node", type=int, default=225,
                        help="groups talking per node (per core at most) in saturate mode (fallback: 180)")  # fmt: skip
    parser.add_argument("--kills", type=int, help="failover kills with 2 nodes (default 5, --quick 2; 0: none)")
    parser.add_argument("--json", help="write every run's figures to this file")
    parser.add_argument("--from-json", help="only print the report of a file --json wrote (same other options)")
    args = parser.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.groups = args.groups or (40 if args.quick else 200)
    args.seconds = args.seconds or (8.0 if args.quick else 20.0)
    args.kills = args.kills if args.kills is not None else (2 if args.quick else 5)
    if args.from_json:
        print_report(load_configurations(Path(args.from_json)), args)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the finally blocks stop everything
    from tests.postgres import start_postgres

    print(f"cluster: {args.groups} groups x {args.size} over {args.nodes} node(s); {os.cpu_count()} cores, "
          f"load {loadavg():.2f} at start", flush=True)  # fmt: skip
    configs: list[Configuration] = []
    postgres = start_postgres()
    try:
        with tempfile.TemporaryDirectory(prefix="ptt-bench-cluster-") as tmp:
            for nodes in [int(n) for n in args.nodes.split(",")]:
                print(f"\n{nodes} node(s)", flush=True)
                configs.append(measure_configuration(args, postgres, nodes, Path(tmp)))
                if args.json:
                    Path(args.json).write_text(json.dumps([c.__dict__ for c in configs], default=lambda o: o.__dict__))
    finally:
        postgres.stop()
    print_report(configs, args)
    print(f"\nload {loadavg():.2f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
