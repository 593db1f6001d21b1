"""What an ad-hoc engine keeps: its configuration, the groups (with their keys and pending deliveries) and peers it
knows, and the engine's state and outputs (signed datagrams and events), on which the procedures build.

The procedures are in :mod:`ptt.adhoc.manager` (keying members) and :mod:`ptt.adhoc.engine` (the docstring there
describes trust, keying and succession).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from ptt.adhoc.bodies import Body, GroupInfo
from ptt.adhoc.messages import seal
from ptt.groupkeys import GroupKey
from ptt.kmsformat.trust import KmsTrust
from ptt.mikey.identity import IdentityKeys
from ptt.mikey.replay import ReplayCache

if TYPE_CHECKING:
    from ptt.adhoc.events import Event

log = logging.getLogger("ptt.adhoc")

MULTICAST = ("multicast", 0)  # destination meaning "the discovery multicast group"
Address = tuple[str, int]


@dataclass(frozen=True)
class AdhocConfig:
    hello_every: float = 2.0  # presence beacon period (jittered by the shell's clock granularity)
    peer_timeout: float = 7.0  # not heard for this long: the peer is away (deliveries to it pause)
    probe_every: float = 1.0  # while a member's address is unknown
    retransmit_first: float = 0.25  # key delivery: first retry, doubling…
    retransmit_max: float = 2.0  # …up to this
    rebuild_after: float = 120.0  # I_MESSAGEs are accepted within ±300 s: rebuild older ones before re-sending
    builds_per_turn: int = 3  # I_MESSAGEs built (SAKKE + ECCSI, ~3 ms each) per call at one `now`…
    build_spacing: float = 0.01  # …the rest wait this long, so a talking manager's media goes out in between
    rekey_each_period: bool = True  # a fresh GMK when a new key period begins (as the group server does)
    announce_every: float = 5.0  # a manager repeats its signed group description
    manager_timeout: float = 30.0  # manager not heard for this long: a member takes over
    takeover_step: float = 3.0  # extra wait per rank for the next candidate manager
    leave_copies: int = 3  # a Leave is sent this many times (no acknowledgement)
    window: float = 300.0  # time window of signed datagrams and I_MESSAGEs


class Role(Enum):
    MANAGER = "manager"
    MEMBER = "member"


@dataclass
class Delivery:
    """The key delivery to one member, re-sent until acknowledged."""

    member: str
    i_message: bytes = b""
    built_at: float = float("-inf")
    next_at: float = 0.0
    interval: float = 0.0
    attempts: int = 0
    acked: bool = False
    acked_at: float | None = None


@dataclass
class AdhocGroup:
    info: GroupInfo
    role: Role
    keys: list[GroupKey] = field(default_factory=list)  # newest last
    deliveries: dict[str, Delivery] = field(default_factory=dict)  # manager only
    created_at: float = 0.0
    next_announce: float = 0.0
    manager_gone_since: float | None = None  # member only: when the manager left or fell silent
    manager_left: bool = False  # it said Leave (else it is only silent and stays a member)

    @property
    def key(self) -> GroupKey | None:
        return self.keys[-1] if self.keys else None

    def keyed(self, member: str) -> bool:
        delivery = self.deliveries.get(member)
        return delivery is not None and delivery.acked


@dataclass
class Peer:
    uri: str
    address: Address
    last_seen: float
    held: dict[str, bytes] = field(default_factory=dict)  # group URI -> GMK-ID


class AdhocError(ValueError):
    """A command that cannot be done (unknown group, not its manager, bad member URI, …)."""


_SLUG = re.compile(r"[^a-z0-9-]+")


def group_uri_for(name: str, creator: str, suffix: bytes) -> str:
    """``sip:adhoc.<name>.<hex>@<creator's domain>``: unique, readable, in the creator's domain."""
    slug = _SLUG.sub("-", name.lower()).strip("-")[:32] or "group"
    domain = creator.rpartition("@")[2] if "@" in creator else "adhoc.invalid"
    return f"sip:adhoc.{slug}.{suffix.hex()}@{domain}"


def random_media_address(rand: Callable[[int], bytes] = os.urandom) -> tuple[str, int]:
    """An administratively scoped multicast group (RFC 2365, 239.255/16) and an even port (RTP) in 20000-59998."""
    octets = rand(4)
    host = f"239.255.{octets[0]}.{1 + octets[1] % 254}"
    port = 20000 + 2 * (int.from_bytes(octets[2:], "big") % 20000)
    return host, port


class AdhocEngineState:
    """The state of one identity's ad-hoc engine, its outputs, and the lookups and signing all procedures use."""

    def __init__(
        self,
        *,
        uri: str,
        keys_at: Callable[[float], IdentityKeys | None],
        held_keys: Callable[[], Sequence[IdentityKeys]],
        trust: KmsTrust,
        unicast_port: int,
        now: float,
        accept_from: Callable[[str, GroupInfo], bool] | None = None,
        config: AdhocConfig | None = None,
    ) -> None:
        self.uri = uri
        self.keys_at = keys_at
        self.held_keys = held_keys
        # the own KMS and the External ones our KMS vouches for, each speaking only for its users' domains
        self.trust = trust
        self.trusted_kms = trust.domains
        self.unicast_port = unicast_port
        # policy for a first key from a manager of a trusted domain (e.g. only some identities, only a group name)
        self.accept_from = accept_from or (lambda sender, info: True)
        self.config = config or AdhocConfig()
        self.groups: dict[str, AdhocGroup] = {}
        self.peers: dict[str, Peer] = {}
        self.replay_cache = ReplayCache()
        self.imessage_replay_cache = ReplayCache()
        self.stats: dict[str, int] = {"in": 0, "refused": 0, "duplicate": 0, "out": 0}
        self._outgoing: list[tuple[bytes, Address]] = []
        self._events: list[Event] = []
        self._next_hello = now  # the first Hello goes out at once
        self._next_probe = now
        self._last_probe_answer = float("-inf")
        self._build_turn = (float("nan"), 0)  # (now, I_MESSAGEs built at that now)

    # --- outputs -------------------------------------------------------------------------------------------------

    def outgoing(self) -> list[tuple[bytes, Address]]:
        """Datagrams to send: destination ``MULTICAST`` (the discovery group) or a unicast address."""
        out, self._outgoing = self._outgoing, []
        self.stats["out"] += len(out)
        return out

    def events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def find(self, name_or_uri: str) -> AdhocGroup:
        group = self.groups.get(name_or_uri)
        if group is not None:
            return group
        named = [g for g in self.groups.values() if g.info.name == name_or_uri]
        if len(named) == 1:
            return named[0]
        raise AdhocError(f"no single ad-hoc group named {name_or_uri!r}" if named else f"no group {name_or_uri!r}")

    def alive(self, uri: str, now: float) -> bool:
        if uri == self.uri:
            return True
        peer = self.peers.get(uri)
        return peer is not None and now - peer.last_seen <= self.config.peer_timeout

    # --- sending -------------------------------------------------------------------------------------------------

    def _send(self, body: Body, destination: Address, now: float) -> None:
        keys = self.keys_at(now)
        if keys is None:
            log.warning("%s: no keys of our own for the current key period: cannot sign", self.uri)
            return
        self._outgoing.append((seal(keys, body, now), destination))
