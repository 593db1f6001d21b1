"""The voice path of a PttSession: microphone → Opus → RTP → SRTP out; SRTP → RTP → jitter buffer → Opus → speaker.

Threads: the audio engine's callbacks run on PortAudio's threads. A captured frame is encoded, numbered, protected
and sent on the microphone's thread (``send_media`` is safe there: ``client.session_media``): a hop to the reactor
for each frame woke a second thread 50 times a second and cost the talker ~0.7 % of a core (``scripts/bench voice``),
and the reactor never waits on the encoder. Received packets go into a per-group jitter buffer under a lock, and the
output callback pulls one 20 ms frame at a time from it (the playout clock is the sound card's). With several
groups monitored, the highest-priority group with a talker is heard.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from client.audio import AudioEngine
from client.codec import DEFAULT_BITRATE, FRAME_SAMPLES, OpusDecoder, OpusEncoder
from ptt.jitter import JitterBuffer, JitterConfig
from ptt.rtp import RtpError, RtpPacket

log = logging.getLogger("ptt.client.voice")

SILENCE = bytes(2 * FRAME_SAMPLES)


class MediaSession(Protocol):
    """What the voice path needs of a session: on-network (``PttSession``) or ad-hoc (``AdhocSession``)."""

    media_listener: Callable[[str, bytes, bytes], None]

    def send_media(self, group: str, payload: bytes, *, marker: bool = False, samples: int = 960) -> None: ...


@dataclass
class Listener:
    """Playback state of one monitored group."""

    group: str
    priority: int
    jitter: JitterBuffer = field(default_factory=lambda: JitterBuffer(JitterConfig()))
    decoder: OpusDecoder = field(default_factory=OpusDecoder)
    last_audio: float = 0.0
    talker_ssrc: int | None = None


class Voice:
    """Connects a PttSession to an AudioEngine."""

    ACTIVE_FOR = 0.5  # a group counts as active this long after its last audio frame (priority between groups)
    BURST_GAP = 0.1  # nothing played for this long before a frame: that frame starts a new burst (``burst_starts``)

    def __init__(
        self,
        reactor: Any,
        session: MediaSession,
        engine: AudioEngine,
        *,
        bitrate: int = DEFAULT_BITRATE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reactor = reactor
        self.session = session
        self.engine = engine
        self.encoder = OpusEncoder(bitrate)
        self.clock = clock
        self.listeners: dict[str, Listener] = {}
        self.talk_group: str | None = None
        self._lock = threading.Lock()
        self._talking = False
        self._first = False
        self.heard: dict[str, int] = {}  # packets heard per sender MKI (hex), for the UI and tests
        self.frames = {"sent": 0, "played": 0, "concealed": 0, "fec": 0}
        # time.time() when the first frame of each burst heard was handed to the speaker (benchmarks; the last 1000)
        self.burst_starts: deque[float] = deque(maxlen=1000)
        self._last_played: float | None = None
        self._cues: deque[bytes] = deque(maxlen=250)  # local sounds (an alert tone), played when no voice is
        session.media_listener = self._media
        engine.on_capture = self._captured
        engine.pull_playback = self._playback

    # --- groups --------------------------------------------------------------------------------------------------

    def monitor(self, group: str, priority: int = 0) -> None:
        with self._lock:
            self.listeners[group] = Listener(group, priority)

    def unmonitor(self, group: str) -> None:
        with self._lock:
            self.listeners.pop(group, None)

    def cue(self, frames: list[bytes]) -> None:
        """Play local PCM frames (20 ms each, e.g. an alert tone) whenever no group's voice is playing."""
        with self._lock:
            self._cues.extend(frames)

    # --- talking -------------------------------------------------------------------------------------------------

    def start_talking(self, group: str) -> None:
        """Start sending the microphone to ``group`` (the floor must have been granted)."""
        self.talk_group = group
        self._talking = True
        self._first = True
        self.engine.start_capture()

    @property
    def talking(self) -> bool:
        """The microphone is sent (the floor was granted and PTT is held)."""
        return self._talking

    def stop_talking(self) -> None:
        self._talking = False
        self.engine.stop_capture()

    def _captured(self, pcm: bytes, captured_at: float) -> None:
        # PortAudio's thread (see the module docstring): encode and send here
        group = self.talk_group
        if not self._talking or group is None:
            return
        try:
            payload = self.encoder.encode(pcm)
            self.session.send_media(group, payload, marker=self._first, samples=FRAME_SAMPLES)
        except Exception as exc:  # no key yet, socket closed: drop the frame, keep the app alive
            log.debug("frame not sent: %s", exc)
            return
        self._first = False
        self.frames["sent"] += 1

    # --- listening -----------------------------------------------------------------------------------------------

    def _media(self, group: str, mki: bytes, rtp: bytes) -> None:
        try:
            packet = RtpPacket.parse(rtp)
        except RtpError as exc:
            log.debug("bad RTP from %s: %s", group, exc)
            return
        key = mki.hex()
        self.heard[key] = self.heard.get(key, 0) + 1
        with self._lock:
            listener = self.listeners.get(group)
            if listener is not None:
                listener.jitter.put(packet, self.clock())

    def _playback(self) -> bytes | None:
        # PortAudio's thread, every 20 ms: one frame from the highest-priority active group
        now = self.clock()
        with self._lock:
            chosen: tuple[bytes, Listener] | None = None
            for listener in sorted(self.listeners.values(), key=lambda entry: -entry.priority):
                frame = listener.jitter.get(now)
                if frame is None or frame.kind == "silence":
                    continue
                pcm = self._decode(listener, frame)
                listener.last_audio = now
                if chosen is None:
                    chosen = (pcm, listener)
            if chosen is None:
                return self._cues.popleft() if self._cues else None
            if self._last_played is None or now - self._last_played > self.BURST_GAP:
                self.burst_starts.append(time.time())
            self._last_played = now
            self.frames["played"] += 1
            return chosen[0]

    def _decode(self, listener: Listener, frame: Any) -> bytes:
        try:
            if frame.kind == "audio":
                return listener.decoder.decode(frame.payload)
            if frame.fec_from:
                self.frames["fec"] += 1
                return listener.decoder.decode_fec(frame.fec_from)
            self.frames["concealed"] += 1
            return listener.decoder.conceal()
        except Exception as exc:  # a corrupt Opus packet must not stop playback
            log.debug("decode failed: %s", exc)
            return SILENCE
