"""A hardware PTT button (issue 18): Linux ``input_event`` records fed through a FIFO to ``ptt-client talk
--ptt-key FIFO:KEY_F13`` (this kernel has no uinput) request the floor on the press and release it on the release,
exactly then: repeats and other keys change nothing. Real KMS, server, talk client and a headless listener."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import GROUP, ROOT, clean_env, start_system, stop_system
from ptt.inputevents import EV_KEY, PRESS, RELEASE, REPEAT, InputEvent, encode, key_code

F13 = key_code("KEY_F13")


def records(*events: tuple[int, int, int]) -> bytes:
    now = time.time()
    return b"".join(encode(InputEvent(now, kind, code, value)) for kind, code, value in events)


def test_a_button_press_and_release_take_and_give_back_the_floor(tmp_path: Path) -> None:
    system = start_system(tmp_path / "system")
    fifo = tmp_path / "button"
    os.mkfifo(fifo)
    try:
        bob = system.client("bob", f"join {GROUP}; wait 14")
        alice = subprocess.Popen(
            [sys.executable, "-m", "client.cli", "--keystore", str(system.root / "alice.ks"),
             "--passphrase-file", str(system.root / "ks.pw"), "talk", "--server-info",
             str(system.root / "server.json"), "--ptt-key", f"{fifo}:KEY_F13", "--script", "wait 10",
             "--report", str(tmp_path / "alice.json"), "--quiet"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env(),
        )  # fmt: skip
        assert alice.stdout is not None
        seen = ""
        while "connected as sip:alice@example.org" not in seen:  # (a warning of no sound card may come first)
            line = alice.stdout.readline()
            assert line, seen
            seen += line
        writer = os.open(fifo, os.O_WRONLY)  # once the client reads the button
        time.sleep(1.0)
        os.write(writer, records((EV_KEY, key_code("KEY_A"), PRESS), (EV_KEY, key_code("KEY_A"), RELEASE)))
        time.sleep(0.5)
        pressed = time.time()
        os.write(writer, records((EV_KEY, F13, PRESS), (0, 0, 0)))
        for _ in range(10):  # held: the key auto-repeats
            time.sleep(0.2)
            os.write(writer, records((EV_KEY, F13, REPEAT), (0, 0, 0)))
        released = time.time()
        os.write(writer, records((EV_KEY, F13, RELEASE), (0, 0, 0)))
        time.sleep(1.5)
        os.close(writer)  # the device goes away: nothing is held, nothing happens
        out, _ = alice.communicate(timeout=60)
        assert alice.returncode == 0, out
        assert "Traceback" not in out
        bob.communicate(timeout=60)
    finally:
        stop_system(system)
    report = json.loads((tmp_path / "alice.json").read_text())
    (press,) = report["presses"]
    (release,) = report["releases"]
    assert pressed <= press < pressed + 0.5 and released <= release < released + 0.5, (pressed, press, released)
    granted = [f["t"] for f in report["floor"] if f["kind"] == "GRANTED"]
    assert len(granted) == 1 and press <= granted[0] < press + 1.0, report["floor"]
    heard = system.report("bob")["floor"]
    taken = [f["t"] for f in heard if f["kind"] in ("GRANTED", "TAKEN") and f["party"] == "sip:alice@example.org"]
    idle = [f["t"] for f in heard if f["kind"] == "IDLE" and f["t"] > press]
    assert taken and press <= min(taken) < press + 1.0, heard  # the floor is Alice's from the press ...
    assert idle and release <= idle[0] < release + 1.0, heard  # ... until the release, not a moment longer
    assert all(t < release + 0.5 for t in taken), heard
