"""The jitter buffer's configuration, frames and state, and its network estimate: the interarrival jitter (RFC 3550
A.8), the base transit, delay peaks and the target delay they give.

The buffer itself, and how it adapts, is described in :mod:`ptt.jitter`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ptt.rtp import RtpPacket

AUDIO = "audio"
LOST = "lost"
SILENCE = "silence"

STAT_NAMES = (
    "received",  # packets put
    "played",  # audio frames returned
    "lost",  # sequence numbers that never arrived in time (returned as "lost", or skipped over silence)
    "late",  # packets dropped because their turn had passed (or out of the stream's range)
    "duplicate",  # packets already buffered or played
    "reordered",  # accepted packets that arrived after a later one
    "overflow",  # packets dropped because max_frames were buffered
    "expanded",  # frames of playout delay added (silence or concealment played without advancing)
    "compressed",  # frames of playout delay removed (silence skipped, stale frames dropped at max_delay)
    "resync",  # talk bursts started (first packet, marker bit, new SSRC, jumps)
    "flushed",  # buffered packets discarded by a new talk burst
)

MAX_DROPOUT = 3000
MAX_MISORDER = 100
"""RFC 3550 A.1: sequence numbers further ahead or behind than these are a jump, not the same stream."""

JITTER_FACTOR = 3.0
JUMP = 1.0
"""Seconds beyond max_delay by which a timestamp must disagree with the timeline to be taken as a jump."""
BASE_LEAK = 0.0005
"""Seconds per second the base transit rises between new minima (tolerates 500 ppm of clock drift)."""
BUCKET = 0.5
RETIRED_SSRCS = 8
RECENT_PLAYED = 256
CONCEAL_UNDERRUN = 2
"""Frames concealed (rather than silent) when the buffer runs empty during speech: a loss, or the burst's end."""
EPS = 1e-6
SLACK = 0.001
"""Seconds the delay may fall short of the target before it grows (the base's leak alone must not grow it)."""


@dataclass(frozen=True)
class JitterConfig:
    """Delays in seconds: the target stays within [min_delay, max_delay]; max_frames bounds the packets held."""

    frame_samples: int = 960
    clock_rate: int = 48000
    min_delay: float = 0.04
    max_delay: float = 0.3
    initial_delay: float = 0.06
    max_frames: int = 50
    peak_hold: float = 5.0
    """Seconds a delay peak keeps the target up."""

    def __post_init__(self) -> None:
        if self.frame_samples <= 0 or self.clock_rate <= 0:
            raise ValueError("frame_samples and clock_rate must be positive")
        if not 0.0 <= self.min_delay <= self.max_delay:
            raise ValueError("need 0 <= min_delay <= max_delay")
        if self.max_frames < 1 or self.peak_hold < 0:
            raise ValueError("need max_frames >= 1 and peak_hold >= 0")

    @property
    def frame_time(self) -> float:
        return self.frame_samples / self.clock_rate


@dataclass(frozen=True)
class Frame:
    """What to play for one frame.

    ``"audio"``: decode ``payload``. ``"lost"``: conceal one frame; ``sequence`` names the missing packet and
    ``fec_from`` is the payload of the packet after it when already buffered (decode its in-band FEC instead).
    A ``"lost"`` frame without ``sequence`` is concealment where nothing is known to be missing yet: the delay is
    growing and the packet may still come, or nothing is buffered right after speech. ``"silence"``: nothing to
    play (a pause, or the burst has ended). ``ssrc`` is the talker's.
    """

    kind: str
    payload: bytes = b""
    sequence: int | None = None
    ssrc: int | None = None
    fec_from: bytes | None = None


@dataclass(frozen=True)
class BufferedPacket:
    seq: int  # extended sequence number
    ts: int  # extended timestamp on the source's timeline (0 at its first packet)
    packet: RtpPacket


class JitterState:
    """What one stream's jitter buffer keeps, and its estimate of the network."""

    def __init__(self, config: JitterConfig = JitterConfig()) -> None:
        self.config = config
        self._frame = config.frame_samples
        self._period = config.frame_time
        self.stats: dict[str, int] = dict.fromkeys(STAT_NAMES, 0)
        # the network, learned across bursts
        self._jitter = 0.0
        self._peaks: deque[tuple[int, float]] = deque()  # (bucket index, largest delay in it)
        self._prior_until: float | None = None
        self._target = min(max(config.initial_delay, config.min_delay), config.max_delay)
        # the source
        self._ssrc: int | None = None
        self._retired: dict[int, float] = {}
        self._highest = 0  # extended sequence number of the newest packet
        self._highest_raw = 0  # and its sequence number on the wire
        self._ref_ts = 0  # its extended timestamp
        self._ref_ts_raw = 0  # and its timestamp on the wire
        self._base: float | None = None
        self._base_at = 0.0
        self._last_transit: float | None = None
        self._slip_since: float | None = None
        self._candidate: tuple[RtpPacket, float] | None = None
        # the burst being played
        self._buffer: dict[int, BufferedPacket] = {}
        self._floor: int | None = None
        self._playing = False
        self._next_seq = 0
        self._play_ts = 0
        self._played: deque[int] = deque(maxlen=RECENT_PLAYED)
        self._delay = 0.0
        self._conceal = 0  # underrun frames still to conceal

    @property
    def target_delay(self) -> float:
        """Seconds the playout aims to lag the fastest possible arrival."""
        return self._target

    @property
    def depth(self) -> int:
        """Packets buffered."""
        return len(self._buffer)

    @property
    def jitter(self) -> float:
        """Interarrival jitter (RFC 3550 A.8), in seconds."""
        return self._jitter

    @property
    def delay(self) -> float:
        """The playout delay at the last :meth:`get`: seconds after the fastest possible arrival."""
        return self._delay

    @property
    def playing(self) -> bool:
        """A burst is being played (:meth:`get` returns frames, not None)."""
        return self._playing

    # -- the network estimate

    def _base_now(self, now: float) -> float:
        if self._base is None:
            return now  # no packet yet: nothing is late
        return self._base + BASE_LEAK * max(0.0, now - self._base_at)

    def _observe(self, transit: float, now: float) -> None:
        if self._last_transit is not None:
            self._jitter += (abs(transit - self._last_transit) - self._jitter) / 16
        self._last_transit = transit
        if self._base is None or transit < self._base_now(now):
            self._base, self._base_at = transit, now
        delay = transit - self._base_now(now)
        bucket = math.floor(now / BUCKET)
        if self._peaks and self._peaks[-1][0] >= bucket:
            self._peaks[-1] = (self._peaks[-1][0], max(self._peaks[-1][1], delay))
        else:
            self._peaks.append((bucket, delay))
        if self._prior_until is None:
            self._prior_until = now + self.config.peak_hold
        self._update_target(now)

    def _update_target(self, now: float) -> None:
        config = self.config
        while self._peaks and (self._peaks[0][0] + 1) * BUCKET <= now - config.peak_hold:
            self._peaks.popleft()
        peak = max((delay for _, delay in self._peaks), default=0.0)
        estimate = max(JITTER_FACTOR * self._jitter, peak) + self._period / 2
        if self._prior_until is None or now < self._prior_until:
            estimate = max(estimate, config.initial_delay)
        self._target = min(max(estimate, config.min_delay), config.max_delay)
