"""Several group-server nodes over one database: which node owns which group's live call, and what nodes tell
each other. Pure: the database rounds and the notifications are done by ``server.cluster``; results and ``now``
come in, decisions and events go out.

**Leases.** Each group's live call (floor arbiter, relay bindings, forwarding) is served by the one node holding
the group's lease in the database. A node runs a *round* every :data:`ROUND_INTERVAL`: one transaction renews all
its leases and its heartbeat (the database's clock sets ``expires``) and takes back the groups it fenced itself
from (:meth:`Ownership.to_reclaim`), one statement takes the free groups it should serve
(:meth:`Ownership.to_claim`), one reads every lease back. A lease taken over gets the next *generation*.

**Fencing.** A node serves a group only while it is sure nobody else may hold the lease: until the local time at
which its last successful renewal was *sent*, plus :data:`LEASE_TIME`, minus :data:`SAFETY_MARGIN`
(:attr:`Ownership.valid_until`). The database's lease lasts :data:`LEASE_TIME` from when the statement *ran*, which
is later, so a node that is slow (paused, starved, cut off from the database) stops serving before another node can
take its groups, whatever the clocks of the two machines say (the local times are a monotonic clock's: a step of the
wall clock neither extends nor cuts the deadline). Everything a node tells the others about a group carries the
lease generation; receivers ignore what comes from an older generation than they know.

**After a fence.** A node whose deadline passed has dropped those groups' calls (bindings, floor), but nobody may
have taken them: its leases may still be its own, renewed by a round that was only late. It must not simply carry
on at the same generation, since nobody would tell the members to join again (for the other nodes nothing moved).
So it takes them back at the next generation (:meth:`Ownership.to_reclaim`, only while it still holds them in the
database): that is a move like any other, and every node tells its members to join again.

**Placement.** A free group goes to its preferred node among the live nodes (rendezvous hashing,
:func:`preferred_node`), so groups spread evenly and every node agrees without talking; if the preferred node does
not take it within :data:`CLAIM_GRACE`, any live node may.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

LEASE_TIME = 2.5
"""Seconds a lease lasts in the database after each renewal."""
ROUND_INTERVAL = 0.5
"""Seconds between a node's rounds (renewal, heartbeat, claims, reading the leases back)."""
SAFETY_MARGIN = 0.5
"""A node stops serving this long before its lease could expire (a slow reply, clocks running at other rates)."""
CLAIM_GRACE = 1.0
"""How long a free group waits for its preferred node before any live node may take it."""

NAME_LIMIT = 64
_NAME = re.compile(rf"[A-Za-z0-9._-]{{1,{NAME_LIMIT}}}")


class ClusterError(ValueError):
    """A node name, a node description or a message between nodes that cannot be used."""


def check_node_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ClusterError(f"a node name is 1-{NAME_LIMIT} letters, digits, '-', '_' or '.': {name!r}")
    return name


@dataclass(frozen=True)
class NodeInfo:
    """A live node as the others and the clients see it: its name and its public addresses."""

    name: str
    control_host: str
    control_port: int
    relay_host: str
    relay_port: int
    dispatch_port: int
    cert_pem: str = ""
    """Its TLS certificate, for clients that pin certificates (empty when clients trust a CA)."""

    def relay_json(self) -> dict[str, Any]:
        return {"host": self.relay_host, "port": self.relay_port}

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NodeInfo:
        try:
            info = cls(
                check_node_name(str(data["name"])),
                str(data["control_host"]),
                int(data["control_port"]),
                str(data["relay_host"]),
                int(data["relay_port"]),
                int(data["dispatch_port"]),
                str(data.get("cert_pem") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ClusterError(f"unusable node description: {exc}") from None
        for port in (info.control_port, info.relay_port, info.dispatch_port):
            if not 0 < port < 65536:
                raise ClusterError(f"node {info.name}: port {port} out of range")
        return info


@dataclass(frozen=True)
class Lease:
    group: str
    node: str
    generation: int
    expired: bool = False
    """By the database's clock, when the round read it."""


@dataclass(frozen=True)
class RoundResult:
    """What one round read back from the database."""

    started: float
    """Local time at which the round's renewal was sent."""
    renewed: bool
    """The renewal committed (False: the database could not be reached; nothing else is known)."""
    nodes: Mapping[str, NodeInfo] = field(default_factory=dict)
    """The live nodes (heartbeat not expired), this one included."""
    leases: Mapping[str, Lease] = field(default_factory=dict)
    """Every lease, after this round's renewal and claims."""


@dataclass(frozen=True)
class Adopted:
    """This node now holds the group's lease: it serves the call from now on."""

    group: str
    generation: int


@dataclass(frozen=True)
class Lost:
    """This node no longer serves the group: its call state goes (silently: another node serves it now)."""

    group: str


@dataclass(frozen=True)
class Moved:
    """Another node took the group's lease (or this node learnt of it): members joined here must rejoin there."""

    group: str
    lease: Lease


OwnershipEvent = Adopted | Lost | Moved


def preferred_node(group: str, nodes: Iterable[str]) -> str | None:
    """The node that should serve ``group`` among ``nodes`` (highest random weight: every node computes the same
    answer, and losing a node moves only that node's groups)."""
    best: tuple[bytes, str] | None = None
    for node in nodes:
        weight = hashlib.sha256(f"{node}\0{group}".encode()).digest()
        if best is None or weight > best[0]:
            best = (weight, node)
    return best[1] if best is not None else None


class Ownership:
    """One node's view of the leases: the groups it holds (and until when it may serve them), who holds the others."""

    def __init__(
        self,
        me: str,
        *,
        lease_time: float = LEASE_TIME,
        margin: float = SAFETY_MARGIN,
        grace: float = CLAIM_GRACE,
    ) -> None:
        self.me = check_node_name(me)
        self.lease_time, self.margin, self.grace = lease_time, margin, grace
        self.held: dict[str, int] = {}  # group -> generation of the lease this node holds
        self.leases: dict[str, Lease] = {}
        self.nodes: dict[str, NodeInfo] = {}
        self.valid_until = float("-inf")
        self.fenced: dict[str, int] = {}  # group -> generation this node held when it fenced itself from it
        self._free_since: dict[str, float] = {}

    def holds(self, group: str, now: float) -> bool:
        return group in self.held and now <= self.valid_until

    def owner(self, group: str) -> NodeInfo | None:
        """The live node serving ``group``, as far as this node knows (None: nobody now)."""
        lease = self.leases.get(group)
        if lease is None or lease.expired:
            return None
        return self.nodes.get(lease.node)

    def generation(self, group: str) -> int:
        lease = self.leases.get(group)
        return lease.generation if lease is not None else 0

    def to_claim(self, groups: Iterable[str], now: float) -> list[str]:
        """The free groups (no lease, or an expired one) this round should try to take: those this node is
        preferred for, and those nobody took within the grace."""
        claims = []
        live = list(self.nodes) if self.me in self.nodes else [*self.nodes, self.me]
        for group in groups:
            lease = self.leases.get(group)
            if group in self.fenced or (lease is not None and not lease.expired and lease.node in self.nodes):
                self._free_since.pop(group, None)
                continue
            since = self._free_since.setdefault(group, now)
            if preferred_node(group, live) == self.me or now - since >= self.grace:
                claims.append(group)
        return claims

    def renewal_committed(self, started: float, now: float) -> None:
        """A round's renewal (sent at ``started``) committed; the rest of the round and its answer may still be on
        the way (a busy reactor applies it late). If the deadline has not passed, nobody could have taken any
        held group, so the renewal covered them all: the deadline moves on now, not when the answer is applied."""
        if self.held and now <= self.valid_until:
            self.valid_until = max(self.valid_until, started + self.lease_time - self.margin)

    def to_reclaim(self) -> list[str]:
        """The groups this node fenced itself from that may still be its own in the database: this round takes
        them back at the next generation if they are (``UPDATE … WHERE node = me``)."""
        return sorted(self.fenced)

    def apply(self, result: RoundResult, now: float) -> list[OwnershipEvent]:
        """A round's outcome: which groups this node adopted or lost, which moved between other nodes."""
        if not result.renewed:
            return self.fence(now)
        events: list[OwnershipEvent] = []
        self.valid_until = result.started + self.lease_time - self.margin
        self.nodes = dict(result.nodes)
        for group, generation in list(self.fenced.items()):
            lease = result.leases.get(group)
            if lease is None or lease.node != self.me or lease.generation != generation:
                del self.fenced[group]  # taken back at a new generation, or by another node: settled
        # A fenced group still at its old generation (a round sent before the fence, or its take-back failed) is not
        # served again: its members were dropped and nobody would tell them.
        held = {
            g: lease.generation
            for g, lease in result.leases.items()
            if lease.node == self.me and not lease.expired and g not in self.fenced
        }
        for group, generation in self.held.items():
            if held.get(group) != generation:
                events.append(Lost(group))
        for group, generation in held.items():
            if self.held.get(group) != generation:
                events.append(Adopted(group, generation))
        for group, lease in result.leases.items():
            old = self.leases.get(group)
            if lease.node != self.me and (old is None or (old.node, old.generation) != (lease.node, lease.generation)):
                events.append(Moved(group, lease))
        self.held = held
        self.leases = dict(result.leases)
        for group in held:
            self._free_since.pop(group, None)
        return events

    def fence(self, now: float) -> list[OwnershipEvent]:
        """Past :attr:`valid_until` without a renewal: every held group is lost (another node may take it)."""
        if not self.held or now <= self.valid_until:
            return []
        lost: list[OwnershipEvent] = [Lost(group) for group in self.held]
        self.fenced.update(self.held)
        self.held = {}
        return lost

    def forget_group(self, group: str) -> None:
        """The group was deleted."""
        self.held.pop(group, None)
        self.fenced.pop(group, None)
        self.leases.pop(group, None)
        self._free_since.pop(group, None)
