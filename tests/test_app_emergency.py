"""The talk UI's emergency and broadcast keys and status (client.app_emergency, issue 16), with a fake session."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer

from client import app_emergency
from ptt.emergency import Alert, Level

GROUP = "sip:fire@example.org"
ALICE, BOB = "sip:alice@example.org", "sip:bob@example.org"


@dataclass
class Session:
    uri: str = ALICE
    alerts: dict[str, dict[str, Alert]] = field(default_factory=dict)
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def own_level(self, group: str) -> Level | None:
        alert = self.alerts.get(group, {}).get(self.uri)
        return alert.level if alert else None

    def raise_emergency(self, group: str, level: Level, *, call: bool) -> defer.Deferred[Any]:
        self.calls.append(("raise", group, level, call))
        return defer.succeed({})

    def cancel_emergency(self, group: str) -> defer.Deferred[Any]:
        self.calls.append(("cancel", group))
        return defer.fail(RuntimeError("no active alert"))

    def request_broadcast(self, group: str) -> None:
        self.calls.append(("broadcast", group))


@dataclass
class Client:
    session: Session
    selected: str = GROUP
    want_talk: bool = False
    message: str = ""
    quiet: bool = True
    released: int = 0

    def release(self) -> None:
        self.released += 1
        self.want_talk = False


def last(client: Client) -> tuple[Any, ...]:
    return client.session.calls[-1]


def test_keys_raise_cancel_and_broadcast() -> None:
    client = Client(Session())
    assert app_emergency.key(client, "e")
    assert last(client) == ("raise", GROUP, Level.EMERGENCY, True) and client.want_talk
    client.session.alerts[GROUP] = {ALICE: Alert(GROUP, ALICE, Level.EMERGENCY, 0.0)}
    assert app_emergency.key(client, "e")  # again: cancel (refused here: the message says why)
    assert last(client) == ("cancel", GROUP) and "no active alert" in client.message
    assert app_emergency.key(client, "p")  # imminent peril while in emergency: asked (the server refuses it)
    assert last(client) == ("raise", GROUP, Level.IMMINENT_PERIL, True)
    client.want_talk = False
    assert app_emergency.key(client, "b") and last(client) == ("broadcast", GROUP)
    assert app_emergency.key(client, "b") and client.released == 1  # again: stop
    assert not app_emergency.key(client, "x")


def test_status_and_announcement() -> None:
    session = Session()
    session.alerts[GROUP] = {
        BOB: Alert(GROUP, BOB, Level.IMMINENT_PERIL, 3600.0),
        ALICE: Alert(GROUP, ALICE, Level.EMERGENCY, 7200.0),
    }
    assert app_emergency.status_text(session, GROUP) == (
        "EMERGENCY alice since 02:00:00 | IMMINENT-PERIL bob since 01:00:00"
    )
    assert app_emergency.status_text(session, "sip:other@example.org") == ""
    client = Client(session)
    app_emergency.announce(client, GROUP, Alert(GROUP, BOB, Level.EMERGENCY, 1.0))
    assert client.message == f"ALERT emergency from {BOB} in {GROUP}"
    app_emergency.announce(client, GROUP, Alert(GROUP, BOB, Level.EMERGENCY, 1.0, False, 2.0, "dana"))
    assert "cancelled by dana" in client.message


def test_an_alert_plays_a_tone_when_no_voice_plays() -> None:
    from types import SimpleNamespace

    from client.codec import FRAME_BYTES
    from client.voice import Voice

    engine = SimpleNamespace(on_capture=None, pull_playback=None)
    voice = Voice(None, SimpleNamespace(media_listener=None), engine)  # type: ignore[arg-type]
    client = Client(Session())
    client.voice = voice  # type: ignore[attr-defined]
    assert voice._playback() is None
    app_emergency.announce(client, GROUP, Alert(GROUP, BOB, Level.EMERGENCY, 1.0))
    tone = app_emergency.alert_tone(Level.EMERGENCY)
    assert len(tone) == 60 and {len(f) for f in tone} == {FRAME_BYTES}  # 1.2 s
    played = [voice._playback() for _ in range(len(tone))]
    assert played == tone and voice._playback() is None
    assert len(app_emergency.alert_tone(Level.IMMINENT_PERIL)) == 40


def test_script_steps_emergency_talk_join_and_wait_file(tmp_path: Any) -> None:
    """``ptt-client talk --script`` (client.app_script): an emergency burst raises, talks, releases and cancels;
    ``join`` is marked; ``wait-file`` goes on once the file exists."""
    from twisted.internet import task

    from client.app_script import run_script

    class Raising(Session):
        joined: int = 0
        left: int = 0

        def raise_emergency(self, group: str, level: Level, *, call: bool) -> defer.Deferred[Any]:
            self.alerts.setdefault(group, {})[self.uri] = Alert(group, self.uri, level, 0.0, call)
            return super().raise_emergency(group, level, call=call)

        def join_when_possible(self, group: str) -> defer.Deferred[Any]:
            self.joined += 1
            return defer.succeed(None)

        def leave(self, group: str) -> None:
            self.left += 1

    @dataclass
    class ScriptClient(Client):
        presses: list[float] = field(default_factory=list)
        marks: list[str] = field(default_factory=list)

        def mark(self, step: str) -> None:
            self.marks.append(step)

    clock = task.Clock()
    session = Raising()
    client = ScriptClient(session)
    flag = tmp_path / "go"
    done = run_script(clock, client, f"emergency-talk 1.5; leave; join; wait-file {flag}; wait 1")
    assert [c[0] for c in client.session.calls] == ["raise"] and len(client.presses) == 1
    clock.advance(1.5)
    assert [c[0] for c in client.session.calls] == ["raise", "cancel"] and client.released == 1
    assert session.left == session.joined == 1 and client.marks == ["join"]
    clock.advance(0.05)
    assert not done.called  # waiting for the file
    flag.write_text("")
    clock.advance(0.05)
    clock.advance(1.0)
    assert done.called
