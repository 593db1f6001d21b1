"""The on-network floor participant (3GPP TS 24.380 §6.2.4, 'basic operation'), as a pure sans-I/O state machine.

One :class:`FloorParticipant` per group call the client has joined talks to the floor control server
(``ptt.floor.arbiter`` behind the relay). No I/O and no clock: every input carries ``now`` (seconds, any monotonic
origin); the messages to send come out of :meth:`FloorParticipant.outgoing`, what the user should see out of
:meth:`FloorParticipant.events` (the shared :class:`FloorEvent`, from our own point of view), and the timers are
exposed by :meth:`FloorParticipant.next_deadline` and run by :meth:`FloorParticipant.on_timer`.

States (``FloorParticipant.state``):

* ``U: start-stop`` -- not in the call (before :meth:`join`, after :meth:`leave`); nothing is sent or handled.
* ``U: has no permission`` -- we listen; Floor Taken / Floor Idle say who talks (``talker``, ``talker_ssrc``).
* ``U: pending Request`` -- PTT pressed: Floor Request sent (with the Floor Priority and Floor Indicator given),
  retransmitted on T101; C101 counts the Floor Requests sent. Floor Granted, Floor Deny or Floor Queue Position
  Info answers it.
* ``U: has permission`` -- we may send media until PTT is released or the floor is revoked.
* ``U: pending Release`` -- Floor Release sent, retransmitted on T100; C100 counts them. The server's Floor Ack of
  the Release, or Floor Idle, ends it; Floor Taken does not (simplification 1).
* ``U: queued`` -- the server queued our request (``queue_position``, 1 = next); Floor Granted makes us talk.
  :meth:`ask_queue_position` sends Floor Queue Position Request, retransmitted on T104 up to C104 times.

Every server message with "acknowledgement required" is answered with Floor Ack (Message Type = its subtype,
Source = floor participant) before it is acted on, in any state but ``U: start-stop``.

Simplifications against TS 24.380 §6.2 (deliberate; the rest follows the standard):

1. **Floor Release asks for an acknowledgement.** The server answers a Release from a participant that neither
   holds nor queues for the floor with nothing but that Floor Ack, so T100 stops on it, as on Floor Idle (sent
   only when nobody holds the floor and nobody is queued). Floor Taken naming another participant does not stop
   T100, unlike §6.2.4: it says the floor went to someone else, not that the server got our Release, and a Release
   that withdraws a queued (or still pending) request must arrive, or the server keeps the place and later grants
   the floor to a user who let go of PTT.
2. **No media input**: the participant does not see RTP, so there is no T103 (end of RTP media) and received media
   does not end ``U: pending Release``; the server's Floor Ack / Floor Idle do.
3. **Giving up.** When T101 runs out C101 times, the user is told (``DENIED``, no cause, "no answer") and a Floor
   Release is sent as in ``U: has permission`` (``U: pending Release``): a server that did grant us, its answers
   lost, frees the floor. When T100 runs out C100 times we return to ``U: has no permission``. C104 exhausted just
   stops asking.
4. **A queued participant granted the floor takes it at once**: PTT is still pressed, so there is no user
   confirmation and no T132. Floor Idle, or a Queue Position Info saying "not queued" (254), while queued means
   the server lost our request: with PTT still pressed we ask again (``QUEUE_CANCELLED``, then
   ``U: pending Request``).
5. **Answers we are not waiting for.** Floor Granted, or Floor Queue Position Info with a position, in
   ``U: has no permission`` (a late answer to a retransmitted Floor Request) is declined with Floor Release, so the
   server does not hold a floor or a queue place for a user who is not pressing PTT. In ``U: pending Release``
   they are ignored: the Release that follows them frees them.
6. **Losing the floor without Floor Revoke**: in ``U: has permission`` a Floor Taken naming another participant, or
   Floor Idle, means the server gave the floor away (its Floor Revoke was lost): ``REVOKED``, then we listen.
   Floor Revoke in ``U: pending Request`` (the server holds a grant whose Floor Granted we lost) is handled as in
   ``U: has permission``. Floor Taken in ``U: pending Request`` keeps T101 running: our own request still needs
   its answer.
7. **No ordering by Message Sequence Number**, no implicit floor request at call setup, no dual floor, no
   broadcast call release on Floor Idle, no Floor Queued Cancel (Floor Release leaves the queue as well). The
   server does not retransmit (``ptt.floor.arbiter`` simplification 1): a Floor Granted pushed to a queued
   participant, or both Floor Revoke and Floor Taken to a holder, must arrive.
8. **Pressing PTT again before the Release is acknowledged.** PTT pressed in ``U: pending Release`` (not a
   transition of §6.2.4) sends a new Floor Request at once. The server's answers to the request the Release
   withdrew may still be on their way, and nothing in Floor Granted or Floor Queue Position Info tells them from
   the answer to the new request: taking a stale one stops T101 although the new request may have been lost.
   The Floor Ack of the Release tells: the server sends it after every answer to the earlier request and before
   any answer to the later one (messages in order), and once it sent it the server holds neither a floor nor a
   queue place for us. So a Floor Ack of our Release that finds us in ``U: queued`` or ``U: has permission``
   means that place or grant is gone: with PTT still pressed we ask again (``QUEUE_CANCELLED`` / ``REVOKED``,
   then ``U: pending Request``, T101). If the new request did arrive (or messages came out of order), the server
   only repeats its answer to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptt.floor.events import FloorEvent, FloorEventKind
from ptt.floor.messages import QUEUE_POSITION_NOT_QUEUED, FloorMessage, Source, Subtype

START_STOP = "U: start-stop"
HAS_NO_PERMISSION = "U: has no permission"
PENDING_REQUEST = "U: pending Request"
HAS_PERMISSION = "U: has permission"
PENDING_RELEASE = "U: pending Release"
QUEUED = "U: queued"

_NO_ANSWER = "no answer from the floor control server"


@dataclass(frozen=True)
class ParticipantConfig:
    """Timers (seconds) and counter limits of TS 24.380 table 11.1.1-1 (values are configurable there, TS 24.483)."""

    t100: float = 0.5
    """Floor Release retransmission (T100)."""
    c100: int = 3
    """Floor Release messages sent at most (C100)."""
    t101: float = 0.5
    """Floor Request retransmission (T101)."""
    c101: int = 3
    """Floor Request messages sent at most (C101)."""
    t104: float = 0.5
    """Floor Queue Position Request retransmission (T104)."""
    c104: int = 3
    """Floor Queue Position Request messages sent at most (C104)."""

    def __post_init__(self) -> None:
        for name in ("t100", "t101", "t104"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.c100 < 1 or self.c101 < 1 or self.c104 < 1:
            raise ValueError("c100, c101 and c104 must be at least 1")


_DEFAULT_CONFIG = ParticipantConfig()


class FloorParticipant:
    """The floor participant of one member in one on-network group call."""

    def __init__(self, own_uri: str, own_ssrc: int, *, config: ParticipantConfig = _DEFAULT_CONFIG) -> None:
        if not 0 <= own_ssrc <= 0xFFFFFFFF:
            raise ValueError(f"SSRC out of range: {own_ssrc}")
        self.own_uri = own_uri
        self.own_ssrc = own_ssrc
        self.config = config
        self.state = START_STOP
        self.talker: str | None = None
        """URI of who talks (ours in ``U: has permission``), None when the floor is idle or not known."""
        self.talker_ssrc: int | None = None
        self.queue_position: int | None = None
        """Our place in the server's queue (1 = next; 255 = queued, position not disclosed) in ``U: queued``."""
        self.duration: int | None = None
        """Seconds the server allows our burst (Duration of the last Floor Granted)."""
        self._priority: int | None = None
        self._indicator: int | None = None
        self._timer: str | None = None  # at most one of T100 / T101 / T104 runs at a time
        self._deadline = 0.0
        self._count = 0  # C100 / C101 / C104, whichever belongs to the running timer
        self._out: list[FloorMessage] = []
        self._events: list[FloorEvent] = []

    # -- state ---------------------------------------------------------------------------------------------------

    @property
    def has_permission(self) -> bool:
        return self.state == HAS_PERMISSION

    def outgoing(self) -> list[FloorMessage]:
        """The messages to send to the floor control server, oldest first (drained)."""
        drained, self._out = self._out, []
        return drained

    def events(self) -> list[FloorEvent]:
        """The events for the application, oldest first (drained)."""
        drained, self._events = self._events, []
        return drained

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` must next be called, or None while no timer runs."""
        return self._deadline if self._timer is not None else None

    # -- inputs: the call and the user ---------------------------------------------------------------------------

    def join(self, now: float) -> None:
        """We joined the call; the server's Floor Taken or Floor Idle (late entry) will say who talks."""
        if self.state == START_STOP:
            self.state = HAS_NO_PERMISSION

    def leave(self, now: float) -> None:
        """We left the call (§6.2.2): stop sending floor messages, forget the floor."""
        self._stop_timer()
        self._out.clear()
        self.state = START_STOP
        self.talker = self.talker_ssrc = self.queue_position = self.duration = None

    def press(self, now: float, *, priority: int | None = None, indicator: int | None = None) -> None:
        """PTT pressed: ask for the floor (``priority``: Floor Priority, ``indicator``: Floor Indicator bits)."""
        if self.state not in (HAS_NO_PERMISSION, PENDING_RELEASE):
            return  # not in the call, or already asking, queued or talking
        self._priority, self._indicator = priority, indicator
        self._send_request()
        self._start_timer("T101", now)
        self.state = PENDING_REQUEST

    def release(self, now: float) -> None:
        """PTT released: give up the floor, the request, or our place in the queue."""
        if self.state in (PENDING_REQUEST, HAS_PERMISSION, QUEUED):
            self._send_release(now)

    def ask_queue_position(self, now: float) -> None:
        """The user asks where it is in the queue: Floor Queue Position Request (``U: queued`` only)."""
        if self.state == QUEUED:
            self._out.append(FloorMessage(Subtype.QUEUE_POSITION_REQUEST, self.own_ssrc, user_id=self.own_uri))
            self._start_timer("T104", now)

    # -- inputs: the server --------------------------------------------------------------------------------------

    def receive(self, message: FloorMessage, now: float) -> None:
        """A floor control message from the floor control server (authenticated by the shell)."""
        if self.state == START_STOP:
            return
        if message.ack_required and message.subtype != Subtype.ACK:
            self._out.append(
                FloorMessage(
                    Subtype.ACK,
                    self.own_ssrc,
                    message_type=int(message.subtype),
                    source=int(Source.FLOOR_PARTICIPANT),
                )
            )
        match message.subtype:
            case Subtype.GRANTED:
                self._on_granted(message, now)
            case Subtype.DENY:
                self._on_deny(message)
            case Subtype.REVOKE:
                self._on_revoke(message, now)
            case Subtype.TAKEN:
                self._on_taken(message)
            case Subtype.IDLE:
                self._on_idle(now)
            case Subtype.QUEUE_POSITION_INFO:
                self._on_position(message, now)
            case Subtype.ACK if message.message_type == Subtype.RELEASE:
                self._on_release_ack(now)
            case _:
                pass  # other acks, and what only participants send

    def on_timer(self, now: float) -> None:
        """Run the timer due at ``now`` (T100 / T101: retransmit or give up; T104: ask again or stop asking)."""
        if self._timer is None or now < self._deadline:
            return
        timer = self._timer
        limit = {"T100": self.config.c100, "T101": self.config.c101, "T104": self.config.c104}[timer]
        if self._count < limit:
            self._count += 1
            self._deadline = now + self._period(timer)
            if timer == "T100":
                self._out.append(self._release_message())
            elif timer == "T101":
                self._send_request()
            else:
                self._out.append(FloorMessage(Subtype.QUEUE_POSITION_REQUEST, self.own_ssrc, user_id=self.own_uri))
            return
        self._stop_timer()
        if timer == "T100":
            self.state = HAS_NO_PERMISSION
        elif timer == "T101":
            self._event(FloorEventKind.DENIED, text=_NO_ANSWER)
            self._send_release(now)  # simplification 3

    # -- procedures ----------------------------------------------------------------------------------------------

    def _on_granted(self, message: FloorMessage, now: float) -> None:
        if self.state in (PENDING_REQUEST, QUEUED):
            text = "granted from the queue" if self.state == QUEUED else ""
            self._stop_timer()
            self.state = HAS_PERMISSION
            self.queue_position = None
            self.talker, self.talker_ssrc = self.own_uri, self.own_ssrc
            self.duration = message.duration
            self._event(FloorEventKind.GRANTED, text=text)
        elif self.state == HAS_PERMISSION:
            self.duration = message.duration  # the answer to a retransmitted Floor Request
        elif self.state == HAS_NO_PERMISSION:
            self._send_release(now)  # simplification 5

    def _on_deny(self, message: FloorMessage) -> None:
        if self.state not in (PENDING_REQUEST, QUEUED):
            return
        self._stop_timer()
        self.state = HAS_NO_PERMISSION
        self.queue_position = None
        cause = message.reject_cause
        self._event(FloorEventKind.DENIED, cause=cause.code if cause else None, text=cause.phrase if cause else "")

    def _on_revoke(self, message: FloorMessage, now: float) -> None:
        if self.state not in (HAS_PERMISSION, PENDING_REQUEST):
            return
        self._send_release(now)
        cause = message.reject_cause
        self._event(FloorEventKind.REVOKED, cause=cause.code if cause else None, text=cause.phrase if cause else "")

    def _on_taken(self, message: FloorMessage) -> None:
        ssrc = message.ssrc_field
        if ssrc == self.own_ssrc or (ssrc is None and message.granted_party == self.own_uri):
            return  # about us: the server tells us by Floor Granted
        self.talker, self.talker_ssrc = message.granted_party, ssrc
        if self.state == HAS_PERMISSION:
            self.state = HAS_NO_PERMISSION
            self._event(FloorEventKind.REVOKED, text="the floor was given to another participant")
        # U: pending Release goes on until the Floor Ack or Floor Idle (simplification 1)
        self._event(FloorEventKind.TAKEN)

    def _on_idle(self, now: float) -> None:
        self.talker = self.talker_ssrc = None
        if self.state == HAS_PERMISSION:
            self.state = HAS_NO_PERMISSION
            self._event(FloorEventKind.REVOKED, text="the floor became idle")
        elif self.state == PENDING_RELEASE:
            self._stop_timer()
            self.state = HAS_NO_PERMISSION
        self._event(FloorEventKind.IDLE)
        if self.state == QUEUED:
            self._requeue(now, "the floor is idle: asking again")

    def _on_position(self, message: FloorMessage, now: float) -> None:
        info = message.queue_info
        if info is None:
            return
        if info.position == QUEUE_POSITION_NOT_QUEUED:
            if self.state == QUEUED:
                self._requeue(now, "no longer queued: asking again")
            return
        if self.state == PENDING_REQUEST:
            self._stop_timer()
            self.state = QUEUED
            self.queue_position = info.position
            self._event(FloorEventKind.QUEUED, position=info.position)
        elif self.state == QUEUED:
            if self._timer == "T104":
                self._stop_timer()
            self.queue_position = info.position
            self._event(FloorEventKind.QUEUE_POSITION, position=info.position)
        elif self.state == HAS_NO_PERMISSION:
            self._send_release(now)  # simplification 5: leave a queue we did not ask to stay in

    def _on_release_ack(self, now: float) -> None:
        if self.state == PENDING_RELEASE:
            self._stop_timer()
            self.state = HAS_NO_PERMISSION
        elif self.state == QUEUED:
            # simplification 8: the place we hold answered the request this Release withdrew
            self._requeue(now, "our Floor Release left the queue: asking again")
        elif self.state == HAS_PERMISSION:
            # simplification 8: the grant we hold answered the request this Release withdrew
            self.talker = self.talker_ssrc = None
            self._event(FloorEventKind.REVOKED, text="our Floor Release ended that grant: asking again")
            self._send_request()
            self._start_timer("T101", now)
            self.state = PENDING_REQUEST

    def _requeue(self, now: float, why: str) -> None:
        self._event(FloorEventKind.QUEUE_CANCELLED, text=why)
        self.queue_position = None
        self._send_request()
        self._start_timer("T101", now)
        self.state = PENDING_REQUEST

    # -- messages, timers and events -----------------------------------------------------------------------------

    def _send_request(self) -> None:
        self._out.append(
            FloorMessage(
                Subtype.REQUEST,
                self.own_ssrc,
                priority=self._priority,
                user_id=self.own_uri,
                floor_indicator=self._indicator,
            )
        )

    def _release_message(self) -> FloorMessage:
        return FloorMessage(
            Subtype.RELEASE, self.own_ssrc, ack_required=True, user_id=self.own_uri, floor_indicator=self._indicator
        )

    def _send_release(self, now: float) -> None:
        self._out.append(self._release_message())
        self._start_timer("T100", now)
        self.state = PENDING_RELEASE
        self.queue_position = None
        if self.talker_ssrc == self.own_ssrc:
            self.talker = self.talker_ssrc = None

    def _period(self, timer: str) -> float:
        return {"T100": self.config.t100, "T101": self.config.t101, "T104": self.config.t104}[timer]

    def _start_timer(self, timer: str, now: float) -> None:
        self._timer, self._deadline, self._count = timer, now + self._period(timer), 1

    def _stop_timer(self) -> None:
        self._timer = None

    def _event(
        self, kind: FloorEventKind, *, cause: int | None = None, text: str = "", position: int | None = None
    ) -> None:
        self._events.append(FloorEvent(kind, self.talker, self.talker_ssrc, cause, text, position))
