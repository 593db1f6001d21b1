"""One floor vocabulary for every floor machine: the on-network arbiter, the off-network participant and the
client's on-network participant all report what happened as :class:`FloorEvent` values of one
:class:`FloorEventKind`.

A participant-side machine reports from its own point of view ("we were granted", "someone else talks");
the arbiter reports about a participant, named in :attr:`FloorEvent.member` / :attr:`FloorEvent.member_ssrc`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FloorEventKind(enum.Enum):
    """What happened to the floor (``FloorEvent.kind``)."""

    GRANTED = "granted"
    """Participant: we may talk now. Arbiter: ``member`` was granted the floor (it is also ``talker``)."""
    DENIED = "denied"
    """A request was refused (``cause`` = Deny cause); ``talker`` is whoever has the floor."""
    TAKEN = "taken"
    """Someone else talks (or the talker's name became known); ``talker`` / ``talker_ssrc`` say who."""
    IDLE = "idle"
    """The floor is free."""
    REVOKED = "revoked"
    """The holder must stop sending media (``cause``: pre-empted #4, burst too long #2, collision #3)."""
    STOP_WARNING = "stop_warning"
    """The burst ends soon (off-network T206)."""
    STOP_TALKING = "stop_talking"
    """The burst limit ran out: stop sending media (Floor Release was sent)."""
    INACTIVE = "inactive"
    """No floor activity for a long time (off-network T230); the shell may leave the call."""
    QUEUED = "queued"
    """A request is queued at ``position`` (1 = next)."""
    QUEUE_POSITION = "queue_position"
    """The queue position is now ``position``."""
    QUEUE_CANCELLED = "queue_cancelled"
    """The request left the queue (``text`` says why)."""


@dataclass(frozen=True)
class FloorEvent:
    kind: FloorEventKind
    talker: str | None = None
    """Who holds the floor after the event (None: nobody, or not known yet)."""
    talker_ssrc: int | None = None
    cause: int | None = None
    text: str = ""
    position: int | None = None
    member: str | None = None
    """Arbiter only: the participant the event is about (the requester for DENIED/QUEUED, the holder for
    REVOKED, the grantee for GRANTED). None on participant-side machines: the event is about themselves."""
    member_ssrc: int | None = None
