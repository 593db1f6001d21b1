"""Failover time for ``bench.cluster``: kill -9 the node serving a call while a member talks in short bursts, and
time, for a listener at the surviving node and one at the killed node, the first packet heard after the kill."""

from __future__ import annotations

import json
import time

from bench.clusterharness import Cluster, arrivals_after

TALK_BEFORE_KILL = 6.0
LISTEN_AFTER_KILL = 10.0


def measure_failovers(cluster: Cluster, group: str, kills: int) -> dict[str, list[float]]:
    """``kills`` times: alice talks (``talk-loop``) and bob listens at the node that will survive, carol at the
    serving node; the serving node is killed, then restarted. Seconds from the kill to the first packet each
    listener heard ("at the surviving node", "at the killed node"); a listener who heard nothing counts as inf."""
    members = [a for u in ("alice", "bob", "carol") for a in ("--member", f"sip:{u}@example.org")]
    created = cluster.dispatch("group", "create", "fire", *members)
    if created.returncode != 0:
        raise RuntimeError(f"cannot create {group}: {created.stderr}")
    results: dict[str, list[float]] = {"at the surviving node": [], "at the killed node": []}
    names = [n.name for n in cluster.nodes]
    for number in range(kills):
        owner = cluster.wait_owned([group], timeout=60)[group]
        dying = names.index(owner)
        survivor = 1 - dying
        total = TALK_BEFORE_KILL + LISTEN_AFTER_KILL
        tag = f"k{number}"
        talk = f"join {group}; wait 1; talk-loop {total}"
        alice = cluster.client("alice", talk, node=survivor, report=f"alice-{tag}")
        bob = cluster.client("bob", f"join {group}; wait {total + 2}", node=survivor, report=f"bob-{tag}")
        carol = cluster.client("carol", f"join {group}; wait {total + 2}", node=dying, report=f"carol-{tag}")
        time.sleep(TALK_BEFORE_KILL + 2)
        killed_at = time.time()
        cluster.nodes[dying].kill()
        for process in (alice, bob, carol):
            output, _ = process.communicate(timeout=120)
            if process.returncode != 0:
                raise RuntimeError(f"a failover client failed:\n{output[-3000:]}")
        for kind, name in (("at the surviving node", "bob"), ("at the killed node", "carol")):
            report = json.loads((cluster.root / f"{name}-{tag}.json").read_text())
            after = arrivals_after(report, "alice", killed_at)
            results[kind].append(after[0] - killed_at if after else float("inf"))
        print(f"  kill {number + 1}: {cluster.nodes[dying].name} killed; heard again after "
              + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in results.items()), flush=True)  # fmt: skip
        cluster.nodes[dying].daemon.start()
    return results
