"""Off-network floor control (TS 24.380 clause 7): the states, the timers and counters, and the timer table.

The state machine is :class:`ptt.floor.offnetwork.OffNetworkFloor`; its docstring describes the procedures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass
class Timers:
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
