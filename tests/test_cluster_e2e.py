"""Two group-server nodes over one PostgreSQL on 127.0.0.1 (real processes; harness in bench/clusterharness.py):
members connected to different nodes talk in one group; the node serving the group is killed (kill -9) and the
call goes on at the other node within the failover time."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.clusterharness import Cluster, arrivals_after, start_cluster
from tests.audio_harness import speech_wav
from tests.postgres import PostgresServer, postgres_server  # noqa: F401  (fixture)

GROUP = "sip:fire@example.org"
FAILOVER_LIMIT = 5.0

pytestmark = pytest.mark.xdist_group("cluster")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer) -> Iterator[Cluster]:  # noqa: F811
    url = postgres_server.create_database("cluster_e2e")
    running = start_cluster(tmp_path_factory.mktemp("cluster"), url, nodes=2, groups=(GROUP,))
    try:
        members = [a for u in ("alice", "bob", "carol") for a in ("--member", f"sip:{u}@example.org")]
        created = running.dispatch("group", "create", "fire", *members, node=1)  # at the node that will not serve it
        assert created.returncode == 0, created.stderr
        yield running
    finally:
        running.stop()


def report(cluster: Cluster, name: str) -> dict[str, Any]:
    return dict(json.loads(Path(cluster.root / f"{name}.json").read_text()))


def test_client_info_lists_every_node(cluster: Cluster) -> None:
    info = json.loads(cluster.server_info(0).read_text())
    assert info["nodes"][0]["name"] == "node1"
    assert {n["name"] for n in info["nodes"]} == {"node1", "node2"}
    assert all(n["cert_pem"].startswith("-----BEGIN CERTIFICATE") for n in info["nodes"])


def test_a_node_that_is_only_slow_never_makes_two_servers_of_a_call(cluster: Cluster) -> None:
    """The serving node is frozen (SIGSTOP) past its lease: the other node takes the group over (a new lease
    generation) and the members rejoin there; when the frozen node wakes up it has fenced itself (its relay
    serves nothing past its deadline) and gives the group up at its first round, without a word to the members."""
    owner = cluster.wait_owned([GROUP])[GROUP]
    frozen = cluster.node(owner)
    other = next(n for n in cluster.nodes if n.name != owner)
    other_index = cluster.nodes.index(other)
    go = cluster.root / "go-slow"
    alice = cluster.client("alice", f"join {GROUP}; wait-file {go}; talk-loop 16", node=other_index)
    bob = cluster.client("bob", f"join {GROUP}; wait-file {go}; wait 18", node=other_index)
    cluster.start_together(go.name, GROUP, ("alice", "bob"), node=other_index)
    time.sleep(4)
    process = frozen.daemon.process
    assert process is not None
    process.send_signal(signal.SIGSTOP)
    stopped_at = time.time()
    try:
        time.sleep(6)
        assert cluster.owner(GROUP) == other.name
    finally:
        process.send_signal(signal.SIGCONT)
    outputs = {}
    for name, client in (("alice", alice), ("bob", bob)):
        outputs[name], _ = client.communicate(timeout=60)
        assert client.returncode == 0, outputs[name]
    a, b = report(cluster, "alice"), report(cluster, "bob")
    heard = b["arrivals"].get("alice", [])
    assert sum(b["received"].values()) <= a["sent"]  # nothing twice
    after = arrivals_after(b, "alice", stopped_at)
    assert after and after[0] - stopped_at < FAILOVER_LIMIT, (heard[-3:], stopped_at, outputs["bob"])
    assert len(arrivals_after(b, "alice", stopped_at + 7)) >= 100  # after the frozen node woke up, still heard
    woke = frozen.daemon.output()
    assert f"group {GROUP} is no longer served here" in woke, woke[-3000:]
    assert cluster.owner(GROUP) == other.name


def test_a_node_late_with_its_renewals_serves_its_calls_again(cluster: Cluster) -> None:
    """Every node's round waits on a lock for 2.5 s (the database is slow): the serving node passes its deadline and
    fences itself (drops the call), but nobody took the group. It takes it back at the next lease generation, the
    members are told to join again, and the call goes on (at the same generation nobody would have told them)."""
    import psycopg

    owner = cluster.wait_owned([GROUP])[GROUP]
    other_index = 1 - [n.name for n in cluster.nodes].index(owner)
    go = cluster.root / "go-late"
    alice = cluster.client("alice", f"join {GROUP}; wait-file {go}; talk-loop 16", node=other_index)
    bob = cluster.client("bob", f"join {GROUP}; wait-file {go}; wait 18", node=other_index)
    cluster.start_together(go.name, GROUP, ("alice", "bob"), node=other_index)
    time.sleep(4)
    with psycopg.connect(cluster.database, autocommit=True) as conn, conn.transaction():
        conn.execute("SELECT name FROM ptt_nodes FOR UPDATE")  # the heartbeat, a round's first statement, waits
        time.sleep(2.5)
    released_at = time.time()
    outputs = {}
    for name, client in (("alice", alice), ("bob", bob)):
        outputs[name], _ = client.communicate(timeout=60)
        assert client.returncode == 0, outputs[name]
    a, b = report(cluster, "alice"), report(cluster, "bob")
    assert sum(b["received"].values()) <= a["sent"]  # nothing twice
    log = cluster.node(owner).daemon.output()
    assert f"group {GROUP} is no longer served here" in log, log[-3000:]  # it did fence itself
    after = arrivals_after(b, "alice", released_at)
    assert after and after[0] - released_at < FAILOVER_LIMIT, outputs["bob"]
    assert len(arrivals_after(b, "alice", released_at + 3)) >= 100, outputs["bob"]  # and kept hearing her


def test_a_burst_recorded_at_one_node_is_replayed_through_the_other(cluster: Cluster, tmp_path: Path) -> None:
    """Recorded SRTP lives in the shared store with several nodes (``server.groups.mediablobs``): a member
    connected to the node that did not record a burst replays it all the same."""
    owner = cluster.wait_owned([GROUP])[GROUP]
    owner_index = [n.name for n in cluster.nodes].index(owner)
    other_index = 1 - owner_index
    on = cluster.dispatch("group", "recording", "on", GROUP, "--retention", "1", node=other_index)
    assert on.returncode == 0, on.stderr
    try:
        alice = cluster.client("alice", f"join {GROUP}; wait 1; talk 2; wait 2.5", node=owner_index)
        out, _ = alice.communicate(timeout=60)
        assert alice.returncode == 0, out
        replay = cluster.client("bob", f"wait 0.5; history {GROUP} {tmp_path}", node=other_index, report="bob-replay")
        out, _ = replay.communicate(timeout=90)
        assert replay.returncode == 0, out
    finally:
        cluster.dispatch("group", "recording", "off", GROUP, node=other_index)
    history = report(cluster, "bob-replay")["history"]
    assert history and history[-1]["talker"] == "sip:alice@example.org", history
    assert history[-1]["failed"] == 0 and history[-1]["decrypted"] == history[-1]["packets"] > 50, history
    files = [f for n in cluster.nodes for f in (cluster.root / n.name / "recordings").glob("*/*.pttr")]
    assert not files, files  # no node keeps a file of its own


def test_a_voice_message_between_nodes_is_announced_and_its_states_told_live(cluster: Cluster, tmp_path: Path) -> None:
    """Bob is connected to one node, Alice to the other: her voice message's notice reaches Bob at once (over
    NOTIFY, not at his next login), and his "delivered"/"played" reach Alice while she is connected."""
    speech = speech_wav("Bring the second ladder to the north gate.", tmp_path / "speech.wav")
    go = cluster.root / "go-message"
    script = f"join {GROUP}; wait-file {go}; wait-message 40; play-messages {tmp_path}; wait 1"
    bob = cluster.client("bob", script, node=1, report="bob-m")
    alice = cluster.client(
        "alice",
        f"join {GROUP}; wait-file {go}; message-wav sip:bob@example.org {speech}; wait-message-status last played 60",
        node=0,
        report="alice-m",
    )
    cluster.start_together(go.name, GROUP, ("alice", "bob"), node=0)  # both connected before the message exists
    for process in (bob, alice):
        out, _ = process.communicate(timeout=120)
        assert process.returncode == 0, out
    (sent,) = report(cluster, "alice-m")["messages_sent"]
    played = report(cluster, "bob-m")["messages_played"]
    assert [(p["id"], p["from"]) for p in played] == [(sent["message"], "sip:alice@example.org")], played
    assert played[0]["failed"] == 0 and played[0]["decrypted"] == played[0]["packets"] > 50, played
    states = report(cluster, "alice-m")["message_states"][str(sent["message"])]
    assert states == ["stored", "delivered", "played"], states  # "stored": the upload's own acknowledgement


def test_a_private_call_between_users_on_two_nodes(cluster: Cluster) -> None:
    """Alice is connected to one node, Bob to the other: her call reaches him (offer pushed over NOTIFY), his
    answer and his join go to her node, which serves the call; each hears the other, Carol (at Alice's node, in
    their group) receives nothing, and Bob hanging up ends it for Alice. Alice's node holds no lease (the group
    is served at Bob's): a private call has none, and that node must serve it all the same."""
    owner_index = [n.name for n in cluster.nodes].index(cluster.wait_owned([GROUP])[GROUP])
    alice_node, bob_node = 1 - owner_index, owner_index
    go = cluster.root / "go-private"
    bob = cluster.client(
        "bob", f"join {GROUP}; wait-file {go}; wait-call 20; wait 2.5; talk 1; wait 1; hangup; wait 0.5",
        node=bob_node, report="bob-p",
    )  # fmt: skip
    alice = cluster.client(
        "alice", f"join {GROUP}; wait-file {go}; wait 1; call sip:bob@example.org; wait 0.3; talk 2; wait-ended 20",
        node=alice_node, report="alice-p",
    )  # fmt: skip
    carol = cluster.client("carol", f"join {GROUP}; wait-file {go}; wait 10", node=alice_node, report="carol-p")
    cluster.start_together(go.name, GROUP, ("alice", "bob", "carol"), node=alice_node)
    outputs = {}
    for name, process in (("alice", alice), ("bob", bob), ("carol", carol)):
        outputs[name], _ = process.communicate(timeout=90)
        assert process.returncode == 0, outputs[name]
    a, b, c = (report(cluster, f"{u}-p") for u in ("alice", "bob", "carol"))
    assert [e["kind"] for e in a["calls"]] == ["connected", "ended"], (a["calls"], outputs["alice"])
    assert [e["kind"] for e in b["calls"]] == ["incoming", "connected", "ended"], (b["calls"], outputs["bob"])
    assert [e["reason"] for e in a["calls"] if e["kind"] == "ended"] == ["ended"]
    assert a["sent"] >= 90 and b["sent"] >= 45
    assert b["received"].get("alice", 0) >= 0.9 * a["sent"], b["received"]
    assert a["received"].get("bob", 0) >= 0.9 * b["sent"], a["received"]
    assert "alice" not in c["received"] and "bob" not in c["received"], c["received"]
    assert any(e["kind"] == "talking" and e.get("uri") == "sip:alice@example.org" for e in b["events"]), b["events"]


def test_members_on_two_nodes_talk_and_the_call_survives_its_node(cluster: Cluster) -> None:
    owner = cluster.wait_owned([GROUP])[GROUP]
    owner_index = [n.name for n in cluster.nodes].index(owner)
    other_index = 1 - owner_index
    # alice talks from the node that will survive; bob listens at the node that will die, carol at the other one
    go = cluster.root / "go-kill"
    alice = cluster.client("alice", f"join {GROUP}; wait-file {go}; talk-loop 16", node=other_index)
    bob = cluster.client("bob", f"join {GROUP}; wait-file {go}; wait 18", node=owner_index)
    carol = cluster.client("carol", f"join {GROUP}; wait-file {go}; wait 18", node=other_index)
    cluster.start_together(go.name, GROUP, ("alice", "bob", "carol"), node=other_index)
    time.sleep(4)
    killed_at = time.time()
    cluster.node(owner).kill()
    outputs = {}
    for name, process in (("alice", alice), ("bob", bob), ("carol", carol)):
        outputs[name], _ = process.communicate(timeout=60)
        assert process.returncode == 0, outputs[name]
    a, b, c = (report(cluster, u) for u in ("alice", "bob", "carol"))
    assert cluster.owner(GROUP) == cluster.nodes[other_index].name
    for listener in (b, c):
        heard_before = [t for t in listener["arrivals"].get("alice", []) if t < killed_at]
        assert len(heard_before) >= 25, listener["received"]  # the call worked across the nodes
        after = arrivals_after(listener, "alice", killed_at)
        name = listener["uri"][4:].partition("@")[0]
        survivor = cluster.nodes[other_index].daemon.output()[-3000:]
        assert after, f"{name} heard nothing after the kill:\n{outputs[name]}\n{survivor}"
        gap = after[0] - killed_at
        assert gap < FAILOVER_LIMIT + 1.0, f"{listener['uri']} heard alice again {gap:.1f} s after the kill"
        assert len(after) >= 100  # and kept hearing her
    assert a["sent"] > 0
    # the group as the store keeps it is intact at the survivor: members, key; a change is keyed there
    shown = cluster.dispatch("group", "show", GROUP, node=other_index)
    assert shown.returncode == 0 and all(f"sip:{u}@example.org" in shown.stdout for u in ("alice", "bob", "carol"))
    removed = cluster.dispatch("group", "remove-member", GROUP, "sip:carol@example.org", node=other_index)
    assert removed.returncode == 0, removed.stderr
    # a member who was offline through all this logs in at the survivor and gets the new key (stored I_MESSAGE)
    bob_later = cluster.client("bob", f"wait-key {GROUP} 1; quit", node=other_index, report="bob-later")
    out, _ = bob_later.communicate(timeout=60)
    assert bob_later.returncode == 0, out
    keys = report(cluster, "bob-later")["keys"][GROUP]
    assert keys and keys[-1] not in b["keys"][GROUP]  # the GMK made at the survivor after the removal
