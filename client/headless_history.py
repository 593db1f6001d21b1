"""``ptt-headless`` script steps for recording and replay (issue 17), a part of ``client.headless.Runner``:

``talk-wav PATH``              ask for the floor of the joined group, send the WAV (48 kHz mono 16-bit) as Opus
                               at 20 ms a packet, release (real speech for recording and replay tests)
``history GROUP DIR [N]``      replay the group's last N (50) recorded bursts: each decrypted with this member's
                               archived keys and written to DIR/burst-ID.wav; the report's ``history`` lists them
                               (talker, times, packets decrypted and failed)
"""

from __future__ import annotations

import time
import wave
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from client.codec import FRAME_BYTES, SAMPLE_RATE, OpusEncoder
from client.history import replay, write_wav

STEPS = frozenset({"talk-wav", "history"})
PACKET_INTERVAL = 0.02


def read_frames(path: Path) -> list[bytes]:
    with wave.open(str(path), "rb") as f:
        if (f.getnchannels(), f.getsampwidth(), f.getframerate()) != (1, 2, SAMPLE_RATE):
            raise ValueError(f"{path}: expected a 48 kHz mono 16-bit WAV")
        pcm = f.readframes(f.getnframes())
    pcm += bytes(-len(pcm) % FRAME_BYTES)
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]


@defer.inlineCallbacks
def run_step(runner: Any, word: str, arg: str) -> Any:
    session = runner.session
    if word == "history":
        group, directory, *count = arg.split()
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        bursts = yield replay(session, group, int(count[0]) if count else 50)
        for burst in bursts:
            entry = burst.summary()
            if burst.pcm:
                entry["wav"] = str(write_wav(out / f"burst-{burst.id}.wav", burst.pcm))
            runner.history.append(entry)
        return
    group = runner.group
    assert group is not None, "join a group first"
    frames = read_frames(Path(arg))
    encoder = OpusEncoder()
    session.request_floor(group)
    state = session.groups[group]
    for _ in range(250):
        if state.participant is not None and state.participant.has_permission:
            break
        yield task.deferLater(runner.reactor, 0.02, lambda: None)
    else:
        raise TimeoutError(f"talk-wav: no floor in {group} within 5 s")
    runner.marks.append({"step": "talk-wav", "t": round(time.time(), 3)})
    start = time.monotonic()
    for index, frame in enumerate(frames):
        runner.sent += 1
        session.send_media(group, encoder.encode(frame), marker=index == 0)
        delay = start + (index + 1) * PACKET_INTERVAL - time.monotonic()  # paced by the clock, not by sleeps
        yield task.deferLater(runner.reactor, max(0.0, delay), lambda: None)
    session.release_floor(group)
