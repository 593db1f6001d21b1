"""The cluster's tables in PostgreSQL and the statements of a round, on a plain psycopg connection (autocommit).

``ptt_nodes``: every node's public description and heartbeat; ``ptt_leases``: which node serves which group's
call, with the lease generation; ``ptt_presence``: which member has a control session at which node (for
dispatchers' views across nodes). Expiry times are the database's (``clock_timestamp()``), so the nodes' clocks
never have to agree; a node's own deadline is kept locally (``ptt.cluster.Ownership.valid_until``).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ptt.cluster import ClusterError, Lease, NodeInfo

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ptt_nodes (name TEXT PRIMARY KEY, info TEXT NOT NULL, expires TIMESTAMPTZ NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ptt_leases (group_uri TEXT PRIMARY KEY, node TEXT NOT NULL, "
    "generation BIGINT NOT NULL, expires TIMESTAMPTZ NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ptt_presence (member TEXT NOT NULL, node TEXT NOT NULL, PRIMARY KEY (member, node))",
)
_SCHEMA_LOCK = zlib.crc32(b"ptt-cluster-schema") - 2**31

BROADCAST_CHANNEL = "ptt_cluster"


def node_channel(name: str) -> str:
    """The NOTIFY channel of one node (an SQL identifier whatever the node's name)."""
    return "ptt_node_" + format(zlib.crc32(name.encode()), "08x")


def connect(url: str, *, application: str) -> Any:
    """An autocommit connection that gives up quickly: a round must fail, not hang, when the database is gone."""
    import psycopg

    return psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=3,
        application_name=application,
        options="-c statement_timeout=2000 -c idle_in_transaction_session_timeout=5000",
        keepalives=1,
        keepalives_idle=2,
        keepalives_interval=1,
        keepalives_count=2,
    )


def create_schema(conn: Any) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))  # two nodes starting at once
        for statement in SCHEMA:
            conn.execute(statement)


def run_round(
    conn: Any,
    me: NodeInfo,
    claims: Sequence[str],
    lease_time: float,
    reclaims: Sequence[str] = (),
    renewed: Callable[[], None] = lambda: None,
) -> tuple[dict[str, NodeInfo], dict[str, Lease]]:
    """Heartbeat and renew every lease of ``me``, take back the ``reclaims`` still held by ``me`` at the next
    generation (groups it fenced itself from), take the ``claims`` that are free, read every node and lease.
    ``renewed`` is called once the renewal has committed."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO ptt_nodes (name, info, expires) VALUES (%s, %s, clock_timestamp() + make_interval(secs => %s))"
            " ON CONFLICT (name) DO UPDATE SET info = EXCLUDED.info, expires = EXCLUDED.expires",
            (me.name, json.dumps(me.to_json()), lease_time),
        )
        conn.execute(
            "UPDATE ptt_leases SET expires = clock_timestamp() + make_interval(secs => %s) WHERE node = %s",
            (lease_time, me.name),
        )
        if reclaims:
            conn.execute(
                "UPDATE ptt_leases SET generation = generation + 1 WHERE node = %s AND group_uri = ANY(%s::text[])",
                (me.name, list(reclaims)),
            )
    renewed()
    if claims:
        # A lease is taken only if there is none or it has expired by the database's clock; taking one over
        # raises its generation, which fences everything the previous holder still says about the group.
        conn.execute(
            "INSERT INTO ptt_leases (group_uri, node, generation, expires)"
            " SELECT g, %s, 1, clock_timestamp() + make_interval(secs => %s) FROM unnest(%s::text[]) AS g"
            " ON CONFLICT (group_uri) DO UPDATE SET node = EXCLUDED.node, generation = ptt_leases.generation + 1,"
            " expires = EXCLUDED.expires WHERE ptt_leases.expires < clock_timestamp()",
            (me.name, lease_time, list(claims)),
        )
    nodes: dict[str, NodeInfo] = {}
    for name, info in conn.execute("SELECT name, info FROM ptt_nodes WHERE expires > clock_timestamp()"):
        try:
            nodes[name] = NodeInfo.from_json(json.loads(info))
        except (ClusterError, ValueError):
            continue
    leases = {
        group: Lease(group, node, int(generation), bool(expired))
        for group, node, generation, expired in conn.execute(
            "SELECT group_uri, node, generation, expires < clock_timestamp() FROM ptt_leases"
        )
    }
    return nodes, leases


def leave_cluster(conn: Any, name: str) -> None:
    """A node stopping cleanly: its leases expire now (others take them at once), its heartbeat and presence go."""
    with conn.transaction():
        conn.execute("UPDATE ptt_leases SET expires = clock_timestamp() - interval '1 second' WHERE node = %s", (name,))
        conn.execute("DELETE FROM ptt_nodes WHERE name = %s", (name,))
        conn.execute("DELETE FROM ptt_presence WHERE node = %s", (name,))


def forget_group(conn: Any, group: str) -> None:
    conn.execute("DELETE FROM ptt_leases WHERE group_uri = %s", (group,))


def set_presence(conn: Any, node: str, online: Iterable[str], offline: Iterable[str]) -> None:
    with conn.transaction():
        for member in offline:
            conn.execute("DELETE FROM ptt_presence WHERE member = %s AND node = %s", (member, node))
        for member in online:
            conn.execute(
                "INSERT INTO ptt_presence (member, node) VALUES (%s, %s) ON CONFLICT DO NOTHING", (member, node)
            )


def reset_presence(conn: Any, node: str) -> None:
    """At start: whatever an earlier run of this node left (it may have been killed)."""
    conn.execute("DELETE FROM ptt_presence WHERE node = %s", (node,))


def present(conn: Any, members: Sequence[str]) -> set[str]:
    """Which of ``members`` have a control session at a live node."""
    rows = conn.execute(
        "SELECT DISTINCT p.member FROM ptt_presence p JOIN ptt_nodes n ON n.name = p.node"
        " WHERE n.expires > clock_timestamp() AND p.member = ANY(%s::text[])",
        (list(members),),
    )
    return {row[0] for row in rows}


def notify(conn: Any, channel: str, payload: bytes) -> None:
    conn.execute("SELECT pg_notify(%s, %s)", (channel, payload.decode()))


def registered_nodes(url: str) -> list[NodeInfo]:
    """Every node that ever registered (alive or not), for ``ptt-server client-info``."""
    conn = connect(url, application="ptt-server client-info")
    try:
        exists = conn.execute("SELECT to_regclass('ptt_nodes')").fetchone()
        if exists is None or exists[0] is None:
            return []
        nodes = []
        for (info,) in conn.execute("SELECT info FROM ptt_nodes ORDER BY name"):
            try:
                nodes.append(NodeInfo.from_json(json.loads(info)))
            except (ClusterError, ValueError):
                continue
        return nodes
    finally:
        conn.close()
