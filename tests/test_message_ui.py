"""Voice messages in the terminal client (client.message_ui, client.call_app), with a fake session and audio
engine: the event lines, ``m`` plays the oldest message and reports it played, a call to a callee who is not
connected records a voice message from the microphone with ``v`` and leaves it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer

from client.call_app import CallUi
from client.codec import FRAME_BYTES
from client.message_ui import MessageUi, MicMessage
from client.voicemessages import MessageNotice, OpenedMessage
from ptt.mikey.errors import BadSignature
from ptt.privatecall.machine import CallEvent

ALICE, BOB, FIRE = "sip:alice@example.org", "sip:bob@example.org", "sip:fire@example.org"


@dataclass
class Messages:
    inbox: list[MessageNotice] = field(default_factory=list)
    sent: list[tuple[str, int]] = field(default_factory=list)
    played_ids: list[int] = field(default_factory=list)
    refuse: bool = False
    listener: Any = None

    def unplayed(self) -> list[MessageNotice]:
        return [n for n in self.inbox if n.state != "played"]

    def open(self, number: int) -> defer.Deferred[Any]:
        if self.refuse:
            return defer.fail(BadSignature("ECCSI signature does not verify"))
        return defer.succeed(OpenedMessage(number, ALICE, 0.0, b"\x01\x00" * 960 * 3, 3, 3, 0))

    def played(self, number: int) -> defer.Deferred[None]:
        self.played_ids.append(number)
        for notice in self.inbox:
            if notice.id == number:
                notice.state = "played"
        return defer.succeed(None)

    def send(self, to: str, opus: list[bytes]) -> defer.Deferred[Any]:
        self.sent.append((to, len(opus)))
        return defer.succeed((42, None, []))


@dataclass
class Calls:
    listener: Any = None
    hung_up: int = 0

    def hang_up(self) -> None:
        self.hung_up += 1


@dataclass
class Session:
    messages: Messages = field(default_factory=Messages)
    calls: Calls = field(default_factory=Calls)


class Engine:
    def __init__(self) -> None:
        self.on_capture: Any = "voice"
        self.capturing = False

    def start_capture(self) -> None:
        self.capturing = True

    def stop_capture(self) -> None:
        self.capturing = False


@dataclass
class Voice:
    engine: Engine = field(default_factory=Engine)
    cued: list[bytes] = field(default_factory=list)

    def cue(self, frames: list[bytes]) -> None:
        self.cued.extend(frames)

    def unmonitor(self, group: str) -> None:
        pass


@dataclass
class Client:
    session: Session = field(default_factory=Session)
    voice: Voice = field(default_factory=Voice)
    notes: list[str] = field(default_factory=list)
    quiet: bool = True
    selected: str = ""

    def note(self, text: str) -> None:
        self.notes.append(text)


def test_messages_are_announced_and_m_plays_the_oldest_and_reports_it_played() -> None:
    client = Client()
    ui = MessageUi(client)
    assert client.session.messages.listener == ui.on_message
    ui.on_message({"type": "message_new", "message": 7, "from": ALICE, "seconds": 4.25, "state": "stored"})
    ui.on_message({"type": "message_status", "message": 3, "to": BOB, "state": "played"})
    ui.on_message({"type": "message_new", "message": 9, "from": ALICE, "seconds": 1, "state": "stored", "group": FIRE})
    ui.on_message({"type": "message_status", "message": 4, "to": BOB, "state": "delivered", "group": FIRE})
    assert client.notes == [
        f"VOICE MESSAGE #7 from {ALICE} (4.2 s) — m: play",
        f"your voice message #3 to {BOB}: played",
        f"VOICE MESSAGE #9 from {ALICE} to {FIRE} (1.0 s) — m: play",
        f"your voice message #4 to {FIRE}: delivered by {BOB}",
    ]
    assert not ui.key("x")
    assert ui.key("m")
    assert client.notes[-1] == "no voice message waiting"
    client.session.messages.inbox = [
        MessageNotice(7, ALICE, 0.0, 4.2, "stored"),
        MessageNotice(8, ALICE, 0.0, 1, "stored"),
    ]
    ui.key("m")
    assert client.session.messages.played_ids == [7] and len(client.voice.cued) == 3
    assert all(len(frame) == FRAME_BYTES for frame in client.voice.cued)
    assert client.notes[-1].startswith(f"playing voice message #7 from {ALICE}")
    client.session.messages.refuse = True
    ui.key("m")  # a refused message is said, never played, never reported played
    assert client.session.messages.played_ids == [7] and "#8 not played" in client.notes[-1]


def test_the_microphone_recording_takes_the_frames_and_gives_them_back() -> None:
    engine = Engine()
    recorder = MicMessage(engine)
    recorder.start()
    assert engine.capturing and engine.on_capture != "voice"
    engine.on_capture(b"\x00" * FRAME_BYTES, 0.0)
    engine.on_capture(b"\x00" * 10, 0.0)  # a short block is not a frame
    assert recorder.stop() == [b"\x00" * FRAME_BYTES]
    assert not engine.capturing and engine.on_capture == "voice"


def test_a_call_to_a_callee_not_connected_leaves_a_voice_message_with_v() -> None:
    client = Client()
    ui = CallUi(client)
    assert not ui.key("v")  # nothing to do before a call failed
    ui.on_event(CallEvent("ended", "call:1", BOB, "unreachable"))
    assert ui.ended.called and ui.offline == BOB and "v: record a voice message" in ui.text
    assert ui.key("v") and client.voice.engine.capturing
    for _ in range(10):
        client.voice.engine.on_capture(b"\x00" * FRAME_BYTES, 0.0)
    assert ui.key("v") and not client.voice.engine.capturing
    assert client.session.messages.sent == [(BOB, 10)] and ui.message_done.called
    assert ui.text == f"voice message #42 left for {BOB}: delivered when they connect"


def test_a_call_that_ends_otherwise_offers_no_message() -> None:
    client = Client()
    ui = CallUi(client)
    ui.on_event(CallEvent("ended", "call:1", BOB, "busy"))
    assert ui.offline is None and not ui.key("v")
