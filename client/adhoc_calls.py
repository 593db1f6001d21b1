"""The ad-hoc calls: per group a socket joined to its media multicast address, the GMKs and SRTP contexts, media
in and out, and the off-network floor machine (TS 24.380 §7) whose messages travel as SRTCP on the same socket.

``AdhocCalls`` is a part of ``client.adhoc.AdhocSession``, which sets the attributes annotated here and runs the
engine and the one timer (``_pump``, ``_arm``).
"""

from __future__ import annotations

import functools
import logging
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet import protocol

from client.session_media import KEPT_KEYS, KEY_SWITCH_DELAY, PAYLOAD_TYPE  # the same media rules as on-network
from ptt.adhoc.engine import Role
from ptt.adhoc.messages import GroupInfo
from ptt.floor.events import FloorEvent, FloorEventKind
from ptt.floor.messages import FloorMessageError, parse_rtcp
from ptt.floor.offnetwork import PENDING_REQUEST, OffNetworkFloor
from ptt.groupkeys import GroupKey
from ptt.rtp import RtpSender
from ptt.srtp import AwaitingKey, SrtpError, SrtpReceiver, SrtpSender

__all__ = ["DISCOVERY_GROUP", "DISCOVERY_PORT", "AdhocCall", "AdhocCalls", "Datagrams", "NetworkConfig"]

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


class Datagrams(protocol.DatagramProtocol):
    def __init__(self, receive: Callable[[bytes, Any], None]) -> None:
        self.receive = receive

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.receive(data, addr)


class AdhocCalls:
    """The calls of one identity's ad-hoc groups: keys, media and floor, on multicast sockets."""

    reactor: Any
    uri: str
    network: NetworkConfig
    priority: int
    groups: dict[str, AdhocCall]
    stats: dict[str, int]
    access_ms: list[float]
    _stopping: bool
    floor_listener: Callable[[str, FloorEvent], None]
    media_listener: Callable[[str, bytes, bytes], None]
    event_listener: Callable[[dict[str, Any]], None]
    key_listener: Callable[[str, GroupKey], None]
    media_lock: threading.Lock  # one SRTP sender protects media (any thread) and floor messages (the reactor's)

    if TYPE_CHECKING:  # AdhocSession's timer

        def _pump(self) -> None: ...

        def _arm(self, at: float, *, earlier_only: bool = False) -> None: ...

    def _setup_multicast(self, port: Any, group: str) -> None:
        interface = self.network.interface or "0.0.0.0"
        port.setTTL(self.network.ttl)
        port.setLoopbackMode(True)  # several clients on one host (tests, benchmarks) hear each other
        if self.network.interface:
            port.setOutgoingInterface(self.network.interface)
        port.joinGroup(group, interface).addErrback(
            lambda failure: log.error("cannot join multicast group %s: %s", group, failure.getErrorMessage())
        )

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
                info.media_port, Datagrams(functools.partial(self._media_datagram, info.uri)), listenMultiple=True
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
                with self.media_lock:
                    data = call.sender.protect_rtcp(bytes(message))
                call.port.write(data, (call.info.media_host, call.info.media_port))
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
        """As ``PttSession.send_media``: safe from the microphone's thread (the floor messages share the sender, so
        both protect under ``media_lock``)."""
        call = self.groups[group]
        sender, port = call.sender, call.port
        if sender is None or port is None:
            raise RuntimeError(f"no group key for {group}")
        with self.media_lock:
            if call.rtp is None or call.rtp.ssrc != call.ssrc:
                call.rtp = RtpSender(call.ssrc, PAYLOAD_TYPE)
            packet = call.rtp.packet(payload, samples, start_of_burst=marker)
            data = sender.protect(bytes(packet))
        port.write(data, (call.info.media_host, call.info.media_port))

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
