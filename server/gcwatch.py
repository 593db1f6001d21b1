"""Garbage collector pauses of a latency-sensitive process: measured, logged when long, and made rarer.

A full (generation 2) collection walks every tracked object; in a server holding start-up tables, the keystore
and thousands of members that can stop the reactor for tens of milliseconds, right when a floor request needs
it. After start-up the objects that live for the whole run are moved out of the collector's way
(``gc.freeze``), and every pause is timed: one longer than ``SLOW_PAUSE`` is logged (at most once a minute).
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

log = logging.getLogger("ptt.server.gc")

SLOW_PAUSE = 0.010
LOG_EVERY = 60.0


class GcWatch:
    def __init__(self) -> None:
        self.longest = 0.0
        self.count = 0
        self._started = 0.0
        self._last_log = float("-inf")

    def install(self) -> None:
        gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._started = now
            return
        pause = now - self._started
        self.count += 1
        self.longest = max(self.longest, pause)
        if pause >= SLOW_PAUSE and now - self._last_log >= LOG_EVERY:
            self._last_log = now
            log.warning(
                "garbage collection of generation %d paused the process %.1f ms (longest so far %.1f ms)",
                info.get("generation", -1),
                pause * 1e3,
                self.longest * 1e3,
            )


def freeze_start_up_objects() -> int:
    """Collect once, then keep everything alive now out of later collections; returns how many were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
