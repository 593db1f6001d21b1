"""The KPI benchmark's pure parts (bench/kpistats.py, the scripts and signal of bench/kpi.py): pairing events with
what followed them, the statistics and the table. The benchmark itself runs real processes for minutes: not here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import kpistats
from bench.kpi import BEEP_BAND, TONE_BAND, Plan, mouth_signal, scripts
from bench.voice import onsets
from tests.audio_harness import SAMPLE_RATE


def test_first_after_takes_the_first_time_before_the_next_event_and_the_limit() -> None:
    events = [10.0, 20.0, 30.0, 40.0]
    times = [9.0, 10.2, 10.5, 29.0, 30.1, 45.5]
    delays, missed = kpistats.first_after(events, times, limit=5.0)
    assert delays == pytest.approx([0.2, 0.1])
    # 20: nothing within 5 s (29 is past the limit); 40: 45.5 is past it too
    assert missed == 2


def test_first_after_does_not_give_one_time_to_an_earlier_event_past_the_next() -> None:
    delays, missed = kpistats.first_after([1.0, 2.0], [2.5], limit=10.0)
    assert delays == pytest.approx([0.5])  # 2.5 belongs to the event at 2.0, not to the one at 1.0
    assert missed == 1


def test_granted_and_mark_times_read_the_client_report() -> None:
    floor: list[dict[str, object]] = [
        {"kind": "GRANTED", "t": 3.5},
        {"kind": "IDLE", "t": 4.0},
        {"kind": "GRANTED"},  # an older report without times
        {"kind": "GRANTED", "t": 1.25},
    ]
    assert kpistats.granted_times(floor) == [3.5, 1.25]
    marks = [{"step": "join", "t": 7.0}, {"step": "call", "t": 1.0}, {"step": "join", "t": 2.0}]
    assert kpistats.mark_times(marks, "join") == [2.0, 7.0]
    assert kpistats.mark_times(marks, "hangup") == []


def test_samples_pool_the_runs_and_spread_their_medians() -> None:
    samples = kpistats.Samples()
    samples.add_run([10.0, 20.0, 30.0])
    samples.add_run([100.0], missed=2)
    samples.add_run([])
    assert samples.pooled == [10.0, 20.0, 30.0, 100.0]
    assert samples.run_p50s() == [20.0, 100.0]
    row = samples.row("kpi1", "group")
    assert "(2 missed)" in row and " 4 " in row and "ok" in row
    late = kpistats.Samples()
    late.add_run([100.0, 400.0])
    assert late.row("kpi4", "emergency").split()[-1] == "MISSED"  # p95 385 ms > 350 ms


def test_table_has_every_kpi_and_call_type_and_says_what_does_not_apply() -> None:
    results = kpistats.Results()
    results.get("group", "kpi1").add_run([1.0, 2.0])
    results.not_applicable[("private", "kpi4")] = "not applicable: two parties"
    lines = results.table(runs=1)
    body = lines[2:]
    assert len(body) == len(kpistats.KPIS) * len(kpistats.CALL_TYPES)
    assert any("private" in line and "not applicable: two parties" in line for line in body)
    assert any("emergency" in line and "nothing measured" in line for line in body)


def test_scripts_use_the_talk_client_steps_for_each_call_type(tmp_path: Path) -> None:
    plan = Plan(runs=1, bursts=2, entries=3)
    done = tmp_path / "done"
    group = scripts("group", plan, done)
    assert group["alice"].count("talk ") == 1 + 2 and "emergency" not in group["alice"]
    assert group["carol"].count("; join;") == 3 and group["carol"].endswith(f"wait-file {done}")
    emergency = scripts("emergency", plan, done)
    assert emergency["alice"].count("emergency-talk ") == 3
    private = scripts("private", plan, done)
    assert private["alice"].count("call sip:bob@example.org; talk 1.2; hangup;") == 2
    assert private["bob"] == private["carol"] == f"wait-file {done}"
    assert plan.long_talk < 30.0  # under the arbiter's burst limit (T2)
    assert Plan(entries=100).long_talk < 30.0


def test_mouth_signal_has_the_tone_throughout_and_beeps_found_in_their_band() -> None:
    samples = mouth_signal(3.0, np.random.default_rng(0))
    assert len(samples) == 3 * SAMPLE_RATE and float(np.abs(samples).max()) < 1.0
    beeps = onsets(samples, BEEP_BAND)
    assert 6 <= len(beeps) <= 11  # 250-400 ms apart over 3 s from 0.3 s
    gaps = np.diff(beeps) / SAMPLE_RATE
    assert gaps.min() > 0.24 and gaps.max() < 0.41
    tone_onsets = onsets(samples, TONE_BAND)
    assert len(tone_onsets) == 1 and tone_onsets[0] < 0.01 * SAMPLE_RATE  # it starts once and never stops
