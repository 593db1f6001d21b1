"""``ptt-headless`` script steps for voice messages (deferred delivery, issue 17), a part of ``client.headless.Runner``:

``message-wav URI PATH``        send the WAV (48 kHz mono 16-bit) as a voice message to URI (a user, or one of our
                                groups: then under its GMK)
``call-or-message URI PATH``    call URI; if it is not connected (``unreachable``), leave PATH as a voice message
``wait-message-status ID STATE [S [MEMBER]]`` until message ID (``last``: the last one sent here) reached STATE
                                (delivered, played) as the server told us (for a message to a group: MEMBER's
                                receipt), at most S (45) s
``wait-message [S]``            until a voice message to us is announced (S: 45 s)
``play-messages DIR``           fetch, open and decode every unplayed message announced: DIR/message-ID.wav; then
                                tell the server each was played
``fetch-message ID``            try to fetch and open message ID (the outcome goes to ``message_errors``)
``message-resend URI``          upload the last message sent again, the same I_MESSAGE (a replayed upload)
``message-raw URI PATH HEX``    upload PATH under the I_MESSAGE in the file HEX (hex; someone else's message), or
                                with ``flip`` instead of a file: our own I_MESSAGE with one signature bit flipped

The report: ``messages_sent`` (ID, addressee, states seen, the I_MESSAGE in hex), ``message_receipts`` (a group
message's states per member), ``messages_played`` (each
opened message: sender, packets decrypted, WAV), ``message_errors`` (step, code or refusal).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from client.codec import OpusEncoder
from client.control import ControlError
from client.headless_history import read_frames
from client.history import write_wav
from ptt.mikey.errors import MikeyError
from ptt.voicemessage import seal_voice

STEPS = frozenset(
    {
        "message-wav",
        "call-or-message",
        "wait-message-status",
        "wait-message",
        "play-messages",
        "fetch-message",
        "message-resend",
        "message-raw",
    }
)
WAIT_LIMIT = 45.0


def opus_frames(path: Path) -> list[bytes]:
    encoder = OpusEncoder()
    return [encoder.encode(frame) for frame in read_frames(path)]


class MessageSteps:
    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.session = runner.session
        self.sent: list[dict[str, Any]] = []
        self.played: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self._last: tuple[bytes | None, Any] | None = None  # (I_MESSAGE, SRTP) of the last message sent

    def _error(self, step: str, exc: Exception) -> None:
        code = exc.code if isinstance(exc, ControlError) else type(exc).__name__
        self.errors.append({"step": step, "code": code, "reason": str(exc)})

    @defer.inlineCallbacks
    def _until(self, done: Any, seconds: float) -> Any:
        deadline = time.monotonic() + seconds
        while not done() and time.monotonic() < deadline:
            yield task.deferLater(self.runner.reactor, 0.05, lambda: None)

    @defer.inlineCallbacks
    def _send(self, uri: str, path: Path) -> Any:
        try:
            number, imessage, packets = yield self.session.messages.send(uri, opus_frames(path))
        except ControlError as exc:  # refused by the server: in the report (tests expect some)
            self._error("message-wav", exc)
            return
        self._last = (imessage, packets)
        hexed = imessage.hex() if imessage is not None else ""  # none for a message to a group
        self.sent.append({"message": number, "to": uri, "imessage": hexed, "t": round(time.time(), 3)})

    @defer.inlineCallbacks
    def run(self, word: str, arg: str) -> Any:
        messages = self.session.messages
        if word == "message-wav":
            uri, path = arg.split()
            yield self._send(uri, Path(path))
        elif word == "call-or-message":
            uri, path = arg.split()
            yield self.runner.call_steps.run("call", uri)
            ended = [e for e in self.runner.call_steps.events if e["kind"] == "ended"]
            if ended and ended[-1]["reason"] == "unreachable":
                yield self._send(uri, Path(path))
        elif word == "wait-message-status":
            which, state, *rest = arg.split()
            number = self.sent[-1]["message"] if which == "last" else int(which)
            seconds = float(rest[0]) if rest else WAIT_LIMIT
            if len(rest) > 1:  # a member's receipt of a message to a group
                member = rest[1]
                yield self._until(lambda: state in messages.receipts.get(number, {}).get(member, []), seconds)
            else:
                yield self._until(lambda: state in messages.sent.get(number, []), seconds)
        elif word == "wait-message":
            yield self._until(lambda: bool(messages.unplayed()), float(arg) if arg else WAIT_LIMIT)
        elif word == "play-messages":
            out = Path(arg)
            out.mkdir(parents=True, exist_ok=True)
            for notice in messages.unplayed():
                yield self._play(notice.id, out)
        elif word == "fetch-message":
            yield self._play(int(arg), None)
        elif word == "message-resend":
            assert self._last is not None, "send a message first"
            imessage, packets = self._last
            yield self._upload("message-resend", arg, imessage, packets)
        elif word == "message-raw":
            uri, path, source = arg.split()
            now = self.runner.reactor.seconds()
            sealed = seal_voice(self.session.identity_keys(now), uri, opus_frames(Path(path)), now=now)
            if source == "flip":
                imessage = sealed.imessage[:-20] + bytes([sealed.imessage[-20] ^ 1]) + sealed.imessage[-19:]
            else:
                imessage = bytes.fromhex(Path(source).read_text().strip())
            yield self._upload("message-raw", uri, imessage, sealed.packets)

    @defer.inlineCallbacks
    def _upload(self, step: str, uri: str, imessage: bytes | None, packets: list[tuple[float, bytes]]) -> Any:
        try:
            number = yield self.session.messages.upload(uri, imessage, packets)
        except (ControlError, ValueError) as exc:
            self._error(step, exc)
        else:
            self.errors.append({"step": step, "code": 0, "reason": f"stored as {number}"})

    @defer.inlineCallbacks
    def _play(self, number: int, out: Path | None) -> Any:
        messages = self.session.messages
        try:
            opened = yield messages.open(number)
        except (ControlError, MikeyError, ValueError) as exc:
            self._error("fetch-message" if out is None else "play-messages", exc)
            return
        entry = opened.summary()
        if out is not None and opened.pcm:
            entry["wav"] = str(write_wav(out / f"message-{number}.wav", opened.pcm))
            yield messages.played(number)
        self.played.append(entry)

    def report(self) -> dict[str, Any]:
        states = self.session.messages.sent
        sent = [{**s, "states": states.get(s["message"], [])} for s in self.sent]
        return {
            "messages_sent": sent,
            "message_states": {str(k): v for k, v in states.items()},
            "message_receipts": {str(k): v for k, v in self.session.messages.receipts.items()},
            "messages_played": self.played,
            "message_errors": self.errors,
        }
