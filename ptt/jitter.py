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

from ptt.jitter_arrivals import JitterArrivals
from ptt.jitter_state import (
    AUDIO,
    CONCEAL_UNDERRUN,
    EPS,
    LOST,
    MAX_DROPOUT,
    MAX_MISORDER,
    SILENCE,
    SLACK,
    STAT_NAMES,
    BufferedPacket,
    Frame,
    JitterConfig,
)

__all__ = [
    "AUDIO",
    "LOST",
    "MAX_DROPOUT",
    "MAX_MISORDER",
    "SILENCE",
    "STAT_NAMES",
    "Frame",
    "JitterBuffer",
    "JitterConfig",
]


class JitterBuffer(JitterArrivals):
    # -- playout

    def get(self, now: float) -> Frame | None:
        if self._ssrc is None or not math.isfinite(now):
            return None
        self._update_target(now)
        if not self._playing:
            if not self._buffer:
                return None
            first = self._buffer[min(self._buffer)]
            if self._extra(now, first.ts) < self._target - SLACK:
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
        if excess <= EPS:
            return
        slots = math.ceil(excess / self._period - EPS)
        self._play_ts += slots * self._frame
        self.stats["compressed"] += slots
        for seq in sorted(s for s, e in self._buffer.items() if e.ts < self._play_ts - self._frame / 2):
            del self._buffer[seq]
            self._next_seq = max(self._next_seq, seq + 1)

    def _next_frame(self, now: float) -> Frame:
        half = self._frame / 2
        while True:
            slot = self._play_ts
            behind = self._extra(now, slot) < self._target - SLACK  # the delay should grow
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
                    behind and self._extra(now, missing_ts) <= self.config.max_delay + EPS
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
                self._conceal = CONCEAL_UNDERRUN
                return Frame(
                    LOST,
                    sequence=(after.packet.sequence - (after.seq - seq)) & 0xFFFF,
                    ssrc=self._ssrc,
                    fec_from=following.packet.payload if following is not None else None,
                )
            if entry.ts > slot + half:
                return self._silence(now, behind, entry.ts)
            if entry.ts < slot - half:  # it came after its slot went by as silence
                if behind and self._extra(now, entry.ts) <= self.config.max_delay + EPS:
                    self.stats["expanded"] += round((slot - entry.ts) / self._frame)
                    return self._play(entry)
                del self._buffer[seq]
                self.stats["late"] += 1
                self._next_seq += 1
                continue
            return self._play(entry)

    def _play(self, entry: BufferedPacket) -> Frame:
        del self._buffer[entry.seq]
        self._next_seq = entry.seq + 1
        self._play_ts = entry.ts + self._frame
        self._played.append(entry.seq)
        self._conceal = CONCEAL_UNDERRUN
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
            and self._extra(now, self._play_ts) - self._period >= self._target - EPS
            and (next_ts is None or next_ts >= self._play_ts + 2 * self._frame - self._frame / 2)
        ):
            self._play_ts += 2 * self._frame  # skip a frame of silence: the delay shrinks by a frame
            self.stats["compressed"] += 1
        else:
            self._play_ts += self._frame
        return Frame(LOST if conceal else SILENCE, ssrc=self._ssrc)
