"""``ptt-client history GROUP [--play N] [--wav-dir D] [--limit N]`` (issue 17): log in, list the group's recorded
bursts this member may replay (talker, time, length), decrypted here with the member's own archived keys; play
burst N (its id, or -1 for the last) on the speaker, or write every burst as a WAV file.
"""

from __future__ import annotations

import contextlib
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from client.codec import SAMPLE_RATE
from client.history import ReplayedBurst, replay, write_wav


def _line(burst: ReplayedBurst) -> str:
    when = datetime.fromtimestamp(burst.started, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    state = "ok" if burst.pcm and not burst.failed else f"{burst.failed}/{burst.packets} packets not decrypted"
    return f"#{burst.id:<6} {when}  {burst.ended - burst.started:5.1f} s  {burst.talker:<32} {state}"


def _play(burst: ReplayedBurst, device: str | None) -> None:
    import numpy as np
    import sounddevice as sd

    samples = np.frombuffer(burst.pcm, dtype=np.int16)
    sd.play(samples, SAMPLE_RATE, device=device, blocking=True)


def main(args: Any) -> int:
    from client.keystore import Keystore
    from client.session import PttSession, ServerInfo

    keystore = Keystore.open(Path(args.keystore), args.passphrase)
    server = ServerInfo.from_json(Path(args.server_info).read_text())
    outcome = {"code": 0}

    def run(reactor: Any) -> Any:
        session = PttSession(reactor, keystore, args.uri, server)

        @defer.inlineCallbacks
        def go() -> Any:
            try:
                yield session.start()
                bursts = yield replay(session, args.group, args.limit)
                if not bursts:
                    print(f"{args.group}: no recorded bursts for {args.uri}")
                for burst in bursts:
                    print(_line(burst))
                    if args.wav_dir and burst.pcm:
                        Path(args.wav_dir).mkdir(parents=True, exist_ok=True)
                        write_wav(Path(args.wav_dir) / f"burst-{burst.id}.wav", burst.pcm)
                if args.play is not None and bursts:
                    chosen = bursts[-1] if args.play == -1 else next((b for b in bursts if b.id == args.play), None)
                    if chosen is None or not chosen.pcm:
                        raise ValueError(f"burst {args.play} is not among those this member can play")
                    print(f"playing #{chosen.id} from {chosen.talker}", flush=True)
                    _play(chosen, args.output_device)
            except Exception as exc:
                print(f"ptt-client: {exc}", file=sys.stderr, flush=True)
                outcome["code"] = 2
            finally:
                session.stop()

        return go()

    with contextlib.suppress(SystemExit):
        task.react(run, [])
    return outcome["code"]


def add_command(sub: Any, secret: Any) -> None:
    """``history`` under ptt-client's subcommands (``secret`` reads the keystore passphrase)."""

    def cmd_history(args: Any) -> int:
        args.passphrase = secret(args.passphrase_file, "PTT_KEYSTORE_PASSPHRASE", "Keystore passphrase")
        return main(args)

    history = sub.add_parser("history", help="replay a group's recorded bursts (decrypted here, with your keys)")
    history.add_argument("group")
    history.add_argument("--uri", required=True, help="your identity, e.g. sip:alice@example.org")
    history.add_argument("--server-info", required=True, help="the server's client-info file")
    history.add_argument("--limit", type=int, default=20, help="the last N bursts (default 20, at most 200)")
    history.add_argument("--play", type=int, metavar="ID", help="play burst ID (-1: the last) on the speaker")
    history.add_argument("--wav-dir", help="write each burst to DIR/burst-ID.wav")
    history.add_argument("--output-device", help="speaker (name or part of it; default: the system's)")
    history.set_defaults(func=cmd_history)
