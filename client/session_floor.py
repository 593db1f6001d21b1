"""A PTT session's floor control: one TS 24.380 floor participant per joined group, its messages under the CSK
(SRTCP) to the relay, its timers on the reactor, its events to the application.

``SessionFloor`` is a part of ``client.session.PttSession``; floor messages go over the group's media socket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from client.session_media import GroupState, SessionMedia
from ptt.floor.events import FloorEvent
from ptt.floor.messages import FloorMessageError, parse_rtcp
from ptt.srtcp import SrtcpChannel, SrtcpError

__all__ = ["SessionFloor"]

log = logging.getLogger("ptt.client.session")


class SessionFloor(SessionMedia):
    """Floor requests and releases, and the floor messages of the joined groups."""

    floor_channel: SrtcpChannel | None
    floor_listener: Callable[[str, FloorEvent], None]

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
