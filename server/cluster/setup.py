"""Building a cluster node from a server's configuration (``server.service.makeService`` calls this when the
store is PostgreSQL)."""

from __future__ import annotations

from typing import Any

from ptt.cluster import NodeInfo, check_node_name
from server.callshell import CallShell
from server.cluster.link import ClusterLink
from server.cluster.node import ClusterNode
from server.groups.manager import GroupChange
from server.groups.store import GroupStore, read_data_key


def node_info(config: Any, data: Any) -> NodeInfo:
    """How the other nodes and the clients see this node (``config``: a ``ServerConfig``)."""
    from server.kms.material import certificate_pem, load_certificate

    relay = config.relay_address()
    pinned = certificate_pem(load_certificate(data.tls_cert)).decode("ascii") if config.tls_trust == "pinned" else ""
    return NodeInfo(
        check_node_name(config.node),
        config.public_name,
        config.control_port,
        relay.host,
        relay.port,
        config.dispatch_port,
        pinned,
    )


def group_reader(store: GroupStore, online: Any) -> Any:
    """On the store thread: a group as committed, with the I_MESSAGEs of key ``gmk_id`` for members online here."""

    def read(group: str, gmk_id: bytes) -> GroupChange:
        record = store.group(group)
        if record is None:
            return GroupChange(group, None, [])
        members = store.members(group)
        messages: dict[str, bytes] = {}
        if gmk_id:
            connected = online()
            for member in members:
                if member.uri not in connected:
                    continue  # the others get theirs from the store when they log in
                for stored in store.imessages_for(member.uri):
                    if stored.group == group and stored.gmk_id == gmk_id:
                        messages[member.uri] = stored.data
        return GroupChange(group, record, members, gmk_id if messages else b"", messages, store.alerts(group))

    return read


def make_cluster_node(reactor: Any, config: Any, data: Any, shell: CallShell, store: GroupStore) -> ClusterNode:
    me = node_info(config, data)
    node: ClusterNode | None = None

    def received(payload: bytes) -> None:
        assert node is not None
        node.received(payload)

    def listening() -> None:
        assert node is not None
        node.listening()

    def online() -> set[str]:  # read from the store thread: a copy of the keys, as the reactor left them
        control = shell.control
        return set(list(control.sessions)) if control is not None else set()

    link = ClusterLink(reactor, str(data.database()), me, on_message=received, on_listening=listening)
    node = ClusterNode(reactor, shell, link, me, read_data_key(data.data_key), reload_group=group_reader(store, online))
    return node
