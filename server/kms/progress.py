"""A progress report for long CLI runs: a bar redrawn in place on a terminal (done/total, percent, rate, ETA),
plain lines every few seconds otherwise (a log, a pipe). The clock is injectable for tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    whole = max(0, round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class Progress:
    """``update(n)`` after each step of work; ``close()`` at the end. ``done`` counts work from earlier runs (a
    resumed run), which the rate leaves out."""

    BAR = 30

    def __init__(
        self,
        what: str,
        total: int,
        stream: TextIO,
        *,
        done: int = 0,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        line_interval: float = 5.0,
    ) -> None:
        self.what = what
        self.total = total
        self.done = done
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.clock = clock
        self.line_interval = line_interval
        self._start = clock()
        self._base = done
        self._last_draw = float("-inf")
        self._drawn = False

    @property
    def rate(self) -> float:
        """Units per second in this run."""
        elapsed = self.clock() - self._start
        return (self.done - self._base) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        fraction = self.done / self.total if self.total else 1.0
        rate = self.rate
        eta = format_duration((self.total - self.done) / rate) if rate > 0 else "?"
        text = f"{self.what} {self.done}/{self.total} {100 * fraction:5.1f}%  {rate:7.0f}/s  ETA {eta}"
        if self.tty:
            filled = int(self.BAR * fraction)
            text = f"[{'#' * filled}{'.' * (self.BAR - filled)}] " + text
        return text

    def update(self, n: int) -> None:
        self.done += n
        now = self.clock()
        if now - self._last_draw >= (0.1 if self.tty else self.line_interval):
            self._draw()
            self._last_draw = now

    def _draw(self) -> None:
        if self.tty:
            self.stream.write("\r" + self.line() + "\x1b[K")
        else:
            self.stream.write(self.line() + "\n")
        self._drawn = True
        self.stream.flush()

    def close(self) -> None:
        self._draw()
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
