"""What a PTT session keeps per group, and its media: SRTP send and receive under the group's GMKs, media held
while its GMK is on its way (``AwaitingKey``), the switch to a new GMK. ``client.adhoc`` follows the same rules.

``SessionMedia`` is a part of ``client.session.PttSession``, which sets the attributes annotated here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
from ptt.relaycore import JoinSigner
from ptt.rtp import RtpSender
from ptt.srtp import AwaitingKey, SrtpError, SrtpReceiver, SrtpSender

__all__ = ["KEPT_KEYS", "KEY_SWITCH_DELAY", "PAYLOAD_TYPE", "GroupState", "SessionMedia"]

log = logging.getLogger("ptt.client.session")

PAYLOAD_TYPE = 96  # dynamic, Opus (RFC 7587)
KEPT_KEYS = 3  # GMKs kept per group after a rekey, so packets in flight still decrypt
KEY_SWITCH_DELAY = 0.3  # seconds a sender keeps the old GMK after a new one arrives


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
    binding: JoinSigner | None = None  # our side of the relay binding: fresh PTTJ packets (join and keepalive)
    relay: tuple[str, int] | None = None  # the relay serving this group's call (its server node's), from the join
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


class SessionMedia:
    """SRTP media of the joined groups, over each group's socket to the relay."""

    reactor: Any
    uri: str
    groups: dict[str, GroupState]
    relay: tuple[str, int] | None
    stats: dict[str, int]
    media_listener: Callable[[str, bytes, bytes], None]
    media_lock: threading.Lock  # held while a packet is numbered and protected: send_media may run on another thread

    def _send(self, group: str, data: bytes) -> None:
        state = self.groups.get(group)
        if state is not None and state.port is not None and state.relay is not None:
            state.port.write(data, state.relay)

    def send_media(self, group: str, payload: bytes, *, marker: bool = False, samples: int = 960) -> None:
        """Number, protect and send one Opus packet. Safe from one thread besides the reactor's (the microphone's,
        ``client.voice``): the reactor only swaps whole objects (sender, port, relay), read here once, and a UDP
        port's ``write`` is one ``sendto`` that touches no reactor state."""
        with self.media_lock:
            state = self.groups[group]
            sender = state.sender
            if sender is None:
                raise RuntimeError(f"no group key for {group}")
            if state.rtp is None or state.rtp.ssrc != state.ssrc:
                state.rtp = RtpSender(state.ssrc, PAYLOAD_TYPE)  # random initial sequence and timestamp (RFC 3550)
            packet = state.rtp.packet(payload, samples, start_of_burst=marker)
            data = sender.protect(bytes(packet))
        self._send(group, data)

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

    def _switch_sender(self, group: str, key: GroupKey) -> None:
        state = self.groups.get(group)
        if state is not None and state.key is key:
            state.sender = SrtpSender(key, self.uri)

    def _retry_pending(self, group: str, state: GroupState) -> None:
        for data in state.pending.release(self.reactor.seconds()):
            self._media_in(group, state, data, retry=True)
