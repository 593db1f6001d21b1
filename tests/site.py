"""A simulated site of several hosts for end-to-end tests: each host is a network namespace of a ``tests.netns.Lan``
(one bridge, one address per host) with a DNS name that every host resolves.

    with Site(["kms", "db", "node1", "alice-pc"], root) as site:
        site.hosts["node1"].fqdn                        # "node1.site.test", resolvable on every host
        site.check("kms", "-m", "server.kms.cli", ...)  # python -m ... inside the kms host, or fail with its output
        kms = site.start("kms", ["-m", "server.kms.cli", ..., "serve"], ready="listening on")

Names: ``Site`` writes ``/etc/netns/<namespace>/hosts`` for every host, which ``ip netns exec`` bind-mounts over
``/etc/hosts`` for the process it starts, so a name resolves to its host's address inside the site (and nowhere
else). ``add_name`` adds a name later (e.g. a name pointing at another host's address); processes started after it
see it. Processes run as ``python ARGS`` in this tree with ``bench.harness.clean_env()``; daemons' output is kept
in their ``Daemon.log`` and printed when the block ends with an exception, so a failing test shows what the servers
said.

Clean-up: closing the site stops the daemons (SIGTERM, then SIGKILL), runs the ``on_close`` callbacks (a PostgreSQL
server), then the LAN kills whatever still runs in the namespaces and deletes them with their ``/etc/netns`` files.
Entering a site first removes what runs of dead test processes left behind (``tests.netns.cleanup_stale``).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from bench.harness import ROOT, Daemon, clean_env, run
from tests.netns import ETC_NETNS, Lan, cleanup_stale, kill_processes_in, netns_available

DOMAIN = "site.test"
SUBNET = "10.78.0"  # the LAN's /24
PREFIX = "site"  # namespaces are site-<pid>-<run>-<host>
COMMAND_TIMEOUT = 60.0
_HOST_LABEL = re.compile(r"[a-z][a-z0-9-]{0,30}\Z")


def site_available() -> str | None:
    """None if a site can be built here, else why not (for ``pytest.skip``)."""
    return netns_available()


@dataclass(frozen=True)
class Host:
    """One host of the site: its label (``alice-pc``), DNS name, address and network namespace."""

    label: str
    fqdn: str
    address: str
    netns: str


class Site:
    """Hosts on one LAN with names in each other's ``/etc/hosts`` (a context manager); ``root`` holds their files."""

    def __init__(self, hosts: list[str], root: Path, *, domain: str = DOMAIN, subnet: str = SUBNET) -> None:
        for label in hosts:
            if not _HOST_LABEL.match(label) or label.endswith("-"):
                raise ValueError(f"host {label!r}: use a lower-case DNS label (letters, digits, inner hyphens)")
        self.root = root
        self.domain = domain
        self.lan = Lan([label.replace("-", "_") for label in hosts], prefix=PREFIX, subnet=subnet)
        self.hosts: dict[str, Host] = {}
        for label in hosts:
            peer = self.lan.peers[label.replace("-", "_")]
            self.hosts[label] = Host(label, f"{label}.{domain}", peer.address, peer.name)
        self.names: dict[str, str] = {host.fqdn: host.address for host in self.hosts.values()}
        self.daemons: list[Daemon] = []
        self._processes: list[subprocess.Popen[str]] = []
        self._on_close: list[Callable[[], None]] = []

    # --- life cycle ------------------------------------------------------------------------------------------------

    def __enter__(self) -> Site:
        cleanup_stale(PREFIX)
        self.lan.__enter__()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._write_hosts_files()
        except BaseException:
            self.lan.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc_type is not None:
            print(self.logs())
        self.close()

    def close(self) -> None:
        """Stop every daemon and process started here, run the ``on_close`` callbacks, delete the LAN; idempotent."""
        for daemon in reversed(self.daemons):
            with contextlib.suppress(Exception):
                daemon.stop()
        self.daemons.clear()
        for process in self._processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        self._processes.clear()
        callbacks, self._on_close = self._on_close, []
        for callback in reversed(callbacks):
            with contextlib.suppress(Exception):
                callback()
        self.lan.close()

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the site closes, before its namespaces go (stop a server started another way)."""
        self._on_close.append(callback)

    # --- names -----------------------------------------------------------------------------------------------------

    def add_name(self, name: str, host: str) -> None:
        """Make ``name`` resolve to ``host``'s address everywhere in the site (for processes started from now on)."""
        self.names[name] = self.hosts[host].address
        self._write_hosts_files()

    def hosts_file(self) -> str:
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
        lines += [f"{address} {name}" for name, address in self.names.items()]
        return "\n".join(lines) + "\n"

    def _write_hosts_files(self) -> None:
        text = self.hosts_file()
        for host in self.hosts.values():
            directory = ETC_NETNS / host.netns
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "hosts").write_text(text)

    # --- processes -------------------------------------------------------------------------------------------------

    def prefix(self, host: str) -> tuple[str, ...]:
        """The command prefix that runs a program inside ``host`` (``ip netns exec`` execs it: same PID)."""
        return ("ip", "netns", "exec", self.hosts[host].netns)

    def run(
        self, host: str, *args: str, timeout: float = COMMAND_TIMEOUT, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``python ARGS`` inside ``host``, its output captured."""
        return run(*args, env=env, timeout=timeout, prefix=self.prefix(host))

    def check(self, host: str, *args: str, timeout: float = COMMAND_TIMEOUT, env: dict[str, str] | None = None) -> str:
        """``run``, failing with the command's output unless it exits 0; its stdout."""
        done = self.run(host, *args, timeout=timeout, env=env)
        if done.returncode != 0:
            raise AssertionError(
                f"on {host}: {' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}".rstrip()
            )
        return done.stdout

    def start(
        self,
        host: str,
        args: list[str],
        *,
        ready: str,
        extra_env: dict[str, str] | None = None,
        start_timeout: float = COMMAND_TIMEOUT,
    ) -> Daemon:
        """Start the daemon ``python ARGS`` inside ``host`` and wait for ``ready`` in its output; stopped on close."""
        daemon = Daemon(
            list(args), ready, extra_env=dict(extra_env or {}), start_timeout=start_timeout, prefix=self.prefix(host)
        )
        self.daemons.append(daemon)
        daemon.start()
        return daemon

    def spawn(self, host: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Start ``python ARGS`` inside ``host`` (stdout and stderr together, text) without waiting; killed on close
        if still running."""
        process = subprocess.Popen(
            [*self.prefix(host), sys.executable, *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env or clean_env(),
        )
        self._processes.append(process)
        return process

    # --- failures --------------------------------------------------------------------------------------------------

    def kill_host(self, host: str) -> None:
        """Every process on ``host`` dies at once (SIGKILL), as in a power cut; its address stays on the LAN."""
        kill_processes_in([self.hosts[host].netns])

    def disconnect(self, host: str) -> None:
        """Pull ``host``'s cable: its processes run on and see carrier loss; nothing reaches it or leaves it."""
        self.lan.disconnect(host.replace("-", "_"))

    def reconnect(self, host: str) -> None:
        self.lan.reconnect(host.replace("-", "_"))

    def logs(self) -> str:
        """Every daemon's output so far, for a failure report."""
        return "\n".join(f"--- {' '.join(d.args[:4])} ...\n{''.join(d.log)}" for d in self.daemons)


def finish(process: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    """Wait for a ``Site.spawn`` process; its exit status and output (killed after ``timeout`` seconds)."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        return -9, output + f"\n(killed after {timeout} s)"
    return process.returncode, output
