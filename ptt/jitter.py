"""An adaptive jitter buffer for one incoming RTP stream: pure, the caller passes ``now`` (seconds) in.

The receiver :meth:`JitterBuffer.put`\\ s packets as they arrive and the playback clock calls
:meth:`JitterBuffer.get` once per frame (``frame_samples / clock_rate`` seconds), which returns what to play
next: ``"audio"``, ``"lost"`` (conceal) or ``"silence"``.

Playout follows the sender's timestamps. Every arrival gives a *transit* ``now - timestamp/clock``; the smallest
(the base, see below) is the fastest trip the network has shown, and a packet's *delay* is how long after that
fastest trip it arrives. The playout of timestamp ``ts`` happens ``target_delay`` after ``ts`` could have arrived
at the earliest, so every packet delayed by less than the target is played in time and in order, whatever
order it came in. Each :meth:`get` plays one frame and moves the playout point one frame on, so the timeline
runs on the playback clock; a gap in the timestamps (the sender paused and advanced its timestamp, as
:class:`ptt.rtp.RtpSender` does) plays as silence, a gap in the sequence numbers as ``"lost"``. When nothing at
all is buffered right after speech, the buffer cannot tell a loss from the end of the burst yet: the first two
such frames are ``"lost"`` without a sequence number (conceal), the rest silence.

Adaptation. The target is ``max(3 * interarrival jitter (RFC 3550 A.8), largest delay seen in the last
peak_hold seconds) + half a frame``, within ``[min_delay, max_delay]`` (and not below ``initial_delay`` during
the first ``peak_hold`` seconds). A late packet raises the target at once; it falls only after ``peak_hold``
seconds of lower delays. The playout delay follows the target without touching speech where it can:

* grows: a frame of silence, or of concealment where a packet is missing, is played without moving the playout
  point (counted ``expanded``); a packet that arrives after its slot went by as silence is played at once;
* shrinks: a silence frame is skipped (``compressed``), and each talk burst starts at the target delay;
* never beyond ``max_delay``: older frames are dropped (``compressed``) when the delay exceeds it, for example
  after a network outage or when the playback clock stopped calling :meth:`get`.

Talk bursts. Playout of a burst starts once its first packet is ``target_delay`` old; :meth:`get` returns None
until then. A packet with the marker bit after the previous burst has played out, or one from a new SSRC
(another talker), starts a new burst. The base survives a marker-bit burst of the same source (its timestamps
keep wall-clock pace across pauses) and rises by 0.5 ms per second between new minima, so that clock drift
cannot leave it out of date; a new source starts afresh.

Jumps. The numbering of one source may jump (a restarted sender, a sender that does not advance its timestamp
over a pause): sequence numbers beyond RFC 3550 A.1's MAX_DROPOUT / MAX_MISORDER once a second packet confirms
them (at once with the marker bit), timestamps more than ``max_delay + 1 s`` off at once, timestamps that stay
more than ``max_delay`` behind once that has lasted ``max_delay``. The stream then carries on from the jumping
packet as if it had just arrived as fast as any (counted ``resync``); what is buffered still plays first. 16-bit
sequence numbers and 32-bit timestamps are extended, so wrapping is seamless. Odd input never raises, and
memory is bounded by ``max_frames``.

The jitter estimate is exposed in seconds (:attr:`JitterBuffer.jitter`); an RTCP receiver report states it in
timestamp units (multiply by the clock rate).

Assumption: every packet carries ``frame_samples`` of audio (20 ms Opus frames here).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ptt.rtp import RtpPacket, seq_diff, ts_diff

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

_JITTER_FACTOR = 3.0
_JUMP = 1.0
"""Seconds beyond max_delay by which a timestamp must disagree with the timeline to be taken as a jump."""
_BASE_LEAK = 0.0005
"""Seconds per second the base transit rises between new minima (tolerates 500 ppm of clock drift)."""
_BUCKET = 0.5
_RETIRED_SSRCS = 8
_RECENT_PLAYED = 256
_CONCEAL_UNDERRUN = 2
"""Frames concealed (rather than silent) when the buffer runs empty during speech: a loss, or the burst's end."""
_EPS = 1e-6
_SLACK = 0.001
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
class _Entry:
    seq: int  # extended sequence number
    ts: int  # extended timestamp on the source's timeline (0 at its first packet)
    packet: RtpPacket


class JitterBuffer:
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
        self._buffer: dict[int, _Entry] = {}
        self._floor: int | None = None
        self._playing = False
        self._next_seq = 0
        self._play_ts = 0
        self._played: deque[int] = deque(maxlen=_RECENT_PLAYED)
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

    # -- arrivals

    def put(self, packet: RtpPacket, now: float) -> None:
        self.stats["received"] += 1
        if not math.isfinite(now):
            self.stats["late"] += 1
            return
        self._accept(packet, now)

    def _accept(self, packet: RtpPacket, now: float) -> None:
        if packet.ssrc != self._ssrc:
            retired_at = self._retired.get(packet.ssrc)
            if retired_at is not None and not packet.marker and now - retired_at < self.config.max_delay + _JUMP:
                self.stats["late"] += 1  # a straggler of the previous talker
                return
            self._new_source(packet, now)
            return
        ext_seq = self._highest + seq_diff(packet.sequence, self._highest_raw)
        ahead = ext_seq - self._highest
        if ahead > MAX_DROPOUT or ahead < -MAX_MISORDER:
            self._sequence_jump(packet, now)
            return
        if self._candidate is not None:
            self._candidate = None
            self.stats["late"] += 1
        ts = self._ref_ts + ts_diff(packet.timestamp, self._ref_ts_raw)
        transit = now - ts / self.config.clock_rate
        if packet.marker and ahead > 0 and self._playing and not self._buffer:
            self._restart(packet, ext_seq, ts, now)
            return
        if ext_seq in self._buffer or (self._playing and ext_seq < self._next_seq and ext_seq in self._played):
            self.stats["duplicate"] += 1
            return
        delay = transit - self._base_now(now)
        plausible = abs(delay) <= self.config.max_delay + _JUMP
        if (self._playing and ext_seq < self._next_seq) or (self._floor is not None and ext_seq < self._floor):
            self.stats["late"] += 1
            if plausible:
                self._observe(transit, now)  # a late packet raises the target
            return
        if ahead > 0:
            if not plausible:
                self._rebase(packet, now)  # the timestamps jumped
                return
            if delay > self.config.max_delay:
                if self._slip_since is None:
                    self._slip_since = now
                elif now - self._slip_since >= self.config.max_delay:
                    self._rebase(packet, now)  # the timestamps fell behind for good
                    return
            else:
                self._slip_since = None
        elif not plausible:
            self.stats["late"] += 1
            return
        self._observe(transit, now)
        if ahead > 0:
            self._set_newest(ext_seq, ts, packet)
        elif ahead < 0:
            self.stats["reordered"] += 1
        self._insert(_Entry(ext_seq, ts, packet))

    def _sequence_jump(self, packet: RtpPacket, now: float) -> None:
        candidate = self._candidate
        self._candidate = None
        if packet.marker:
            if candidate is not None:
                self.stats["late"] += 1
            self._rebase(packet, now)
        elif candidate is not None and (packet.sequence - candidate[0].sequence) & 0xFFFF == 1:
            self._rebase(*candidate)
            self._accept(packet, now)
        else:
            if candidate is not None:
                self.stats["late"] += 1
            self._candidate = (packet, now)  # wait for a second packet to confirm (RFC 3550 A.1)

    def _set_newest(self, ext_seq: int, ts: int, packet: RtpPacket) -> None:
        self._highest, self._highest_raw = ext_seq, packet.sequence
        self._ref_ts, self._ref_ts_raw = ts, packet.timestamp

    def _new_source(self, packet: RtpPacket, now: float) -> None:
        """Another talker: whatever is buffered goes, and everything about the source starts afresh."""
        if self._ssrc is not None:
            self._retired[self._ssrc] = now
            while len(self._retired) > _RETIRED_SSRCS:
                del self._retired[next(iter(self._retired))]
        self._retired.pop(packet.ssrc, None)
        self._ssrc = packet.ssrc
        self.stats["flushed"] += len(self._buffer)
        self._buffer.clear()
        self._played.clear()
        self._base = None
        self._candidate = None
        self._slip_since = None
        self._set_newest(packet.sequence, 0, packet)
        self._restart(packet, packet.sequence, 0, now)

    def _restart(self, packet: RtpPacket, ext_seq: int, ts: int, now: float) -> None:
        """A new talk burst, played from its first packet once that is target_delay old."""
        self.stats["resync"] += 1
        self._playing = False
        self._conceal = 0
        self._floor = ext_seq if packet.marker else None
        self._last_transit = None
        transit = now - ts / self.config.clock_rate
        if self._base is not None and abs(transit - self._base_now(now)) > self.config.max_delay:
            self._base = None  # the timestamps did not keep pace over the pause
        self._set_newest(ext_seq, ts, packet)
        self._observe(transit, now)
        self._insert(_Entry(ext_seq, ts, packet))

    def _rebase(self, packet: RtpPacket, now: float) -> None:
        """The numbering of the same source jumped: carry on from the newest packet, this one arriving now.

        Buffered packets are kept and played first; this packet takes the next sequence number and the timestamp
        of a packet that came as fast as any (or the next frame's, if later).
        """
        ext_seq = self._highest + 1
        ts = max(self._ref_ts + self._frame, round((now - self._base_now(now)) * self.config.clock_rate))
        self._slip_since = None
        if packet.marker and self._playing and not self._buffer:
            self._restart(packet, ext_seq, ts, now)
            return
        self.stats["resync"] += 1
        self._last_transit = None
        self._set_newest(ext_seq, ts, packet)
        self._observe(now - ts / self.config.clock_rate, now)
        self._insert(_Entry(ext_seq, ts, packet))

    def _insert(self, entry: _Entry) -> None:
        self._buffer[entry.seq] = entry
        while len(self._buffer) > self.config.max_frames:
            oldest = self._buffer.pop(min(self._buffer))
            self.stats["overflow"] += 1
            if self._playing:
                self._next_seq = oldest.seq + 1
                self._play_ts = max(self._play_ts, oldest.ts + self._frame)

    # -- the network estimate

    def _base_now(self, now: float) -> float:
        if self._base is None:
            return now  # no packet yet: nothing is late
        return self._base + _BASE_LEAK * max(0.0, now - self._base_at)

    def _observe(self, transit: float, now: float) -> None:
        if self._last_transit is not None:
            self._jitter += (abs(transit - self._last_transit) - self._jitter) / 16
        self._last_transit = transit
        if self._base is None or transit < self._base_now(now):
            self._base, self._base_at = transit, now
        delay = transit - self._base_now(now)
        bucket = math.floor(now / _BUCKET)
        if self._peaks and self._peaks[-1][0] >= bucket:
            self._peaks[-1] = (self._peaks[-1][0], max(self._peaks[-1][1], delay))
        else:
            self._peaks.append((bucket, delay))
        if self._prior_until is None:
            self._prior_until = now + self.config.peak_hold
        self._update_target(now)

    def _update_target(self, now: float) -> None:
        config = self.config
        while self._peaks and (self._peaks[0][0] + 1) * _BUCKET <= now - config.peak_hold:
            self._peaks.popleft()
        peak = max((delay for _, delay in self._peaks), default=0.0)
        estimate = max(_JITTER_FACTOR * self._jitter, peak) + self._period / 2
        if self._prior_until is None or now < self._prior_until:
            estimate = max(estimate, config.initial_delay)
        self._target = min(max(estimate, config.min_delay), config.max_delay)

    # -- playout

    def get(self, now: float) -> Frame | None:
        if self._ssrc is None or not math.isfinite(now):
            return None
        self._update_target(now)
        if not self._playing:
            if not self._buffer:
                return None
            first = self._buffer[min(self._buffer)]
            if self._extra(now, first.ts) < self._target - _SLACK:
                return None
            self._playing, self._next_seq, self._play_ts = True, first.seq, first.ts
        self._trim(now)
        frame = self._next_frame(now)
        self._delay = self._extra(now, self._play_ts - self._frame)
        return frame

    def _extra(self, now: float, ts: int) -> float:
        """How long after the fastest possible arrival of ``ts`` it is now."""
        return now - ts / self.config.clock_rate - self._base_now(now)

    def _trim(self, now: float) -> None:
        excess = self._extra(now, self._play_ts) - self.config.max_delay
        if excess <= _EPS:
            return
        slots = math.ceil(excess / self._period - _EPS)
        self._play_ts += slots * self._frame
        self.stats["compressed"] += slots
        for seq in sorted(s for s, e in self._buffer.items() if e.ts < self._play_ts - self._frame / 2):
            del self._buffer[seq]
            self._next_seq = max(self._next_seq, seq + 1)

    def _next_frame(self, now: float) -> Frame:
        half = self._frame / 2
        while True:
            slot = self._play_ts
            behind = self._extra(now, slot) < self._target - _SLACK  # the delay should grow
            seq = self._next_seq
            entry = self._buffer.get(seq)
            if entry is None:
                if not self._buffer:
                    return self._silence(now, behind, None)
                after = self._buffer[min(self._buffer)]  # everything buffered comes after seq
                missing_ts = after.ts - (after.seq - seq) * self._frame
                if missing_ts > slot + half:
                    return self._silence(now, behind, missing_ts)
                if missing_ts < slot - half and not (
                    behind and self._extra(now, missing_ts) <= self.config.max_delay + _EPS
                ):
                    # its slot went by as silence: so did those of the missing packets after it, up to
                    # the last one due before this slot
                    gone = 1 if behind else math.ceil(after.seq - (after.ts - slot + half) / self._frame) - seq
                    gone = max(1, min(gone, after.seq - seq))
                    self.stats["lost"] += gone
                    self._next_seq += gone
                    continue
                if behind and missing_ts >= slot - half:
                    self.stats["expanded"] += 1  # wait a frame for it
                    return Frame(LOST, ssrc=self._ssrc)
                if missing_ts < slot - half:
                    self.stats["expanded"] += round((slot - missing_ts) / self._frame)
                self.stats["lost"] += 1
                self._next_seq += 1
                self._play_ts = missing_ts + self._frame
                following = self._buffer.get(seq + 1)
                self._conceal = _CONCEAL_UNDERRUN
                return Frame(
                    LOST,
                    sequence=(after.packet.sequence - (after.seq - seq)) & 0xFFFF,
                    ssrc=self._ssrc,
                    fec_from=following.packet.payload if following is not None else None,
                )
            if entry.ts > slot + half:
                return self._silence(now, behind, entry.ts)
            if entry.ts < slot - half:  # it came after its slot went by as silence
                if behind and self._extra(now, entry.ts) <= self.config.max_delay + _EPS:
                    self.stats["expanded"] += round((slot - entry.ts) / self._frame)
                    return self._play(entry)
                del self._buffer[seq]
                self.stats["late"] += 1
                self._next_seq += 1
                continue
            return self._play(entry)

    def _play(self, entry: _Entry) -> Frame:
        del self._buffer[entry.seq]
        self._next_seq = entry.seq + 1
        self._play_ts = entry.ts + self._frame
        self._played.append(entry.seq)
        self._conceal = _CONCEAL_UNDERRUN
        self.stats["played"] += 1
        return Frame(AUDIO, entry.packet.payload, sequence=entry.packet.sequence, ssrc=self._ssrc)

    def _silence(self, now: float, behind: bool, next_ts: int | None) -> Frame:
        """A frame with nothing to play: a pause in the timestamps, or nothing buffered."""
        conceal = next_ts is None and self._conceal > 0  # right after speech: likely a loss, perhaps the end
        self._conceal = self._conceal - 1 if conceal else 0
        if behind:
            self.stats["expanded"] += 1  # hold the playout point: the delay grows by a frame
        elif (
            not conceal
            and self._extra(now, self._play_ts) - self._period >= self._target - _EPS
            and (next_ts is None or next_ts >= self._play_ts + 2 * self._frame - self._frame / 2)
        ):
            self._play_ts += 2 * self._frame  # skip a frame of silence: the delay shrinks by a frame
            self.stats["compressed"] += 1
        else:
            self._play_ts += self._frame
        return Frame(LOST if conceal else SILENCE, ssrc=self._ssrc)
