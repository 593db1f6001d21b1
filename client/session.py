"""A logged-in PTT client session: control channel, group keys, CSK, relay binding, floor control and SRTP media.

Everything here is the Twisted shell around the pure parts (``ptt.srtp``, ``ptt.srtcp``, ``ptt.floor``,
``ptt.mikey``): the audio client (issue 5) and the headless test client both drive a ``PttSession``. Its media
(SRTP, the per-group state) is ``client.session_media``, its floor control ``client.session_floor``; here are the
control channel, group keys and CSK, joining, reconnecting and the relay's datagrams.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from twisted.internet import abstract, defer, protocol, task, threads
from twisted.internet.error import ConnectError
from twisted.python.failure import Failure

from client import rsklines
from client.control import ControlClient, ControlError, connect_control
from client.keystore import DebouncedSave, Keystore
from client.keystore_watch import KeyUse
from client.privatecalls import PrivateCalls
from client.serverinfo import ServerInfo
from client.session_emergency import SessionEmergency
from client.session_media import KEPT_KEYS, KEY_SWITCH_DELAY, PAYLOAD_TYPE, GroupState
from client.session_reconnect import RECONNECT_MAX, RECONNECT_MIN, REJOIN_ATTEMPTS, REJOIN_DELAY, SessionReconnect
from client.voicemessages import VoiceMessages
from ptt.control import ControlProtocolError, unb64
from ptt.floor.events import FloorEvent
from ptt.floor.messages import is_rtcp
from ptt.floor.participant import FloorParticipant
from ptt.groupkeys import GroupKey
from ptt.keyrollover import key_origin
from ptt.mikey.errors import MikeyError
from ptt.mikey.imessage import (
    IdentityKeys,
    KmsDomain,
    ReceivedKey,
    ReplayCache,
    build_i_message,
    receive_i_message,
    replay_key,
)
from ptt.privatecall.messages import is_call_id
from ptt.relaycore import BINDING_ID_LENGTH, JoinSigner
from ptt.srtcp import CskKeys, SrtcpChannel
from ptt.srtp import SrtpSender
from ptt.ts33180 import KeyPurpose, new_key_id

# KEPT_KEYS, KEY_SWITCH_DELAY, PAYLOAD_TYPE, GroupState: client.session_media's, importable from here as before.
__all__ = [
    "KEEPALIVE", "KEPT_KEYS", "KEY_SWITCH_DELAY", "PAYLOAD_TYPE", "RECONNECT_MAX", "RECONNECT_MIN",
    "REJOIN_ATTEMPTS", "REJOIN_DELAY", "STORED_MESSAGE_SLACK", "CryptoRunner", "GroupState", "PttSession",
    "ServerInfo", "in_thread", "now",
]  # fmt: skip

log = logging.getLogger("ptt.client.session")

KEEPALIVE = 5.0
STORED_MESSAGE_SLACK = 3600.0
"""A GMK I_MESSAGE stored for an offline member is legitimately old: it is accepted up to one key period (the
server rekeys every group at each period change) plus this much old. Its future allowance is the clock skew
(``ptt.mikey.imessage.MAX_CLOCK_SKEW``), minutes only."""

CryptoRunner = Callable[..., "defer.Deferred[Any]"]
"""Runs ``f(*args, **kwargs)`` and returns a Deferred of its result (a thread in the app, inline in tests)."""


def in_thread(f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
    return threads.deferToThread(f, *args, **kwargs)


class _Media(protocol.DatagramProtocol):
    """One UDP socket per joined group: like one media session per group call, the socket names the group."""

    def __init__(self, session: PttSession, group: str) -> None:
        self.session = session
        self.group = group

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.session._datagram(self.group, data, addr)


class PttSession(SessionReconnect, SessionEmergency):
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
        # Opening an I_MESSAGE (ECCSI verify + SAKKE decapsulation, ~10 ms) runs off the reactor thread, or a rekey
        # in mid-burst would hold up the talker's next frames; one at a time, in arrival order.
        self._crypto = crypto
        self._key_lock = defer.DeferredLock()
        # The replay cache survives restarts (a file beside the keystore), with per group the digest of the newest
        # GMK message accepted: the server re-delivers that one at login, and after a restart it must open again.
        self._replay_file = keystore.replay_file(uri)
        self.replay_cache: ReplayCache
        self._current_messages: dict[str, tuple[bytes, float]]  # group -> (digest, expires)
        self.replay_cache, self._current_messages = self._replay_file.load(reactor.seconds())
        self._replay_changes = self.replay_cache.changes
        self._replay_saver = DebouncedSave(reactor, self._save_replay_cache)
        self.csk: CskKeys | None = None
        self.floor_channel: SrtcpChannel | None = None
        self.relay: tuple[str, int] | None = None
        self.connected = False
        self._stopping = False
        self._backoff = RECONNECT_MIN
        self._endpoint = 0  # which of the server's nodes (ServerInfo.endpoints) to connect to
        self._keepalive: task.LoopingCall | None = None
        # listeners the application sets
        self.floor_listener: Callable[[str, FloorEvent], None] = lambda group, event: None
        self.media_listener: Callable[[str, bytes, bytes], None] = lambda group, mki, rtp: None
        self.event_listener: Callable[[dict[str, Any]], None] = lambda message: None
        self.key_listener: Callable[[str, GroupKey], None] = lambda group, key: None
        self.media_lock = threading.Lock()  # client.session_media: send_media runs on the microphone's thread
        self.stats: dict[str, int] = {"media_in": 0, "media_bad": 0, "floor_in": 0, "floor_bad": 0, "imessage_bad": 0}
        self.calls = PrivateCalls(self)  # private calls (issue 16): client.privatecalls
        self.messages = VoiceMessages(self)  # voice messages, deferred delivery (issue 17): client.voicemessages
        self.key_use = KeyUse()  # which period's keys each GMK came under (client.keystore_watch)
        self.warm_rsk_lines()

    # --- keys ----------------------------------------------------------------------------------------------------

    def identity_keys(self, now: float) -> IdentityKeys:
        keys = self.keystore.current_keys(self.uri, now)
        if keys is None:
            raise RuntimeError(f"no keys for {self.uri} in the current key period: provision first")
        return keys

    def warm_rsk_lines(self) -> Future[int]:
        """Build the pairing lines of every RSK held for this identity (current and next key period) in the
        background (``client.rsklines``): a GMK under a new period's RSK then waits on none. Call it whenever the
        keystore's key sets changed (provisioning, a reload); the session calls it once at its start."""
        return rsklines.warm_keys(self.keystore.held_keys(self.uri))

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

    def stored_message_max_age(self) -> float:
        """How old a (stored) GMK I_MESSAGE may be: one key period plus ``STORED_MESSAGE_SLACK``."""
        return float(self.domain.key_period) + STORED_MESSAGE_SLACK

    def _receive_imessage(self, group: str, gmk_id: bytes, data: bytes) -> defer.Deferred[None]:
        if self._known(group, gmk_id):
            return defer.succeed(None)  # stored messages come again at every login
        try:
            digest: bytes | None = replay_key(data)[0]
        except MikeyError:
            digest = None  # receive_i_message says what is wrong with it
        current = self._current_messages.get(group)
        # The group's newest GMK message, delivered again after a restart (at login): not a replay of a superseded
        # key, so it opens (every other check still applies); any other message seen before is refused.
        again = digest is not None and current is not None and current[0] == digest
        max_age = self.stored_message_max_age()
        d = self._crypto(
            receive_i_message,
            data,
            responder=self.keystore.held_keys(self.uri),
            expected_initiators=group,
            trusted_kms={self.domain.kms_uri: self.domain},
            now=self.reactor.seconds(),
            replay_cache=ReplayCache(1) if again else self.replay_cache,
            max_age=max_age,
        )
        d.addCallbacks(
            lambda received: self._accepted(group, digest, max_age, received), self._key_refused, errbackArgs=(group,)
        )
        d.addBoth(self._replay_cache_moved)
        return d

    def _accepted(self, group: str, digest: bytes | None, max_age: float, received: ReceivedKey) -> None:
        if digest is not None and received.purpose == KeyPurpose.GMK and not received.revoked:
            current = self._current_messages.get(group)
            expires = received.timestamp + max_age
            if current is None or current[1] <= expires:
                self._current_messages[group] = (digest, expires)
                self._replay_saver.changed()
        self.key_use.origin(received.key_id, key_origin(received, self.keystore.held_keys(self.uri)))
        self._install_key(group, received)

    def _replay_cache_moved(self, result: object) -> object:
        if self.replay_cache.changes != self._replay_changes:
            self._replay_changes = self.replay_cache.changes
            self._replay_saver.changed()
        return result

    def _save_replay_cache(self) -> defer.Deferred[None]:
        """Under the key lock: no I_MESSAGE is being opened (in a thread, changing the cache) meanwhile."""
        now = self.reactor.seconds()
        for group in [g for g, (_, expires) in self._current_messages.items() if expires < now]:
            del self._current_messages[group]
        return self._key_lock.run(self._replay_file.save, self.replay_cache, dict(self._current_messages))

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

    def on_groups(self, groups: list[dict[str, Any]]) -> None:
        self._alerts_from_groups(groups)  # emergency alerts (client.session_emergency)
        listed = {str(g.get("uri")) for g in groups}
        for entry in groups:
            state = self.groups.setdefault(str(entry.get("uri")), GroupState(str(entry.get("uri"))))
            state.name = str(entry.get("name") or "")  # the dispatcher's name for it, shown to the user
        for uri in [u for u in self.groups if u not in listed and not is_call_id(u)]:
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

    def on_call_message(self, message: dict[str, Any]) -> None:
        """A private call message from the server (client.privatecalls)."""
        self.calls.on_message(message)

    def on_voice_message(self, message: dict[str, Any]) -> None:
        """A voice message notice or a sent message's new state (client.voicemessages)."""
        self.messages.on_message(message)

    def on_disconnected(self, reason: str) -> None:
        self.calls.connection_lost()  # the server ends our calls when our control channel goes
        super().on_disconnected(reason)

    # --- start-up ----------------------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def start(self) -> Any:
        """Log in, take the stored group keys, and send a fresh CSK for floor control."""
        endpoints = self.server.endpoints()
        for attempt in range(len(endpoints)):  # a node that cannot be reached: the next one (several nodes)
            host, port, trust = endpoints[self._endpoint]
            try:
                self.control = yield connect_control(self.reactor, host, port, trust, self.identity_keys, self)
                break
            except ControlError as exc:
                if exc.code != 0 or attempt == len(endpoints) - 1:
                    raise  # refused by the server: another node would refuse too
            except (ConnectError, defer.TimeoutError):
                if attempt == len(endpoints) - 1:
                    raise
            log.warning("%s: %s:%d cannot be reached: trying the next server node", self.uri, host, port)
            self._next_endpoint()
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
        binding_id = unb64(reply["token"], "token")
        if len(binding_id) != BINDING_ID_LENGTH or self.csk is None:
            raise ControlProtocolError("join reply without a usable binding ID")
        # Our PTTJ packets are MACed under a key from our CSK: the ID in the reply is public, the key is not sent.
        state.binding = JoinSigner(state.ssrc, binding_id, self.csk.csk)
        relay = reply["relay"]
        host = str(relay["host"])
        if not (abstract.isIPAddress(host) or abstract.isIPv6Address(host)):
            host = yield self.reactor.resolve(host)  # the relay's public name: datagrams go to an address
        self.relay = state.relay = (host, int(relay["port"]))
        if state.port is None:
            local = "127.0.0.1" if state.relay[0] in ("127.0.0.1", "localhost") else ""
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
            state.binding = None
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
            if state.joined and state.binding is not None:
                self._send(group, state.binding.packet())  # a fresh counter each time: never a replay

    # --- incoming ------------------------------------------------------------------------------------------------

    def _datagram(self, group: str, data: bytes, addr: Any) -> None:
        state = self.groups.get(group)
        if state is None or not state.joined or (addr[0], addr[1]) != state.relay:
            return  # only the group's relay talks to us
        if is_rtcp(data):
            self._floor_in(group, state, data)
            return
        self._media_in(group, state, data)


def now() -> float:
    return time.time()
