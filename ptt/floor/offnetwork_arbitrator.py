"""The off-network floor arbitrator's procedures (TS 24.380 §7.2.3): the member that talks answers Floor Requests,
queues them, hands the floor to the first queued member when its burst ends, or at once to one that pre-empts it.

See :mod:`ptt.floor.offnetwork` for the state machine and its simplifications.
"""

from __future__ import annotations

import math

from ptt.floor.events import FloorEventKind
from ptt.floor.fields import QUEUE_POSITION_NOT_QUEUED, DenyCause, FloorIndicator, QueueInfo, RevokeCause, Subtype
from ptt.floor.messages import FloorMessage, QueuedParticipant
from ptt.floor.offnetwork_config import HAS_PERMISSION, PENDING_GRANTED, PENDING_REQUEST
from ptt.floor.offnetwork_state import Claim, OffNetworkState, QueueEntry, message_indicator

_QUEUE_FULL_PHRASE = "queue full"


class OffNetworkArbitrator(OffNetworkState):
    """Arbitration while we hold the floor (O: has permission) or hand it over (O: pending granted)."""

    # -- message procedures --------------------------------------------------------------------------------------

    def _on_request(self, message: FloorMessage, now: float) -> None:
        requester = Claim(message.ssrc, message.user_id, message.priority or 0, message_indicator(message))
        if self.state == HAS_PERMISSION:
            if requester.preempts(self._own):
                self._unqueue(requester.ssrc)
                self._hand_over(requester, now, preempted=True)
            else:
                self._enqueue_or_deny(requester)
        elif self.state == PENDING_GRANTED and self._grantee is not None:
            if requester.ssrc == self._grantee.ssrc and self._granted_message is not None:
                self._out.append(self._granted_message)  # it has not heard the grant yet
            elif self._enqueue_or_deny(requester):
                self._granted_message = self._build_granted(self._grantee)  # retransmissions carry it
        elif self.state == PENDING_REQUEST and requester.rank() > self._own.rank():
            self._restart_contention(now)  # defer: the better-ranked requester's chain ends first

    def _on_position_request(self, message: FloorMessage) -> None:
        if self.state not in (HAS_PERMISSION, PENDING_GRANTED):
            return
        entry = next((e for e in self._queue if e.claim.ssrc == message.ssrc), None)
        if entry is not None:
            self._send_position(entry)
        elif self.state == HAS_PERMISSION:
            claim = Claim(message.ssrc, message.user_id)
            self._send_position(QueueEntry(claim, -1), QUEUE_POSITION_NOT_QUEUED)  # ask again with a Floor Request

    # -- timer procedures ----------------------------------------------------------------------------------------

    def _t205_expired(self, now: float) -> None:
        if self.state != PENDING_GRANTED or self._granted_message is None:
            return
        if self._c205 < self.config.c205:
            self._out.append(self._granted_message)
            self._c205 += 1
            self._timers.start("T205", now + self.config.t205)
        else:
            self._next_grantee(now)  # the grantee never started

    # -- hand-over -----------------------------------------------------------------------------------------------

    def _end_burst(self, now: float) -> None:
        """PTT released or T207: the floor goes to the first queued member, or is released."""
        if self._queue:
            grantee = self._queue.pop(0).claim
            self._hand_over(grantee, now)
        else:
            self._send(Subtype.RELEASE, floor_indicator=self._own.indicator)
            self._enter_silence(now)

    def _hand_over(self, grantee: Claim, now: float, *, preempted: bool = False) -> None:
        """Floor Granted to ``grantee`` with the rest of our queue, retransmitted on T205 until it takes over."""
        self._stop_bursting()
        self.state = PENDING_GRANTED
        self._grantee = grantee
        self._granted_message = self._build_granted(grantee)
        self._out.append(self._granted_message)
        self._c205 = 1
        self._timers.start("T205", now + self.config.t205)
        if preempted:
            self._event(FloorEventKind.REVOKED, grantee, RevokeCause.PRE_EMPTED, "pre-empted")
        else:
            self._event(FloorEventKind.TAKEN, grantee, None, "granted to the next in the queue")

    def _build_granted(self, grantee: Claim) -> FloorMessage:
        queued = tuple(
            QueuedParticipant(e.claim.ssrc, e.claim.uri or "", QueueInfo(n, e.claim.priority))
            for n, e in enumerate(self._queue, start=1)
        )
        return FloorMessage(
            subtype=Subtype.GRANTED,
            ssrc=self.own_ssrc,
            user_id=self.own_uri,
            granted_party=grantee.uri,
            ssrc_field=grantee.ssrc,
            priority=grantee.priority,
            duration=min(0xFFFF, math.ceil(self.config.max_talk)),
            floor_indicator=grantee.indicator,
            queue_size=len(queued) if queued else None,
            queued=queued,
        )

    def _next_grantee(self, now: float) -> None:
        """The grantee did not take the floor: offer it to the next queued member, or let the floor go silent."""
        if self._queue:
            self._hand_over(self._queue.pop(0).claim, now)
        else:
            self._end_handover()
            self._enter_silence(now)

    def _end_handover(self) -> None:
        self._timers.stop("T205")
        self._grantee = None
        self._granted_message = None
        self._queue = []  # handed over with the floor (or lost with it)

    # -- the queue -----------------------------------------------------------------------------------------------

    def _enqueue_or_deny(self, requester: Claim) -> bool:
        """As arbitrator: queue ``requester`` (answering with its position) or deny it; True if it is queued."""
        entry = next((e for e in self._queue if e.claim.ssrc == requester.ssrc), None)
        if entry is not None:
            self._send_position(entry)  # a retransmission: it missed our answer
            return True
        if not self.queueing or not requester.indicator & FloorIndicator.QUEUEING_SUPPORTED:
            self._deny(requester)
            return False
        if len(self._queue) >= self.config.queue_capacity:
            self._deny(requester, DenyCause.QUEUE_FULL, _QUEUE_FULL_PHRASE)
            return False
        entry = QueueEntry(requester, self._arrivals)
        self._arrivals += 1
        self._queue.append(entry)
        self._queue.sort(key=QueueEntry.order)
        self._send_position(entry)
        return True

    def _unqueue(self, ssrc: int) -> bool:
        before = len(self._queue)
        self._queue = [e for e in self._queue if e.claim.ssrc != ssrc]
        return len(self._queue) != before

    def _adopt_queue(self, granted: FloorMessage) -> None:
        """The queue a Floor Granted to us carries becomes ours (members we already hold keep their place)."""
        held = {e.claim.ssrc for e in self._queue}
        for member in granted.queued:
            if member.ssrc == self.own_ssrc or member.ssrc in held:
                continue
            indicator = int(FloorIndicator.NORMAL | FloorIndicator.QUEUEING_SUPPORTED)
            claim = Claim(member.ssrc, member.user_id or None, member.queue_info.priority, indicator)
            self._queue.append(QueueEntry(claim, self._arrivals))
            self._arrivals += 1
            held.add(member.ssrc)
        self._queue.sort(key=QueueEntry.order)
        del self._queue[self.config.queue_capacity :]
