"""The jitter buffer's arrivals: extended sequence numbers and timestamps, a new source, jumps and resyncs, and the
reorder store packets wait in until their playout.

The buffer itself, and how it adapts, is described in :mod:`ptt.jitter`.
"""

from __future__ import annotations

import math

from ptt.jitter_state import (
    JUMP,
    MAX_DROPOUT,
    MAX_MISORDER,
    RETIRED_SSRCS,
    BufferedPacket,
    JitterState,
)
from ptt.rtp import RtpPacket, seq_diff, ts_diff


class JitterArrivals(JitterState):
    """Packets into the store, in order of their extended sequence numbers, whatever order they come in."""

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
            if retired_at is not None and not packet.marker and now - retired_at < self.config.max_delay + JUMP:
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
        plausible = abs(delay) <= self.config.max_delay + JUMP
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
        self._insert(BufferedPacket(ext_seq, ts, packet))

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
            while len(self._retired) > RETIRED_SSRCS:
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
        self._insert(BufferedPacket(ext_seq, ts, packet))

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
        self._insert(BufferedPacket(ext_seq, ts, packet))

    def _insert(self, entry: BufferedPacket) -> None:
        self._buffer[entry.seq] = entry
        while len(self._buffer) > self.config.max_frames:
            oldest = self._buffer.pop(min(self._buffer))
            self.stats["overflow"] += 1
            if self._playing:
                self._next_seq = oldest.seq + 1
                self._play_ts = max(self._play_ts, oldest.ts + self._frame)
