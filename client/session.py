"""A logged-in PTT client session: control channel, group keys, CSK, relay binding, floor control and SRTP media.

Everything here is the Twisted shell around the pure parts (``ptt.srtp``, ``ptt.srtcp``, ``ptt.floor``,
``ptt.mikey``): the audio client (issue 5) and the headless test client both drive a ``PttSession``.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, protocol, task, threads
from twisted.python.failure import Failure

from client.control import ControlClient, connect_control
from client.keystore import Keystore
from ptt.control import unb64
from ptt.floor.events import FloorEvent
from ptt.floor.messages import FloorMessageError, is_rtcp, parse_rtcp
from ptt.floor.participant import (
    HAS_NO_PERMISSION,
    HAS_PERMISSION,
    PENDING_RELEASE,
    PENDING_REQUEST,
    QUEUED,
    START_STOP,
    FloorParticipant,
)
from ptt.groupkeys import GroupKey
from ptt.mikey.errors import MikeyError
from ptt.mikey.imessage import (
    IdentityKeys,
    KmsDomain,
    ReceivedKey,
    ReplayCache,
    build_i_message,
    receive_i_message,
)
from ptt.relaycore import join_packet
from ptt.rtp import RtpSender
from ptt.srtcp import CskKeys, SrtcpChannel, SrtcpError
from ptt.srtp import AwaitingKey, SrtpError, SrtpReceiver, SrtpSender
from ptt.ts33180 import KeyPurpose, new_key_id

log = logging.getLogger("ptt.client.session")

KEEPALIVE = 5.0
PAYLOAD_TYPE = 96  # dynamic, Opus (RFC 7587)
STORED_MESSAGE_WINDOW = 40 * 86400.0  # GMKs may be stored for offline members: accept up to a key period old
KEPT_KEYS = 3  # GMKs kept per group after a rekey, so packets in flight still decrypt
KEY_SWITCH_DELAY = 0.3  # seconds a sender keeps the old GMK after a new one arrives
RECONNECT_MIN = 1.0
RECONNECT_MAX = 30.0

CryptoRunner = Callable[..., "defer.Deferred[Any]"]
"""Runs ``f(*args, **kwargs)`` and returns a Deferred of its result (a thread in the app, inline in tests)."""


def in_thread(f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
    return threads.deferToThread(f, *args, **kwargs)


@dataclass(frozen=True)
class ServerInfo:
    host: str
    control_port: int
    cert_pem: bytes
    server_uri: str


@dataclass
class GroupState:
    uri: str
    name: str = ""
    keys: list[GroupKey] = field(default_factory=list)  # newest last
    sender: SrtpSender | None = None
    receiver: SrtpReceiver = field(default_factory=SrtpReceiver)
    ssrc: int = 0
    joined: bool = False
    rtp: RtpSender | None = None
    participant: FloorParticipant | None = None  # the floor participant of the call, from join on
    floor_timer: Any = None  # its T100/T101/T104 (IDelayedCall)
    call_talker: str | None = None  # who talks, as the control channel's call events say
    port: Any = None  # the group's UDP socket (IListeningPort)
    token: bytes = b""
    pending: AwaitingKey = field(default_factory=AwaitingKey)  # media under a GMK not received yet

    @property
    def key(self) -> GroupKey | None:
        return self.keys[-1] if self.keys else None

    @property
    def talker(self) -> str | None:
        """Who talks: the floor participant knows once joined, the call events otherwise."""
        if self.participant is not None and self.participant.state != START_STOP:
            return self.participant.talker
        return self.call_talker

    @property
    def floor(self) -> str:
        """The floor state in the status line's words (the ad-hoc calls use the same)."""
        participant = self.participant
        state = participant.state if participant is not None else START_STOP
        if state == HAS_NO_PERMISSION:
            return "taken" if self.talker else "idle"
        return _FLOOR_WORDS.get(state, "idle")

    @property
    def talk_limit(self) -> int | None:
        """Seconds the current burst may last (the Duration of the Floor Granted), if known."""
        return self.participant.duration if self.participant is not None else None


_FLOOR_WORDS = {PENDING_REQUEST: "requested", HAS_PERMISSION: "granted", PENDING_RELEASE: "releasing", QUEUED: "queued"}


class _Media(protocol.DatagramProtocol):
    """One UDP socket per joined group: like one media session per group call, the socket names the group."""

    def __init__(self, session: PttSession, group: str) -> None:
        self.session = session
        self.group = group

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.session._datagram(self.group, data, addr)


class PttSession:
    """One identity logged in to one server."""

    def __init__(
        self, reactor: Any, keystore: Keystore, uri: str, server: ServerInfo, *, crypto: CryptoRunner = in_thread
    ) -> None:
        if keystore.enrolment is None:
            raise ValueError("the keystore is not enrolled with a KMS")
        self.reactor = reactor
        self.keystore = keystore
        self.uri = uri
        self.server = server
        self.domain: KmsDomain = keystore.enrolment.certificate.domain()
        self.groups: dict[str, GroupState] = {}
        self.control: ControlClient | None = None
        self.replay_cache = ReplayCache()
        # Opening an I_MESSAGE (ECCSI verify + SAKKE decapsulation, ~10 ms) runs off the reactor thread, or a rekey
        # in mid-burst would hold up the talker's next frames; one at a time, in arrival order.
        self._crypto = crypto
        self._key_lock = defer.DeferredLock()
        self.csk: CskKeys | None = None
        self.floor_channel: SrtcpChannel | None = None
        self.relay: tuple[str, int] | None = None
        self.connected = False
        self._stopping = False
        self._backoff = RECONNECT_MIN
        self._keepalive: task.LoopingCall | None = None
        # listeners the application sets
        self.floor_listener: Callable[[str, FloorEvent], None] = lambda group, event: None
        self.media_listener: Callable[[str, bytes, bytes], None] = lambda group, mki, rtp: None
        self.event_listener: Callable[[dict[str, Any]], None] = lambda message: None
        self.key_listener: Callable[[str, GroupKey], None] = lambda group, key: None
        self.stats: dict[str, int] = {"media_in": 0, "media_bad": 0, "floor_in": 0, "floor_bad": 0, "imessage_bad": 0}

    # --- keys ----------------------------------------------------------------------------------------------------

    def identity_keys(self, now: float) -> IdentityKeys:
        keys = self.keystore.current_keys(self.uri, now)
        if keys is None:
            raise RuntimeError(f"no keys for {self.uri} in the current key period: provision first")
        return keys

    # --- control channel handler -----------------------------------------------------------------------------

    def on_imessage(self, group: str, gmk_id: bytes, data: bytes) -> defer.Deferred[None]:
        """Verify, decrypt and install a GMK; the Deferred fires once it is installed or refused (never fails)."""
        return self._key_lock.run(self._receive_imessage, group, gmk_id, data)

    def keys_settled(self) -> defer.Deferred[None]:
        """Fires once every I_MESSAGE received so far is installed or refused."""
        return self._key_lock.run(lambda: None)

    def _known(self, group: str, gmk_id: bytes) -> bool:
        state = self.groups.get(group)
        return state is not None and any(k.gmk_id == gmk_id for k in state.keys)

    def _receive_imessage(self, group: str, gmk_id: bytes, data: bytes) -> defer.Deferred[None]:
        if self._known(group, gmk_id):
            return defer.succeed(None)  # stored messages come again at every login
        d = self._crypto(
            receive_i_message,
            data,
            responder=self.keystore.held_keys(self.uri),
            expected_initiators=group,
            trusted_kms={self.domain.kms_uri: self.domain},
            now=self.reactor.seconds(),
            replay_cache=self.replay_cache,
            window=STORED_MESSAGE_WINDOW,
        )
        d.addCallbacks(lambda received: self._install_key(group, received), self._key_refused, errbackArgs=(group,))
        return d

    def _key_refused(self, failure: Failure, group: str) -> None:
        self.stats["imessage_bad"] += 1
        if failure.check(MikeyError):
            log.warning("%s: group key for %s refused: %s", self.uri, group, failure.getErrorMessage())
        else:  # a bug, not bad input: say so, but keep the session alive
            log.error("%s: group key for %s failed: %s", self.uri, group, failure.getTraceback())

    def _install_key(self, group: str, received: ReceivedKey) -> None:
        if received.purpose != KeyPurpose.GMK or received.revoked:
            log.warning("%s: ignoring a %s key for %s", self.uri, received.purpose.name, group)
            return
        key = GroupKey(gmk=received.key, gmk_id=received.key_id, rand=received.rand)
        if self._known(group, key.gmk_id):
            return
        state = self.groups.setdefault(group, GroupState(group))
        state.keys.append(key)
        state.receiver.add_key(key)
        while len(state.keys) > KEPT_KEYS:
            state.receiver.drop_key(state.keys.pop(0).gmk_id)
        if state.sender is None:
            state.sender = SrtpSender(key, self.uri)
        else:
            # Keep sending under the old GMK a moment: the other members get the new one at about the same time,
            # and until they have it they could not decrypt (a rekey mid-burst must lose nothing).
            self.reactor.callLater(KEY_SWITCH_DELAY, self._switch_sender, group, key)
        log.info("%s: GMK %s for %s", self.uri, key.gmk_id.hex(), group)
        self._retry_pending(group, state)
        self.key_listener(group, key)

    def _switch_sender(self, group: str, key: GroupKey) -> None:
        state = self.groups.get(group)
        if state is not None and state.key is key:
            state.sender = SrtpSender(key, self.uri)

    def _retry_pending(self, group: str, state: GroupState) -> None:
        for data in state.pending.release(self.reactor.seconds()):
            self._media_in(group, state, data, retry=True)

    def on_groups(self, groups: list[dict[str, Any]]) -> None:
        listed = {str(g.get("uri")) for g in groups}
        for entry in groups:
            state = self.groups.setdefault(str(entry.get("uri")), GroupState(str(entry.get("uri"))))
            state.name = str(entry.get("name") or "")  # the dispatcher's name for it, shown to the user
        for uri in [u for u in self.groups if u not in listed]:
            state = self.groups.pop(uri)  # removed from the group: forget its keys and its socket
            if state.port is not None:
                state.port.stopListening()
            log.warning("%s: no longer a member of %s", self.uri, uri)

    def on_event(self, message: dict[str, Any]) -> None:
        state = self.groups.get(message["group"])
        if state is not None and message["kind"] == "talking":
            state.call_talker = message.get("uri")
        elif state is not None and message["kind"] == "idle":
            state.call_talker = None
        self.event_listener(message)

    def on_disconnected(self, reason: str) -> None:
        self.control = None
        if self._stopping:
            return
        log.warning("%s: control channel lost (%s): reconnecting", self.uri, reason)
        self.connected = False
        self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        delay = self._backoff
        self._backoff = min(self._backoff * 2, RECONNECT_MAX)
        self.reactor.callLater(delay, self._reconnect)

    @defer.inlineCallbacks
    def _reconnect(self) -> Any:
        if self._stopping or self.control is not None:
            return
        rejoin = [group for group, state in self.groups.items() if state.joined]
        try:
            yield self.start()
            for group in rejoin:
                yield self.join(group)
        except Exception as exc:
            log.warning("%s: reconnect failed (%s); retrying in %.0f s", self.uri, exc, self._backoff)
            if self.control is not None:
                self.control.link.loseConnection()  # its loss schedules the next attempt
            else:
                self._schedule_reconnect()
            return
        self._backoff = RECONNECT_MIN
        log.info("%s: reconnected, rejoined %s", self.uri, rejoin)

    # --- start-up ----------------------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def start(self) -> Any:
        """Log in, take the stored group keys, and send a fresh CSK for floor control."""
        self.control = yield connect_control(
            self.reactor, self.server.host, self.server.control_port, self.server.cert_pem, self.identity_keys, self
        )
        assert self.control is not None
        self.on_groups(self.control.groups)
        self.relay = self.control.relay
        yield self.send_csk()
        yield self.keys_settled()  # the stored GMKs the server pushed before answering the CSK are installed
        self.connected = True
        return self

    @defer.inlineCallbacks
    def send_csk(self) -> Any:
        now = self.reactor.seconds()
        csk = CskKeys(csk=os.urandom(16), csk_id=new_key_id(KeyPurpose.CSK), rand=os.urandom(16))
        message = build_i_message(
            initiator=self.identity_keys(now),
            responder_uri=self.server.server_uri,
            key=csk.csk,
            key_id=csk.csk_id,
            now=now,
            rand=csk.rand,
        )
        assert self.control is not None
        yield self.control.send_csk(message)
        self.csk = csk
        self.floor_channel = SrtcpChannel(csk)

    @defer.inlineCallbacks
    def join(self, group: str) -> Any:
        assert self.control is not None
        state = self.groups.setdefault(group, GroupState(group))
        state.ssrc = struct.unpack(">I", os.urandom(4))[0]
        self._drop_participant(state)
        reply = yield self.control.join(group, state.ssrc)
        state.token = unb64(reply["token"], "token")
        relay = reply["relay"]
        self.relay = (str(relay["host"]), int(relay["port"]))
        if state.port is None:
            local = "127.0.0.1" if self.relay[0] in ("127.0.0.1", "localhost") else ""
            state.port = self.reactor.listenUDP(0, _Media(self, group), interface=local)
        state.joined = True
        # A new SSRC is a new floor participant; it listens before the relay binds us (late entry: Taken or Idle).
        state.participant = FloorParticipant(self.uri, state.ssrc)
        state.participant.join(self.reactor.seconds())
        self._send_keepalives()
        if self._keepalive is None:
            self._keepalive = task.LoopingCall(self._send_keepalives)
            self._keepalive.clock = self.reactor
            self._keepalive.start(KEEPALIVE, now=False)
        return state

    def leave(self, group: str) -> None:
        state = self.groups.get(group)
        if state is not None:
            self._drop_participant(state)
            state.joined = False
            state.token = b""
            if state.port is not None:
                state.port.stopListening()
                state.port = None
        if self.control is not None:
            self.control.leave(group)

    def stop(self) -> None:
        self._stopping = True
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        self._keepalive = None
        if self.control is not None:
            self.control.link.loseConnection()
        for state in self.groups.values():
            self._drop_participant(state)
            if state.port is not None:
                state.port.stopListening()
                state.port = None

    def _send_keepalives(self) -> None:
        for group, state in self.groups.items():
            if state.joined and state.token:
                self._send(group, join_packet(state.ssrc, state.token))

    def _send(self, group: str, data: bytes) -> None:
        state = self.groups.get(group)
        if state is not None and state.port is not None and self.relay is not None:
            state.port.write(data, self.relay)

    # --- floor control -----------------------------------------------------------------------------------------

    def request_floor(self, group: str, *, priority: int | None = None, indicator: int | None = None) -> None:
        """PTT pressed in ``group`` (a joined group): Floor Request, retransmitted until answered."""
        state = self.groups[group]
        if state.participant is None:
            raise RuntimeError(f"not joined to {group}")
        state.participant.press(self.reactor.seconds(), priority=priority, indicator=indicator)
        self._floor_pump(group, state)

    def release_floor(self, group: str) -> None:
        """PTT released in ``group``: Floor Release (of the floor, the request or the queue place)."""
        state = self.groups.get(group)
        if state is not None and state.participant is not None:
            state.participant.release(self.reactor.seconds())
            self._floor_pump(group, state)

    def _floor_pump(self, group: str, state: GroupState) -> None:
        """Send what the participant has to send, hand its events to the application, rearm its timer."""
        participant = state.participant
        if participant is None:
            return
        for message in participant.outgoing():
            if self.floor_channel is None:
                log.warning("%s: no CSK sent yet: floor message for %s dropped", self.uri, group)
                continue
            self._send(group, self.floor_channel.protect(bytes(message)))
        for event in participant.events():
            self.floor_listener(group, event)  # may press or release again: that pumps on its own
        deadline = participant.next_deadline() if state.participant is participant else None
        timer = state.floor_timer
        if timer is not None and timer.active():
            if deadline is not None and timer.getTime() == deadline:
                return
            timer.cancel()
        state.floor_timer = None
        if deadline is not None:
            delay = max(0.0, deadline - self.reactor.seconds())
            state.floor_timer = self.reactor.callLater(delay, self._floor_timer, group)

    def _floor_timer(self, group: str) -> None:
        state = self.groups.get(group)
        if state is None or state.participant is None:
            return
        state.floor_timer = None
        state.participant.on_timer(self.reactor.seconds())
        self._floor_pump(group, state)

    def _drop_participant(self, state: GroupState) -> None:
        if state.floor_timer is not None and state.floor_timer.active():
            state.floor_timer.cancel()
        state.floor_timer = None
        if state.participant is not None:
            state.participant.leave(self.reactor.seconds())
        state.participant = None

    # --- media ---------------------------------------------------------------------------------------------------

    def send_media(self, group: str, payload: bytes, *, marker: bool = False, samples: int = 960) -> None:
        state = self.groups[group]
        if state.sender is None:
            raise RuntimeError(f"no group key for {group}")
        if state.rtp is None or state.rtp.ssrc != state.ssrc:
            state.rtp = RtpSender(state.ssrc, PAYLOAD_TYPE)  # random initial sequence and timestamp (RFC 3550)
        packet = state.rtp.packet(payload, samples, start_of_burst=marker)
        self._send(group, state.sender.protect(bytes(packet)))

    # --- incoming ------------------------------------------------------------------------------------------------

    def _datagram(self, group: str, data: bytes, addr: Any) -> None:
        if self.relay is not None and (addr[0], addr[1]) != self.relay:
            return  # only the relay talks to us
        state = self.groups.get(group)
        if state is None or not state.joined:
            return
        if is_rtcp(data):
            self._floor_in(group, state, data)
            return
        self._media_in(group, state, data)

    def _media_in(self, group: str, state: GroupState, data: bytes, *, retry: bool = False) -> None:
        if not retry and AwaitingKey.awaits_key(state.receiver, data):
            # a GMK-ID we do not hold yet (a rekey under way): keep it briefly, the key is probably on its way
            state.pending.hold(data, self.reactor.seconds())
            return
        try:
            rtp, mki = state.receiver.unprotect(data)
        except SrtpError as exc:
            self.stats["media_bad"] += 1
            log.debug("%s: media for %s refused: %s", self.uri, group, exc)
            return
        self.stats["media_in"] += 1
        self.media_listener(group, mki, rtp)

    def _floor_in(self, group: str, state: GroupState, data: bytes) -> None:
        if self.floor_channel is None or state.participant is None:
            return
        try:
            messages = parse_rtcp(self.floor_channel.unprotect(data))
        except (SrtcpError, FloorMessageError) as exc:
            self.stats["floor_bad"] += 1
            log.warning("%s: floor message refused: %s", self.uri, exc)
            return
        for message in messages:
            self.stats["floor_in"] += 1
            state.participant.receive(message, self.reactor.seconds())
        self._floor_pump(group, state)


def now() -> float:
    return time.time()
