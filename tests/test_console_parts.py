"""The dispatcher console's pure parts: the event stream reader (ptt.sse) and the patch of two groups
(ptt.consolepatch)."""

from __future__ import annotations

import pytest

from ptt.consolepatch import Patch
from ptt.sse import SseDecoder, SseError, encode_event

FIRE, POLICE = "sip:fire@example.org", "sip:police@example.org"


def test_sse_events_across_chunks_and_skipped_lines() -> None:
    decoder = SseDecoder()
    stream = b"retry: 2000\n\n" + encode_event({"type": "snapshot", "groups": []}) + b": keepalive\n\n"
    stream += b'event: x\r\ndata: {"type":\r\ndata: "talker"}\r\n\r\n'
    events = [e for i in range(len(stream)) for e in decoder.feed(stream[i : i + 1])]
    assert events == [{"type": "snapshot", "groups": []}, {"type": "talker"}]


def test_sse_refuses_overlong_lines_and_non_objects() -> None:
    with pytest.raises(SseError):
        SseDecoder(max_line=100).feed(b"data: " + b"x" * 200)
    with pytest.raises(SseError):
        SseDecoder().feed(b"data: [1, 2]\n\n")
    with pytest.raises(SseError):
        SseDecoder().feed(b"data: {not json}\n\n")


def test_patch_forwards_voice_and_releases_after_silence() -> None:
    patch = Patch(FIRE, POLICE, hang=0.5)
    assert patch.target_of(FIRE) is None
    assert patch.voice(FIRE, 10.0) == [("request", POLICE)]
    assert patch.voice(FIRE, 10.02) == [] and patch.target_of(FIRE) == POLICE
    assert patch.voice(POLICE, 10.03) == []  # the console itself talks in police: nothing comes back
    assert patch.tick(10.3) == []
    assert patch.tick(10.6) == [("release", POLICE)] and patch.target_of(FIRE) is None
    assert patch.voice(POLICE, 11.0) == [("request", FIRE)]  # now the other way
    assert patch.end() == [("release", FIRE)] and patch.end() == []
    assert patch.voice("sip:other@example.org", 12.0) == []
    with pytest.raises(ValueError):
        Patch(FIRE, FIRE)
