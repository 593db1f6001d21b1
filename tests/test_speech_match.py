"""The piecewise speech comparison the audio end-to-end tests use (tests/audio_harness.speech_match)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from tests.audio_harness import normalised_xcorr, speech_match

RATE = 48000


def talk(seconds: float = 4.0, seed: int = 7) -> npt.NDArray[np.float64]:
    """Speech-like test signal: noise shaped by a syllable-rate envelope with pauses."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    syllables = np.clip(np.sin(2 * np.pi * 3.1 * t), 0, None) * (np.sin(2 * np.pi * 0.4 * t) > -0.6)
    voice = np.convolve(rng.normal(0, 1, n), np.hanning(24), mode="same")  # low-pass: a voiced spectrum
    result: npt.NDArray[np.float64] = 8000 * syllables * voice / np.abs(voice).max()
    return result


def heard(signal: npt.NDArray[np.float64], delay_s: float, *, tail_s: float = 1.0) -> npt.NDArray[np.float64]:
    return np.concatenate([np.zeros(int(delay_s * RATE)), signal, np.zeros(int(tail_s * RATE))])


def with_step(signal: npt.NDArray[np.float64], at_s: float, step_s: float) -> npt.NDArray[np.float64]:
    at = int(at_s * RATE)
    return np.concatenate([signal[:at], np.zeros(int(step_s * RATE)), signal[at:]])


def test_the_same_speech_delayed_matches_fully() -> None:
    reference = talk()
    match = speech_match(reference, 0.5 * heard(reference, 1.3), max_lag_s=3)
    assert match.score > 0.999 and abs(match.lag - 1.3) < 1e-3
    assert all(abs(lag - 1.3) < 1e-3 for lag in match.lags)


def test_a_playout_delay_step_is_not_lost_speech() -> None:
    """A jitter buffer growing its delay by a frame mid-burst: the whole-signal correlation collapses, this doesn't."""
    reference = talk()
    recording = heard(with_step(with_step(reference, 1.5, 0.02), 2.8, 0.04), 1.0)
    whole, _ = normalised_xcorr(reference, recording, max_lag_s=3)
    match = speech_match(reference, recording, max_lag_s=3)
    assert whole < 0.8 and match.score > 0.95
    steps = sorted({round(lag - match.lag, 3) for lag in match.lags})
    assert len(steps) == 3 and steps[-1] - steps[0] == pytest.approx(0.06, abs=1e-3)


def test_missing_speech_lowers_the_score() -> None:
    reference = talk()
    recording = heard(reference, 1.0)
    cut = recording.copy()
    cut[int(2.0 * RATE) : int(3.0 * RATE)] = 0.0  # a second of the speech never played
    full, lost = speech_match(reference, recording, max_lag_s=3), speech_match(reference, cut, max_lag_s=3)
    assert full.score > 0.999 and lost.score < 0.85 and lost.worst == 0.0


def test_a_step_beyond_the_drift_allowed_counts_as_lost() -> None:
    reference = talk()
    recording = heard(with_step(reference, 2.0, 0.5), 1.0)  # half a second of delay added: not a jitter step
    assert speech_match(reference, recording, max_lag_s=3).score < 0.7


def test_other_sounds_do_not_match() -> None:
    reference = talk()
    noise = np.random.default_rng(1).normal(0, 3000, len(reference) + 2 * RATE)
    other = heard(talk(seed=99), 1.0)
    assert speech_match(reference, noise, max_lag_s=3).score < 0.1
    assert speech_match(reference, other, max_lag_s=3).score < 0.2


def test_silence_is_refused() -> None:
    with pytest.raises(ValueError):
        speech_match(np.zeros(RATE), talk(), max_lag_s=1)
