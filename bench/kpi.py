"""The TS 22.179 MCPTT KPIs on loopback with real clients and real (virtual) audio devices: KPI 1 access time, KPI 2
end-to-end access time, KPI 3 mouth to ear, KPI 4 late call entry — p50/p95 for group, emergency group and private
calls. Targets and where they come from: ``bench/kpistats.py``.

Run with ``.venv/bin/python -m bench.kpi [--runs 3] [--bursts 20] [--entries 10]`` (about 9 minutes; ``--quick``:
one run of 5 bursts, about 1.5 minutes). It starts a private PulseAudio with a virtual mic and speaker per client
(``tests/audio_harness.py``), a KMS and a group server on 127.0.0.1 (``bench/harness.py``), and for each run and
call type three real ``ptt-client talk`` processes (Alice talks, Bob and Carol listen) driven by ``--script``
(``client/app_script.py``: the same code paths as the keys). Alice's mic hears, all the time, a 600 Hz tone and
2 kHz beeps 250-400 ms apart at random (generated audio played into her virtual mic: what she "says"); recorders
(``bench/voice.py --record``) capture her mic source and Bob's and Carol's speaker monitors (what their clients
played), all dated on CLOCK_MONOTONIC.

* group: Alice presses once for a long burst (Carol meanwhile leaves and re-joins the group ``--entries`` times),
  then ``--bursts`` bursts of 1.2 s (``talk``, the SPACE key's path);
* emergency: the same with ``emergency-talk`` (key ``e``: the alert is raised with a call, the floor requested with
  emergency priority once the server has stored the alert; after the burst the alert is cancelled, so every burst is
  a new emergency call);
* private: ``--bursts`` private calls Alice -> Bob, automatic commencement: ``call`` (the PCK I_MESSAGE made, sent,
  checked by Bob, both joined to the call's relay binding), then ``talk 1.2``, ``hangup``.

KPI 1: each press -> the Floor Granted in Alice's client (``presses`` and the ``floor`` log of its report).
KPI 2: each press (private: each ``call`` step, so the call set-up counts) -> the onset of the 600 Hz tone in a
listener's speaker recording (the first audio of that burst played; includes the recorder's own capture latency,
a few ms, so it errs high). The time the client handed that first frame to its audio device is printed too.
KPI 3: per burst, the 2 kHz beeps' onsets in the listener's speaker recording minus in Alice's mic recording,
paired by the lag that lines up at least two of them (``bench.voice.match_delays``); both recordings pass the
virtual devices, so the devices' own buffering counts, as it would on a handset.
KPI 4: each ``join`` of Carol's during the long burst -> the tone's onset in her speaker recording. The media is
SRTP under the group's GMK (always: there is no unencrypted mode), so the target is the "with encryption" one. The
GMK is already on the client (pushed at login, TS 33.180: keys are distributed before a call, not at entry), so
entry is the control-channel join, the relay binding, Floor Taken, SRTP and the jitter buffer's start.
KPI 4 does not apply to private calls: a private call has exactly its two parties from the start, and one that
drops ends the call (``client/privatecalls.py``: the server ends a party's calls when its control channel goes), so
there is no ongoing private call to enter; the callee's entry into a call is inside KPI 2 of private calls.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import kpistats
from bench.harness import System, start_system, stop_system
from bench.voice import (
    BEEP_GAP,
    Floats,
    Processes,
    Recording,
    finish,
    match_delays,
    pcm16,
    recorder,
    talk_client,
    tone,
    wait_for_line,
)
from tests.audio_harness import SAMPLE_RATE, VirtualAudio, write_wav

TONE_BAND = (600.0, 100.0)
BEEP_HZ = 2000.0  # away from the emergency alert tone's 880 / 1320 Hz, which the listeners also play
BEEP_BAND = (BEEP_HZ, 200.0)
BOB = "sip:bob@example.org"
LISTENERS = ("bob", "carol")
KPI2_LIMIT = 4.0  # seconds after a press (or a call) within which the burst must be heard


@dataclass
class Plan:
    runs: int = 3
    bursts: int = 20
    entries: int = 10
    talk: float = 1.2
    gap: float = 0.8
    away: float = 0.3  # late entry: Carol stays out of the group this long
    back: float = 0.7  # and in it this long before leaving again

    @property
    def long_talk(self) -> float:
        # the arbiter's burst limit (T2) is 30 s
        return min(28.0, self.entries * (self.away + self.back + 0.15) + 2.0)

    def seconds(self, call_type: str) -> float:
        """About how long Alice's script takes."""
        bursts = self.bursts * (self.talk + self.gap + (0.5 if call_type == "private" else 0.1))
        return 2.0 + bursts + (0.0 if call_type == "private" else self.long_talk + 1.0)


def scripts(call_type: str, plan: Plan, done: Path) -> dict[str, str]:
    """The three clients' ``--script``s for one call type; the listeners stay until ``done`` exists."""
    stay = f"wait-file {done}"
    if call_type == "private":
        call = f"call {BOB}; talk {plan.talk}; hangup; wait {plan.gap}; "
        return {"alice": "wait 1.5; " + call * plan.bursts + "wait 0.3", "bob": stay, "carol": stay}
    talk = "talk" if call_type == "group" else "emergency-talk"
    alice = f"wait 1.5; {talk} {plan.long_talk:.1f}; wait 1; " + f"{talk} {plan.talk}; wait {plan.gap}; " * plan.bursts
    carol = "wait-talking 30; " + f"leave; wait {plan.away}; join; wait {plan.back}; " * plan.entries + stay
    return {"alice": alice + "wait 0.3", "bob": stay, "carol": carol}


def mouth_signal(seconds: float, rng: np.random.Generator) -> Floats:
    """What Alice's mic hears: a 600 Hz tone all the time, and 20 ms beeps at 2 kHz 250-400 ms apart."""
    samples = tone(600.0, seconds, level=0.25)
    beep = tone(BEEP_HZ, 0.02, level=0.4)
    at = 0.3
    while at + 0.05 < seconds:
        start = round(at * SAMPLE_RATE)
        samples[start : start + len(beep)] += beep
        at += float(rng.uniform(*BEEP_GAP))
    return samples


@dataclass
class Phase:
    """What one call type's run left: the clients' reports and the recordings."""

    reports: dict[str, dict[str, Any]]
    mouth: Recording
    ears: dict[str, Recording]
    wall_to_monotonic: float
    seconds: float


def run_phase(
    processes: Processes, system: System, audio: VirtualAudio, tmp: Path, call_type: str, plan: Plan, run: int
) -> Phase:
    name = f"{call_type}-{run}"
    done = tmp / f"done-{name}"
    steps = scripts(call_type, plan, done)
    expected = plan.seconds(call_type)
    feed = write_wav(tmp / f"mouth-{name}.wav", pcm16(mouth_signal(1.5 * expected + 20, np.random.default_rng(run))))
    mouth = recorder(processes, audio, "micalice", tmp / f"mouth-{name}.npz")
    ears = {u: recorder(processes, audio, f"spk{u}.monitor", tmp / f"ear-{u}-{name}.npz") for u in LISTENERS}
    for process in (mouth, *ears.values()):
        wait_for_line(process, "ready", timeout=15.0)
    started = time.monotonic()
    listeners = {u: talk_client(processes, system, audio, u, steps[u]) for u in LISTENERS}
    for process in listeners.values():
        wait_for_line(process, "connected as", timeout=60.0)
    mic = audio.play_into_mic("alice", feed)
    alice = talk_client(processes, system, audio, "alice", steps["alice"])
    try:
        out, _ = alice.communicate(timeout=expected * 3 + 120)
        if alice.returncode != 0:
            raise RuntimeError(f"Alice's client failed ({call_type}): {out[-3000:]}")
        done.touch()
        for user, process in listeners.items():
            out, _ = process.communicate(timeout=60)
            if process.returncode != 0:
                raise RuntimeError(f"{user}'s client failed ({call_type}): {out[-3000:]}")
    finally:
        done.touch()
        mic.terminate()
        mic.wait(10)
    time.sleep(0.3)
    for process in (mouth, *ears.values()):
        finish(process)
    reports = {u: json.loads((system.root / f"{u}-talk.json").read_text()) for u in ("alice", *LISTENERS)}
    return Phase(
        reports,
        Recording.load(tmp / f"mouth-{name}.npz"),
        {u: Recording.load(tmp / f"ear-{u}-{name}.npz") for u in LISTENERS},
        time.monotonic() - time.time(),
        time.monotonic() - started,
    )


def heard_after(ear: Recording, events: list[float], limit: float, shift: float) -> tuple[list[float], int]:
    """Per event (``time.time()``), the first onset of the tone in ``ear`` after it, before the next event and
    within ``limit`` s: the delays (s) and how many events had none."""
    delays: list[float] = []
    missed = 0
    for i, event in enumerate(events):
        end = min(event + limit, events[i + 1] if i + 1 < len(events) else float("inf"))
        onsets = ear.onset_times(event + shift, end + shift, TONE_BAND)
        if onsets:
            delays.append(onsets[0] - shift - event)
        else:
            missed += 1
    return delays, missed


def beep_delays(mouth: Recording, ear: Recording, presses: list[float], talk: float, shift: float) -> list[float]:
    """Mouth to ear of the beeps Alice said in each burst (press .. press + talk) and the listener heard."""
    delays: list[float] = []
    for press in presses:
        at = press + shift
        spoken = mouth.onset_times(at, at + talk, BEEP_BAND)
        heard = ear.onset_times(at, at + talk + 0.8, BEEP_BAND)
        delays += match_delays(spoken, heard, min_segment=2)
    return delays


def ms(values: list[float]) -> list[float]:
    return [v * 1e3 for v in values]


@dataclass
class Extras:
    """Figures printed beside the table: the clients' own view of KPI 2 and KPI 4, and checks."""

    client_kpi2: dict[str, list[float]] = field(default_factory=dict)
    client_kpi4: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def analyse(call_type: str, phase: Phase, plan: Plan, results: kpistats.Results, extras: Extras) -> None:
    alice = phase.reports["alice"]
    shift = phase.wall_to_monotonic
    presses = sorted(float(p) for p in alice["presses"])
    delays, missed = kpistats.first_after(presses, kpistats.granted_times(alice["floor"]), 5.0)
    results.get(call_type, "kpi1").add_run(ms(delays), missed)
    private = call_type == "private"
    starts = kpistats.mark_times(alice["marks"], "call") if private else presses
    short = presses if private else presses[1:]  # the first press of a group type is the long burst
    kpi2: list[float] = []
    kpi3: list[float] = []
    kpi2_missed = 0
    for user in ("bob",) if private else LISTENERS:
        heard, missed = heard_after(phase.ears[user], starts, KPI2_LIMIT, shift)
        kpi2 += heard
        kpi2_missed += missed
        kpi3 += beep_delays(phase.mouth, phase.ears[user], short, plan.talk, shift)
        played = [float(s) for s in phase.reports[user]["burst_starts"]]
        extras.client_kpi2.setdefault(call_type, []).extend(ms(kpistats.first_after(starts, played, KPI2_LIMIT)[0]))
    results.get(call_type, "kpi2").add_run(ms(kpi2), kpi2_missed)
    results.get(call_type, "kpi3").add_run(ms(kpi3))
    if private:
        leaked = len(phase.reports["carol"]["burst_starts"])
        if leaked:
            extras.notes.append(f"private: Carol (in neither call) played {leaked} bursts: MEDIA LEAKED")
        return
    carol = phase.reports["carol"]
    joins = kpistats.mark_times(carol["marks"], "join")
    entries, missed = heard_after(phase.ears["carol"], joins, plan.back, shift)
    results.get(call_type, "kpi4").add_run(ms(entries), missed)
    played = [float(s) for s in carol["burst_starts"]]
    extras.client_kpi4.setdefault(call_type, []).extend(ms(kpistats.first_after(joins, played, plan.back)[0]))
    if len(joins) < plan.entries:
        extras.notes.append(f"{call_type}: Carol re-joined {len(joins)} times of {plan.entries}")


def load_text() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def run(plan: Plan) -> tuple[kpistats.Results, Extras]:
    results = kpistats.Results()
    results.not_applicable[("private", "kpi4")] = "not applicable: no ongoing private call to enter (see notes)"
    extras = Extras()
    processes = Processes()
    with tempfile.TemporaryDirectory(prefix="ptt-bench-kpi-") as directory:
        tmp = Path(directory)
        with VirtualAudio(["alice", "bob", "carol"], tmp / "pulse") as audio:
            system: System | None = None
            try:
                system = start_system(tmp / "system")
                for index in range(plan.runs):
                    took = []
                    for call_type in kpistats.CALL_TYPES:
                        phase = run_phase(processes, system, audio, tmp, call_type, plan, index)
                        analyse(call_type, phase, plan, results, extras)
                        took.append(f"{call_type} {phase.seconds:.0f} s")
                    print(f"run {index + 1}/{plan.runs}: {', '.join(took)}; load average {load_text()}", flush=True)
            finally:
                processes.stop_all()
                if system is not None:
                    stop_system(system)
    return results, extras


def report(plan: Plan, results: kpistats.Results, extras: Extras) -> list[str]:
    lines = ["", *results.table(plan.runs), ""]
    for name, values in (("KPI 2", extras.client_kpi2), ("KPI 4", extras.client_kpi4)):
        for call_type, found in values.items():
            if found:
                lines.append(
                    f"{name} {call_type:<9} to the first frame the receiving client handed to its audio device "
                    f"(before the device's buffer): p50 {kpistats.percentile(found, 50):6.1f} ms   "
                    f"p95 {kpistats.percentile(found, 95):6.1f} ms   n {len(found)}"
                )
    lines += [
        "notes: real clients (ptt-client talk), real server, relay and virtual audio devices on 127.0.0.1; the "
        "only generated thing is what Alice says (a tone and beeps played into her virtual mic).",
        "  KPI 1/2 per press (private KPI 2: per call, from placing it); KPI 3 per beep heard (several per burst); "
        "KPI 4 per re-join; p95 compared with the target; 'missed' = no Granted / nothing heard in time.",
        "  KPI 4 private: a private call has its two parties from its start and ends when one drops, so there is "
        "no late entry; the callee's entry is inside private KPI 2 (call set-up included).",
        *[f"  {note}" for note in extras.notes],
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--bursts", type=int, default=20, help="bursts (private: calls) per call type and run")
    parser.add_argument("--entries", type=int, default=10, help="late entries per group call type and run")
    parser.add_argument("--quick", action="store_true", help="one run, 5 bursts, 4 entries")
    args = parser.parse_args(argv)
    plan = Plan(1, 5, 4) if args.quick else Plan(args.runs, args.bursts, args.entries)
    print(
        f"MCPTT KPIs (TS 22.179) on loopback: {plan.runs} runs x (group, emergency, private) x {plan.bursts} "
        f"bursts, {plan.entries} late entries; {os.cpu_count()} cores, python {sys.version.split()[0]}; "
        f"load average at start {load_text()}",
        flush=True,
    )
    started = time.monotonic()
    results, extras = run(plan)
    for line in report(plan, results, extras):
        print(line)
    print(f"load average at end {load_text()}; the run took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
