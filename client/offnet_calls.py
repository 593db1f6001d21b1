"""Off-network private calls of one client (issue 16): :class:`ptt.privatecall.offnetwork.OffNetworkCalls` on two
UDP sockets, no server and no KMS online (the keystore's keys only).

The signalling socket carries the signed CALL datagrams of the ad-hoc envelope; the peer's signalling address comes
from ``--peer URI=HOST:PORT`` (or, where an ad-hoc session runs, from the peer's Hello). The media socket carries
the call's SRTP straight to the peer's media address (``ptt.privatecall.media``: our direction under CS-ID 0 or 1);
only datagrams from that address are opened. No floor control off-network (``ptt.privatecall.offnetwork``).

``ptt-headless --offnetwork --signal-port P --peer sip:bob@example.org=127.0.0.1:Q`` runs it with the script steps
``call URI [manual]``, ``wait-call [S]``, ``answer``, ``reject``, ``hangup``, ``wait-ended [S]``, ``send S``
(synthetic audio in the call), ``wait S``, ``quit``.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol, task

from client.keystore import Keystore
from ptt.privatecall.machine import CallEvent, CallState
from ptt.privatecall.media import PrivateSrtpReceiver, PrivateSrtpSender
from ptt.privatecall.offnetwork import CallMedia, OffNetworkCalls
from ptt.ratelimit import TokenBucket
from ptt.rtp import RtpSender
from ptt.srtp import SrtpError

log = logging.getLogger("ptt.client.offnet")

PAYLOAD_TYPE = 96
ACTIVITY_CHECK = 1.0


class _Socket(protocol.DatagramProtocol):
    def __init__(self, receive: Callable[[bytes, Any], None]) -> None:
        self.receive = receive

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.receive(data, addr)


class _Media:
    def __init__(self, media: CallMedia) -> None:
        self.info = media
        self.sender = PrivateSrtpSender(media.key, caller=media.caller)
        self.receiver = PrivateSrtpReceiver(media.key, caller=media.caller)
        self.rtp = RtpSender(struct.unpack(">I", os.urandom(4))[0], PAYLOAD_TYPE)
        self.packets = 0
        self.seen = 0


class OffNetworkCallSession:
    def __init__(
        self,
        reactor: Any,
        keystore: Keystore,
        uri: str,
        *,
        peers: dict[str, tuple[str, int]] | None = None,
        signal_port: int = 0,
        interface: str = "",
    ) -> None:
        if keystore.enrolment is None:
            raise ValueError("the keystore is not enrolled with a KMS")
        self.reactor = reactor
        self.keystore = keystore
        self.uri = uri
        self.peers = dict(peers or {})
        self.signal_port = signal_port
        self.interface = interface
        self.engine: OffNetworkCalls | None = None
        self.media: dict[str, _Media] = {}
        self.stats: dict[str, int] = {"media_in": 0, "media_bad": 0, "foreign": 0}
        self.listener: Callable[[CallEvent], None] = lambda event: None
        self.media_listener: Callable[[str, bytes, bytes], None] = lambda call, mki, rtp: None
        self._signal: Any = None
        self._media_port: Any = None
        self._timer: Any = None
        self._log_bucket = TokenBucket(1.0, 5)

    def start(self) -> OffNetworkCallSession:
        now = self.reactor.seconds()
        if self.keystore.current_keys(self.uri, now) is None:
            raise RuntimeError(f"no keys for {self.uri} in the current key period: provision before going off-network")
        self._signal = self.reactor.listenUDP(self.signal_port, _Socket(self._signalling), interface=self.interface)
        self._media_port = self.reactor.listenUDP(0, _Socket(self._media_in), interface=self.interface)
        trust = self.keystore.trust()

        def keys_at(t: float) -> Any:
            keys = self.keystore.current_keys(self.uri, t)
            if keys is None:
                raise RuntimeError("no keys for the current key period")
            return keys

        self.engine = OffNetworkCalls(
            uri=self.uri,
            keys_at=keys_at,
            held_keys=lambda: self.keystore.held_keys(self.uri),
            trusted_kms=trust.domains,
            media_port=self._media_port.getHost().port,
            speaks_for=trust.speaks_for,
            domain_for=trust.kms_for,
        )
        return self

    @property
    def port(self) -> int:
        return int(self._signal.getHost().port)

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        for port in (self._signal, self._media_port):
            if port is not None:
                port.stopListening()

    # --- the user ------------------------------------------------------------------------------------------------

    def call(self, callee: str, *, manual: bool = False) -> str:
        assert self.engine is not None
        address = self.peers.get(callee)
        if address is None:
            raise ValueError(f"no address known for {callee}")
        call = self.engine.call(callee, address, self.reactor.seconds(), manual=manual)
        self._flush()
        return call

    def accept(self) -> bool:
        assert self.engine is not None
        return self._after(self.engine.accept(self.reactor.seconds()))

    def reject(self) -> bool:
        assert self.engine is not None
        return self._after(self.engine.reject(self.reactor.seconds()))

    def hang_up(self) -> bool:
        assert self.engine is not None
        return self._after(self.engine.hang_up(self.reactor.seconds()))

    def send_media(self, call: str, payload: bytes, *, marker: bool = False) -> None:
        media = self.media.get(call)
        if media is None or self._media_port is None:
            raise RuntimeError(f"no connected call {call}")
        packet = media.rtp.packet(payload, 960, start_of_burst=marker)
        self._media_port.write(media.sender.protect(bytes(packet)), media.info.peer_media)
        media.packets += 1

    def _after(self, done: bool) -> bool:
        self._flush()
        return done

    # --- the network ---------------------------------------------------------------------------------------------

    def _signalling(self, data: bytes, addr: Any) -> None:
        if self.engine is not None:
            self.engine.datagram(data, (addr[0], addr[1]), self.reactor.seconds())
            self._flush()

    def _media_in(self, data: bytes, addr: Any) -> None:
        source = (addr[0], addr[1])
        for call, media in self.media.items():
            if media.info.peer_media == source:
                try:
                    rtp, mki = media.receiver.unprotect(data)
                except SrtpError as exc:
                    self.stats["media_bad"] += 1
                    self._warn("%s: call media refused: %s", self.uri, exc)
                    return
                self.stats["media_in"] += 1
                media.packets += 1
                self.media_listener(call, mki, rtp)
                return
        self.stats["foreign"] += 1

    def _flush(self) -> None:
        engine = self.engine
        if engine is None:
            return
        for data, address in engine.datagrams():
            self._signal.write(data, address)
        for reason in engine.refused():
            self._warn("%s: %s", self.uri, reason)
        for media in engine.connected():
            self.media[media.call] = _Media(media)
        for event in engine.events():
            if event.kind == "ended":
                self.media.pop(event.call, None)
            elif event.kind == "incoming":
                log.warning("%s: incoming off-network call from %s", self.uri, event.peer)
            self.listener(event)
        self._arm()

    def _arm(self) -> None:
        assert self.engine is not None
        now = self.reactor.seconds()
        deadline = self.engine.next_deadline()
        if self.media:
            deadline = min(deadline or now + ACTIVITY_CHECK, now + ACTIVITY_CHECK)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if deadline is not None:
            self._timer = self.reactor.callLater(max(0.0, deadline - now), self._fire)

    def _fire(self) -> None:
        self._timer = None
        assert self.engine is not None
        now = self.reactor.seconds()
        for call, media in self.media.items():
            if media.packets != media.seen:
                media.seen = media.packets
                self.engine.media_activity(call, now)
        self.engine.tick(now)
        self._flush()

    def _warn(self, text: str, *args: object) -> None:
        if self._log_bucket.take(self.reactor.seconds()):
            log.warning(text, *args)


# --- ptt-headless --offnetwork ------------------------------------------------------------------------------------


class OffNetworkRunner:
    """The script steps of ``ptt-headless --offnetwork`` (synthetic audio as ``client.headless``)."""

    def __init__(self, reactor: Any, session: OffNetworkCallSession, tag: bytes) -> None:
        self.reactor = reactor
        self.session = session
        self.tag = tag
        self.sent = 0
        self.received: dict[str, int] = {}
        self.events: list[dict[str, str]] = []
        session.listener = self._event
        session.media_listener = self._media

    def _event(self, event: CallEvent) -> None:
        self.events.append({"kind": event.kind, "call": event.call, "peer": event.peer, "reason": event.reason})

    def _media(self, call: str, mki: bytes, rtp: bytes) -> None:
        payload = rtp[12:]
        if payload.startswith(b"SYN"):
            sender = payload[3:11].rstrip(b"\0").decode("ascii", "replace")
            self.received[sender] = self.received.get(sender, 0) + 1

    @defer.inlineCallbacks
    def _until(self, done: Callable[[], bool], seconds: float) -> Any:
        deadline = time.monotonic() + seconds
        while not done() and time.monotonic() < deadline:
            yield task.deferLater(self.reactor, 0.05, lambda: None)

    def _kinds(self) -> set[str]:
        return {e["kind"] for e in self.events}

    @defer.inlineCallbacks
    def run(self, script: str) -> Any:
        from client.headless import PACKET_INTERVAL, synthetic_payload

        session = self.session
        for step in [s.strip() for s in script.split(";") if s.strip()]:
            word, _, arg = step.partition(" ")
            arg = arg.strip()
            if word == "wait":
                yield task.deferLater(self.reactor, float(arg), lambda: None)
            elif word == "call":
                uri, _, mode = arg.partition(" ")
                session.call(uri, manual=mode.strip() == "manual")
                yield self._until(lambda: bool({"connected", "ended"} & self._kinds()), 45.0)
            elif word == "wait-call":
                yield self._until(lambda: "incoming" in self._kinds(), float(arg or 45))
                yield self._until(lambda: bool(session.media) or "ringing" in self._kinds(), 2.0)
            elif word == "answer":
                session.accept()
                yield self._until(lambda: bool(session.media), 10.0)
            elif word == "reject":
                session.reject()
            elif word == "hangup":
                session.hang_up()
            elif word == "wait-ended":
                yield self._until(lambda: "ended" in self._kinds(), float(arg or 45))
            elif word == "send":
                calls = list(session.media)
                if not calls:
                    raise RuntimeError("no connected call to send in")
                for index in range(int(float(arg) / PACKET_INTERVAL)):
                    if calls[0] not in session.media:
                        break
                    self.sent += 1
                    session.send_media(calls[0], synthetic_payload(self.tag, self.sent), marker=index == 0)
                    yield task.deferLater(self.reactor, PACKET_INTERVAL, lambda: None)
            elif word == "quit":
                break
            else:
                raise ValueError(f"unknown script step {step!r}")

    def report(self) -> dict[str, Any]:
        engine = self.session.engine
        state = {c: str(engine.state(c)) for c in self.session.media} if engine is not None else {}
        return {
            "uri": self.session.uri,
            "sent": self.sent,
            "received": self.received,
            "calls": self.events,
            "stats": self.session.stats,
            "active": state,
            "current": engine.current(CallState.CONNECTED) if engine is not None else None,
        }


def run_headless(args: Any, keystore: Keystore, tag: bytes) -> int:
    """``ptt-headless --offnetwork``: the session and the runner on a reactor until the script ends."""
    import contextlib
    import json
    import sys
    from pathlib import Path

    peers: dict[str, tuple[str, int]] = {}
    for item in args.peer or []:
        uri, _, hostport = item.partition("=")
        host, _, port = hostport.rpartition(":")
        peers[uri] = (host, int(port))
    outcome: dict[str, Any] = {"code": 0}

    def run(reactor: Any) -> Any:
        session = OffNetworkCallSession(reactor, keystore, args.uri, peers=peers, signal_port=args.signal_port)
        runner = OffNetworkRunner(reactor, session, tag)

        @defer.inlineCallbacks
        def go() -> Any:
            try:
                session.start()
                print(f"ready {session.port}", flush=True)
                yield runner.run(args.script)
            except Exception as exc:
                print(f"ptt-headless: {exc}", file=sys.stderr, flush=True)
                outcome["code"] = 2
            finally:
                if args.report:
                    Path(args.report).write_text(json.dumps(runner.report(), indent=1))
                session.stop()

        return go()

    with contextlib.suppress(SystemExit):
        task.react(run, [])
    return int(outcome["code"])
