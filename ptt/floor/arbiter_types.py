"""What the on-network floor arbiter (:mod:`ptt.floor.arbiter`) works with: participants as call setup gives them,
the messages it hands out (``Send``), its configuration, and the floor claims and grant it keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptt.floor.fields import FloorIndicator
from ptt.floor.messages import FloorMessage

DEFAULT_SERVER_SSRC = 0x50545453
"""SSRC of the floor control server in the messages it sends ("PTTS"); participants' SSRCs should differ."""

SEQUENCE_MODULUS = 0x10000
"""The Message Sequence Number is a 16-bit field (TS 24.380 §8.2.3.10)."""

MAX_DURATION = 0xFFFF
"""The Duration field is 16 bits of seconds (TS 24.380 §8.2.3.3)."""

MAX_USER_ID_OCTETS = 255
"""A User ID / Granted Party's Identity field holds at most 255 octets (one length octet, §8.2.3.1)."""


@dataclass(frozen=True)
class Participant:
    """A member of the group call as the floor control server knows it from call setup."""

    ssrc: int
    uri: str
    priority: int = 0
    """Authorised floor priority, 0..255, higher wins."""
    pre_emptive: bool = False
    """Authorised for pre-emptive priority (dispatchers): may take the floor from a lower-priority talker."""
    receive_only: bool = False
    broadcast: bool = False
    """Authorised for broadcast group calls (a dispatcher's grant): may ask with the BROADCAST Floor Indicator."""

    def __post_init__(self) -> None:
        if not 0 <= self.ssrc <= 0xFFFFFFFF:
            raise ValueError(f"SSRC out of range: {self.ssrc}")
        if not 0 <= self.priority <= 255:
            raise ValueError(f"floor priority out of range 0..255: {self.priority}")
        if len(self.uri.encode("utf-8")) > MAX_USER_ID_OCTETS:
            raise ValueError(f"URI longer than {MAX_USER_ID_OCTETS} octets cannot be sent as a User ID")


@dataclass(frozen=True)
class Send:
    """A message to send: to one participant's SSRC, or (``to=None``) to every participant but ``exclude``."""

    to: int | None
    message: FloorMessage
    exclude: int | None = None


@dataclass(frozen=True)
class ArbiterConfig:
    max_burst: float = 30.0
    """Seconds a holder may talk (timer T2; the Duration in Floor Granted, rounded up to whole seconds)."""
    queue_limit: int = 8
    revoke_grace: float = 2.0
    """Seconds after Floor Revoke before the floor is taken away regardless (timer T3)."""
    server_ssrc: int = DEFAULT_SERVER_SSRC
    queueing: bool = True
    verified_call_types: bool = False
    """The server decides the call type of a request (the group server sets this): EMERGENCY/IMMINENT PERIL come
    from the member's active alert (:meth:`FloorArbiter.set_alerts`), whatever the request says, and BROADCAST
    needs :attr:`Participant.broadcast`. Off (the pure default), the request's bits are taken as they are."""

    def __post_init__(self) -> None:
        if not self.max_burst > 0:
            raise ValueError("max_burst must be positive")
        if self.revoke_grace < 0:
            raise ValueError("revoke_grace must not be negative")
        if self.queue_limit < 0:
            raise ValueError("queue_limit must not be negative")
        if not 0 <= self.server_ssrc <= 0xFFFFFFFF:
            raise ValueError(f"SSRC out of range: {self.server_ssrc}")


@dataclass
class Claim:
    """A floor request as the arbiter keeps it: who, at which (effective) priority, with which call type."""

    participant: Participant
    priority: int
    indicator: int

    @property
    def ssrc(self) -> int:
        return self.participant.ssrc


@dataclass
class Floor:
    """The holder's grant and its timers (None while idle)."""

    claim: Claim
    burst_deadline: float | None
    revoke_deadline: float | None = None


URGENT_BITS = int(FloorIndicator.EMERGENCY | FloorIndicator.IMMINENT_PERIL)


def with_urgency(indicator: int, level: int) -> int:
    """``indicator`` with its emergency/imminent peril bits replaced by those of urgency ``level`` (0, 1, 2); an
    urgent call is not a normal call, so the NORMAL bit goes with an urgency (tshark names such a call)."""
    if level == 0:
        return indicator & ~URGENT_BITS
    bits = (int(FloorIndicator.IMMINENT_PERIL), int(FloorIndicator.EMERGENCY))[level - 1]
    return (indicator & ~URGENT_BITS & ~int(FloorIndicator.NORMAL)) | bits


def urgency(indicator: int) -> int:
    if indicator & FloorIndicator.EMERGENCY:
        return 2
    if indicator & FloorIndicator.IMMINENT_PERIL:
        return 1
    return 0
