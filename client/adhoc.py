"""The Twisted shell of ad-hoc (off-network) groups: discovery and key delivery sockets, multicast SRTP media and
off-network floor control. No relay, no KMS: only the keystore's own keys, the cached domain certificate and the
certificates of partner KMSs from the last provisioning.

Sockets: the discovery multicast group (signed Hello / Probe / group announcements / Leave, ``ptt.adhoc.engine``),
one unicast socket (key deliveries and acknowledgements), and per group one socket joined to the group's media
multicast address, carrying SRTP media and SRTCP floor control (RTCP APP "MCPT", TS 24.380 §7) both under the
sender's key derived from the GMK, told apart by the RTP/RTCP packet type (RFC 5761).

``AdhocSession`` offers the same interface as ``client.session.PttSession`` to ``client.voice.Voice`` and
``client.app.Client`` (groups with talker and floor state, floor request/release, media in and out), so the audio
path and the terminal UI are the same as on-network.
"""

from __future__ import annotations

import functools
import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import protocol

from client.keystore import Keystore
from client.session import KEPT_KEYS, KEY_SWITCH_DELAY, PAYLOAD_TYPE  # the same media rules as on-network
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
    Role,
)
from ptt.adhoc.messages import GroupInfo
from ptt.crypto import eccsi, sakke
from ptt.floor.events import FloorEvent, FloorEventKind
from ptt.floor.messages import FloorMessageError, parse_rtcp
from ptt.floor.offnetwork import PENDING_REQUEST, OffNetworkFloor
from ptt.groupkeys import GroupKey
from ptt.mikey.imessage import IdentityKeys
from ptt.rtp import RtpSender
from ptt.srtp import AwaitingKey, SrtpError, SrtpReceiver, SrtpSender

log = logging.getLogger("ptt.client.adhoc")

DISCOVERY_GROUP = "239.255.80.84"
DISCOVERY_PORT = 8450


@dataclass(frozen=True)
class NetworkConfig:
    interface: str = ""  # local IPv4 address to use ("" = the routing table's choice)
    discovery: tuple[str, int] = (DISCOVERY_GROUP, DISCOVERY_PORT)
    unicast_port: int = 0  # 0 = any free port (announced in Hello)
    ttl: int = 1  # one LAN segment


@dataclass
class AdhocCall:
    """One ad-hoc group as the media and floor see it; ``talker`` and ``floor`` are what the UI shows."""

    info: GroupInfo
    role: Role
    ssrc: int
    machine: OffNetworkFloor
    keys: list[GroupKey] = field(default_factory=list)
    receiver: SrtpReceiver = field(default_factory=SrtpReceiver)
    sender: SrtpSender | None = None
    rtp: RtpSender | None = None
    port: Any = None
    talker: str | None = None
    floor: str = "idle"
    owners: dict[bytes, str] = field(default_factory=dict)  # GUK-ID -> member, per held GMK
    pending: AwaitingKey = field(default_factory=AwaitingKey)  # media under a GMK not received yet
    keyed_at: float = 0.0
    requested_at: float | None = None  # when our pending floor request was made (access time)

    @property
    def talk_limit(self) -> int:
        """Seconds a burst may last (T206 + T207), shown when the floor is granted."""
        return int(self.machine.config.max_talk)

    @property
    def key(self) -> GroupKey | None:
        return self.keys[-1] if self.keys else None

    @property
    def name(self) -> str:
        return self.info.name


def _warm_up(keys: IdentityKeys) -> None:
    """Build the fixed-base tables and this RSK's pairing lines now (≈ 0.6 s once per process) rather than when the
    first group key is made or arrives: keying a group then takes milliseconds, not a second per member."""
    signature = eccsi.sign(b"warm-up", keys.uid, keys.ssk, keys.pvt, keys.domain.kpak)
    eccsi.verify(b"warm-up", signature, keys.uid, keys.domain.kpak)
    sakke.decapsulate(sakke.encapsulate(os.urandom(16), keys.uid, keys.domain.z), keys.uid, keys.rsk, keys.domain.z)


class _Datagrams(protocol.DatagramProtocol):
    def __init__(self, receive: Callable[[bytes, Any], None]) -> None:
        self.receive = receive

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.receive(data, addr)


class AdhocSession:
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
        self._discovery: Any = None
        self._unicast: Any = None
        self._timer: Any = None
        self._stopping = False
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
        self._discovery = self.reactor.listenMulticast(port, _Datagrams(self._signalling), listenMultiple=True)
        self._setup_multicast(self._discovery, group)
        self._unicast = self.reactor.listenUDP(
            self.network.unicast_port, _Datagrams(self._signalling), interface=self.network.interface
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

    def _setup_multicast(self, port: Any, group: str) -> None:
        interface = self.network.interface or "0.0.0.0"
        port.setTTL(self.network.ttl)
        port.setLoopbackMode(True)  # several clients on one host (tests, benchmarks) hear each other
        if self.network.interface:
            port.setOutgoingInterface(self.network.interface)
        port.joinGroup(group, interface).addErrback(
            lambda failure: log.error("cannot join multicast group %s: %s", group, failure.getErrorMessage())
        )

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

    # --- keys and calls ------------------------------------------------------------------------------------------

    def _install_key(self, info: GroupInfo, key: GroupKey, role: Role) -> None:
        now = self.reactor.seconds()
        call = self.groups.get(info.uri)
        if call is not None and (call.info.media_host, call.info.media_port) != (info.media_host, info.media_port):
            self._drop_call(info.uri)
            call = None
        if call is None:
            ssrc = struct.unpack(">I", os.urandom(4))[0]
            machine = OffNetworkFloor(self.uri, ssrc, priority=self.priority, queueing=True, now=now)
            call = AdhocCall(info, role, ssrc, machine)
            call.port = self.reactor.listenMulticast(
                info.media_port, _Datagrams(functools.partial(self._media_datagram, info.uri)), listenMultiple=True
            )
            self._setup_multicast(call.port, info.media_host)
            self.groups[info.uri] = call
        call.info, call.role, call.keyed_at = info, role, now
        if any(k.gmk_id == key.gmk_id for k in call.keys):
            return
        call.keys.append(key)
        call.receiver.add_key(key)
        while len(call.keys) > KEPT_KEYS:
            call.receiver.drop_key(call.keys.pop(0).gmk_id)
        self._index_owners(call)
        if call.sender is None:
            call.sender = SrtpSender(key, self.uri)
        else:
            self.reactor.callLater(KEY_SWITCH_DELAY, self._switch_sender, info.uri, key)
        log.info("%s: GMK %s for ad-hoc group %s (%s)", self.uri, key.gmk_id.hex(), info.name, info.uri)
        self._retry_pending(info.uri, call)
        self.key_listener(info.uri, key)

    def _switch_sender(self, group: str, key: GroupKey) -> None:
        call = self.groups.get(group)
        if call is not None and call.key is key:
            call.sender = SrtpSender(key, self.uri)

    def _index_owners(self, call: AdhocCall) -> None:
        call.owners = {key.guk_id(member): member for key in call.keys for member in call.info.members}

    def _drop_call(self, group: str) -> None:
        call = self.groups.pop(group, None)
        if call is not None and call.port is not None:
            call.port.stopListening()
            call.port = None

    # --- floor control -------------------------------------------------------------------------------------------

    def request_floor(self, group: str, *, priority: int | None = None, indicator: int | None = None) -> None:
        call = self.groups[group]
        call.floor = "requested"
        call.requested_at = self.reactor.seconds()
        call.machine.request(self.reactor.seconds(), priority=priority, indicator=indicator)
        self._pump()

    def release_floor(self, group: str) -> None:
        call = self.groups.get(group)
        if call is None:
            return
        call.machine.release(self.reactor.seconds())
        self._pump()

    def _flush_floor(self, group: str, call: AdhocCall) -> None:
        for message in call.machine.outgoing():
            if call.sender is None or call.port is None:
                continue
            try:
                call.port.write(call.sender.protect_rtcp(bytes(message)), (call.info.media_host, call.info.media_port))
            except (OSError, SrtpError, ValueError) as exc:
                log.debug("floor message not sent: %s", exc)
        for event in call.machine.events():
            self._on_floor_event(group, call, event)

    def _on_floor_event(self, group: str, call: AdhocCall, event: FloorEvent) -> None:
        """Keep the call's floor word and talker for the UI, and hand the event on (as on-network)."""
        kind = event.kind
        if kind == FloorEventKind.GRANTED:
            call.floor, call.talker = "granted", self.uri
            if call.requested_at is not None:
                self.access_ms = [*self.access_ms[-999:], (self.reactor.seconds() - call.requested_at) * 1000]
                call.requested_at = None
        elif kind == FloorEventKind.DENIED:
            call.floor, call.requested_at = "denied", None
        elif kind == FloorEventKind.TAKEN:
            call.floor, call.talker = "taken", event.talker
        elif kind == FloorEventKind.IDLE:
            call.floor, call.talker = "idle", None
        elif kind in (FloorEventKind.REVOKED, FloorEventKind.STOP_TALKING):
            call.floor = "revoked"
        elif kind in (FloorEventKind.QUEUED, FloorEventKind.QUEUE_POSITION):
            call.floor, call.talker = "queued", event.talker or call.talker
        elif kind == FloorEventKind.QUEUE_CANCELLED:
            # PTT still pressed: the machine asks for the floor again; released: it listens (or the floor is idle).
            machine = call.machine
            call.talker = machine.talker
            call.floor = "requested" if machine.state == PENDING_REQUEST else ("taken" if machine.talker else "idle")
            self.event_listener({"kind": "queue-cancelled", "group": group, "reason": event.text})
        elif kind == FloorEventKind.STOP_WARNING:
            self.event_listener({"kind": "stop-warning", "group": group})
        elif kind == FloorEventKind.INACTIVE:
            self.event_listener({"kind": "inactive", "group": group})
        self.floor_listener(group, event)

    # --- media ---------------------------------------------------------------------------------------------------

    def send_media(self, group: str, payload: bytes, *, marker: bool = False, samples: int = 960) -> None:
        call = self.groups[group]
        if call.sender is None or call.port is None:
            raise RuntimeError(f"no group key for {group}")
        if call.rtp is None or call.rtp.ssrc != call.ssrc:
            call.rtp = RtpSender(call.ssrc, PAYLOAD_TYPE)
        packet = call.rtp.packet(payload, samples, start_of_burst=marker)
        call.port.write(call.sender.protect(bytes(packet)), (call.info.media_host, call.info.media_port))

    def _media_datagram(self, group: str, data: bytes, addr: Any = None) -> None:
        call = self.groups.get(group)
        if call is None or self._stopping or len(data) < 12:
            return
        is_rtcp = 192 <= data[1] <= 223
        ssrc = struct.unpack(">I", data[4:8] if is_rtcp else data[8:12])[0]
        if ssrc == call.ssrc:
            return  # our own multicast, looped back
        if is_rtcp:
            self._floor_in(group, call, data)
        else:
            self._media_in(group, call, data)
        # Per packet only this call's floor machine can have changed: send what it says, and move the timer only
        # if it now needs to run sooner (a full _pump per media packet would tick everything 50 times a second).
        self._flush_floor(group, call)
        deadline = call.machine.next_deadline()
        if deadline is not None:
            self._arm(deadline, earlier_only=True)

    def _owner(self, call: AdhocCall, mki: bytes) -> str | None:
        return call.owners.get(mki[4:])

    def _floor_in(self, group: str, call: AdhocCall, data: bytes) -> None:
        try:
            rtcp, mki = call.receiver.unprotect_rtcp(data)
            messages = parse_rtcp(rtcp)
        except (SrtpError, FloorMessageError) as exc:
            self.stats["floor_bad"] += 1
            log.warning("%s: floor message in %s refused: %s", self.uri, call.info.name, exc)
            return
        owner = self._owner(call, mki)
        now = self.reactor.seconds()
        for message in messages:
            if owner is None or (message.user_id is not None and message.user_id != owner):
                # the key says who sent it: a member claiming another's identity is dropped
                self.stats["floor_bad"] += 1
                log.warning("%s: floor message claiming %s under %s's key dropped", self.uri, message.user_id, owner)
                continue
            self.stats["floor_in"] += 1
            call.machine.receive(message, now)

    def _media_in(self, group: str, call: AdhocCall, data: bytes, *, retry: bool = False) -> None:
        now = self.reactor.seconds()
        if not retry and AwaitingKey.awaits_key(call.receiver, data):
            if not call.pending.hold(data, now):  # a rekey under way: the key is probably on its way
                self.stats["foreign"] += 1
            return
        try:
            rtp, mki = call.receiver.unprotect(data)
        except SrtpError as exc:
            self.stats["media_bad"] += 1
            log.debug("%s: media in %s refused: %s", self.uri, call.info.name, exc)
            return
        self.stats["media_in"] += 1
        call.machine.media_received(struct.unpack(">I", rtp[8:12])[0], now, user=self._owner(call, mki))
        self.media_listener(group, mki, rtp)

    def _retry_pending(self, group: str, call: AdhocCall) -> None:
        for data in call.pending.release(self.reactor.seconds()):
            self._media_in(group, call, data, retry=True)
