"""The dispatcher console (issue 15) in a real headless browser (Debian's chromium, Selenium) against a real KMS,
group server, ``ptt-console`` and headless field clients on 127.0.0.1: the page shows a field client coming online
and talking within a second; the dispatcher holds the talk button and a field client hears the browser's
microphone (a speech file) with a correlation of at least 0.8; a field client's emergency appears and is
acknowledged; a group created in the page exists for ``ptt-dispatch``; the page refuses strangers."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.harness import GROUP, ROOT, Daemon, System, clean_env, run, start_system, stop_system
from tests.audio_harness import envelope, read_wav, speech_match, speech_wav
from tests.browser import browser_available, chromium

pytestmark = pytest.mark.skipif(not browser_available(), reason="chromium, chromedriver and selenium are needed")

DISPATCHER = "sip:disp@example.org"
BOB, CAROL = "sip:bob@example.org", "sip:carol@example.org"
POLICE = "sip:police@example.org"
SPEECH = (
    "Engine seven to all units, proceed to the north gate, the fire is spreading towards the warehouse, "
    "repeat, north gate, over."
)


class Console:
    def __init__(self, system: System) -> None:
        root = system.root
        self.url_file = root / "console.url"
        self.daemon = Daemon(
            ["-m", "client.console.main", "--keystore", str(root / "disp.ks"), "--passphrase-file",
             str(root / "ks.pw"), "--uri", DISPATCHER, "--server-info", str(root / "server.json"), "--user", "admin",
             "--password-file", str(root / "admin.pw"), "--port", "0", "--url-file", str(self.url_file)],
            "ready: open",
        )  # fmt: skip
        self.daemon.start()
        self.url = self.url_file.read_text().strip()
        self.base = self.url.partition("/?")[0]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    root = tmp_path_factory.mktemp("console")
    running = start_system(root, outsiders=("disp",), group_grants=("sip:rescue@example.org", POLICE))
    added = running.dispatch("group", "add-member", GROUP, DISPATCHER)  # the pre-emptive role needs an admin
    assert added.returncode == 0, added.stderr
    police = running.dispatch("group", "create", "police", "--member", CAROL, "--member", DISPATCHER)
    assert police.returncode == 0, police.stderr
    yield running
    stop_system(running)


@pytest.fixture(scope="module")
def console(system: System) -> Iterator[Console]:
    running = Console(system)
    yield running
    running.daemon.stop()


@pytest.fixture(scope="module")
def microphone(system: System) -> Path:
    return speech_wav(SPEECH, system.root / "speech.wav")


@pytest.fixture(scope="module")
def page(console: Console, microphone: Path) -> Iterator[Any]:
    driver = chromium(microphone)
    driver.get(console.url)
    wait(driver, lambda: driver.execute_script("return document.querySelector('article.group') !== null"))
    yield driver
    driver.quit()


def wait(driver: Any, condition: Any, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    logs = driver.execute_script("return Array.from(document.querySelectorAll('#log li')).map(l => l.textContent)")
    raise AssertionError(f"the page did not get there within {timeout} s; its log: {logs[:15]}")


def trace(driver: Any) -> list[dict[str, Any]]:
    return list(driver.execute_script("return window.pttTrace"))


class FieldClient:
    """A headless field client; the time its session was ready (its ``ready`` line) is noted."""

    def __init__(self, system: System, user: str, script: str, *extra: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "client.headless", "--keystore", str(system.root / f"{user}.ks"),
             "--passphrase-file", str(system.root / "ks.pw"), "--server-info", str(system.root / "server.json"),
             "--uri", f"sip:{user}@example.org", "--script", script, "--report", str(system.root / f"{user}.json"),
             *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env(),
        )  # fmt: skip
        self.ready = 0.0
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if line.startswith("ready"):
                self.ready = time.time()

    def finish(self, timeout: float = 90) -> None:
        assert self.process.wait(timeout) == 0, "".join(self.lines)
        self._reader.join(5)


def test_the_page_shows_a_field_client_online_and_talking_within_a_second(system: System, page: Any) -> None:
    bob = FieldClient(system, "bob", f"join {GROUP}; wait 1; talk 1.5; wait 1")
    bob.finish()
    report = system.report("bob")
    events = trace(page)
    online = next(e["at"] for e in events if e["type"] == "presence" and e.get("uri") == BOB and e["online"])
    talking = next(e["at"] for e in events if e["type"] == "talker" and e.get("uri") == BOB)
    granted = next(f["t"] for f in report["floor"] if f["kind"] == "GRANTED")
    # "ready" comes after the login, the CSK and the stored keys: the page shows the member online before that
    print(f"page: online {1e3 * (online - bob.ready):+.0f} ms from the client's ready, talking "
          f"{1e3 * (talking - granted):.0f} ms after its grant")  # fmt: skip
    assert online - bob.ready < 1.0 and talking - granted < 1.0
    row = page.execute_script(f"return document.querySelector(\"li[data-uri='{BOB}']\").className")
    assert row in ("online", "offline", "joined")  # the burst is over: bob is no longer shown talking
    assert any(e["type"] == "talker" and e.get("uri") is None for e in trace(page))


def test_the_dispatcher_holds_to_talk_and_a_field_client_hears_the_microphone(
    system: System, console: Console, page: Any, microphone: Path
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    go = system.root / "talk-go"
    go.unlink(missing_ok=True)
    heard = system.root / "carol-heard.wav"
    carol = FieldClient(system, "carol", f"join {GROUP}; wait-file {go}; wait 6", "--record-wav", str(heard))
    page.find_element(By.ID, "audio").click()  # starts the page's audio and microphone
    Select(page.find_element(By.ID, "talkgroup")).select_by_value(GROUP)
    wait(page, lambda: page.execute_script(
        "return document.querySelector(`article[data-uri='" + GROUP + "'] .monitor`).checked"))  # fmt: skip
    wait(page, lambda: page.execute_script(
        f"return document.querySelector(\"li[data-uri='{CAROL}']\")?.className === 'joined'"), 30)  # fmt: skip
    time.sleep(1.0)  # the console's own join binds at the relay
    go.touch()
    talk = page.find_element(By.ID, "talk")
    ActionChains(page).click_and_hold(talk).perform()
    wait(page, lambda: "granted" in page.find_element(By.ID, "floor").text, 5)
    time.sleep(3.0)
    ActionChains(page).release(talk).perform()
    wait(page, lambda: "granted" not in page.find_element(By.ID, "floor").text, 5)
    carol.finish()
    recorded = read_wav(heard).astype(np.float64)
    loud = np.flatnonzero(envelope(recorded) > 0.05 * envelope(recorded).max())
    assert len(loud) > 100, "carol heard (almost) nothing"  # more than a second of voice
    voice = recorded[loud[0] * 480 : (loud[-1] + 1) * 480]
    source = read_wav(microphone).astype(np.float64)
    looped = np.concatenate([source, source, source])  # chromium plays the file in a loop from when it opened it
    match = speech_match(voice, looped, max_lag_s=len(looped) / 48000)
    print(f"dispatcher → field client: {len(voice) / 48000:.1f} s of speech, correlation {match.score:.3f}")
    assert match.score >= 0.8


def test_an_emergency_appears_and_is_acknowledged(system: System, page: Any) -> None:
    from selenium.webdriver.common.by import By

    bob = FieldClient(system, "bob", f"join {GROUP}; wait 0.5; emergency; wait 4")
    button = wait(page, lambda: page.find_elements(By.CSS_SELECTOR, f"#alerts .alert[data-uri='{BOB}'] button.ack"))
    assert "EMERGENCY" in page.find_element(By.ID, "alerts").text
    button[0].click()
    wait(page, lambda: "acknowledged by admin" in page.find_element(By.ID, "alerts").text)
    shown = system.dispatch("group", "emergency", "show", GROUP)
    assert "acknowledged" in shown.stdout and "by admin" in shown.stdout, shown.stdout
    assert system.dispatch("group", "emergency", "cancel", GROUP, BOB).returncode == 0
    wait(page, lambda: page.find_element(By.ID, "alerts").text == "")
    bob.finish()
    acks = [a for a in system.report("bob")["alerts"] if a["uri"] == BOB and a.get("acked_by")]
    assert acks and acks[0]["acked_by"] == "admin", system.report("bob")["alerts"]  # the field user was told


def test_the_dispatcher_revokes_a_talkers_floor_from_the_page(system: System, page: Any) -> None:
    """Without the dispatcher role the page says why the revoke did nothing; with it the talker is revoked."""
    from selenium.webdriver.support.ui import Select

    page.find_element("id", "audio").click()  # the page's audio (idempotent when already on)
    Select(page.find_element("id", "talkgroup")).select_by_value(GROUP)
    wait(page, lambda: page.execute_script(
        "return document.querySelector(`article[data-uri='" + GROUP + "'] .monitor`).checked"))  # fmt: skip
    time.sleep(1.0)  # the console's own join binds at the relay

    def log_lines() -> list[str]:
        return list(
            page.execute_script("return Array.from(document.querySelectorAll('#log li')).map(l => l.textContent)")
        )

    def bob_talks_and_the_page_revokes() -> tuple[float, list[dict[str, Any]]]:
        bob = FieldClient(system, "bob", f"join {GROUP}; wait 0.5; talk 5; wait 1")
        talkers = len([e for e in trace(page) if e["type"] == "talker" and e.get("uri") == BOB])
        wait(page, lambda: len([e for e in trace(page) if e["type"] == "talker" and e.get("uri") == BOB]) > talkers)
        clicked = time.time()
        page.find_element("id", "revoke").click()
        bob.finish()
        return clicked, [f for f in system.report("bob")["floor"] if f["kind"] == "REVOKED"]

    _, revoked = bob_talks_and_the_page_revokes()  # the console's identity is a plain member of GROUP
    assert not revoked
    wait(page, lambda: any("pre-empting a talker needs the dispatcher role" in line for line in log_lines()), 5)
    (system.root / "boss.pw").write_text("boss-password-xyz\n")
    added = run("-m", "server.main", "--data", str(system.root / "server"), "dispatcher", "add", "boss", "--role",
                "admin", "--password-file", str(system.root / "boss.pw"))  # fmt: skip
    assert added.returncode == 0, added.stderr

    def as_boss(*args: str) -> subprocess.CompletedProcess[str]:
        return run("-m", "server.dispatch.cli", "--server", f"https://127.0.0.1:{system.dispatch_port}", "--cacert",
                   str(system.root / "server" / "tls-cert.pem"), "--user", "boss", "--password-file",
                   str(system.root / "boss.pw"), *args)  # fmt: skip

    role = as_boss("group", "set-role", GROUP, DISPATCHER, "dispatcher")  # only an admin gives the pre-emptive role
    assert role.returncode == 0 and "is now dispatcher" in role.stdout, role.stderr
    above = as_boss("group", "set-priority", GROUP, DISPATCHER, "200")  # pre-empts only a lower priority
    assert above.returncode == 0, above.stderr
    try:
        clicked, revoked = bob_talks_and_the_page_revokes()
        assert revoked and 0 <= revoked[0]["t"] - clicked < 2.0, (revoked, log_lines()[:10])
        print(f"revoke clicked → talker revoked in {1e3 * (revoked[0]['t'] - clicked):.0f} ms")
    finally:
        as_boss("group", "set-role", GROUP, DISPATCHER, "member")
        as_boss("group", "set-priority", GROUP, DISPATCHER, "100")


def test_a_group_created_in_the_page_exists_for_ptt_dispatch(system: System, page: Any) -> None:
    from selenium.webdriver.common.by import By

    form = page.find_element(By.ID, "create")
    form.find_element(By.NAME, "uri").send_keys("fire")  # taken: the API's refusal is shown
    form.find_element(By.NAME, "name").send_keys("again")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(page, lambda: "refused" in form.find_element(By.CSS_SELECTOR, ".result").text)
    form.find_element(By.NAME, "uri").clear()
    form.find_element(By.NAME, "name").clear()
    form.find_element(By.NAME, "uri").send_keys("rescue")
    form.find_element(By.NAME, "name").send_keys("Rescue team")
    form.find_element(By.NAME, "members").send_keys("alice, bob")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(page, lambda: "created sip:rescue@example.org" in form.find_element(By.CSS_SELECTOR, ".result").text)
    wait(page, lambda: page.find_elements(By.CSS_SELECTOR, "article[data-uri='sip:rescue@example.org']"))
    shown = system.dispatch("group", "show", "rescue")
    assert shown.returncode == 0 and "sip:alice@example.org" in shown.stdout and "Rescue team" in shown.stdout


def test_a_patch_carries_a_talker_into_the_other_group_and_ends_cleanly(system: System, page: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(page.find_element(By.ID, "patch-a")).select_by_value(GROUP)
    Select(page.find_element(By.ID, "patch-b")).select_by_value(POLICE)
    page.find_element(By.ID, "patch").click()
    wait(page, lambda: "patched" in page.find_element(By.ID, "patch-state").text)
    ended = system.root / "patch-ended"
    ended.unlink(missing_ok=True)
    carol = FieldClient(system, "carol", f"join {POLICE}; wait-file {ended}; wait 4")
    wait(page, lambda: page.execute_script(
        f"return document.querySelector(\"article[data-uri='{POLICE}'] li[data-uri='{CAROL}']\")?.className"
        " === 'joined'"), 30)  # fmt: skip
    bob = FieldClient(system, "bob", f"join {GROUP}; wait 1; talk 2; wait 1")
    bob.finish()
    wait(page, lambda: any(e["type"] == "talker" and e["group"] == POLICE and e["uri"] is None
                           and e["at"] > time.time() - 3 for e in trace(page)), 5)  # fmt: skip
    page.find_element(By.ID, "unpatch").click()
    wait(page, lambda: page.find_element(By.ID, "patch-state").text == "no patch")
    ended.touch()
    bob = FieldClient(system, "bob", f"join {GROUP}; wait 1; talk 1; wait 1")
    bob.finish()
    carol.finish()
    floor = system.report("carol")["floor"]
    taken = [f for f in floor if f["kind"] == "TAKEN" and f["party"] == DISPATCHER]
    assert len(taken) == 1, floor  # bob's first burst went on in police through the console, the second did not
    assert any(f["kind"] == "IDLE" and f["t"] > taken[0]["t"] for f in floor)  # the console let the floor go
    assert system.report("carol")["stats"]["media_in"] > 50


def test_the_page_refuses_strangers(console: Console) -> None:
    def status(url: str, headers: dict[str, str] | None = None) -> int:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    token = console.url.partition("token=")[2]
    assert status(console.base + "/") == 403  # no cookie
    assert status(console.base + "/?token=wrong") == 403
    assert status(console.base + "/api/groups", {"Cookie": "ptt_console=guess"}) == 403
    cookie = {"Cookie": f"ptt_console={token}"}
    assert status(console.base + "/api/groups", cookie) == 403  # no X-PTT-Console header: a cross-site form
    assert status(console.base + "/api/groups", {**cookie, "X-PTT-Console": "1"}) == 200
    assert status(console.base + "/api/events", {**cookie, "X-PTT-Console": "1"}) == 404
    rebinding = {**cookie, "Host": "evil.example:80"}
    assert status(console.base + "/", rebinding) == 403
    socket = {**cookie, "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Origin": "http://evil.example"}  # fmt: skip
    assert status(console.base + "/ws", socket) == 403
