"""What every member of an off-network call keeps (TS 24.380 clause 7): claims and their rank, the talker, the queue,
the timers, and the messages and events it sends; the transitions both participant and arbitrator procedures use.

The procedures build on this in :mod:`ptt.floor.offnetwork_arbitrator`, :mod:`ptt.floor.offnetwork_participant` and
:mod:`ptt.floor.offnetwork` (whose docstring describes the state machine, the collision rule and the simplifications).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ptt.floor.events import FloorEvent, FloorEventKind
from ptt.floor.fields import DenyCause, FloorIndicator, QueueInfo, RejectCause, Subtype
from ptt.floor.messages import FloorMessage
from ptt.floor.offnetwork_config import (
    HAS_NO_PERMISSION,
    HAS_PERMISSION,
    MAX_KNOWN_NAMES,
    MAX_USER_ID_OCTETS,
    PENDING_GRANTED,
    QUEUED,
    SILENCE,
    OffNetworkConfig,
    Timers,
)


def urgency(indicator: int | None) -> int:
    """Emergency > imminent peril > any other call (TS 24.380 §7.2.3.5 pre-emption)."""
    bits = int(indicator or 0)
    if bits & FloorIndicator.EMERGENCY:
        return 2
    if bits & FloorIndicator.IMMINENT_PERIL:
        return 1
    return 0


@dataclass(frozen=True)
class Claim:
    """A member that has, wants or is given the floor, and what it ranks by."""

    ssrc: int
    uri: str | None
    priority: int = 0
    indicator: int = int(FloorIndicator.NORMAL)

    def rank(self) -> tuple[int, int, int, str]:
        """The collision rule's order: the greater tuple wins (module docstring)."""
        return (urgency(self.indicator), self.priority, self.ssrc, self.uri or "")

    def preempts(self, holder: Claim) -> bool:
        return (urgency(self.indicator), self.priority) > (urgency(holder.indicator), holder.priority)


@dataclass(frozen=True)
class QueueEntry:
    """A queued member at the arbitrator: its request and when it arrived (ties of priority go to the earlier)."""

    claim: Claim
    arrival: int

    def order(self) -> tuple[int, int, int]:
        return (-urgency(self.claim.indicator), -self.claim.priority, self.arrival)


_DEFAULT_CONFIG = OffNetworkConfig()
_DENY_PHRASE = "another MCPTT client has permission"


class OffNetworkState:
    """The state of one member's floor machine, its outputs, and the transitions shared by all procedures."""

    def __init__(
        self,
        own_uri: str,
        own_ssrc: int,
        *,
        priority: int = 0,
        config: OffNetworkConfig = _DEFAULT_CONFIG,
        queueing: bool = True,
        now: float,
    ) -> None:
        if not 0 <= own_ssrc <= 0xFFFFFFFF:
            raise ValueError(f"SSRC out of range: {own_ssrc}")
        if not own_uri or len(own_uri.encode("utf-8")) > MAX_USER_ID_OCTETS:
            raise ValueError(f"URI must be 1..{MAX_USER_ID_OCTETS} octets in UTF-8")
        check_priority(priority)
        self.own_uri = own_uri
        self.own_ssrc = own_ssrc
        self.priority = priority
        self.config = config
        self.queueing = queueing
        self.state = SILENCE
        self._timers = Timers()
        self._timers.start("T230", now + config.t230)
        self._talker: Claim | None = None  # someone else; we are the talker in O: has permission
        self._talker_since = now  # when the current talker's claim was learned
        self._talker_heard: float | None = None  # the talker's last media
        self._own = Claim(own_ssrc, own_uri, priority)  # our request / floor, once we ask
        self._grantee: Claim | None = None
        self._granted_message: FloorMessage | None = None
        self._c201 = 0
        self._c204 = 0
        self._c205 = 0
        self._queue: list[QueueEntry] = []  # as arbitrator (and while handing over): who waits, in order
        self._arrivals = 0
        self._position: int | None = None  # ours, in O: queued
        self._stop_at = now
        self._last_reassert = -math.inf
        self._sequence = 0
        self._names: dict[int, str] = {}
        self._out: list[FloorMessage] = []
        self._events: list[FloorEvent] = []

    # -- state ---------------------------------------------------------------------------------------------------

    @property
    def has_permission(self) -> bool:
        return self.state == HAS_PERMISSION

    @property
    def _holder(self) -> Claim | None:
        """Who talks: ourselves in O: has permission, the grantee in O: pending granted, else the talker known."""
        if self.state == HAS_PERMISSION:
            return self._own
        return self._grantee if self.state == PENDING_GRANTED else self._talker

    @property
    def talker(self) -> str | None:
        """URI of who talks, if known."""
        holder = self._holder
        return holder.uri if holder is not None else None

    @property
    def talker_ssrc(self) -> int | None:
        holder = self._holder
        return holder.ssrc if holder is not None else None

    @property
    def queue_position(self) -> int | None:
        """Our position in the arbitrator's queue (1 = next) while in O: queued."""
        return self._position if self.state == QUEUED else None

    @property
    def queue(self) -> list[tuple[int, str | None]]:
        """(SSRC, URI) of the members we hold queued, in order (as arbitrator, or handing over)."""
        return [(e.claim.ssrc, e.claim.uri) for e in self._queue]

    def next_deadline(self) -> float | None:
        """When :meth:`tick` must next be called, or None while no timer runs."""
        return min(self._timers.deadlines.values(), default=None)

    def outgoing(self) -> list[FloorMessage]:
        """The messages to multicast to all members, oldest first (drained)."""
        drained, self._out = self._out, []
        return drained

    def events(self) -> list[FloorEvent]:
        """The events for the application, oldest first (drained)."""
        drained, self._events = self._events, []
        return drained

    def _stop_bursting(self) -> None:
        self._timers.stop("T206", "T207")

    def _enter_silence(self, now: float) -> None:
        self._timers.stop("T201", "T203", "T204", "T205", "T206", "T207")
        self._talker = None
        self._queue = []
        self.state = SILENCE
        self._timers.start("T230", now + self.config.t230)
        self._event(FloorEventKind.IDLE, None, None, "")

    def _become_listener(self, claim: Claim, now: float, *, announce: bool = True) -> None:
        """Enter O: has no permission with ``claim`` as the talker."""
        self._timers.stop("T230", "T201", "T204")
        self._queue = []  # a yielding holder's queue is lost: its members queue again at the winner
        self.state = HAS_NO_PERMISSION
        self._talker, self._talker_since, self._talker_heard = claim, now, None
        self._timers.start("T203", now + self.config.t203)
        if announce:
            self._event(FloorEventKind.TAKEN, claim, None, "")

    def _listen_to(self, claim: Claim, now: float, *, handed: bool = False) -> None:
        """A listener's view of a new claim: keep a fresh, better-ranked talker (it will make the other yield)."""
        current = self._talker
        if current is not None and current.ssrc != claim.ssrc and not handed:
            fresh = now - self._talker_since < self.config.collision_window
            if fresh and current.rank() > claim.rank():
                return
        self._set_talker(claim, now)

    def _set_talker(self, claim: Claim, now: float) -> None:
        previous = self._talker
        if previous is not None and previous.ssrc == claim.ssrc:
            # The same member again: refresh, keeping what we knew of it.
            self._talker = Claim(claim.ssrc, claim.uri or previous.uri, claim.priority, claim.indicator)
            self._talker_since = now
            return
        self._talker, self._talker_since, self._talker_heard = claim, now, None
        self._event(FloorEventKind.TAKEN, claim, None, "")

    def _restart_contention(self, now: float) -> None:
        self._c201 = 1
        self._timers.start("T201", now + self.config.t201)

    def _reassert(self, now: float) -> bool:
        """Repeat our Floor Taken (rate-limited) so that a competing holder compares claims and one yields."""
        if now - self._last_reassert < self.config.reassert_interval:
            return False
        self._last_reassert = now
        self._announce_taken()
        return True

    # -- messages ------------------------------------------------------------------------------------------------

    def _send(self, subtype: Subtype, **fields: object) -> None:
        self._out.append(FloorMessage(subtype, self.own_ssrc, user_id=self.own_uri, **fields))  # type: ignore[arg-type]

    def _send_request(self) -> None:
        self._send(Subtype.REQUEST, priority=self._own.priority, floor_indicator=self._own.indicator)

    def _announce_taken(self) -> None:
        self._send(
            Subtype.TAKEN,
            granted_party=self.own_uri,
            ssrc_field=self.own_ssrc,
            priority=self._own.priority,
            permission_to_request=True,
            sequence=self._sequence,
            floor_indicator=self._own.indicator,
        )

    def _deny(
        self, requester: Claim, cause: DenyCause = DenyCause.ANOTHER_CLIENT_HAS_PERMISSION, phrase: str = _DENY_PHRASE
    ) -> None:
        self._send(
            Subtype.DENY,
            reject_cause=RejectCause(int(cause), phrase),
            ssrc_field=requester.ssrc,
            floor_indicator=self._own.indicator,
        )

    def _send_position(self, entry: QueueEntry, position: int | None = None) -> None:
        """Floor Queue Position Info to a queued member (Queued User ID and SSRC field name it)."""
        if position is None:
            position = next(n for n, e in enumerate(self._queue, start=1) if e is entry)
        self._send(
            Subtype.QUEUE_POSITION_INFO,
            queued_user_id=entry.claim.uri,
            ssrc_field=entry.claim.ssrc,
            queue_info=QueueInfo(min(position, 0xFF), entry.claim.priority),
            floor_indicator=self._own.indicator,
        )

    def _send_position_request(self, now: float) -> None:
        self._send(Subtype.QUEUE_POSITION_REQUEST)
        self._c204 = 1
        self._timers.start("T204", now + self.config.t204)

    def _event(
        self, kind: FloorEventKind, claim: Claim | None, cause: int | None, text: str, position: int | None = None
    ) -> None:
        talker = claim.uri if claim is not None else None
        ssrc = claim.ssrc if claim is not None else None
        code = None if cause is None else int(cause)
        self._events.append(FloorEvent(kind, talker, ssrc, code, text, position))

    def _learn(self, ssrc: int, uri: str) -> None:
        self._names.pop(ssrc, None)
        self._names[ssrc] = uri
        if len(self._names) > MAX_KNOWN_NAMES:
            del self._names[next(iter(self._names))]
        talker = self._talker
        if talker is not None and talker.ssrc == ssrc and talker.uri is None and self.state != PENDING_GRANTED:
            self._talker = Claim(ssrc, uri, talker.priority, talker.indicator)
            self._event(FloorEventKind.TAKEN, self._talker, None, "")


def message_indicator(message: FloorMessage) -> int:
    return int(message.floor_indicator) if message.floor_indicator is not None else int(FloorIndicator.NORMAL)


def check_priority(priority: int) -> None:
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 255:
        raise ValueError(f"floor priority must be an int in 0..255, not {priority!r}")
