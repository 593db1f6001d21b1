"""Bounded parsing: the bounded JSON decoder's limits, and a short mutation fuzz of every untrusted-input parser
(``tests/fuzzing.py``; ``scripts/fuzz`` runs the long one). Any exception but the parser's own error fails."""

from __future__ import annotations

import json
import time

import pytest

from ptt.boundedjson import DEFAULT_LIMITS, JsonLimitError, JsonLimits, loads
from tests import fuzzing, fuzzing_server

FAST_COUNT = 2_000


@pytest.mark.parametrize("parser", sorted(fuzzing.TARGETS))
def test_short_fuzz_finds_nothing(parser: str) -> None:
    report = fuzzing.fuzz(parser, FAST_COUNT, seed=7)
    assert report.other == 0, fuzzing.format_reports([report])
    assert report.inputs == FAST_COUNT
    assert report.accepted > 0  # some mutations must get through, or the deep paths are never reached
    if parser != "relay":  # the relay never refuses: it drops and counts
        assert report.refused > 0


def test_the_relay_target_has_a_bound_member() -> None:
    """Whatever PTTJ format the tree speaks, the relay fuzz reaches the member's paths."""
    from ptt.relaycore import Binding, RelayConfig, RelayCore

    core = RelayCore(RelayConfig())
    assert fuzzing_server._relay_member(core, Binding("sip:g@example.org", "sip:a@example.org", 7), ("192.0.2.1", 1))


def test_the_fuzzer_finds_the_unbounded_json_of_issue_12(monkeypatch: pytest.MonkeyPatch) -> None:
    """With plain json.loads behind the control frames, the fuzzer finds the RecursionError again."""

    def unbounded(data: bytes, limits: JsonLimits = DEFAULT_LIMITS) -> object:
        try:
            return json.loads(bytes(data).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise JsonLimitError(str(exc)) from None

    monkeypatch.setattr("ptt.boundedjson.loads", unbounded)
    report = fuzzing.fuzz("control", 5_000, seed=1)
    assert report.other > 0 and "RecursionError" in report.findings[0].error


# --- ptt.boundedjson ---


@pytest.mark.parametrize(
    "text",
    [
        '{"a": [1, 2.5, -3e2, true, false, null, "x\\"y\\u00e9"]}',
        "[]",
        "{}",
        '"\\ud83d\\ude00"',
        " 7 ",
        "[" * 32 + "]" * 32,
    ],
)
def test_valid_json_parses_as_json_loads_does(text: str) -> None:
    assert loads(text) == json.loads(text)
    assert loads(text.encode()) == json.loads(text)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[" * 50_000, "nested deeper than 32"),
        ('{"a":' * 33 + "1" + "}" * 33, "nested deeper than 32"),
        ("[" * 33 + "]" * 33, "nested deeper than 32"),
        ("[" + "1," * 10_000 + "1]", "more than 10000 items"),
        ('"' + "x" * (64 * 1024 + 1) + '"', "longer than 65536"),
        ("1" * 65, "number at character 0 longer than 64"),
        ("[" + "1" * 5000 + "]", "longer than 64"),
        (" " * (256 * 1024 + 1), "exceeds"),
        ("NaN", "NaN is not a JSON number"),
        ("[Infinity]", "Infinity"),
        ("-Infinity", "Infinity"),
        ("1e999", "overflows"),
        ('{"a": 1, "a": 2}', "duplicate key 'a'"),
        ('"\\ud800"', "lone surrogate"),
        ('{"\\udfff": 1}', "lone surrogate"),
        ('"' + '\\"' * 100_000, "unterminated JSON string"),
        ("]", "unbalanced"),
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ("[1] [2]", "not valid JSON"),
    ],
)
def test_refusals(text: str, words: str) -> None:
    started = time.monotonic()
    with pytest.raises(JsonLimitError, match=words.replace("[", r"\[")):
        loads(text)
    assert time.monotonic() - started < 0.5  # linear: no input of 256 KiB takes long


def test_bytes_must_be_utf8_and_other_types_are_refused() -> None:
    with pytest.raises(JsonLimitError, match="not UTF-8"):
        loads(b'"\xff"')
    with pytest.raises(JsonLimitError, match="must be str or bytes"):
        loads(7)  # type: ignore[arg-type]


def test_limits_are_the_callers() -> None:
    tight = JsonLimits(max_size=100, max_depth=2, max_items=3, max_string=4, max_number=3)
    assert loads('[[1, 2, 3], {"abcd": 123}]', tight) == [[1, 2, 3], {"abcd": 123}]
    for text, words in [
        ("[[[1]]]", "deeper than 2"),
        ("[1, 2, 3, 4]", "more than 3"),
        ('["abcde"]', "longer than 4"),
        ("[1234]", "longer than 3"),
        ("[" + " " * 100 + "]", "exceeds 100"),
    ]:
        with pytest.raises(JsonLimitError, match=words):
            loads(text, tight)
