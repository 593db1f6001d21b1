"""Off-network floor control (3GPP TS 24.380 clause 7): one floor participant, as a pure sans-I/O state machine.

There is no floor control server off-network. Every member of the call runs one :class:`OffNetworkFloor`, every
message it emits goes to *all* members (the shell multicasts :meth:`OffNetworkFloor.outgoing`), and the member
currently talking is the temporary floor arbitrator (§7.1): it queues Floor Requests (or, without queueing, answers
them with Floor Deny), hands the floor to the first queued member when its burst ends, and hands it over at once
to a request that pre-empts it, all by Floor Granted. No I/O, clock or randomness here: every input carries ``now``
(seconds, any monotonic origin); the timers are exposed by :meth:`OffNetworkFloor.next_deadline` and run by
:meth:`OffNetworkFloor.tick`; what the application must know comes out as :class:`FloorEvent` values.

States (§7.2, table C.2.1-1), ``OffNetworkFloor.state``:

* ``O: silence`` -- nobody talks; T230 (inactivity) runs. Its expiry reports ``INACTIVE`` and enters
  ``Start-stop``, which otherwise behaves as ``O: silence`` (a call that resumes is picked up again).
* ``O: has no permission`` -- someone else talks (``talker``); T203 (end of RTP media) restarts on each of the
  talker's media packets and sends us back to ``O: silence`` when it runs out.
* ``O: pending request`` -- we sent Floor Request; T201 retransmits it. C201 counts the Floor Requests sent: with
  the defaults they go out at 0, 40 and 80 ms and, when nobody answered (no Floor Granted, Deny or Taken) and no
  talker's media reset the count, we take the floor at 120 ms by sending Floor Taken.
* ``O: has permission`` -- we talk and arbitrate. A request that pre-empts us (a more urgent Floor Indicator --
  emergency > imminent peril > other -- or the same urgency and a higher Floor Priority) gets Floor Granted at once.
  Any other request is queued (see Queueing) or, without queueing, gets Floor Deny (cause #1). T206 warns
  (``STOP_WARNING``); T207 then ends the burst (``STOP_TALKING``), so a burst lasts at most ``t206 + t207`` seconds
  (or the Duration of the Floor Granted, if shorter). A burst ends (PTT release or T207) with Floor Granted to the
  first queued member, or with Floor Release when nobody is queued.
* ``O: pending granted`` -- we handed the floor over and retransmit Floor Granted every T205; C205 counts the
  Floor Granted messages sent. The grantee's media or Floor Taken ends it (``O: has no permission``). Silence after
  the last one, or the grantee's Floor Release, hands the floor to the next queued member, or ends in
  ``O: silence`` when nobody is left.
* ``O: queued`` -- the arbitrator queued our request (Floor Queue Position Info); we keep PTT pressed and wait for
  Floor Granted. See Queueing.

Queueing (§7.1 "queueing of floor requests may be supported", TS 23.379 off-network floor control), on unless the
constructor says ``queueing=False``. Our Floor Request then carries the "queueing supported" Floor Indicator bit, and
only requests carrying it are queued (a member without queueing gets Floor Deny, as before). The arbitrator keeps
its queue ordered by urgency and Floor Priority, then arrival, at most ``queue_capacity`` long (then Floor Deny
cause #7, queue full), and answers a queued request, and a Floor Queue Position Request, with Floor Queue Position
Info (Queue Info = position, 1 = next, and the member's priority; position 254 "not queued" to a member it does not
know). A queued member that releases PTT sends Floor Release (Floor Queued Cancel is accepted too); the arbitrator
drops it. The Floor Granted that ends a burst, or pre-empts it, carries the rest of the queue (Queue Size and per
member SSRC, Queued User ID and Queue Info, in queue order); the grantee adopts it as its own queue and arbitrates;
the members listed stay in ``O: queued`` and take their new positions from it (``QUEUE_POSITION``). A grantee that
never takes the floor (T205 x C205, or its Floor Release) is dropped and the next queued member is granted.
In ``O: queued``: :meth:`OffNetworkFloor.ask_queue_position` sends Floor Queue Position Request, retransmitted on
T204 up to C204 times; a new talker (Floor Taken or media from someone else) also makes us ask it. Losing our place
-- no answer to C204 requests, position 254, or a Floor Granted to another that does not list us -- sends a Floor
Request again (``O: pending request``): a live talker queues us anew. When the arbitrator disappears (T203, no media
or floor message from it) we still hold PTT, so we compete for the silent floor as any request does: Floor Request,
and with no answer after C201 of them the floor is ours (the collision rule settles several queued members doing so).

Wire conventions: every message we send has our SSRC in the RTCP header and our URI in User ID, and
Floor Taken / Floor Granted name the party that holds (or gets) the floor in Granted Party's Identity and in the
SSRC field (field 14), with its Floor Priority and Floor Indicator. Floor Deny names the denied requester by the
SSRC field, Floor Queue Position Info the queued member by Queued User ID and the SSRC field. (TS 24.380 puts the
requester's / grantee's MCPTT ID in User ID of Floor Deny / Floor Granted; here User ID always names the sender,
which is how looped-back copies of our own multicast are recognised.)

Simultaneous requests -- the collision rule. A claim to the floor ranks by the tuple (urgency of the Floor
Indicator, Floor Priority, SSRC, URI); the greater tuple wins, and every member evaluates it identically from the
messages themselves. (1) In ``O: pending request`` a Floor Request that outranks ours makes us defer: C201 is
reset and T201 restarted, so the better-ranked requester's chain ends first and it takes the floor; a Floor Taken
(or Floor Granted to another) makes that party the talker and our next Floor Request goes to it, to be denied or
granted like any request. (2) If requests were lost and several members took the floor, a holder that receives a
Floor Taken outranking its own claim yields at once (``REVOKED``, cause #3), and one that outranks the other claim
repeats its own Floor Taken so that the other side yields. A holder that hears another member's media, Floor Deny
or Floor Granted repeats its Floor Taken too, at most every ``reassert_interval``: that settles the case where
both Floor Taken messages were lost. A holder never yields to a Floor Granted to another: a grant is only an offer
(the grantee may decline it, e.g. because we denied it meanwhile); the grantee announces the floor by Floor Taken
when it accepts, and that claim is compared. The rule has no time window: both sides of any conflict compare the
same two claims, so exactly one of them keeps the floor. Members that only listen take the latest claim as the
talker unless the current one is less than ``collision_window`` old and outranks it (a Floor Granted sent by the
current talker is its hand-over, not a competing claim: the grantee becomes the talker at once); media from another
SSRC replaces a talker whose own media has been missing for ``talker_switch`` seconds.

Simplifications against TS 24.380 clause 7 (deliberate):

1. **Queueing, simplified**: the user keeps PTT pressed while queued (§7.1), so a queued member granted the floor
   takes it at once: no user confirmation and no timer waiting for one (T233). The "queueing supported" Floor
   Indicator bit in a Floor Request is our way of saying the requester can be queued. Positions are sent to a
   requester when it is queued and when it asks, and to all at a hand-over; a member overtaken by a higher-priority
   newcomer is not told until then. Queue order beyond priority and arrival is not carried (the grantee ranks the
   adopted members by the order and priorities of the Floor Granted); a queue held by a member that loses a
   collision is lost, and its members queue again at the winner. In ``O: pending granted`` new requests are queued
   and the retransmitted Floor Granted carries them; a grantee that already took the floor merges them from a
   retransmission it hears.
2. **Group calls only**: no private-call behaviour (``O: silence`` granting a request directly), no broadcast-call
   notifications, no MCPTT call release input (the shell drops the object when it leaves the call).
3. **The grantee announces itself**: on accepting a Floor Granted we send Floor Taken (the standard relies on our
   media); it stops the granter's T205 retransmissions early and tells members that missed the Floor Granted.
4. **A Floor Granted we are not waiting for** (``O: silence`` / ``O: has no permission``) is declined with Floor
   Release, so the granter and everyone else return to ``O: silence`` instead of waiting for T203.
5. **Collision handling** beyond the standard (the rule above): ``O: has permission`` reacts to Floor Taken,
   Floor Granted to another, Floor Deny, Floor Queue Position Info and foreign media, which the standard ignores
   there.
6. **Message Sequence Number** in Floor Taken counts our own floor announcements; received ones are not used.
   Floor Taken also carries our Floor Priority (the collision rule needs it). Message ordering is not checked:
   a Floor Release overtaken by an older message can leave a listener thinking the talker still talks until T203.
7. T230 runs in ``O: silence`` only and restarts on every floor message received there.

Robustness: messages with unhandled subtypes, about unknown SSRCs, addressed to others, duplicated, or looped back
(header SSRC or User ID is ours) never raise; they are ignored or handled idempotently as described above. Two
members with the same SSRC or the same URI cannot take part in one call (they would ignore each other).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ptt.floor.events import FloorEvent, FloorEventKind
from ptt.floor.messages import (
    QUEUE_POSITION_NOT_QUEUED,
    DenyCause,
    FloorIndicator,
    FloorMessage,
    QueuedParticipant,
    QueueInfo,
    RejectCause,
    RevokeCause,
    Subtype,
)

SILENCE = "O: silence"
HAS_NO_PERMISSION = "O: has no permission"
PENDING_REQUEST = "O: pending request"
HAS_PERMISSION = "O: has permission"
PENDING_GRANTED = "O: pending granted"
QUEUED = "O: queued"
START_STOP = "Start-stop"

MAX_USER_ID_OCTETS = 255
"""A User ID / Granted Party's Identity field holds at most 255 octets (TS 24.380 §8.2.3.1)."""

MAX_KNOWN_NAMES = 256
"""SSRC → URI associations remembered (to name a talker heard only by its media); the oldest are forgotten."""

_SEQUENCE_MODULUS = 0x10000
_MAX_TIMER_RUNS = 64  # per tick: a guard against a timer re-armed at the same instant forever


@dataclass(frozen=True)
class OffNetworkConfig:
    """Timers (seconds) and counters of TS 24.380 clause 7 with their default values, and this module's own."""

    t201: float = 0.04
    """Floor Request retransmission (T201)."""
    c201: int = 3
    """Floor Requests sent before the floor is taken (C201)."""
    t203: float = 4.0
    """End of RTP media (T203)."""
    t204: float = 0.08
    """Floor Queue Position Request retransmission (T204)."""
    c204: int = 3
    """Floor Queue Position Requests sent before we assume our place is lost (C204)."""
    t205: float = 0.08
    """Floor Granted retransmission (T205)."""
    c205: int = 4
    """Floor Granted messages sent before giving up on the grantee (C205)."""
    t206: float = 27.0
    """Stop-talking warning (T206), from the start of the burst."""
    t207: float = 3.0
    """Stop talking (T207), after the warning: a burst lasts at most t206 + t207."""
    t230: float = 600.0
    """Inactivity (T230) in O: silence."""
    collision_window: float = 0.5
    """How long a listener holds on to a fresh claim against a lower-ranked competing one."""
    reassert_interval: float = 0.08
    """Least interval between repeated Floor Taken messages of a holder hearing another's media, Deny or Granted."""
    talker_switch: float = 0.2
    """Media from another SSRC replaces a talker whose own media has been missing this long."""
    queue_capacity: int = 16
    """Members an arbitrator queues at most; one more is denied with cause #7 (queue full)."""

    def __post_init__(self) -> None:
        for name in ("t201", "t203", "t204", "t205", "t206", "t207", "t230"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        for name in ("collision_window", "reassert_interval", "talker_switch"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.c201 < 1 or self.c204 < 1 or self.c205 < 1:
            raise ValueError("c201, c204 and c205 must be at least 1")
        if self.queue_capacity < 1:
            raise ValueError("queue_capacity must be at least 1")

    @property
    def max_talk(self) -> float:
        """The longest burst: T206 + T207."""
        return self.t206 + self.t207


def _urgency(indicator: int | None) -> int:
    """Emergency > imminent peril > any other call (TS 24.380 §7.2.3.5 pre-emption)."""
    bits = int(indicator or 0)
    if bits & FloorIndicator.EMERGENCY:
        return 2
    if bits & FloorIndicator.IMMINENT_PERIL:
        return 1
    return 0


@dataclass(frozen=True)
class _Claim:
    """A member that has, wants or is given the floor, and what it ranks by."""

    ssrc: int
    uri: str | None
    priority: int = 0
    indicator: int = int(FloorIndicator.NORMAL)

    def rank(self) -> tuple[int, int, int, str]:
        """The collision rule's order: the greater tuple wins (module docstring)."""
        return (_urgency(self.indicator), self.priority, self.ssrc, self.uri or "")

    def preempts(self, holder: _Claim) -> bool:
        return (_urgency(self.indicator), self.priority) > (_urgency(holder.indicator), holder.priority)


@dataclass(frozen=True)
class _Entry:
    """A queued member at the arbitrator: its request and when it arrived (ties of priority go to the earlier)."""

    claim: _Claim
    arrival: int

    def order(self) -> tuple[int, int, int]:
        return (-_urgency(self.claim.indicator), -self.claim.priority, self.arrival)


@dataclass
class _Timers:
    deadlines: dict[str, float] = field(default_factory=dict)

    def start(self, name: str, at: float) -> None:
        self.deadlines[name] = at

    def stop(self, *names: str) -> None:
        for name in names:
            self.deadlines.pop(name, None)

    def running(self, name: str) -> bool:
        return name in self.deadlines

    def due(self, now: float) -> str | None:
        if not self.deadlines:
            return None
        name = min(self.deadlines, key=self.deadlines.__getitem__)
        return name if self.deadlines[name] <= now else None


_DEFAULT_CONFIG = OffNetworkConfig()
_DENY_PHRASE = "another MCPTT client has permission"
_QUEUE_FULL_PHRASE = "queue full"


class OffNetworkFloor:
    """The off-network floor participant (and, while talking, floor arbitrator) of one member of one call."""

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
        _check_priority(priority)
        self.own_uri = own_uri
        self.own_ssrc = own_ssrc
        self.priority = priority
        self.config = config
        self.queueing = queueing
        self.state = SILENCE
        self._timers = _Timers()
        self._timers.start("T230", now + config.t230)
        self._talker: _Claim | None = None  # someone else; we are the talker in O: has permission
        self._talker_since = now  # when the current talker's claim was learned
        self._talker_heard: float | None = None  # the talker's last media
        self._own = _Claim(own_ssrc, own_uri, priority)  # our request / floor, once we ask
        self._grantee: _Claim | None = None
        self._granted_message: FloorMessage | None = None
        self._c201 = 0
        self._c204 = 0
        self._c205 = 0
        self._queue: list[_Entry] = []  # as arbitrator (and while handing over): who waits, in order
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
    def _holder(self) -> _Claim | None:
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

    # -- inputs --------------------------------------------------------------------------------------------------

    def request(self, now: float, *, priority: int | None = None, indicator: int | None = None) -> None:
        """The user pressed PTT: ask for the floor (priority defaults to the member's, indicator to "normal")."""
        self.tick(now)
        if priority is not None:
            _check_priority(priority)
        if self.state in (PENDING_REQUEST, HAS_PERMISSION, QUEUED):
            return  # already asking, queued or talking
        if self.state == PENDING_GRANTED:
            # We were just pre-empted and are handing the floor over: the grantee has it.
            self._event(FloorEventKind.DENIED, self._grantee, DenyCause.ANOTHER_CLIENT_HAS_PERMISSION, "handing over")
            return
        bits = int(FloorIndicator.NORMAL) if indicator is None else int(indicator) & 0xFFFF
        if self.queueing:
            bits |= FloorIndicator.QUEUEING_SUPPORTED  # tells the arbitrator it may queue us
        self._own = _Claim(self.own_ssrc, self.own_uri, self.priority if priority is None else priority, bits)
        self._timers.stop("T230")
        self.state = PENDING_REQUEST
        self._send_request()
        self._c201 = 1
        self._timers.start("T201", now + self.config.t201)

    def release(self, now: float) -> None:
        """The user released PTT: give up the floor, the request or our place in the queue."""
        self.tick(now)
        if self.state == HAS_PERMISSION:
            self._end_burst(now)
        elif self.state == QUEUED:
            self._send(Subtype.RELEASE, floor_indicator=self._own.indicator)  # the arbitrator drops us
            self._leave_queue(now, "PTT released")
        elif self.state == PENDING_REQUEST:
            self._send(Subtype.RELEASE, floor_indicator=self._own.indicator)
            self._timers.stop("T201")
            if self._talker is None:
                self._enter_silence(now)
            else:
                self.state = HAS_NO_PERMISSION
                if not self._timers.running("T203"):
                    self._timers.start("T203", now + self.config.t203)

    def ask_queue_position(self, now: float) -> None:
        """The user asks for its queue position (O: queued): Floor Queue Position Request, retransmitted on T204."""
        self.tick(now)
        if self.state == QUEUED:
            self._send_position_request(now)

    def receive(self, message: FloorMessage, now: float) -> None:
        """A floor control message from another member (authenticated by the shell)."""
        self.tick(now)
        if message.ssrc == self.own_ssrc or message.user_id == self.own_uri:
            return  # our own multicast looped back
        if message.user_id:
            self._learn(message.ssrc, message.user_id)
        if message.granted_party and message.ssrc_field is not None and message.ssrc_field != self.own_ssrc:
            self._learn(message.ssrc_field, message.granted_party)
        for member in message.queued:
            if member.user_id and member.ssrc != self.own_ssrc:
                self._learn(member.ssrc, member.user_id)
        if self.state == SILENCE:
            self._timers.start("T230", now + self.config.t230)
        match message.subtype:
            case Subtype.REQUEST:
                self._on_request(message, now)
            case Subtype.TAKEN:
                self._on_taken(message, now)
            case Subtype.GRANTED:
                self._on_granted(message, now)
            case Subtype.DENY:
                self._on_deny(message, now)
            case Subtype.RELEASE | Subtype.QUEUED_CANCEL:
                self._on_release(message, now)
            case Subtype.QUEUE_POSITION_INFO if self.queueing:
                self._on_position_info(message, now)
            case Subtype.QUEUE_POSITION_REQUEST if self.queueing:
                self._on_position_request(message)
            case _:
                pass  # Floor Idle / Revoke / Ack (and the queue messages without queueing) mean nothing here

    def media_received(self, ssrc: int, now: float, *, user: str | None = None) -> None:
        """An RTP media packet from ``ssrc`` (``user`` if the shell knows whose it is)."""
        self.tick(now)
        if ssrc == self.own_ssrc:
            return
        if user:
            self._learn(ssrc, user)
        sender = _Claim(ssrc, user or self._names.get(ssrc))
        if self.state in (SILENCE, START_STOP):
            self._become_listener(sender, now)  # late entry
            self._talker_heard = now
        elif self.state in (HAS_NO_PERMISSION, PENDING_REQUEST, QUEUED):
            if self._talker is None or self._talker.ssrc != ssrc:
                heard = self._talker_heard if self._talker_heard is not None else self._talker_since
                if self._talker is not None and now - heard < self.config.talker_switch:
                    return  # two senders: the floor messages decide, not who was heard last
                self._set_talker(sender, now)
                if self.state == QUEUED:
                    self._send_position_request(now)  # a talker we missed: does it hold our place?
            self._talker_heard = now
            self._timers.start("T203", now + self.config.t203)
            if self.state == PENDING_REQUEST:
                self._c201 = 1  # the talker is alive: keep asking it rather than take the floor
        elif self.state == HAS_PERMISSION:
            self._reassert(now)
        elif self.state == PENDING_GRANTED and self._grantee is not None and ssrc == self._grantee.ssrc:
            grantee = self._grantee
            self._end_handover()
            self._become_listener(grantee, now, announce=False)
            self._talker_heard = now

    def tick(self, now: float) -> None:
        """Run every timer due at ``now``."""
        for _ in range(_MAX_TIMER_RUNS):
            name = self._timers.due(now)
            if name is None:
                return
            self._timers.stop(name)
            match name:
                case "T201":
                    self._t201_expired(now)
                case "T203":
                    self._t203_expired(now)
                case "T204":
                    self._t204_expired(now)
                case "T205":
                    self._t205_expired(now)
                case "T206":
                    left = max(0.0, self._stop_at - now)
                    self._event(FloorEventKind.STOP_WARNING, None, None, f"stop talking in {left:.0f} s")
                    self._timers.start("T207", max(now, self._stop_at))
                case "T207":
                    self._event(FloorEventKind.STOP_TALKING, None, RevokeCause.MEDIA_BURST_TOO_LONG, "burst too long")
                    self._end_burst(now)
                case _:  # T230
                    self._event(FloorEventKind.INACTIVE, None, None, "no floor activity")
                    self.state = START_STOP

    # -- message procedures --------------------------------------------------------------------------------------

    def _on_request(self, message: FloorMessage, now: float) -> None:
        requester = _Claim(message.ssrc, message.user_id, message.priority or 0, _indicator(message))
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

    def _on_taken(self, message: FloorMessage, now: float) -> None:
        ssrc = message.ssrc_field if message.ssrc_field is not None else message.ssrc
        claim = _Claim(ssrc, message.granted_party or message.user_id, message.priority or 0, _indicator(message))
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
        claim = _Claim(ssrc, message.granted_party, message.priority or 0, _indicator(message))
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

    def _on_claim(self, claim: _Claim, now: float, *, offered: bool = False, handed: bool = False) -> None:
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
            self._talker = _Claim(message.ssrc, message.user_id, message.priority or 0, _indicator(message))
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
                self._talker = _Claim(message.ssrc, message.user_id, 0, _indicator(message))
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

    def _on_position_request(self, message: FloorMessage) -> None:
        if self.state not in (HAS_PERMISSION, PENDING_GRANTED):
            return
        entry = next((e for e in self._queue if e.claim.ssrc == message.ssrc), None)
        if entry is not None:
            self._send_position(entry)
        elif self.state == HAS_PERMISSION:
            claim = _Claim(message.ssrc, message.user_id)
            self._send_position(_Entry(claim, -1), QUEUE_POSITION_NOT_QUEUED)  # ask again with a Floor Request

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

    def _t205_expired(self, now: float) -> None:
        if self.state != PENDING_GRANTED or self._granted_message is None:
            return
        if self._c205 < self.config.c205:
            self._out.append(self._granted_message)
            self._c205 += 1
            self._timers.start("T205", now + self.config.t205)
        else:
            self._next_grantee(now)  # the grantee never started

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

    def _end_burst(self, now: float) -> None:
        """PTT released or T207: the floor goes to the first queued member, or is released."""
        if self._queue:
            grantee = self._queue.pop(0).claim
            self._hand_over(grantee, now)
        else:
            self._send(Subtype.RELEASE, floor_indicator=self._own.indicator)
            self._enter_silence(now)

    def _hand_over(self, grantee: _Claim, now: float, *, preempted: bool = False) -> None:
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

    def _build_granted(self, grantee: _Claim) -> FloorMessage:
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

    def _enqueue_or_deny(self, requester: _Claim) -> bool:
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
        entry = _Entry(requester, self._arrivals)
        self._arrivals += 1
        self._queue.append(entry)
        self._queue.sort(key=_Entry.order)
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
            claim = _Claim(member.ssrc, member.user_id or None, member.queue_info.priority, indicator)
            self._queue.append(_Entry(claim, self._arrivals))
            self._arrivals += 1
            held.add(member.ssrc)
        self._queue.sort(key=_Entry.order)
        del self._queue[self.config.queue_capacity :]

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

    def _stop_bursting(self) -> None:
        self._timers.stop("T206", "T207")

    def _enter_silence(self, now: float) -> None:
        self._timers.stop("T201", "T203", "T204", "T205", "T206", "T207")
        self._talker = None
        self._queue = []
        self.state = SILENCE
        self._timers.start("T230", now + self.config.t230)
        self._event(FloorEventKind.IDLE, None, None, "")

    def _become_listener(self, claim: _Claim, now: float, *, announce: bool = True) -> None:
        """Enter O: has no permission with ``claim`` as the talker."""
        self._timers.stop("T230", "T201", "T204")
        self._queue = []  # a yielding holder's queue is lost: its members queue again at the winner
        self.state = HAS_NO_PERMISSION
        self._talker, self._talker_since, self._talker_heard = claim, now, None
        self._timers.start("T203", now + self.config.t203)
        if announce:
            self._event(FloorEventKind.TAKEN, claim, None, "")

    def _listen_to(self, claim: _Claim, now: float, *, handed: bool = False) -> None:
        """A listener's view of a new claim: keep a fresh, better-ranked talker (it will make the other yield)."""
        current = self._talker
        if current is not None and current.ssrc != claim.ssrc and not handed:
            fresh = now - self._talker_since < self.config.collision_window
            if fresh and current.rank() > claim.rank():
                return
        self._set_talker(claim, now)

    def _set_talker(self, claim: _Claim, now: float) -> None:
        previous = self._talker
        if previous is not None and previous.ssrc == claim.ssrc:
            # The same member again: refresh, keeping what we knew of it.
            self._talker = _Claim(claim.ssrc, claim.uri or previous.uri, claim.priority, claim.indicator)
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
        self, requester: _Claim, cause: DenyCause = DenyCause.ANOTHER_CLIENT_HAS_PERMISSION, phrase: str = _DENY_PHRASE
    ) -> None:
        self._send(
            Subtype.DENY,
            reject_cause=RejectCause(int(cause), phrase),
            ssrc_field=requester.ssrc,
            floor_indicator=self._own.indicator,
        )

    def _send_position(self, entry: _Entry, position: int | None = None) -> None:
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
        self, kind: FloorEventKind, claim: _Claim | None, cause: int | None, text: str, position: int | None = None
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
            self._talker = _Claim(ssrc, uri, talker.priority, talker.indicator)
            self._event(FloorEventKind.TAKEN, self._talker, None, "")


def _indicator(message: FloorMessage) -> int:
    return int(message.floor_indicator) if message.floor_indicator is not None else int(FloorIndicator.NORMAL)


def _check_priority(priority: int) -> None:
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 255:
        raise ValueError(f"floor priority must be an int in 0..255, not {priority!r}")
