"""The Twisted shell of ad-hoc (off-network) groups: discovery and key delivery sockets, multicast SRTP media and
off-network floor control. No relay, no KMS: only the keystore's own keys, the cached domain certificate and the
certificates of partner KMSs from the last provisioning.

Sockets: the discovery multicast group (signed Hello / Probe / group announcements / Leave, ``ptt.adhoc.engine``),
one unicast socket (key deliveries and acknowledgements), and per group one socket joined to the group's media
multicast address, carrying SRTP media and SRTCP floor control (RTCP APP "MCPT", TS 24.380 §7) both under the
sender's key derived from the GMK, told apart by the RTP/RTCP packet type (RFC 5761).

``AdhocSession`` offers the same interface as ``client.session.PttSession`` to ``client.voice.Voice`` and
``client.app.Client`` (groups with talker and floor state, floor request/release, media in and out), so the audio
path and the terminal UI are the same as on-network. Here: the discovery and unicast sockets, the engine and the
one timer wired to the reactor, the group commands; the calls (media sockets, keys, SRTP, floor) are
``client.adhoc_calls``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from client.adhoc_calls import DISCOVERY_GROUP, DISCOVERY_PORT, AdhocCall, AdhocCalls, Datagrams, NetworkConfig
from client.keystore import Keystore
from client.keystore_watch import KeyUse
from ptt.adhoc.engine import (
    MULTICAST,
    AdhocConfig,
    AdhocEngine,
    Event,
    GroupKeyed,
    GroupRemoved,
    GroupUpdated,
    MemberKeyed,
    Refused,
)
from ptt.adhoc.messages import GroupInfo
from ptt.crypto import eccsi, sakke
from ptt.floor.events import FloorEvent
from ptt.groupkeys import GroupKey
from ptt.mikey.imessage import IdentityKeys

# NetworkConfig, AdhocCall and the discovery address: client.adhoc_calls's, importable from here as before.
__all__ = ["DISCOVERY_GROUP", "DISCOVERY_PORT", "AdhocCall", "AdhocSession", "NetworkConfig"]

log = logging.getLogger("ptt.client.adhoc")


def _warm_up(keys: IdentityKeys) -> None:
    """Build the fixed-base tables and this RSK's pairing lines now (≈ 0.6 s once per process) rather than when the
    first group key is made or arrives: keying a group then takes milliseconds, not a second per member."""
    signature = eccsi.sign(b"warm-up", keys.uid, keys.ssk, keys.pvt, keys.domain.kpak)
    eccsi.verify(b"warm-up", signature, keys.uid, keys.domain.kpak)
    sakke.decapsulate(sakke.encapsulate(os.urandom(16), keys.uid, keys.domain.z), keys.uid, keys.rsk, keys.domain.z)


class AdhocSession(AdhocCalls):
    """One identity's ad-hoc groups: signalling, media and floor, wired to sockets and the reactor's clock."""

    def __init__(
        self,
        reactor: Any,
        keystore: Keystore,
        uri: str,
        *,
        network: NetworkConfig | None = None,
        accept: Callable[[str, GroupInfo], bool] | None = None,
        config: AdhocConfig | None = None,
        priority: int = 0,
    ) -> None:
        if keystore.enrolment is None:
            raise ValueError("the keystore is not enrolled with a KMS")
        self.reactor = reactor
        self.keystore = keystore
        self.uri = uri
        self.network = network or NetworkConfig()
        self.priority = priority
        self.domain = keystore.enrolment.certificate.domain()
        self.accept = accept
        self.config = config
        self.engine: AdhocEngine | None = None
        self.groups: dict[str, AdhocCall] = {}
        self.connected = True  # nothing to connect to: the UI shows "connected" off-network
        self.stats: dict[str, int] = {
            "media_in": 0, "media_bad": 0, "floor_in": 0, "floor_bad": 0, "imessage_bad": 0, "foreign": 0,
        }  # fmt: skip
        self.keyed: dict[str, dict[str, float]] = {}  # manager: group -> member -> seconds from GMK to its ack
        self.access_ms: list[float] = []  # floor access times: request -> permission (the last 1000)
        self.key_use = KeyUse()  # which period's keys each GMK came under (client.keystore_watch)
        self._discovery: Any = None
        self._unicast: Any = None
        self._timer: Any = None
        self._stopping = False
        self.media_lock = threading.Lock()  # client.adhoc_calls: media from the microphone's thread, floor from ours
        # listeners the application sets (as on PttSession)
        self.floor_listener: Callable[[str, FloorEvent], None] = lambda group, event: None
        self.media_listener: Callable[[str, bytes, bytes], None] = lambda group, mki, rtp: None
        self.event_listener: Callable[[dict[str, Any]], None] = lambda message: None
        self.key_listener: Callable[[str, GroupKey], None] = lambda group, key: None

    # --- start and stop ------------------------------------------------------------------------------------------

    def start(self) -> AdhocSession:
        now = self.reactor.seconds()
        keys = self.keystore.current_keys(self.uri, now)
        if keys is None:
            raise RuntimeError(f"no keys for {self.uri} in the current key period: provision before going off-network")
        _warm_up(keys)
        group, port = self.network.discovery
        self._discovery = self.reactor.listenMulticast(port, Datagrams(self._signalling), listenMultiple=True)
        self._setup_multicast(self._discovery, group)
        self._unicast = self.reactor.listenUDP(
            self.network.unicast_port, Datagrams(self._signalling), interface=self.network.interface
        )
        self.engine = AdhocEngine(
            uri=self.uri,
            keys_at=lambda t: self.keystore.current_keys(self.uri, t),
            held_keys=lambda: self.keystore.held_keys(self.uri),
            trust=self.keystore.trust(),  # own KMS + the partner KMSs our KMS vouched for at the last provisioning
            unicast_port=self._unicast.getHost().port,
            now=now,
            accept_from=self.accept,
            config=self.config,
        )
        self._pump()
        return self

    def stop(self) -> None:
        self._stopping = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        for call in self.groups.values():
            if call.port is not None:
                call.port.stopListening()
                call.port = None
        for port in (self._discovery, self._unicast):
            if port is not None:
                port.stopListening()
        self._discovery = self._unicast = None

    # --- group commands (the CLI's control socket calls these) -------------------------------------------------

    def _engine(self) -> AdhocEngine:
        if self.engine is None:
            raise RuntimeError("not started")
        return self.engine

    def create(self, name: str, members: list[str], media: tuple[str, int] | None = None) -> GroupInfo:
        info = self._engine().create(name, members, self.reactor.seconds(), media=media)
        self._pump()
        return info

    def add_member(self, group: str, member: str) -> GroupInfo:
        engine = self._engine()
        info = engine.add_member(engine.find(group).info.uri, member, self.reactor.seconds())
        self._pump()
        return info

    def remove_member(self, group: str, member: str) -> GroupInfo:
        engine = self._engine()
        info = engine.remove_member(engine.find(group).info.uri, member, self.reactor.seconds())
        self._pump()
        return info

    def leave_group(self, group: str) -> None:
        engine = self._engine()
        engine.leave(engine.find(group).info.uri, self.reactor.seconds())
        self._pump()

    def find(self, group: str) -> str:
        """The URI of the group named or identified by ``group``."""
        return self._engine().find(group).info.uri

    def listing(self) -> list[dict[str, Any]]:
        engine = self._engine()
        now = self.reactor.seconds()
        out = []
        for uri, group in engine.groups.items():
            call = self.groups.get(uri)
            members = []
            for member in group.info.members:
                peer = engine.peers.get(member)
                holds = peer.held.get(uri) if peer else None
                keyed = member == self.uri or group.keyed(member) or (holds is not None and holds == group.info.gmk_id)
                members.append({"uri": member, "online": engine.alive(member, now), "keyed": keyed})
            out.append(
                {
                    "uri": uri,
                    "name": group.info.name,
                    "role": group.role.value,
                    "manager": group.info.manager,
                    "revision": group.info.revision,
                    "media": f"{group.info.media_host}:{group.info.media_port}",
                    "gmk_id": group.info.gmk_id.hex(),
                    "members": members,
                    "talker": call.talker if call else None,
                    "floor": call.floor if call else "-",
                    "keyed": self.keyed.get(uri, {}),
                }
            )
        return out

    # --- signalling ----------------------------------------------------------------------------------------------

    def _signalling(self, data: bytes, addr: Any) -> None:
        if self.engine is None or self._stopping:
            return
        self.engine.datagram(data, (addr[0], addr[1]), self.reactor.seconds())
        self._pump()

    def _pump(self) -> None:
        """Send what the engine and the floor machines have to send, act on their events, rearm the timer."""
        engine = self.engine
        if engine is None or self._stopping:
            return
        now = self.reactor.seconds()
        engine.tick(now)
        for call in list(self.groups.values()):
            call.machine.tick(now)
        self._flush(engine)
        deadlines = [engine.next_deadline()]
        deadlines.extend(d for d in (c.machine.next_deadline() for c in self.groups.values()) if d is not None)
        self._arm(min(deadlines))

    def poke(self) -> None:
        """Run the engine now (keys were reloaded, a key period began): what it has to do is not left to its
        next deadline."""
        self._pump()

    def _arm(self, at: float, *, earlier_only: bool = False) -> None:
        """Run ``_pump`` at ``at``; with ``earlier_only`` leave a timer that is due sooner as it is."""
        if self._timer is not None and self._timer.active():
            if earlier_only and self._timer.getTime() <= at:
                return
            self._timer.reset(max(0.0, at - self.reactor.seconds()))
        else:
            self._timer = self.reactor.callLater(max(0.0, at - self.reactor.seconds()), self._pump)

    def _flush(self, engine: AdhocEngine) -> None:
        for event in engine.events():
            self._on_engine_event(event)
        for data, destination in engine.outgoing():
            target = self.network.discovery if destination == MULTICAST else destination
            port = self._discovery if destination == MULTICAST else self._unicast
            if port is not None:
                try:
                    port.write(data, target)
                except OSError as exc:  # network down (link lost): the engine retries on its own schedule
                    log.debug("send to %s failed: %s", target, exc)
        for uri, call in list(self.groups.items()):
            self._flush_floor(uri, call)

    def _on_engine_event(self, event: Event) -> None:
        if isinstance(event, GroupKeyed):
            if event.origin is not None:
                self.key_use.origin(event.key.gmk_id, event.origin)
            self._install_key(event.info, event.key, event.role)
            self.event_listener({"kind": "keyed", "group": event.info.uri, "name": event.info.name})
        elif isinstance(event, GroupUpdated):
            call = self.groups.get(event.info.uri)
            if call is not None:
                call.info, call.role = event.info, event.role
                self._index_owners(call)
            self.event_listener({"kind": "updated", "group": event.info.uri, "members": list(event.info.members)})
        elif isinstance(event, GroupRemoved):
            self._drop_call(event.uri)
            self.event_listener({"kind": "removed", "group": event.uri, "reason": event.reason})
        elif isinstance(event, MemberKeyed):
            self.keyed.setdefault(event.group, {})[event.member] = round(event.seconds, 4)
            self.event_listener({"kind": "member-keyed", "group": event.group, "uri": event.member})
        elif isinstance(event, Refused):
            self.stats["imessage_bad"] += 1
            self.event_listener({"kind": "refused", "uri": event.sender, "reason": event.reason})
