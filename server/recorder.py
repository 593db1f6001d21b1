"""The recorder's writer (issue 17): recorded bursts (``ptt.recording``) go to files under the data directory and
their index to the group store, on a thread of its own, never on the reactor.

The relay hands over completed bursts once a second (``RelayProtocol.drain_bursts``); :meth:`Recorder.submit`
only puts them on a bounded queue. A full queue (a disk or database that cannot keep up) drops the burst: counted
in :attr:`Recorder.stats` and logged at most once every ``LOG_INTERVAL`` seconds with the count, so forwarding is
never held up by storage. Retention runs on the same thread (:meth:`purge`, hourly from the wiring).

Files: ``<directory>/<SHA-256 of the group URI, 16 hex>/<start in ms>-<8 random hex>.pttr``, written to a
temporary name and renamed (a crash leaves no half burst in the index), mode 0600; with several server nodes on
one PostgreSQL the same octets go to the shared store instead (``server.groups.mediablobs``), so any node replays.
What is stored is the SRTP as forwarded: ciphertext under GMKs the server does not hold.

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
from server.groups.mediablobs import media_blobs
from server.groups.recordings import BurstRecord
from server.groups.store import GroupStore

__all__ = ["QUEUE_LIMIT", "Recorder"]

log = logging.getLogger("ptt.server.recorder")

QUEUE_LIMIT = 256
"""Bursts waiting to be written at most (each ≤ 3000 packets: at most ~80 MB in the worst case)."""
LOG_INTERVAL = 10.0
SUFFIX = ".pttr"


class Recorder:
    """A writer thread for bursts and retention; ``submit`` never blocks."""

    def __init__(self, store: GroupStore, directory: Path, *, queue_limit: int = QUEUE_LIMIT) -> None:
        self.store = store
        self.directory = directory
        self.blobs = media_blobs(directory, store)
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
        ref = self.blobs.put(relative, data, now=time.time())
        row = self.store.add_burst(
            burst.group,
            burst.talker,
            burst.ssrc,
            burst.started,
            burst.ended,
            burst.gmk_ids,
            len(burst.packets),
            burst.octets,
            ref,
        )
        if row is None:  # the group was deleted meanwhile
            self.blobs.delete(ref)
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
                self.blobs.delete(burst.path)
            self.stats["purged"] += len(expired)
            log.info("recorder: %d bursts past their retention deleted", len(expired))

    # --- reading (any thread) ---

    def read_octets(self, burst: BurstRecord) -> bytes:
        """The burst as stored (its file, or the shared store's copy)."""
        return self.blobs.get(burst.path)

    def read(self, burst: BurstRecord) -> list[tuple[float, bytes]]:
        """The burst's (offset, SRTP packet) list."""
        return parse_burst(self.read_octets(burst))
