"""Voice messages in ``ptt-client talk`` (deferred delivery, issue 17): an event line for each message announced
("VOICE MESSAGE #7 from sip:alice@… (4.2 s) — m: play") and for each state of the messages we sent ("delivered",
"played"); ``m`` fetches, checks and plays the oldest unplayed message (on the speaker, whenever no group's voice is
playing), then tells the server it was played (the sender sees "played"). ``MicMessage`` records one from the
running microphone (``ptt-client call`` offers it when the callee is not connected)."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from twisted.internet import defer

from client.codec import FRAME_BYTES, OpusEncoder
from ptt.voicemessage import MAX_SECONDS

log = logging.getLogger("ptt.client.messages")


class MessageUi:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.messages = client.session.messages
        self.messages.listener = self.on_message
        self.playing: int | None = None

    def on_message(self, message: dict[str, Any]) -> None:
        if message["type"] == "message_new" and message.get("state") != "played":
            group = f" to {message['group']}" if isinstance(message.get("group"), str) else ""
            self.client.note(
                f"VOICE MESSAGE #{message['message']} from {message['from']}{group} "
                f"({float(message['seconds']):.1f} s) — m: play"
            )
            if not self.client.quiet:
                sys.stdout.write("\a")
                sys.stdout.flush()
        elif message["type"] == "message_status" and isinstance(message.get("group"), str):
            self.client.note(
                f"your voice message #{message['message']} to {message['group']}: {message['state']} by {message['to']}"
            )
        elif message["type"] == "message_status":
            self.client.note(f"your voice message #{message['message']} to {message['to']}: {message['state']}")

    def key(self, key: str) -> bool:
        if key not in "mM":
            return False
        self.play_next()
        return True

    @defer.inlineCallbacks
    def play_next(self) -> Any:
        waiting = self.messages.unplayed()
        if not waiting:
            self.client.note("no voice message waiting")
            return
        if self.playing is not None:
            return
        notice = waiting[0]
        self.playing = notice.id
        try:
            opened = yield self.messages.open(notice.id)
            if not opened.pcm:
                self.client.note(f"voice message #{notice.id}: nothing could be decrypted")
                return
            pcm = opened.pcm + bytes(-len(opened.pcm) % FRAME_BYTES)
            self.client.voice.cue([pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)])
            self.client.note(f"playing voice message #{notice.id} from {opened.sender} ({len(pcm) / 96000:.1f} s)")
            yield self.messages.played(notice.id)
        except Exception as exc:  # refused key, 404, connection lost: say so, keep the client running
            log.warning("voice message %d not played: %s", notice.id, exc)
            self.client.note(f"voice message #{notice.id} not played: {exc}")
        finally:
            self.playing = None


class MicMessage:
    """Records a voice message from a running audio engine's microphone (between ``start`` and ``stop``): its
    frames are taken instead of being sent to a group while it records."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.frames: list[bytes] = []
        self._lock = threading.Lock()
        self._previous: Any = None

    def start(self) -> None:
        self._previous = self.engine.on_capture
        self.engine.on_capture = self._captured
        self.engine.start_capture()

    def _captured(self, pcm: bytes, _at: float) -> None:  # PortAudio's thread
        with self._lock:
            if len(self.frames) < MAX_SECONDS * 50 and len(pcm) == FRAME_BYTES:
                self.frames.append(pcm)

    def stop(self) -> list[bytes]:
        """The PCM frames recorded (the engine delivers to its previous listener again)."""
        self.engine.stop_capture()
        self.engine.on_capture = self._previous
        with self._lock:
            return list(self.frames)


def encode(pcm_frames: list[bytes]) -> list[bytes]:
    encoder = OpusEncoder()
    return [encoder.encode(frame) for frame in pcm_frames]
