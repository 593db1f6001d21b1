"""The recorder's writer (issue 17): recorded bursts (``ptt.recording``) go to files under the data directory and
their index to the group store, on a thread of its own, never on the reactor.

The relay hands over completed bursts once a second (``RelayProtocol.drain_bursts``); :meth:`Recorder.submit`
only puts them on a bounded queue. A full queue (a disk or database that cannot keep up) drops the burst: counted
in :attr:`Recorder.stats` and logged at most once every ``LOG_INTERVAL`` seconds with the count, so forwarding is
never held up by storage. Retention runs on the same thread (:meth:`purge`, hourly from the wiring).

Files: ``<directory>/<SHA-256 of the group URI, 16 hex>/<start in ms>-<8 random hex>.pttr``, written to a
temporary name and renamed (a crash leaves no half burst in the index), mode 0600. What is stored is the SRTP as
forwarded: ciphertext under GMKs the server does not hold.

Storage: an Opus packet of 20 ms at 24 kbit/s is ~60 octets + RTP header 12 + AEAD tag 16 + MKI 8 ≈ 96 octets, plus
6 octets of framing: ≈ 102 octets x 50 packets/s ≈ 18 MB per hour of speech per group (bench/recording.py measures it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

from ptt.recording import Burst, encode_burst, parse_burst
from server.groups.recordings import BurstRecord, RecordingStore

__all__ = ["QUEUE_LIMIT", "Recorder", "burst_path"]

log = logging.getLogger("ptt.server.recorder")

QUEUE_LIMIT = 256
"""Bursts waiting to be written at most (each ≤ 3000 packets: at most ~80 MB in the worst case)."""
LOG_INTERVAL = 10.0
SUFFIX = ".pttr"


def burst_path(directory: Path, burst: BurstRecord) -> Path:
    """Where a burst's file is (refusing an index entry that points outside the recordings directory)."""
    path = (directory / burst.path).resolve()
    if directory.resolve() not in path.parents:
        raise ValueError(f"burst {burst.id}: stored path outside the recordings directory")
    return path


class Recorder:
    """A writer thread for bursts and retention; ``submit`` never blocks."""

    def __init__(self, store: RecordingStore, directory: Path, *, queue_limit: int = QUEUE_LIMIT) -> None:
        self.store = store
        self.directory = directory
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.stats = {"stored": 0, "dropped_full": 0, "failed": 0, "octets": 0, "purged": 0}
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(queue_limit)
        self._last_log = 0.0
        self._logged_drops = 0
        self._thread = threading.Thread(target=self._run, name="ptt-recorder", daemon=True)
        self._thread.start()

    # --- from the reactor ---

    def submit(self, bursts: list[Burst]) -> None:
        for burst in bursts:
            try:
                self._queue.put_nowait(("burst", burst))
            except queue.Full:
                self.stats["dropped_full"] += 1
                self._log_drop()

    def purge(self, now: float) -> None:
        """Delete the bursts past their retention (on the writer thread)."""
        try:
            self._queue.put_nowait(("purge", now))
        except queue.Full:
            log.warning("recorder: queue full, retention purge skipped this time")

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread."""
        self._queue.put(("stop", None))
        self._thread.join(timeout)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """For tests and benchmarks: True once everything queued so far is written."""
        done = threading.Event()
        try:
            self._queue.put(("mark", done), timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def _log_drop(self) -> None:
        now = time.monotonic()
        if now - self._last_log >= LOG_INTERVAL:
            dropped = self.stats["dropped_full"] - self._logged_drops
            self._logged_drops, self._last_log = self.stats["dropped_full"], now
            log.warning(
                "recorder: write queue full, %d bursts not recorded (logged every %.0f s)", dropped, LOG_INTERVAL
            )

    # --- on the writer thread ---

    def _run(self) -> None:
        while True:
            kind, item = self._queue.get()
            try:
                if kind == "stop":
                    return
                if kind == "mark":
                    item.set()
                elif kind == "burst":
                    self._write(item)
                elif kind == "purge":
                    self._purge(item)
            except Exception:  # a failed write loses one burst, never the thread
                self.stats["failed"] += 1
                log.exception("recorder: %s failed", kind)

    def group_directory(self, group: str) -> str:
        return hashlib.sha256(group.encode()).hexdigest()[:16]

    def _write(self, burst: Burst) -> None:
        data = encode_burst(burst.packets)
        relative = f"{self.group_directory(burst.group)}/{int(burst.started * 1000)}-{os.urandom(4).hex()}{SUFFIX}"
        path = self.directory / relative
        path.parent.mkdir(mode=0o700, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
        row = self.store.add_burst(
            burst.group,
            burst.talker,
            burst.ssrc,
            burst.started,
            burst.ended,
            burst.gmk_ids,
            len(burst.packets),
            burst.octets,
            relative,
        )
        if row is None:  # the group was deleted meanwhile
            path.unlink(missing_ok=True)
            return
        self.stats["stored"] += 1
        self.stats["octets"] += len(data)

    def _purge(self, now: float) -> None:
        while True:
            expired = self.store.expired_bursts(now)
            if not expired:
                return
            self.store.delete_bursts(expired, now=now)
            for burst in expired:
                self.path_of(burst).unlink(missing_ok=True)
            self.stats["purged"] += len(expired)
            log.info("recorder: %d bursts past their retention deleted", len(expired))

    # --- reading (any thread) ---

    def path_of(self, burst: BurstRecord) -> Path:
        return burst_path(self.directory, burst)

    def read(self, burst: BurstRecord) -> list[tuple[float, bytes]]:
        """The burst's (offset, SRTP packet) list from its file."""
        return parse_burst(self.path_of(burst).read_bytes())
