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

from ptt.floor.events import FloorEventKind
from ptt.floor.fields import DenyCause, FloorIndicator, RevokeCause, Subtype
from ptt.floor.messages import FloorMessage
from ptt.floor.offnetwork_config import (
    HAS_NO_PERMISSION,
    HAS_PERMISSION,
    MAX_KNOWN_NAMES,
    MAX_USER_ID_OCTETS,
    PENDING_GRANTED,
    PENDING_REQUEST,
    QUEUED,
    SILENCE,
    START_STOP,
    OffNetworkConfig,
)
from ptt.floor.offnetwork_participant import OffNetworkParticipant
from ptt.floor.offnetwork_state import Claim, check_priority

__all__ = [
    "HAS_NO_PERMISSION",
    "HAS_PERMISSION",
    "MAX_KNOWN_NAMES",
    "MAX_USER_ID_OCTETS",
    "PENDING_GRANTED",
    "PENDING_REQUEST",
    "QUEUED",
    "SILENCE",
    "START_STOP",
    "OffNetworkConfig",
    "OffNetworkFloor",
]

_MAX_TIMER_RUNS = 64  # per tick: a guard against a timer re-armed at the same instant forever


class OffNetworkFloor(OffNetworkParticipant):
    """The off-network floor participant (and, while talking, floor arbitrator) of one member of one call."""

    # -- inputs --------------------------------------------------------------------------------------------------

    def request(self, now: float, *, priority: int | None = None, indicator: int | None = None) -> None:
        """The user pressed PTT: ask for the floor (priority defaults to the member's, indicator to "normal")."""
        self.tick(now)
        if priority is not None:
            check_priority(priority)
        if self.state in (PENDING_REQUEST, HAS_PERMISSION, QUEUED):
            return  # already asking, queued or talking
        if self.state == PENDING_GRANTED:
            # We were just pre-empted and are handing the floor over: the grantee has it.
            self._event(FloorEventKind.DENIED, self._grantee, DenyCause.ANOTHER_CLIENT_HAS_PERMISSION, "handing over")
            return
        bits = int(FloorIndicator.NORMAL) if indicator is None else int(indicator) & 0xFFFF
        if self.queueing:
            bits |= FloorIndicator.QUEUEING_SUPPORTED  # tells the arbitrator it may queue us
        self._own = Claim(self.own_ssrc, self.own_uri, self.priority if priority is None else priority, bits)
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
        sender = Claim(ssrc, user or self._names.get(ssrc))
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
