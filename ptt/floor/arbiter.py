"""The on-network floor control server of one group (3GPP TS 24.380 §6.3), as a pure state machine.

No I/O and no clock: every input carries ``now`` (seconds, any monotonic origin), every output is a list of
:class:`Send` (a floor control message and whom it is for), and the one timer is exposed through
:meth:`FloorArbiter.next_deadline` / :meth:`FloorArbiter.on_timer`, as aioquic's connection does. Floor changes
are also reported as :class:`FloorEvent` values (drained by :meth:`FloorArbiter.events`) for the media relay,
which forwards the holder's media only, and for call events.

The arbiter merges the two TS 24.380 server machines, 'general floor control operation' (G states, §6.3.4) and
'basic floor control operation towards the floor participant' (U states, §6.3.5), into one object per group:

* G: Floor Idle       -- ``holder is None``;
* G: Floor Taken      -- a holder, the stop-talking timer T2 (``max_burst``) running;
* G: pending Floor Revoke -- a holder that has been sent Floor Revoke (cause #2), the stop-talking grace timer
  T3 (``revoke_grace``) running; on its expiry the floor is taken away as if the holder had released it.

Message contents follow TS 24.380 §8.2: Floor Granted carries Duration, Floor Priority, Queue Size (when
queueing is on) and the Floor Indicator; Floor Taken carries Granted Party's Identity, Permission to Request the
Floor, Message Sequence Number, the granted participant's SSRC and the Floor Indicator; Floor Idle carries
Message Sequence Number and Floor Indicator; Floor Deny and Floor Revoke a Reject Cause; Floor Queue Position
Info the Queue Info (position from 1, priority), the queued participant's User ID and SSRC; Floor Ack the
Message Type acknowledged and Source = 2 (controlling function). Every message the server sends has the
server's SSRC (:attr:`ArbiterConfig.server_ssrc`) in its header.

Simplifications against TS 24.380 §6.3 (deliberate; the rest of the procedures are as specified):

1. **No acknowledged delivery from the server.** Floor Granted, Floor Idle and Floor Revoke are sent once and
   never with "acknowledgement required", so there are no retransmission timers T20 (Floor Granted, counter
   C20), T7 (Floor Idle) or T8 (Floor Revoke). A participant that lost a Floor Granted asks again: a Request
   from the holder is answered with Floor Granted again (with the remaining duration), or with Floor Revoke
   again if the floor is being revoked. Floor Ack messages from participants are accepted and ignored. In the
   other direction, any handled message with "acknowledgement required" gets a Floor Ack (before the answer);
   on the wire only Floor Release among the participants' messages can carry the flag (table 8.2.2.1-1).
2. **No media supervision.** The arbiter does not see RTP, so there is no T1 (end of RTP media) and no
   'U: not permitted but sends media' state: the relay drops media from anyone but the holder (``granted``
   events tell it who that is), and a silent holder keeps the floor until it releases or T2 runs out.
3. **Pre-emption hands over at once.** TS 24.380 enters 'G: pending Floor Revoke' and grants the pre-empting
   participant only after the holder's Floor Release (or T3). Here Floor Revoke (cause #4) goes to the holder
   and Floor Granted to the pre-empting participant in the same step; the pre-empted holder is not queued.
   A request pre-empts when its Floor Indicator is more urgent than the holder's grant (emergency > imminent
   peril > neither) and the server vouches for that urgency (``verified_call_types``: the member's alert, see
   below; otherwise only a participant authorised for pre-emptive priority, :attr:`Participant.pre_emptive`, is
   believed), or when a pre-emptive participant asks at no lower urgency with a higher priority than the
   holder's grant. A dispatcher's priority never pre-empts a more urgent (emergency) talker.
4. **Priorities.** A participant's authorised priority comes from :class:`Participant` (call setup, not this
   protocol). A Floor Request carrying a Floor Priority field gets ``min(requested, authorised)``: a
   participant can ask for less than it is entitled to, never more. The queue is ordered by that priority
   (highest first), then by arrival; a queued participant that asks again keeps its place and is told it.
5. **No Floor Deny cause #3 ("only one participant"), #4 (retry-after) or #6 (no resources)**: a lone
   participant is granted the floor; receive-only participants get cause #5, a full queue cause #7, and with
   queueing off a busy floor gives cause #1.
6. **Message Sequence Number** (Floor Idle and Floor Taken) increases by one, modulo 2^16, on every floor
   transition (a grant or the floor becoming idle): 0 before the first, then 1, 2, …; the copies of one
   transition (the broadcast and later late-entry copies) share the number. Floor Granted carries none (the
   message has no such field).
7. **Floor Indicator**: grants echo the call-type bits of the request (normal, broadcast, system, emergency,
   imminent peril; "normal" when the request had none). Floor Idle says "normal". With
   ``verified_call_types`` (the group server) the server decides: a request's emergency / imminent peril bits
   are replaced by the member's active alert (:meth:`FloorArbiter.set_alerts`: present → set, even if the
   request lacked it; absent → cleared), and BROADCAST needs :attr:`Participant.broadcast` (else Floor Deny
   #255). While any member of the group has an alert, Floor Granted, Floor Taken and Floor Idle carry the
   group's level (the call is an emergency / imminent peril call); the queue is ordered by urgency first.
8. **Queue position of a participant that is not queued**: a Floor Queue Position Request from it is answered
   with position 254 (``QUEUE_POSITION_NOT_QUEUED``, §8.2.3.5 "not queued") and its authorised priority.
9. **Floor Taken to everyone else** is one broadcast :class:`Send` (``to=None``, ``exclude=`` the holder) with
   Permission to Request the Floor = 1 for all; receive-only participants are refused when they ask.
10. **Joining twice** with the same SSRC is a leave followed by a join (a holder that joins again loses the
    floor); joining is what TS 24.379 call setup / late entry does, and is answered with Floor Taken or Floor
    Idle (late entry).
11. No dual floor control, no audio cut-in, no multi-talker, no track info (non-controlling functions), no
    Floor Queued Cancel of others' requests by an authorised user.
12. **Broadcast group call** (the standards leave who may interrupt it to policy): while the holder's grant
    has the BROADCAST bit, every other request is denied with cause #1 "broadcast group call in progress" (not
    queued), a pre-emptive dispatcher's included; only an emergency request pre-empts it (Floor Revoke #4). The
    broadcast ends when its talker releases the floor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ptt.floor.arbiter_types import (
    DEFAULT_SERVER_SSRC,
    MAX_DURATION,
    MAX_USER_ID_OCTETS,
    SEQUENCE_MODULUS,
    ArbiterConfig,
    Claim,
    Floor,
    Participant,
    Send,
    urgency,
    with_urgency,
)
from ptt.floor.events import FloorEvent, FloorEventKind
from ptt.floor.fields import (
    QUEUE_POSITION_NOT_QUEUED,
    DenyCause,
    FloorIndicator,
    QueueInfo,
    RejectCause,
    RevokeCause,
    Source,
    Subtype,
)
from ptt.floor.messages import FloorMessage

__all__ = [
    "DEFAULT_SERVER_SSRC",
    "MAX_DURATION",
    "MAX_USER_ID_OCTETS",
    "SEQUENCE_MODULUS",
    "ArbiterConfig",
    "FloorArbiter",
    "Participant",
    "Send",
]

_CALL_TYPE_BITS = (
    FloorIndicator.NORMAL
    | FloorIndicator.BROADCAST
    | FloorIndicator.SYSTEM
    | FloorIndicator.EMERGENCY
    | FloorIndicator.IMMINENT_PERIL
)

_HANDLED = frozenset(
    {Subtype.REQUEST, Subtype.RELEASE, Subtype.QUEUE_POSITION_REQUEST, Subtype.QUEUED_CANCEL, Subtype.ACK}
)


_DEFAULT_CONFIG = ArbiterConfig()


class FloorArbiter:
    """Floor control server for one group call: one holder at most, a priority queue, the burst limit."""

    def __init__(self, group_uri: str, config: ArbiterConfig = _DEFAULT_CONFIG) -> None:
        self.group_uri = group_uri
        self.config = config
        self._members: dict[int, Participant] = {}
        self._floor: Floor | None = None
        self._queue: list[Claim] = []
        self._sequence = 0
        self._events: list[FloorEvent] = []
        self._alerts: dict[str, int] = {}  # member URI -> urgency of its active alert (1 imminent peril, 2 emergency)

    # -- state -----------------------------------------------------------------------------------------------

    @property
    def holder(self) -> Participant | None:
        return self._floor.claim.participant if self._floor is not None else None

    @property
    def queue(self) -> list[Participant]:
        return [claim.participant for claim in self._queue]

    @property
    def participants(self) -> list[Participant]:
        return list(self._members.values())

    @property
    def revoking(self) -> bool:
        """True between a burst-limit Floor Revoke and the holder's release (G: pending Floor Revoke)."""
        return self._floor is not None and self._floor.revoke_deadline is not None

    def events(self) -> list[FloorEvent]:
        """The floor events since the last call, oldest first."""
        drained, self._events = self._events, []
        return drained

    # -- emergency and imminent peril (issue 16) ---------------------------------------------------------------

    @property
    def group_urgency(self) -> int:
        """The group's alert level as urgency (0 none, 1 imminent peril, 2 emergency): every Floor Granted, Taken and
        Idle carries it (the call is an emergency / imminent peril call)."""
        return max(self._alerts.values(), default=0)

    def set_alerts(self, alerts: Mapping[str, int]) -> None:
        """The members' active alerts (URI -> urgency 1 or 2). With ``verified_call_types``, a claim (the holder's,
        a queued one) of a member whose alert ended loses its urgency; a raised alert applies from the member's
        next request (the server never grants on its own). No message is sent."""
        self._alerts = {uri: level for uri, level in alerts.items() if level in (1, 2)}
        if not self.config.verified_call_types:
            return
        claims = self._queue + ([self._floor.claim] if self._floor is not None else [])
        for claim in claims:
            allowed = self._alerts.get(claim.participant.uri, 0)
            if urgency(claim.indicator) > allowed:
                claim.indicator = with_urgency(claim.indicator, allowed) or int(FloorIndicator.NORMAL)

    def _call_type(self, participant: Participant, requested: int) -> int | None:
        """The call type bits the server grants a request (None: a broadcast the participant may not make)."""
        if not self.config.verified_call_types:
            return requested or int(FloorIndicator.NORMAL)
        if requested & FloorIndicator.BROADCAST and not participant.broadcast:
            return None
        return with_urgency(requested, self._alerts.get(participant.uri, 0)) or int(FloorIndicator.NORMAL)

    def _shown(self, indicator: int) -> int:
        """The Floor Indicator sent for a claim: its call type at least as urgent as the group's alert level."""
        level = self.group_urgency
        return with_urgency(indicator, level) if level > urgency(indicator) else indicator

    # -- inputs ----------------------------------------------------------------------------------------------

    def join(self, p: Participant, now: float) -> list[Send]:
        """A participant joins the call (late entry): it is told who holds the floor, or that it is idle."""
        sends = self.leave(p.ssrc, now) if p.ssrc in self._members else []
        self._members[p.ssrc] = p
        if self._floor is not None:
            sends.append(Send(p.ssrc, self._taken(self._floor)))
        else:
            sends.append(Send(p.ssrc, self._idle()))
        return sends

    def update_participant(self, p: Participant) -> None:
        """A joined participant's authorisations changed (priority, pre-emption, broadcast): they apply from its
        next request; a grant or queue place it holds keeps what it was given."""
        if p.ssrc in self._members:
            self._members[p.ssrc] = p

    def leave(self, ssrc: int, now: float) -> list[Send]:
        """A participant leaves: a holder leaving releases the floor, a queued one leaves the queue."""
        if self._members.pop(ssrc, None) is None:
            return []
        self._dequeue(ssrc)
        if self._floor is not None and self._floor.claim.ssrc == ssrc:
            return self._release(now)
        return []

    def receive(self, ssrc: int, message: FloorMessage, now: float) -> list[Send]:
        """A floor control message from participant ``ssrc`` (the RTCP sender; unknown SSRCs are ignored)."""
        participant = self._members.get(ssrc)
        if participant is None or message.subtype not in _HANDLED:
            return []
        sends: list[Send] = []
        if message.ack_required and message.subtype != Subtype.ACK:
            sends.append(Send(ssrc, self._ack(message.subtype)))
        if message.subtype == Subtype.REQUEST:
            sends += self._on_request(participant, message, now)
        elif message.subtype == Subtype.RELEASE:
            if self._floor is not None and self._floor.claim.ssrc == ssrc:
                sends += self._release(now)
            else:
                self._dequeue(ssrc)
        elif message.subtype == Subtype.QUEUE_POSITION_REQUEST:
            sends.append(Send(ssrc, self._queue_position_info(participant)))
        elif message.subtype == Subtype.QUEUED_CANCEL:
            self._dequeue(ssrc)
        # Subtype.ACK: nothing is waiting for one (simplification 1).
        return sends

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` must next be called, or None if no timer runs."""
        if self._floor is None:
            return None
        if self._floor.revoke_deadline is not None:
            return self._floor.revoke_deadline
        return self._floor.burst_deadline

    def on_timer(self, now: float) -> list[Send]:
        """Run the timers due at ``now`` (T2: Floor Revoke cause #2; T3: take the floor away)."""
        floor = self._floor
        if floor is None:
            return []
        if floor.revoke_deadline is not None:
            if now >= floor.revoke_deadline:
                return self._release(now)
            return []
        if floor.burst_deadline is not None and now >= floor.burst_deadline:
            floor.burst_deadline = None
            floor.revoke_deadline = now + self.config.revoke_grace
            return [self._revoke(floor, RevokeCause.MEDIA_BURST_TOO_LONG)]
        return []

    # -- procedures ------------------------------------------------------------------------------------------

    def _on_request(self, participant: Participant, message: FloorMessage, now: float) -> list[Send]:
        requested = int(message.floor_indicator or 0) & int(_CALL_TYPE_BITS)
        call_type = self._call_type(participant, requested)
        if call_type is None:
            phrase = "not authorised for broadcast group calls"
            return [self._deny(participant, DenyCause.OTHER, phrase, requested or int(FloorIndicator.NORMAL))]
        indicator = call_type
        if participant.receive_only:
            return [self._deny(participant, DenyCause.RECEIVE_ONLY, "receive only", indicator)]
        priority = participant.priority if message.priority is None else min(message.priority, participant.priority)
        floor = self._floor
        if floor is None:
            return self._grant(Claim(participant, priority, indicator), now)
        if floor.claim.ssrc == participant.ssrc:
            # A lost Floor Granted (or Floor Revoke): say it again, nothing changes.
            if floor.revoke_deadline is not None:
                return [self._revoke(floor, RevokeCause.MEDIA_BURST_TOO_LONG, event=False)]
            return [Send(participant.ssrc, self._granted(floor, now))]
        mine, theirs = urgency(indicator), urgency(floor.claim.indicator)
        # urgency pre-empts when the server vouches for it (verified call types) or the participant may pre-empt
        urgent = mine > theirs and (self.config.verified_call_types or participant.pre_emptive)
        if floor.claim.indicator & FloorIndicator.BROADCAST:
            # a broadcast group call: nobody else is granted or queued; only an emergency interrupts it
            if urgent and mine == 2:
                revoke = self._revoke(floor, RevokeCause.PRE_EMPTED)
                return [revoke, *self._grant(Claim(participant, priority, indicator), now)]
            phrase = "broadcast group call in progress"
            return [self._deny(participant, DenyCause.ANOTHER_CLIENT_HAS_PERMISSION, phrase, indicator)]
        if urgent or (participant.pre_emptive and mine >= theirs and priority > floor.claim.priority):
            sends = [self._revoke(floor, RevokeCause.PRE_EMPTED)]
            return sends + self._grant(Claim(participant, priority, indicator), now)
        if not self.config.queueing:
            return [self._deny(participant, DenyCause.ANOTHER_CLIENT_HAS_PERMISSION, "another talker", indicator)]
        queued = next((claim for claim in self._queue if claim.ssrc == participant.ssrc), None)
        if queued is not None and urgency(queued.indicator) >= mine:
            return [Send(participant.ssrc, self._queue_position_info(participant))]
        if queued is not None:
            self._dequeue(participant.ssrc)  # asked again more urgently: queued again by the new urgency
        elif len(self._queue) >= self.config.queue_limit:
            return [self._deny(participant, DenyCause.QUEUE_FULL, "queue full", indicator)]
        claim = Claim(participant, priority, indicator)
        # after everyone as urgent and of the same or a higher priority: by urgency, priority, then arrival
        rank = (mine, priority)
        position = next(
            (i for i, q in enumerate(self._queue) if (urgency(q.indicator), q.priority) < rank), len(self._queue)
        )
        self._queue.insert(position, claim)
        self._events.append(self._about(FloorEventKind.QUEUED, participant, position=position + 1))
        return [Send(participant.ssrc, self._queue_position_info(participant))]

    def _grant(self, claim: Claim, now: float) -> list[Send]:
        """Floor Granted to ``claim``'s participant and Floor Taken to everyone else (a floor transition)."""
        self._dequeue(claim.ssrc)
        self._sequence = (self._sequence + 1) % SEQUENCE_MODULUS
        floor = Floor(claim, burst_deadline=now + self.config.max_burst)
        self._floor = floor
        self._events.append(self._about(FloorEventKind.GRANTED, claim.participant))
        return [
            Send(claim.ssrc, self._granted(floor, now)),
            Send(None, self._taken(floor), exclude=claim.ssrc),
        ]

    def _release(self, now: float) -> list[Send]:
        """The floor is free again: hand it to the head of the queue, or announce Floor Idle to all."""
        self._floor = None
        if self._queue:
            return self._grant(self._queue[0], now)
        self._sequence = (self._sequence + 1) % SEQUENCE_MODULUS
        self._events.append(FloorEvent(FloorEventKind.IDLE))
        return [Send(None, self._idle())]

    def _revoke(self, floor: Floor, cause: RevokeCause, *, event: bool = True) -> Send:
        holder = floor.claim.participant
        if event:
            self._events.append(self._about(FloorEventKind.REVOKED, holder, cause=int(cause)))
        message = FloorMessage(
            subtype=Subtype.REVOKE,
            ssrc=self.config.server_ssrc,
            reject_cause=RejectCause(int(cause), _REVOKE_PHRASES.get(cause, "")),
            floor_indicator=floor.claim.indicator,
        )
        return Send(holder.ssrc, message)

    def _deny(self, participant: Participant, cause: DenyCause, phrase: str, indicator: int) -> Send:
        self._events.append(self._about(FloorEventKind.DENIED, participant, cause=int(cause)))
        message = FloorMessage(
            subtype=Subtype.DENY,
            ssrc=self.config.server_ssrc,
            reject_cause=RejectCause(int(cause), phrase),
            floor_indicator=indicator,
        )
        return Send(participant.ssrc, message)

    def _about(
        self, kind: FloorEventKind, participant: Participant, *, cause: int | None = None, position: int | None = None
    ) -> FloorEvent:
        holder = self.holder
        return FloorEvent(
            kind,
            talker=holder.uri if holder else None,
            talker_ssrc=holder.ssrc if holder else None,
            cause=cause,
            position=position,
            member=participant.uri,
            member_ssrc=participant.ssrc,
        )

    def _dequeue(self, ssrc: int) -> None:
        self._queue = [claim for claim in self._queue if claim.ssrc != ssrc]

    # -- messages --------------------------------------------------------------------------------------------

    def _granted(self, floor: Floor, now: float) -> FloorMessage:
        deadline = floor.burst_deadline if floor.burst_deadline is not None else now
        return FloorMessage(
            subtype=Subtype.GRANTED,
            ssrc=self.config.server_ssrc,
            duration=min(MAX_DURATION, max(0, math.ceil(deadline - now))),
            priority=floor.claim.priority,
            queue_size=len(self._queue) if self.config.queueing else None,
            floor_indicator=self._shown(floor.claim.indicator),
        )

    def _taken(self, floor: Floor) -> FloorMessage:
        holder = floor.claim.participant
        return FloorMessage(
            subtype=Subtype.TAKEN,
            ssrc=self.config.server_ssrc,
            granted_party=holder.uri,
            permission_to_request=True,
            sequence=self._sequence,
            ssrc_field=holder.ssrc,
            floor_indicator=self._shown(floor.claim.indicator),
        )

    def _idle(self) -> FloorMessage:
        return FloorMessage(
            subtype=Subtype.IDLE,
            ssrc=self.config.server_ssrc,
            sequence=self._sequence,
            floor_indicator=self._shown(int(FloorIndicator.NORMAL)),
        )

    def _queue_position_info(self, participant: Participant) -> FloorMessage:
        index = next((i for i, claim in enumerate(self._queue) if claim.ssrc == participant.ssrc), None)
        if index is None:
            info = QueueInfo(QUEUE_POSITION_NOT_QUEUED, participant.priority)
            indicator = int(FloorIndicator.NORMAL)
        else:
            info = QueueInfo(index + 1, self._queue[index].priority)
            indicator = self._queue[index].indicator
        return FloorMessage(
            subtype=Subtype.QUEUE_POSITION_INFO,
            ssrc=self.config.server_ssrc,
            queue_info=info,
            queued_user_id=participant.uri,
            ssrc_field=participant.ssrc,
            floor_indicator=indicator,
        )

    def _ack(self, subtype: int) -> FloorMessage:
        return FloorMessage(
            subtype=Subtype.ACK,
            ssrc=self.config.server_ssrc,
            message_type=int(subtype),
            source=int(Source.CONTROLLING_FUNCTION),
        )


_REVOKE_PHRASES: dict[int, str] = {
    RevokeCause.MEDIA_BURST_TOO_LONG: "media burst too long",
    RevokeCause.PRE_EMPTED: "pre-empted",
}
