"""The members of ``bench.clusterload`` and their turns at talking: a member's control session, media socket and
binding; one group's floor turns (press, talk once granted, release, pause, the next member), whose RTP the C talker
(``bench.clustertalker``) sends at a fixed rate from the granted member's socket; the counters the whole generator
shares."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet import protocol

from client.control import ControlClient
from ptt.floor.events import FloorEventKind
from ptt.floor.messages import FloorMessageError, parse_rtcp
from ptt.floor.participant import FloorParticipant
from ptt.mikey.imessage import IdentityKeys
from ptt.relaycore import JoinSigner
from ptt.srtcp import CskKeys, SrtcpChannel, SrtcpError

__all__ = ["GRANT_TIMEOUT", "Counters", "GroupCall", "Media", "Member", "MemberSocket"]

GRANT_TIMEOUT = 5.0


class Media(Protocol):
    """What sends a granted member's RTP (``bench.clustertalker.Talker``)."""

    def start(self, index: int, ssrc: int, rate: float, relay: tuple[str, int]) -> None: ...

    def stop_member(self, index: int) -> None: ...


@dataclass
class Counters:
    received: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    lost: int = 0
    denied: int = 0
    denied_why: dict[str, int] = field(default_factory=dict)  # the Floor Deny's phrase, or "no answer"


class MemberSocket(protocol.DatagramProtocol):
    """A member's media socket: RTP is counted, RTCP (floor control) goes to the member if it is talking."""

    def __init__(self, member: Member) -> None:
        self.member = member
        self.counters = member.counters

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if len(data) > 1 and 192 <= data[1] <= 223:
            call = self.member.talking_in
            if call is not None:
                call.floor_in(data)
        else:
            self.counters.received += 1


@dataclass
class Member:
    uri: str
    keys: IdentityKeys
    csk: CskKeys
    csk_message: bytes
    node: int
    source: str
    counters: Counters
    control: ControlClient | None = None
    ssrc: int = 0
    signer: JoinSigner | None = None
    relay: tuple[str, int] | None = None
    port: Any = None
    channel: SrtcpChannel | None = None
    talking_in: GroupCall | None = None
    media_index: int | None = None  # the member's socket in the talker's and the sink's lists

    def send(self, data: bytes) -> None:
        if self.port is not None and self.relay is not None:
            self.port.write(data, self.relay)

    def keepalive(self) -> None:
        if self.signer is not None:
            self.send(self.signer.packet())


class GroupCall:
    """One group's turns: press, talk ``burst`` seconds once granted, release, pause, the next member presses."""

    def __init__(self, reactor: Any, uri: str, members: list[Member], counters: Counters) -> None:
        self.reactor = reactor
        self.uri = uri
        self.members = members
        self.counters = counters
        self.turn = 0
        self.talker: Member | None = None
        self.participant: FloorParticipant | None = None
        self.pressed_at = 0.0
        self.sending = False
        self.running = False
        self._next: Any = None
        self.media: Media | None = None
        self.rate = 0.0

    def start(self, burst: float, pause: float, rate: float, media: Media) -> None:
        self.burst, self.pause, self.rate, self.media, self.running = burst, pause, rate, media, True
        self._next = self.reactor.callLater(pause * (self.turn % 7) / 7, self._press)

    def stop(self) -> None:
        self.running = False
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._release()

    def _press(self) -> None:
        self._next = None
        if not self.running:
            return
        talker = self.members[self.turn % len(self.members)]
        self.turn += 1
        if talker.signer is None:
            self._next = self.reactor.callLater(self.pause, self._press)
            return
        if talker.channel is None:
            talker.channel = SrtcpChannel(talker.csk)
        self.talker, talker.talking_in = talker, self
        self.participant = FloorParticipant(talker.uri, talker.ssrc)
        now = time.monotonic()
        self.participant.join(now)
        self.pressed_at = now
        self.participant.press(now)
        self._pump()

    def floor_in(self, data: bytes) -> None:
        talker, participant = self.talker, self.participant
        if talker is None or participant is None or talker.channel is None:
            return
        try:
            messages = parse_rtcp(talker.channel.unprotect(data))
        except (SrtcpError, FloorMessageError):
            return
        now = time.monotonic()
        for message in messages:
            participant.receive(message, now)
        self._pump()

    def tick(self, now: float) -> None:
        """Floor timers and the grant timeout."""
        participant = self.participant
        if participant is None:
            return
        deadline = participant.next_deadline()
        if deadline is not None and deadline <= now:
            participant.on_timer(now)
            self._pump()
        if not self.sending and self.participant is not None and now - self.pressed_at > GRANT_TIMEOUT:
            self.counters.lost += 1
            self._release()
            self._schedule_press()

    def _pump(self) -> None:
        talker, participant = self.talker, self.participant
        if talker is None or participant is None or talker.channel is None:
            return
        for message in participant.outgoing():
            talker.send(talker.channel.protect(bytes(message)))
        for event in participant.events():
            if event.kind == FloorEventKind.GRANTED and not self.sending:
                self.counters.latencies_ms.append((time.monotonic() - self.pressed_at) * 1000.0)
                self.sending = True
                if self.media is not None and talker.media_index is not None and talker.relay is not None:
                    self.media.start(talker.media_index, talker.ssrc, self.rate, talker.relay)
                self._next = self.reactor.callLater(self.burst, self._end_burst)
            elif event.kind == FloorEventKind.DENIED and not self.sending:
                self.counters.denied += 1
                why = event.text or f"cause {event.cause}"
                self.counters.denied_why[why] = self.counters.denied_why.get(why, 0) + 1
                self._release()
                self._schedule_press()

    def _end_burst(self) -> None:
        self._next = None
        self._release()
        self._schedule_press()

    def _schedule_press(self) -> None:
        if self.running and (self._next is None or not self._next.active()):
            self._next = self.reactor.callLater(self.pause, self._press)

    def _release(self) -> None:
        if self.sending and self.media is not None and self.talker is not None and self.talker.media_index is not None:
            self.media.stop_member(self.talker.media_index)
        self.sending = False
        if self.participant is not None and self.talker is not None:
            self.participant.release(time.monotonic())
            self._pump()
            self.participant.leave(time.monotonic())
            self.talker.talking_in = None
        self.participant = self.talker = None
