"""``scripts/screenshots [DIR]``: PNGs of the dispatcher console's main views (issue 15), taken by headless chromium
from a live system on 127.0.0.1 (KMS, group server, ptt-console, headless field clients): two groups, a member
talking, an emergency raised and then acknowledged, a patch, at 1280x720 and 1920x1080."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from bench.harness import GROUP, start_system, stop_system
from tests.browser import chromium
from tests.test_console_e2e import DISPATCHER, Console, FieldClient

POLICE = "sip:police@example.org"


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "docs/screenshots").resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        system = start_system(Path(scratch), outsiders=("disp",), group_grants=(POLICE,))
        console = None
        clients: list[FieldClient] = []
        try:
            system.dispatch("group", "add-member", GROUP, DISPATCHER)
            created = system.dispatch("group", "create", "police", "--member", "sip:alice@example.org",
                                      "--member", "sip:carol@example.org", "--member", DISPATCHER)  # fmt: skip
            assert created.returncode == 0, created.stderr
            console = Console(system)
            clients = [
                FieldClient(system, "alice", f"join {GROUP}; wait 2; talk 25"),
                FieldClient(system, "bob", f"join {GROUP}; wait 3; request; wait 25"),
                FieldClient(system, "carol", f"join {POLICE}; wait 4; emergency; wait 25"),
            ]
            for size in ((1280, 720), (1920, 1080)):
                driver = chromium(size=size)
                try:
                    driver.get(console.url)
                    time.sleep(2)
                    for group in (GROUP, POLICE):  # the console keeps what the first page chose
                        driver.execute_script(
                            f"const box = document.querySelector(`article[data-uri='{group}'] .monitor`);"
                            "if (!box.checked) box.click();"
                        )
                    shown = "return document.querySelector('#alerts .alert') && document.querySelector('.talker.on')"
                    deadline = time.monotonic() + 30
                    while not driver.execute_script(shown) and time.monotonic() < deadline:
                        time.sleep(0.2)
                    driver.save_screenshot(str(out / f"console-{size[0]}x{size[1]}.png"))
                    if size == (1280, 720):
                        driver.execute_script("document.querySelector('#alerts button.ack')?.click()")
                        driver.execute_script("document.getElementById('patch').click()")
                        time.sleep(1.5)
                        driver.save_screenshot(str(out / "console-acknowledged-patched.png"))
                finally:
                    driver.quit()
        finally:
            for field in clients:
                field.process.terminate()
            if console is not None:
                console.daemon.stop()
            stop_system(system)
    for png in sorted(out.glob("console-*.png")):
        print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
