"""The README's screenshot of the talk screen, captured from a real run: a KMS and a server on 127.0.0.1, Alice and
Bob in ``ptt-client talk`` on virtual audio devices at 80x24, Alice talking; Bob's screen is written as text.

  .venv/bin/python -m tests.talk_screenshot docs/talk-screen.txt
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from bench.harness import start_system, stop_system
from tests.audio_harness import VirtualAudio
from tests.terminal import SOCKET, open_talk, stop_server


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/talk-screen.txt")
    with tempfile.TemporaryDirectory() as work:
        system = start_system(Path(work) / "system")
        try:
            with VirtualAudio(["alice", "bob"], Path(work) / "pulse") as audio:
                alice = open_talk(system, audio, "alice", 80, 24)
                bob = open_talk(system, audio, "bob", 80, 24)
                bob.until(lambda text: "audio running" in text, what="audio running")
                alice.keys("Space")
                bob.until(lambda text: "alice@example.org talks" in text, what="Alice talking")
                time.sleep(0.5)
                out.write_text(bob.text().rstrip() + "\n")
                alice.keys("Space")
                alice.stop()
                bob.stop()
        finally:
            stop_system(system)
            stop_server(SOCKET)
    print(f"the talk screen written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
