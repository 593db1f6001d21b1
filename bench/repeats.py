"""Repeated runs of one benchmark in one invocation: each figure's min / median / max over the runs, with the
verdict on the median (one run on a shared machine is too noisy to judge a target by)."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One figure a run produces: ``target`` is an upper bound, or a lower one with ``at_least`` (None: for
    information)."""

    name: str
    unit: str
    target: float | None = None
    at_least: bool = False


def load_average() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def summarise(figures: list[Figure], runs: list[dict[str, float | None]]) -> list[str]:
    """One line per figure: min, median and max over the runs that measured it, the target and the verdict."""
    lines = [f"over {len(runs)} runs (load average now {load_average()}):"]
    lines.append(f"  {'figure':<46} {'min':>8} {'median':>8} {'max':>8} {'runs':>5}   target")
    for figure in figures:
        values = [v for run in runs if (v := run.get(figure.name)) is not None]
        if not values:
            lines.append(f"  {figure.name:<46} {'n/a':>8} {'n/a':>8} {'n/a':>8} {0:5d}   not measured")
            continue
        median = statistics.median(values)
        text = (
            f"  {figure.name:<46} {min(values):8.2f} {median:8.2f} {max(values):8.2f} {len(values):5d}   {figure.unit}"
        )
        if figure.target is not None:
            met = median >= figure.target if figure.at_least else median <= figure.target
            text += (
                f"  target {'>=' if figure.at_least else '<='} {figure.target:g}: median {'ok' if met else 'MISSED'}"
            )
        lines.append(text)
    return lines
