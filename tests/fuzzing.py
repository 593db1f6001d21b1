"""Mutation fuzzing of every parser of untrusted input, with one report per parser.

Each target builds real, valid samples (the same captures and vectors the unit tests build) and a ``run(data)`` that
returns True (accepted) or False (refused with the parser's own error); any other exception is a finding. Inputs are
mutated seeds: bit flips, octets set to edge values, truncation, insertion, deletion, duplication, splices of two
seeds, length-like fields set huge, and runs of nesting (``[``, ``{"a":``, ``<a>``) or hostile tokens. A run is
deterministic for its seed; a finding is printed with a one-line reproducer::

    .venv/bin/python -m tests.fuzzing [COUNT] [PARSER...]        # default 100 000 per parser, every parser
    .venv/bin/python -m tests.fuzzing --replay PARSER HEX         # one input again, with its traceback

``scripts/fuzz`` runs the first; ``tests/test_fuzz_parsers.py`` a short run of each in the normal suite.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import multiprocessing
import os
import random
import sys
import time
import traceback
from collections.abc import Callable, Sequence

from tests.fuzzing_base import Finding, Harness, Report, mutate

TARGETS: dict[str, str] = {
    "emergency": "tests.fuzzing_calls:emergency_harness",
    "privatecall": "tests.fuzzing_calls:privatecall_harness",
    "voicemessage": "tests.fuzzing_calls:voicemessage_harness",
    "control": "tests.fuzzing_server:control_harness",
    "dispatch": "tests.fuzzing_server:dispatch_harness",
    "floor": "tests.fuzzing_server:floor_harness",
    "relay": "tests.fuzzing_server:relay_harness",
    "kms": "tests.fuzzing_keys:kms_harness",
    "adhoc": "tests.fuzzing_keys:adhoc_harness",
    "mikey": "tests.fuzzing_keys:mikey_harness",
    "idms": "tests.fuzzing_keys:idms_harness",
}
"""Each parser's harness factory as ``module:function``, imported only when that parser is fuzzed."""


def load_harness(parser: str) -> Harness:
    module, _, name = TARGETS[parser].partition(":")
    factory: Callable[[], Harness] = getattr(importlib.import_module(module), name)
    return factory()


# --- running ---------------------------------------------------------------------------------------------------------


def fuzz(parser: str, count: int, seed: int = 1) -> Report:
    """``count`` mutated inputs through one parser, in this process."""

    logging.disable(logging.CRITICAL)  # the dispatcher logs every refusal; findings are reported here
    try:
        return _fuzz(parser, count, seed)
    finally:  # tests that run after this in the same process read the logs
        logging.disable(logging.NOTSET)


def _fuzz(parser: str, count: int, seed: int) -> Report:
    harness = load_harness(parser)
    report = Report(parser)
    rng = random.Random(f"{parser}:{seed}")
    started = time.monotonic()
    for data in harness.seeds:  # every seed must be accepted, or the mutations start from nothing
        if not harness.run(data):
            raise AssertionError(f"{parser}: a seed is refused: {data[:80]!r}")
    for _ in range(count):
        data = harness.mutate(rng) if harness.mutate else mutate(rng, harness.seeds)
        report.inputs += 1
        try:
            if harness.run(data):
                report.accepted += 1
            else:
                report.refused += 1
        except Exception as exc:
            report.other += 1
            if len(report.findings) < 5:
                report.findings.append(Finding(data, f"{type(exc).__name__}: {exc}"[:300], traceback.format_exc()))
    report.seconds = time.monotonic() - started
    return report


def _fuzz_job(job: tuple[str, int, int]) -> Report:
    return fuzz(*job)


def fuzz_parallel(parsers: Sequence[str], count: int, workers: int, seed: int = 1) -> list[Report]:
    """Each parser's ``count`` inputs split into ``workers`` chunks of their own seeds, run in a process pool."""
    chunks = max(1, workers)
    jobs = [(p, count // chunks + (i < count % chunks), seed * 1000 + i) for p in parsers for i in range(chunks)]
    if workers <= 1:
        results = [_fuzz_job(j) for j in jobs]
    else:
        with multiprocessing.get_context("forkserver").Pool(workers) as pool:
            results = pool.map(_fuzz_job, jobs, chunksize=1)
    reports = {p: Report(p) for p in parsers}
    for r in results:
        reports[r.parser].add(r)
    return list(reports.values())


def format_reports(reports: Sequence[Report]) -> str:
    lines = [f"{'parser':10} {'inputs':>9} {'refused':>9} {'accepted':>9} {'other':>6} {'seconds':>8}"]
    for r in reports:
        lines.append(f"{r.parser:10} {r.inputs:9d} {r.refused:9d} {r.accepted:9d} {r.other:6d} {r.seconds:8.1f}")
    for r in reports:
        for f in r.findings:
            lines.append(f"\n{r.parser}: {f.error}")
            lines.append(f"  reproduce: .venv/bin/python -m tests.fuzzing --replay {r.parser} {f.data[:4000].hex()}")
            lines.append("  " + f.trace.strip().splitlines()[-3].strip())
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "args",
        nargs="*",
        metavar="[COUNT] [PARSER...]",
        help=f"inputs per parser (default 100 000); some of {', '.join(TARGETS)} (default: all)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("PTT_FUZZ_WORKERS", 0)) or os.cpu_count() or 1,
        help="processes (default: $PTT_FUZZ_WORKERS or one per core)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--replay", nargs=2, metavar=("PARSER", "HEX"), help="run one input and show its traceback")
    args = parser.parse_args(argv)
    if args.replay:
        name, hex_data = args.replay
        harness = load_harness(name)
        print("accepted" if harness.run(bytes.fromhex(hex_data)) else "refused with the parser's own error")
        return 0
    names = list(args.args)
    count = int(names.pop(0).replace("_", "")) if names and names[0].replace("_", "").isdigit() else 100_000
    unknown = [p for p in names if p not in TARGETS]
    if unknown:
        parser.error(f"unknown parser {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    parsers = names or list(TARGETS)
    print(f"fuzzing {', '.join(parsers)}: {count} inputs each, {args.workers} processes, seed {args.seed}")
    reports = fuzz_parallel(parsers, count, args.workers, args.seed)
    print(format_reports(reports))
    return 1 if any(r.other for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
