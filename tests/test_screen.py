"""The talk screen's layout (client.screen), the key expiry warning (client.tui.keys_text), client.toml parsing
(client.config) and the PTT button's input events (ptt.inputevents), without a terminal."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from client import config
from client.buttons import parse_devices
from client.errors import Exit, UserError
from client.screen import GroupRow, ScreenView, layout
from client.tui import keys_text
from ptt.inputevents import EV_KEY, PRESS, RELEASE, REPEAT, InputEvent, PttButton, encode, key_code
from ptt.ts33180 import period_bounds


def view(count: int = 2, selected: int = 1, **changes: object) -> ScreenView:
    rows = [GroupRow(i, f"group-{i}", i == selected, "idle", "", "") for i in range(1, count + 1)]
    fields: dict[str, object] = dict(
        identity="sip:alice@example.org", connected=True, keys="to 2030-01-01 00:00", keys_warning="",
        clock="12:00:00", groups=rows, mic_level_db=-30.0, audio="running", devices="in: default · out: default",
        ptt_key="SPACE", message="", events=[f"12:00:{i:02} event {i}" for i in range(40)],
    )  # fmt: skip
    fields.update(changes)
    return ScreenView(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("width", "height"), [(80, 24), (200, 50), (80, 16), (120, 40)])
def test_every_line_fits_the_screen(width: int, height: int) -> None:
    lines = layout(view(), width, height)
    assert len(lines) == height and all(len(text) == width for text, _ in lines)
    text = "\n".join(t for t, _ in lines)
    for field in ("alice@example.org", "[connected]", "keys to", "12:00:00", "group-1", "group-2", "mic [", "-30 dB",
                  "audio running", "PTT SPACE", "out: default", "q quit"):  # fmt: skip
        assert field in text, (field, width, height)
    assert "event 39" in text  # the newest events, the oldest scroll away
    assert "event 0\n" not in text


def test_many_groups_keep_the_selected_one_in_view() -> None:
    lines = [t for t, _ in layout(view(count=9, selected=8), 80, 16)]
    assert any("group-8" in line and line.startswith(">8") for line in lines)
    assert lines[-1].strip().endswith("q quit")


def test_alerts_talking_and_warnings_are_styled() -> None:
    rows = [
        GroupRow(1, "fire", True, "granted", "sip:alice@example.org", "", talking=True),
        GroupRow(2, "ems", False, "taken", "sip:bob@example.org", "EMERGENCY bob since 12:03:04"),
    ]
    lines = layout(view(groups=rows, keys_warning="keys run out in 2 d: run 'ptt-client provision'"), 80, 24)
    assert lines[1][1] == "warn" and "keys run out in 2 d" in lines[1][0]
    talking = next((t, s) for t, s in lines if "fire" in t)
    emergency = next((t, s) for t, s in lines if " ems " in t)
    assert "TALKING" in talking[0] and talking[1] == "talking"
    assert "EMERGENCY bob since 12:03:04" in emergency[0] and emergency[1] == "alert"
    assert "sip:" not in talking[0]  # the scheme says nothing to a field user


def test_help_replaces_the_event_log() -> None:
    text = "\n".join(t for t, _ in layout(view(help=True), 80, 24))
    assert "── keys" in text and "imminent peril" in text and "event 39" not in text


def keystore_client(periods: list[int], key_period: int) -> SimpleNamespace:
    domain = SimpleNamespace(key_period=key_period, key_period_offset=0)
    keystore = SimpleNamespace(
        periods=lambda uri: periods, enrolment=SimpleNamespace(certificate=SimpleNamespace(domain=lambda: domain))
    )
    return SimpleNamespace(session=SimpleNamespace(keystore=keystore, uri="sip:alice@example.org"))


def test_key_expiry_is_warned_ahead() -> None:
    month = 30 * 86400
    _, end = period_bounds(1000, month, 0)
    # current and next period held: nothing to say
    assert keys_text(keystore_client([999, 1000], month), end - month - 86400)[1] == ""
    # only the current one, ending in 3 days: warned
    until, warning = keys_text(keystore_client([1000], month), end - 3 * 86400)
    assert until.startswith("to ") and "keys run out in 3 d" in warning and "provision" in warning
    assert "EXPIRED" in keys_text(keystore_client([1000], month), end + 1)[0]
    # a short key period (tests): warned when the next period's keys are missing
    _, short_end = period_bounds(50, 120, 0)
    assert keys_text(keystore_client([49, 50], 120), short_end - 150)[1] == ""
    assert "run out in" in keys_text(keystore_client([49], 120), short_end - 150)[1]


def test_client_toml(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_text('keystore = "alice.ks"\nmonitor = "sip:ems@example.org"\nuri = "sip:alice@example.org"\n')
    settings = config.load(str(path))
    assert settings.values == {
        "keystore": str(tmp_path / "alice.ks"),  # relative to the file
        "monitor": ["sip:ems@example.org"],
        "uri": "sip:alice@example.org",
    }
    args = SimpleNamespace(uri="sip:bob@example.org", keystore=None, monitor=None)
    settings.apply(args)
    assert args.uri == "sip:bob@example.org" and args.keystore == str(tmp_path / "alice.ks")
    path.write_text('uri = "sip:alice@example.org"\n\ngroup = 7\n')
    with pytest.raises(UserError, match=r"client.toml:3: group must be a non-empty string") as error:
        config.load(str(path))
    assert error.value.code == Exit.USAGE


def test_a_button_is_pressed_and_released_once_each() -> None:
    button = PttButton(key_code("KEY_F13"))
    records = [
        InputEvent(1.0, EV_KEY, 30, PRESS),  # another key
        InputEvent(1.1, EV_KEY, 183, PRESS),
        InputEvent(1.2, EV_KEY, 183, REPEAT),
        InputEvent(1.3, 0, 0, 0),  # SYN_REPORT
        InputEvent(1.4, EV_KEY, 183, PRESS),  # a second press without a release: nothing new
        InputEvent(2.0, EV_KEY, 183, RELEASE),
    ]
    data = b"".join(encode(r) for r in records)
    # fed in odd pieces: a read may end inside a record
    edges = [edge for i in range(0, len(data), 7) for edge in button.feed(data[i : i + 7])]
    assert edges == [True, False]
    assert button.feed(encode(InputEvent(3.0, EV_KEY, 183, PRESS))) == [True]
    assert button.lost() == [False] and button.lost() == []  # unplugged while held: released


def test_input_devices_are_listed() -> None:
    listing = (
        'I: Bus=0003 Vendor=0c45 Product=7403\nN: Name="USB Foot Switch"\nH: Handlers=kbd event7\nB: KEY=1f0000 0 0\n\n'
        'I: Bus=0019\nN: Name="Power Button"\nH: Handlers=kbd event0\nB: KEY=10000000000000 0\n\n'
        'I: Bus=0011\nN: Name="PC Speaker"\nH: Handlers=kbd\nB: SND=6\n'
    )
    devices = parse_devices(listing)
    assert [(d.name, d.path, d.has_keys) for d in devices] == [
        ("USB Foot Switch", "/dev/input/event7", True),
        ("Power Button", "/dev/input/event0", True),
        ("PC Speaker", "", False),
    ]
