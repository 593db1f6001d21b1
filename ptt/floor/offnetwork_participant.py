"""The off-network floor participant's procedures (TS 24.380 §7.2): asking for the floor, deferring and yielding by
the collision rule, listening to the talker, waiting in the arbitrator's queue, and taking the floor.

See :mod:`ptt.floor.offnetwork` for the state machine, the collision rule and the simplifications.
"""

from __future__ import annotations

from ptt.floor.events import FloorEventKind
from ptt.floor.fields import QUEUE_POSITION_NOT_QUEUED, RevokeCause, Subtype
from ptt.floor.messages import FloorMessage
from ptt.floor.offnetwork_arbitrator import OffNetworkArbitrator
from ptt.floor.offnetwork_config import (
    HAS_NO_PERMISSION,
    HAS_PERMISSION,
    PENDING_GRANTED,
    PENDING_REQUEST,
    QUEUED,
    SILENCE,
    START_STOP,
)
from ptt.floor.offnetwork_state import Claim, message_indicator

_SEQUENCE_MODULUS = 0x10000


class OffNetworkParticipant(OffNetworkArbitrator):
    """A member's reactions to the others' floor messages and to its own timers, and its side of the queue."""

    # -- message procedures --------------------------------------------------------------------------------------

    def _on_taken(self, message: FloorMessage, now: float) -> None:
        ssrc = message.ssrc_field if message.ssrc_field is not None else message.ssrc
        claim = Claim(ssrc, message.granted_party or message.user_id, message.priority or 0, message_indicator(message))
        self._on_claim(claim, now)

    def _on_granted(self, message: FloorMessage, now: float) -> None:
        to_us = message.ssrc_field == self.own_ssrc
        if to_us or (message.ssrc_field is None and message.granted_party == self.own_uri):
            if self.state in (PENDING_REQUEST, QUEUED):
                self._take_floor(now, granted=message)
            elif self.state == HAS_PERMISSION:
                self._adopt_queue(message)  # members queued at the granter after the first Floor Granted
                self._announce_taken()  # a retransmission: tell the granter once more that we have it
            elif self.state != PENDING_GRANTED:
                self._send(Subtype.RELEASE)  # simplification 4: decline a grant we are not waiting for
            return
        ssrc = message.ssrc_field
        if ssrc is None and message.granted_party is not None:
            ssrc = next((s for s, uri in self._names.items() if uri == message.granted_party), None)
        if ssrc is None:
            return  # the grantee cannot be told apart
        claim = Claim(ssrc, message.granted_party, message.priority or 0, message_indicator(message))
        # The talker handing its floor on is no competing claim: the collision window does not apply.
        handed = self._talker is not None and message.ssrc == self._talker.ssrc
        listed = next((m for m in message.queued if m.ssrc == self.own_ssrc), None)
        if self.state in (PENDING_REQUEST, QUEUED) and self.queueing and claim.ssrc != self.own_ssrc:
            self._listen_to(claim, now, handed=handed)
            self._timers.start("T203", now + self.config.t203)
            if listed is not None:
                self._queued_at(listed.queue_info.position, now)  # the grantee holds our place now
            elif self.state == QUEUED:
                self._requeue(now, "not in the new talker's queue")
            else:
                self._restart_contention(now)  # the next Floor Request goes to the new talker
            return
        if listed is not None and self.state in (SILENCE, START_STOP, HAS_NO_PERMISSION):
            self._send(Subtype.RELEASE, floor_indicator=self._own.indicator)  # our cancel was lost: again
        self._on_claim(claim, now, offered=True, handed=handed)

    def _on_claim(self, claim: Claim, now: float, *, offered: bool = False, handed: bool = False) -> None:
        """Someone announced (Floor Taken) or was ``offered`` (Floor Granted, ``handed`` on by the talker) the floor."""
        if claim.ssrc == self.own_ssrc:
            return  # a claim about us that we did not make: stale or forged, nothing to do
        if self.state == HAS_PERMISSION:
            if offered:
                # Another member hands out a floor we hold. The grantee may decline (it may have been denied by us
                # meanwhile), so do not yield to the offer: remind everyone, and compare with the grantee's own
                # Floor Taken if it accepts.
                self._reassert(now)
            elif claim.rank() > self._own.rank():
                self._stop_bursting()
                self._become_listener(claim, now, announce=False)
                self._event(FloorEventKind.REVOKED, claim, RevokeCause.NO_PERMISSION, "lost floor collision")
            else:
                self._announce_taken()
                self._last_reassert = now
        elif self.state == PENDING_GRANTED:
            if self._grantee is not None and claim.ssrc == self._grantee.ssrc:
                self._end_handover()
                self._become_listener(claim, now, announce=False)
            else:
                grantee = self._grantee
                self._end_handover()
                winner = claim if grantee is None or claim.rank() > grantee.rank() else grantee
                self._become_listener(winner, now)
        elif self.state == PENDING_REQUEST:
            self._listen_to(claim, now, handed=handed)
            self._timers.start("T203", now + self.config.t203)
            self._restart_contention(now)  # the next Floor Request goes to the new talker
        elif self.state == HAS_NO_PERMISSION:
            self._listen_to(claim, now, handed=handed)
            self._timers.start("T203", now + self.config.t203)
        elif self.state == QUEUED:
            before = self._talker.ssrc if self._talker is not None else None
            self._listen_to(claim, now, handed=handed)
            self._timers.start("T203", now + self.config.t203)
            if self._talker is not None and self._talker.ssrc != before:
                self._send_position_request(now)  # a talker we did not expect: does it hold our place?
        else:  # O: silence, Start-stop
            self._become_listener(claim, now)

    def _on_deny(self, message: FloorMessage, now: float) -> None:
        if self.state == HAS_PERMISSION:
            self._reassert(now)  # another member arbitrates as if it held the floor: make it compare claims
            return
        if message.ssrc_field != self.own_ssrc or self.state not in (PENDING_REQUEST, QUEUED):
            return  # a duplicate, or an answer to a request we gave up
        self._timers.stop("T201", "T204")
        if self._talker is None or self._talker.ssrc != message.ssrc:
            self._talker = Claim(message.ssrc, message.user_id, message.priority or 0, message_indicator(message))
            self._talker_since, self._talker_heard = now, None
        self.state = HAS_NO_PERMISSION
        self._timers.start("T203", now + self.config.t203)
        cause = message.reject_cause.code if message.reject_cause is not None else None
        phrase = message.reject_cause.phrase if message.reject_cause is not None else ""
        self._event(FloorEventKind.DENIED, self._talker, cause, phrase)

    def _on_release(self, message: FloorMessage, now: float) -> None:
        """Floor Release (or Floor Queued Cancel): the talker or grantee gives up, or a queued member leaves."""
        if self.state in (HAS_PERMISSION, PENDING_GRANTED) and self._unqueue(message.ssrc):
            if self.state == PENDING_GRANTED and self._grantee is not None:
                self._granted_message = self._build_granted(self._grantee)
            return
        if message.subtype != Subtype.RELEASE:
            return
        talker = self._talker is not None and message.ssrc == self._talker.ssrc
        if self.state == HAS_NO_PERMISSION and talker:
            self._enter_silence(now)
        elif self.state == PENDING_REQUEST and talker:
            # The floor is free: compete for it again, starting now.
            self._talker = None
            self._timers.stop("T203")
            self._event(FloorEventKind.IDLE, None, None, "")
            self._send_request()
            self._restart_contention(now)
        elif self.state == QUEUED and talker:
            # The arbitrator let the floor go without granting it to us: it had lost our place.
            self._talker = None
            self._timers.stop("T203")
            self._event(FloorEventKind.IDLE, None, None, "")
            self._requeue(now, "the floor was released")
        elif self.state == PENDING_GRANTED and self._grantee is not None and message.ssrc == self._grantee.ssrc:
            self._next_grantee(now)  # the grantee declined

    def _on_position_info(self, message: FloorMessage, now: float) -> None:
        if self.state == HAS_PERMISSION:
            self._reassert(now)  # another member arbitrates as if it held the floor: make it compare claims
            return
        if message.ssrc_field != self.own_ssrc or message.queue_info is None:
            return
        position = message.queue_info.position
        if self.state == PENDING_REQUEST and position != QUEUE_POSITION_NOT_QUEUED:
            if self._talker is None:
                self._talker = Claim(message.ssrc, message.user_id, 0, message_indicator(message))
                self._talker_since, self._talker_heard = now, None
            self._timers.start("T203", now + self.config.t203)  # the arbitrator's media keeps it running
            self._queued_at(position, now)
        elif self.state == QUEUED:
            asked = self._timers.running("T204")
            self._timers.stop("T204")
            if position == QUEUE_POSITION_NOT_QUEUED:
                self._requeue(now, "not queued by the talker")
            else:
                self._queued_at(position, now, answered=asked)
        elif self.state in (SILENCE, START_STOP, HAS_NO_PERMISSION) and position != QUEUE_POSITION_NOT_QUEUED:
            self._send(Subtype.RELEASE, floor_indicator=self._own.indicator)  # our cancel was lost: again

    # -- timer procedures ----------------------------------------------------------------------------------------

    def _t201_expired(self, now: float) -> None:
        if self.state != PENDING_REQUEST:
            return
        if self._c201 < self.config.c201:
            self._send_request()
            self._c201 += 1
            self._timers.start("T201", now + self.config.t201)
        else:
            self._take_floor(now)  # nobody answered C201 Floor Requests

    def _t203_expired(self, now: float) -> None:
        if self.state == HAS_NO_PERMISSION:
            self._enter_silence(now)
        elif self.state == QUEUED:
            # The arbitrator vanished with our place. PTT is still pressed: compete for the silent floor.
            self._talker = None
            self._event(FloorEventKind.IDLE, None, None, "")
            self._requeue(now, "the talker went silent")
        elif self.state == PENDING_REQUEST and self._talker is not None:
            self._talker = None  # the talker went quiet: keep asking; no answer means the floor is ours
            self._event(FloorEventKind.IDLE, None, None, "")

    def _t204_expired(self, now: float) -> None:
        if self.state != QUEUED:
            return
        if self._c204 < self.config.c204:
            self._send(Subtype.QUEUE_POSITION_REQUEST)
            self._c204 += 1
            self._timers.start("T204", now + self.config.t204)
        else:
            self._requeue(now, "no answer from the talker")

    # -- transitions ---------------------------------------------------------------------------------------------

    def _take_floor(self, now: float, granted: FloorMessage | None = None) -> None:
        from_queue = self.state == QUEUED
        self._timers.stop("T201", "T203", "T204", "T230")
        self._talker = None
        self._queue = []
        if granted is not None:
            self._adopt_queue(granted)
        limit = self.config.max_talk
        if granted is not None and granted.duration:
            limit = min(limit, float(granted.duration))
        self._stop_at = now + limit
        self._timers.start("T206", max(now, self._stop_at - self.config.t207))
        self.state = HAS_PERMISSION
        self._sequence = (self._sequence + 1) % _SEQUENCE_MODULUS
        self._announce_taken()
        self._last_reassert = now
        if from_queue:
            text = "granted from the queue"
        else:
            text = "granted by the talker" if granted is not None else "no answer: floor taken"
        self._event(FloorEventKind.GRANTED, self._own, None, text)

    # -- our place in the queue ----------------------------------------------------------------------------------

    def _queued_at(self, position: int, now: float, *, answered: bool = False) -> None:
        """We are (still) queued at ``position``: enter or stay in O: queued and tell the application."""
        if self.state != QUEUED:
            self._timers.stop("T201")
            self.state = QUEUED
            self._position = position
            self._event(FloorEventKind.QUEUED, self._talker, None, f"queued at position {position}", position)
        elif answered or position != self._position:
            self._position = position
            self._event(FloorEventKind.QUEUE_POSITION, self._talker, None, f"queue position {position}", position)

    def _requeue(self, now: float, why: str) -> None:
        """Our place is lost but PTT is still pressed: ask for the floor again (O: pending request)."""
        self._timers.stop("T204")
        self._position = None
        self.state = PENDING_REQUEST
        self._event(FloorEventKind.QUEUE_CANCELLED, self._talker, None, why)
        self._send_request()
        self._restart_contention(now)

    def _leave_queue(self, now: float, why: str) -> None:
        self._timers.stop("T204")
        self._position = None
        self._event(FloorEventKind.QUEUE_CANCELLED, self._talker, None, why)
        if self._talker is None:
            self._enter_silence(now)
        else:
            self.state = HAS_NO_PERMISSION
            if not self._timers.running("T203"):
                self._timers.start("T203", now + self.config.t203)
