"""The voice path's send side (client/voice.py, client/session_media.py): frames are encoded, numbered, protected and
sent on the microphone's thread, with no hop to the reactor, and a key switch on the reactor in mid-burst neither
corrupts nor renumbers the stream."""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
from twisted.internet.testing import MemoryReactorClock

from client.codec import FRAME_BYTES, OpusDecoder
from client.session_media import GroupState, SessionMedia
from client.voice import Voice
from ptt.groupkeys import GroupKey
from ptt.rtp import RtpPacket
from ptt.srtp import SrtpReceiver, SrtpSender

GROUP = "sip:team@example.org"
ME = "sip:alice@example.org"
RELAY = ("127.0.0.1", 4000)


def group_key() -> GroupKey:
    return GroupKey(os.urandom(16), bytes([0x00]) + os.urandom(3))


class Port:
    """A UDP port that records what was written and from which thread."""

    def __init__(self) -> None:
        self.written: list[tuple[bytes, Any, str]] = []

    def write(self, data: bytes, addr: Any) -> None:
        self.written.append((data, addr, threading.current_thread().name))


class Session(SessionMedia):
    """The media part of a PttSession, joined to one group."""

    def __init__(self, key: GroupKey) -> None:
        self.reactor = MemoryReactorClock()
        self.uri = ME
        self.relay = RELAY
        self.stats = {"media_in": 0, "media_bad": 0}
        self.media_listener = lambda group, mki, rtp: None
        self.media_lock = threading.Lock()
        self.port = Port()
        state = GroupState(GROUP, keys=[key], sender=SrtpSender(key, ME), ssrc=0x1234, joined=True)
        state.port, state.relay = self.port, RELAY
        self.groups = {GROUP: state}


class Engine:
    def __init__(self) -> None:
        self.on_capture: Any = None
        self.pull_playback: Any = None
        self.capturing = False

    def start_capture(self) -> None:
        self.capturing = True

    def stop_capture(self) -> None:
        self.capturing = False


def tone_frames(count: int) -> list[bytes]:
    t = np.arange(count * FRAME_BYTES // 2) / 48000
    samples = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    return [samples[i * 960 : (i + 1) * 960].tobytes() for i in range(count)]


def test_captured_frames_are_sent_from_the_microphone_thread_without_the_reactor() -> None:
    key = group_key()
    session = Session(key)
    engine = Engine()
    voice = Voice(session.reactor, session, engine)  # type: ignore[arg-type]  # a MemoryReactorClock runs nothing
    voice.start_talking(GROUP)
    assert engine.capturing

    def microphone() -> None:
        for frame in tone_frames(20):
            engine.on_capture(frame, 0.0)

    thread = threading.Thread(target=microphone, name="microphone")
    thread.start()
    thread.join()
    assert voice.frames["sent"] == 20 and len(session.port.written) == 20
    assert {thread_name for _, _, thread_name in session.port.written} == {"microphone"}
    assert {addr for _, addr, _ in session.port.written} == {RELAY}
    receiver = SrtpReceiver()
    receiver.add_key(key)
    decoder = OpusDecoder()
    packets = [RtpPacket.parse(receiver.unprotect(data)[0]) for data, _, _ in session.port.written]
    assert [p.marker for p in packets] == [True] + [False] * 19
    assert [(p.sequence - packets[0].sequence) % 65536 for p in packets] == list(range(20))
    assert all(len(decoder.decode(p.payload)) == FRAME_BYTES for p in packets)

    voice.stop_talking()
    engine.on_capture(tone_frames(1)[0], 0.0)  # a frame already captured when PTT was released: not sent
    assert len(session.port.written) == 20


def test_a_key_switch_on_the_reactor_in_mid_burst_loses_and_renumbers_nothing() -> None:
    keys = [group_key() for _ in range(40)]
    session = Session(keys[0])
    state = session.groups[GROUP]
    count = 2000
    started = threading.Event()

    def microphone() -> None:
        started.set()
        for k in range(count):
            session.send_media(GROUP, k.to_bytes(4, "big") * 10, marker=k == 0)

    thread = threading.Thread(target=microphone, name="microphone")
    thread.start()
    started.wait()
    for key in keys[1:]:  # what _switch_sender does on the reactor, as fast as it can
        state.sender = SrtpSender(key, ME)
    thread.join()
    receiver = SrtpReceiver()
    for key in keys:
        receiver.add_key(key)
    packets = [RtpPacket.parse(receiver.unprotect(data)[0]) for data, _, _ in session.port.written]
    assert len(packets) == count
    assert [int.from_bytes(p.payload[:4], "big") for p in packets] == list(range(count))
    assert [(p.sequence - packets[0].sequence) % 65536 for p in packets] == list(range(count))
