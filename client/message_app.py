"""Voice messages from the command line (deferred delivery, issue 17):

``ptt-client message URI [--wav FILE | --seconds N] [--wait delivered|played]`` records a voice message (from a
48 kHz mono WAV file, or from the microphone: ENTER starts and stops, or ``--seconds N``), seals it for URI (a
fresh PCK in an I_MESSAGE signed by us, encrypted to URI) and leaves it on the server, which delivers it when URI
is or becomes connected; ``--wait`` stays until the server says it was delivered (fetched) or played. URI may be
one of our groups: the message then goes under its GMK to its members (``--wait``: until one of them has).

``ptt-client messages [--play ID|-1] [--wav-dir D]`` lists the voice messages to us, opens (every I_MESSAGE check)
and plays one on the speaker or writes them all as WAV files; each played or written is reported played to the
server, which tells its sender.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twisted.internet import defer, task, threads

from client.codec import FRAME_BYTES, OpusEncoder
from client.headless_history import read_frames
from client.history import write_wav
from ptt.voicemessage import MAX_SECONDS

WAIT_LIMIT = 300.0


def record_from_microphone(device: str | None, seconds: float | None) -> list[bytes]:
    """PCM frames of 20 ms from the microphone: for ``seconds``, or between two presses of ENTER (runs in a
    thread: it waits on the terminal and the audio device)."""
    from client.audio import AudioEngine

    frames: list[bytes] = []
    lock = threading.Lock()

    def captured(pcm: bytes, _at: float) -> None:
        with lock:
            if len(frames) < MAX_SECONDS * 50:
                frames.append(pcm)

    engine = AudioEngine(input_device=device)
    engine.on_capture = captured
    engine.start()
    try:
        if seconds is None:
            input("press ENTER to start recording… ")
        engine.start_capture()
        if seconds is None:
            input(f"recording (at most {MAX_SECONDS} s): press ENTER to stop… ")
        else:
            threading.Event().wait(min(seconds, MAX_SECONDS))
        engine.stop_capture()
    finally:
        engine.stop()
    with lock:
        return [f for f in frames if len(f) == FRAME_BYTES]


def _session(args: Any, reactor: Any) -> Any:
    from client.session import PttSession

    return PttSession(reactor, args.keystore_opened, args.uri, args.server)


def _react(go: Any) -> int:
    outcome = {"code": 0}

    def run(reactor: Any) -> Any:
        @defer.inlineCallbacks
        def guarded() -> Any:
            try:
                yield go(reactor)
            except Exception as exc:
                from client.errors import explain

                error = explain(exc)
                print(f"ptt-client: {error}", file=sys.stderr, flush=True)
                outcome["code"] = int(error.code)

        return guarded()

    with contextlib.suppress(SystemExit):
        task.react(run, [])
    return outcome["code"]


def send_main(args: Any) -> int:
    @defer.inlineCallbacks
    def go(reactor: Any) -> Any:
        if args.wav:
            pcm_frames = read_frames(Path(args.wav))
        else:
            pcm_frames = yield threads.deferToThread(record_from_microphone, args.input_device, args.seconds)
        if not pcm_frames:
            raise ValueError("nothing recorded")
        encoder = OpusEncoder()
        opus = [encoder.encode(frame) for frame in pcm_frames]
        session = _session(args, reactor)
        try:
            yield session.start()
            number, _, _ = yield session.messages.send(args.to, opus)
            print(f"voice message #{number} to {args.to} ({len(opus) * 0.02:.1f} s) left on the server", flush=True)
            wanted = args.wait
            if wanted:
                states = session.messages.sent.setdefault(number, [])
                receipts = session.messages.receipts.setdefault(number, {})
                shown: set[str] = set()
                for _ in range(int(WAIT_LIMIT / 0.1)):
                    for state in [s for s in states if s not in shown and s != "stored"]:
                        shown.add(state)
                        print(f"voice message #{number}: {state}", flush=True)
                    for member, member_states in receipts.items():  # a message to a group: per member
                        for state in [s for s in member_states if f"{member} {s}" not in shown]:
                            shown.add(f"{member} {state}")
                            print(f"voice message #{number}: {state} by {member}", flush=True)
                    if wanted in states or any(wanted in m for m in receipts.values()):
                        break
                    yield task.deferLater(reactor, 0.1, lambda: None)
                else:
                    raise TimeoutError(f"voice message #{number} not {wanted} within {WAIT_LIMIT:.0f} s")
        finally:
            session.stop()

    return _react(go)


def _play(pcm: bytes, device: str | None) -> None:
    import numpy as np
    import sounddevice as sd

    sd.play(np.frombuffer(pcm, dtype=np.int16), 48000, device=device, blocking=True)


def inbox_main(args: Any) -> int:
    @defer.inlineCallbacks
    def go(reactor: Any) -> Any:
        session = _session(args, reactor)
        try:
            yield session.start()
            notices = yield session.messages.refresh()
            if not notices:
                print(f"no voice messages for {args.uri}")
            for notice in notices:
                when = datetime.fromtimestamp(notice.sent, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
                to = f"  (to {notice.group})" if notice.group else ""
                print(f"#{notice.id:<6} {when}  {notice.seconds:5.1f} s  {notice.sender:<32} {notice.state}{to}")
            chosen = [n for n in notices if args.play in (n.id, -1)][-1:] if args.play is not None else []
            for notice in notices if args.wav_dir else chosen:
                opened = yield session.messages.open(notice.id)
                if args.wav_dir:
                    Path(args.wav_dir).mkdir(parents=True, exist_ok=True)
                    print(f"  → {write_wav(Path(args.wav_dir) / f'message-{notice.id}.wav', opened.pcm)}")
                if notice in chosen:
                    print(f"playing #{notice.id} from {opened.sender}", flush=True)
                    yield threads.deferToThread(_play, opened.pcm, args.output_device)
                yield session.messages.played(notice.id)
            if args.play is not None and not chosen:
                raise ValueError(f"no voice message {args.play} for {args.uri}")
        finally:
            session.stop()

    return _react(go)


def add_commands(sub: Any, launch: Any) -> None:
    """``message`` and ``messages`` under ptt-client's subcommands (``launch(args)`` opens and checks the keystore
    and the server info, and sets ``args.uri``: ``client.cli``'s checks, as for ``talk``)."""

    def launched(main: Any) -> Any:
        def command(args: Any) -> int:
            args.keystore_opened, args.server = launch(args)
            return int(main(args))

        return command

    send = sub.add_parser("message", help="leave a voice message for a user (kept until they connect)")
    send.add_argument("to", help="the addressee, e.g. sip:bob@example.org")
    source = send.add_mutually_exclusive_group()
    source.add_argument("--wav", help="the message from a 48 kHz mono 16-bit WAV file (default: the microphone)")
    source.add_argument("--seconds", type=float, help="record this long from the microphone (default: ENTER stops)")
    send.add_argument("--wait", choices=("delivered", "played"), help="stay until the message is delivered/played")
    send.add_argument("--input-device", help="microphone (name or part of it; default: the system's)")
    inbox = sub.add_parser("messages", help="list, play or save the voice messages left for you")
    inbox.add_argument("--play", type=int, metavar="ID", help="play message ID (-1: the newest) on the speaker")
    inbox.add_argument("--wav-dir", help="write each message to DIR/message-ID.wav")
    inbox.add_argument("--output-device", help="speaker (name or part of it; default: the system's)")
    for parser, main in ((send, send_main), (inbox, inbox_main)):
        parser.add_argument("--uri", help="your identity (default: the keystore's, or uri in client.toml)")
        parser.add_argument("--server-info", help="the server's client-info file (or server_info in client.toml)")
        parser.set_defaults(func=launched(main))
