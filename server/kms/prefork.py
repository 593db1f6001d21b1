"""Several KMS worker processes on one port: a supervisor pre-forks N workers, each with its own reactor and its
own listening socket bound to the same address with SO_REUSEPORT, each opening the store itself (SQLite WAL with a
busy timeout, or PostgreSQL). A new connection goes to the worker its source address chooses
(``steer_by_source_address``), so the login rules each worker keeps in memory see every attempt from an address.

The supervisor holds no reactor, no store and no thread: it forks, reads the workers' "ready" lines on a pipe,
prints the KMS's one ready line once all listen, restarts a worker that dies (logged; at most ``RestartLimit``
restarts in a window, later ones wait), and on SIGTERM or SIGINT stops them all (SIGTERM, then SIGKILL after
``STOP_GRACE`` s). A worker whose supervisor dies stops too (PR_SET_PDEATHSIG on Linux).

A request in flight in a worker that dies is lost with its connection (the client retries; ``ptt-client`` does);
what it wrote is one transaction, so the store holds all of it or none. Connections queued on the dead worker's
socket and not yet accepted are reset, and go to the other workers on the client's retry.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["RestartLimit", "Supervisor", "reuseport_socket", "steer_by_source_address"]

log = logging.getLogger("ptt.kms.supervisor")

STOP_GRACE = 10.0
READY_TIMEOUT = 60.0


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT (and SO_REUSEADDR), not yet listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


_SO_ATTACH_REUSEPORT_CBPF = 51  # Linux, <asm-generic/socket.h>
_SKF_NET_OFF = -0x100000  # classic BPF: load relative to the network header


def steer_by_source_address(sock: socket.socket, workers: int) -> bool:
    """Linux: choose the worker of a new connection by its source address (source address mod ``workers``) rather
    than by the address and port, so every connection from one address reaches the same worker and the login rules
    that count per address (``server.accounts.LoginGuard``, in each worker's memory) see all of its attempts. A
    classic BPF program attached to the port's SO_REUSEPORT group; whether it could be attached."""
    offset = 12 if sock.family == socket.AF_INET else 20  # IPv4 source address; the last word of IPv6's
    program = [
        (0x20, 0, 0, (_SKF_NET_OFF + offset) & 0xFFFFFFFF),  # BPF_LD | BPF_W | BPF_ABS: A = source address
        (0x94, 0, 0, workers),  # BPF_ALU | BPF_MOD | BPF_K: A %= workers
        (0x16, 0, 0, 0),  # BPF_RET | BPF_A: the index of the socket in the group
    ]
    code = b"".join(struct.pack("=HBBI", *instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HxxxxxxQ", len(program), ctypes.addressof(buffer))  # struct sock_fprog (64-bit)
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError as exc:
        log.warning("KMS: cannot steer connections by source address (%s); the kernel spreads them", exc)
        return False
    return True


def die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent (the supervisor) dies; elsewhere nothing."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class RestartLimit:
    """At most ``restarts`` restarts in any ``window`` seconds; a restart beyond waits for the window to allow it."""

    restarts: int = 5
    window: float = 60.0
    _times: list[float] = field(default_factory=list)

    def next_allowed(self, now: float) -> float:
        self._times = [t for t in self._times if t > now - self.window]
        if len(self._times) < self.restarts:
            return now
        return self._times[0] + self.window

    def record(self, at: float) -> None:
        self._times.append(at)


WorkerMain = Callable[[int, int], int]
"""A worker's body in the forked child: (index, ready pipe's write end) → exit status. It writes one line
'ready INDEX PID' to the pipe once it listens."""


class Supervisor:
    def __init__(
        self, workers: int, worker_main: WorkerMain, ready_line: str, *, limit: RestartLimit | None = None
    ) -> None:
        self.count = workers
        self.worker_main = worker_main
        self.ready_line = ready_line
        self.limit = limit or RestartLimit()
        self.pids: dict[int, int] = {}  # pid → worker index
        self._pending: dict[int, float] = {}  # worker index → when to restart it
        self._stopping = False
        self._read_fd, self._write_fd = os.pipe()
        self._buffer = b""

    # --- workers ---

    def _fork(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                os.close(self._read_fd)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                die_with_parent()
                status = self.worker_main(index, self._write_fd)
            except BaseException:
                log.exception("KMS worker %d failed", index)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        self.pids[pid] = index

    def _stop(self, signum: int, _frame: object) -> None:
        if not self._stopping:
            log.info("KMS supervisor: %s, stopping %d workers", signal.Signals(signum).name, len(self.pids))
        self._stopping = True
        for pid in list(self.pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _read_ready(self, timeout: float) -> list[str]:
        """Ready lines from the workers within ``timeout`` s."""
        readable, _, _ = select.select([self._read_fd], [], [], max(timeout, 0))
        if not readable:
            return []
        self._buffer += os.read(self._read_fd, 4096)
        *lines, self._buffer = self._buffer.split(b"\n")
        return [line.decode(errors="replace") for line in lines]

    def _reap(self) -> list[tuple[int, int, int]]:
        """(pid, index, wait status) of every worker that ended."""
        ended = []
        while self.pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            index = self.pids.pop(pid, None)
            if index is not None:
                ended.append((pid, index, status))
        return ended

    # --- the supervisor's life ---

    def run(self) -> int:
        """Start the workers, print the ready line, supervise until told to stop; the exit status."""
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for index in range(self.count):
                self._fork(index)
            if not self._await_ready():
                self._stop(signal.SIGTERM, None)
                self._wait_all()
                return 1
            print(self.ready_line, flush=True)
            self._supervise()
            return 0
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            os.close(self._read_fd)
            os.close(self._write_fd)

    def _await_ready(self) -> bool:
        ready: set[int] = set()
        deadline = time.monotonic() + READY_TIMEOUT
        while len(ready) < self.count and not self._stopping:
            for line in self._read_ready(deadline - time.monotonic()):
                ready.add(int(line.split()[1]))
            for pid, index, status in self._reap():
                log.error("KMS worker %d (pid %d) ended before it listened: %s", index, pid, _describe(status))
                return False
            if time.monotonic() > deadline:
                log.error("KMS workers not ready within %.0f s", READY_TIMEOUT)
                return False
        return not self._stopping

    def _supervise(self) -> None:
        while self.pids or (self._pending and not self._stopping):
            for line in self._read_ready(0.2):
                log.info("KMS worker %s (pid %s) listening again", *line.split()[1:3])
            now = time.monotonic()
            for pid, index, status in self._reap():
                if self._stopping:
                    continue
                when = self.limit.next_allowed(now)
                self._pending[index] = when
                log.warning(
                    "KMS worker %d (pid %d) died: %s; restarting it%s",
                    index,
                    pid,
                    _describe(status),
                    "" if when <= now else f" in {when - now:.0f} s (restart limit)",
                )
            for index, when in list(self._pending.items()):
                if self._stopping:
                    self._pending.clear()
                elif when <= now:
                    del self._pending[index]
                    self.limit.record(now)
                    self._fork(index)
            if self._stopping:
                self._wait_all()

    def _wait_all(self) -> None:
        deadline = time.monotonic() + STOP_GRACE
        while self.pids:
            self._reap()
            if time.monotonic() > deadline:
                for pid in list(self.pids):
                    log.warning("KMS worker (pid %d) did not stop; killing it", pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.05)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
