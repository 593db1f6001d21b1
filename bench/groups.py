"""Server memory with many idle groups (issue 19): RSS of a process holding what the group server holds for N groups
of M members created through its own path (``bench/groupserver.py``), and the creation time per group.

Each repeat starts a fresh process; printed are min/median/max over the repeats of the RSS empty, at the
checkpoints and idle at the end, and of each run's median creation time. The reference, measured in the same
invocation, is the same process on the code of ``--reference`` (a git revision, exported to a temporary
directory): the code before the caches were bounded.

    .venv/bin/python -m bench.groups [--groups 10000] [--members 10] [--repeats 3] [--reference REV] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = Path(__file__).resolve().parent / "groupserver.py"
RSS_TARGET_MB = 1024.0
TARGET_GROUPS = 10_000


def run_server(tree: Path, groups: int, members: int, checkpoints: Sequence[int]) -> dict[str, dict[str, object]]:
    """One fresh server process on ``tree``'s code; its reports by stage (checkpoints as ``at N``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTT_")}
    env["PYTHONPATH"] = str(tree)
    marks = ",".join(str(c) for c in checkpoints if c < groups)
    out = subprocess.run(
        [sys.executable, str(SERVER), str(groups), str(members), marks],
        env=env,
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    stages: dict[str, dict[str, object]] = {}
    for line in out.splitlines():
        report = json.loads(line)
        name = report["stage"] if report["stage"] != "checkpoint" else f"at {report['groups']}"
        stages[name] = report
    return stages


def export_tree(revision: str, into: Path) -> Path:
    """The code (ptt, server, client) of ``revision``, for the reference process."""
    archive = into / "tree.tar"
    with archive.open("wb") as file:
        subprocess.run(["git", "archive", revision, "ptt", "server", "client"], cwd=ROOT, stdout=file, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def show(label: str, run: dict[str, dict[str, object]]) -> None:
    """One run's RSS by stage, as it ends (a long invocation shows progress)."""
    rss = "  ".join(f"{stage} {run[stage]['rss_mb']}" for stage in run if stage != "interpreter")
    print(f"   run ({label}): RSS MB {rss}", flush=True)


def spread(values: Sequence[float]) -> str:
    return f"min {min(values):8.1f}  median {statistics.median(values):8.1f}  max {max(values):8.1f}"


def summarise(label: str, runs: list[dict[str, dict[str, object]]]) -> dict[str, float]:
    """Print a block of min/median/max lines; returns the medians by stage."""
    print(f"-- {label}: {len(runs)} runs")
    medians: dict[str, float] = {}
    stages = [s for s in runs[0] if s != "interpreter"]
    for stage in stages:
        values = [float(str(run[stage]["rss_mb"])) for run in runs]
        medians[stage] = statistics.median(values)
        groups = runs[0][stage]["groups"]
        print(f"   RSS {stage:<10} ({groups:>6} groups)  MB  {spread(values)}")
    per_run = [statistics.median([float(t) for t in run["idle"]["create_ms"]]) for run in runs]  # type: ignore[attr-defined]
    p90 = [sorted(float(t) for t in run["idle"]["create_ms"])[int(0.9 * len(run["idle"]["create_ms"]))] for run in runs]  # type: ignore[arg-type,attr-defined]
    medians["create_ms"] = statistics.median(per_run)
    print(f"   creation per group, median of a run   ms  {spread(per_run)}")
    print(f"   creation per group, p90 of a run      ms  {spread(p90)}")
    idle, empty = medians["idle"], medians["empty"]
    count = int(str(runs[0]["idle"]["groups"]))
    medians["per_group_kb"] = (idle - empty) * 1024 / max(1, count)
    print(f"   (idle - empty) / groups: {medians['per_group_kb']:.1f} KB per group")
    return medians


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=TARGET_GROUPS)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference", default="", help="git revision to measure too (default: none)")
    parser.add_argument("--reference-groups", type=int, default=1000, help="groups in each reference run")
    parser.add_argument("--quick", action="store_true", help="1000 groups, reference 200 (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.groups, args.reference_groups = min(args.groups, 1000), min(args.reference_groups, 200)
    checkpoints = [10, 50, 100, 1000]
    print(f"groups benchmark: {args.groups} groups of {args.members}, {args.repeats} runs, {os.cpu_count()} cores")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    started = time.monotonic()
    ours: list[dict[str, dict[str, object]]] = []
    reference: list[dict[str, dict[str, object]]] = []
    with tempfile.TemporaryDirectory(prefix="ptt-bench-groups-tree-") as tmp:
        old = export_tree(args.reference, Path(tmp)) if args.reference else None
        for _ in range(args.repeats):  # interleaved: both see the same machine load
            if old is not None:
                reference.append(run_server(old, args.reference_groups, args.members, checkpoints))
                show("reference", reference[-1])
            ours.append(run_server(ROOT, args.groups, args.members, checkpoints))
            show("this tree", ours[-1])
    if reference:
        ref = summarise(f"reference {args.reference} ({args.reference_groups} groups)", reference)
    now = summarise(f"this tree ({args.groups} groups)", ours)
    if reference:
        for stage in ("empty", "at 1000", "idle"):
            if stage in ref and stage in now:
                print(f"   {stage}: {now[stage]:.1f} MB vs reference {ref[stage]:.1f} MB")
    verdict = "ok" if now["idle"] <= RSS_TARGET_MB else "MISSED"
    note = "" if args.groups >= TARGET_GROUPS else f" (only {args.groups} groups: the target is at {TARGET_GROUPS})"
    print(f"idle RSS {now['idle']:.1f} MB  target <= {RSS_TARGET_MB:.0f} MB  {verdict}{note}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
