"""Processes of ``bench.cluster``: a helper driven one command line at a time, and the CPU time of a process tree."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from bench.floorload import loadavg
from bench.harness import ROOT, clean_env

__all__ = ["LineProcess", "loadavg", "machine_cpu_seconds", "tree_cpu_seconds", "udp_rcvbuf_errors"]

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces), or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def machine_cpu_seconds() -> float:
    """CPU seconds every process of the machine has used so far (all cores: user, nice, system, irq, softirq,
    steal; not idle or iowait)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def udp_rcvbuf_errors() -> int:
    """UDP datagrams the kernel dropped so far because a socket's receive buffer was full (every socket of the
    machine's network namespace: ``RcvbufErrors`` in /proc/net/snmp)."""
    names, values = (
        line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")
    )
    return int(values[names.index("RcvbufErrors")])


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and every living descendant (a node's forkserver and crypto worker)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        fields = _stat(current)
        if fields is not None:
            total += (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
        pending.extend(children.get(current, []))
    return total


class LineProcess:
    """``python ARGS`` in this tree: one command line on stdin, one answer line on stdout."""

    def __init__(self, args: list[str], *, ready_timeout: float = 300) -> None:
        self.process = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=clean_env(),
        )  # fmt: skip
        self.name = args[1] if len(args) > 1 else args[0]
        self._errors: list[str] = []
        threading.Thread(target=self._drain_errors, daemon=True).start()
        self.ready = self._line(ready_timeout)

    @property
    def pid(self) -> int:
        return self.process.pid

    def _drain_errors(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._errors.append(line)
            del self._errors[:-50]

    def _line(self, timeout: float) -> str:
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        if not result or not result[0]:
            raise RuntimeError(f"{self.name} did not answer within {timeout:.0f} s: {''.join(self._errors)}")
        return result[0].strip()

    def command(self, line: str, timeout: float) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self._line(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
                self.process.wait(15)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
