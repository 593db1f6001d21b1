"""The SQLite writers' queue across processes (``WriterLock``) for ``server.sqldb``."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

__all__ = ["WRITER_WAIT", "WriterLock", "WriterLockTimeout"]


class WriterLockTimeout(Exception):
    """Another process held the write lock for longer than ``WRITER_WAIT``."""


WRITER_WAIT = 10.0  # seconds a writer waits for another process's write transaction (SQLite's busy timeout too)


class WriterLock:
    """An advisory lock (flock) on ``DB-writers.lock`` that every process takes before ``BEGIN IMMEDIATE``.

    SQLite's own busy handler sleeps 1, 2, 5 … 100 ms between retries, so processes writing the same file often
    (several KMS workers, each request writing its audit event) wait far longer than the transactions take:
    measured, two KMS workers renewed fewer users per second than one. Waiting here instead retries every 0.2 to
    2 ms, so the next writer starts within ~1 ms of the commit; SQLite's timeout stays the fallback."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(f"{path}-writers.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def acquire(self) -> None:
        delay, deadline = 0.0002, time.monotonic() + WRITER_WAIT
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise WriterLockTimeout("the database is locked by another process's write") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.002)

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self.fd)
