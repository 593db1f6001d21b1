"""A private LAN made of Linux network namespaces, for tests of off-network (multicast) groups.

Each peer gets its own network namespace holding ``lo`` and one end of a veth pair; the other ends are ports of a
bridge that lives in a dedicated "switch" namespace. Nothing is ever configured in the root namespace: the machine's
own interfaces, routes and firewall are untouched, names cannot collide with anything outside the run, and deleting
the namespaces removes every veth and the bridge with them.

The bridge has multicast snooping off, so it floods every multicast frame to every port like a dumb switch: a
receiver does not depend on the bridge having seen (or still remembering) its IGMP report, which keeps the LAN's
behaviour independent of IGMP timers when peers join, leave or lose their link.

Each peer's namespace also has a route for 224.0.0.0/4 via its veth, so a multicast sender works without setting
``IP_MULTICAST_IF`` (there is no default route in a peer's namespace).

Observed on Linux 6.18 (and checked by ``tests/test_netns.py``):

- ``IP_MULTICAST_LOOP`` is on by default: a socket that joined the group receives its own datagrams; with the
  option off it does not. Other peers receive them either way.
- ``disconnect(label)`` (``how="unplug"``) takes down the *switch's* port, so the peer sees carrier loss, as with a
  pulled cable or a radio out of range: its address and routes stay (flagged ``linkdown``), its sends succeed and go
  nowhere, its group memberships survive, and after ``reconnect`` its sockets work again unchanged.
- ``disconnect(label, how="down")`` sets the peer's own veth administratively down, as when the device disables its
  interface: the address stays but the kernel flushes the routes through the link, the multicast route included,
  so sends fail with ENETUNREACH; on ``reconnect`` the kernel restores only the subnet route, and ``reconnect`` adds
  the multicast route back. Group memberships survive this too.

Names: the switch namespace is ``<prefix>-<pid>-<run>``, a peer's is ``<prefix>-<pid>-<run>-<label>``, so that
``cleanup_stale`` can tell which namespaces belong to a process that has died. Interface names (at most 15
characters) are built from a short tag of the same prefix, PID and run number.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

MULTICAST_NETWORK = "224.0.0.0/4"
FIRST_HOST = 11  # the first peer's address is <subnet>.11
IFNAME_MAX = 15  # the longest interface name Linux accepts
NETNS_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")  # ip netns exec bind-mounts /etc/netns/NAME/FILE over /etc/FILE (hosts, resolv.conf)
CLONE_NEWNET = 0x40000000
IP_TIMEOUT = 30.0
PORT_GROUP = 77  # the device group of the bridge's ports, to delete them all at once
LINK_UP_TIMEOUT = 10.0  # seconds the kernel gets to bring a new LAN's links up
STOP_GRACE = 5.0  # seconds a process started by Lan.popen gets to exit after SIGTERM

_LABEL = re.compile(r"[A-Za-z0-9_]{1,32}\Z")
_PREFIX = re.compile(r"[a-z][a-z0-9]{0,7}\Z")
_run_counter = itertools.count(1)
_run_counter_lock = threading.Lock()


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be used here: not root, no ``ip`` command, or the kernel refuses."""


@dataclass(frozen=True)
class Peer:
    """One host on the LAN: its namespace, its IPv4 address and the name of its veth inside that namespace."""

    name: str
    address: str
    interface: str


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, digit = divmod(number, 36)
        text = digits[digit] + text
        if number == 0:
            return text


class IpCommandError(subprocess.CalledProcessError):
    """An ``ip`` command failed; ``str()`` shows the command, its batch input and its stderr."""

    def __init__(self, returncode: int, cmd: list[str], stdout: str, stderr: str, batch: str | None) -> None:
        super().__init__(returncode, cmd, stdout, stderr)
        self.batch = batch

    def __str__(self) -> str:
        shown = " ".join(self.cmd)
        if self.batch is not None:
            shown += " <<< " + "; ".join(self.batch.splitlines())
        return f"{shown} failed (exit {self.returncode}): {str(self.stderr).strip()}"


def _ip(args: list[str], *, netns: str | None = None, batch: str | None = None) -> str:
    """Run ``ip [-n netns] args`` (``args`` then ``-batch -`` reading ``batch``); raise with stderr on failure."""
    argv = ["ip", *(["-n", netns] if netns is not None else []), *args, *(["-batch", "-"] if batch is not None else [])]
    try:
        result = subprocess.run(argv, input=batch, capture_output=True, text=True, timeout=IP_TIMEOUT, check=False)
    except FileNotFoundError as error:
        raise NetnsUnavailable("the ip command (iproute2) is not installed") from error
    if result.returncode != 0:
        raise IpCommandError(result.returncode, argv, result.stdout, result.stderr, batch)
    return result.stdout


def netns_available() -> str | None:
    """None if this process can build a ``Lan``, else why not (for ``pytest.skip``)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    with _run_counter_lock:
        name = f"ptt-{os.getpid()}-{next(_run_counter)}-probe"  # cleanup_stale's pattern, should we be killed here
    try:
        _ip(["netns", "add", name])
    except (NetnsUnavailable, IpCommandError) as error:
        return f"cannot create a network namespace: {error}"
    try:
        _ip(["link", "add", "probe0", "type", "veth", "peer", "name", "probe1"], netns=name)
        _ip(["link", "add", "probebr", "type", "bridge"], netns=name)
    except IpCommandError as error:
        return f"cannot create veth pairs or bridges in a network namespace: {error}"
    finally:
        with contextlib.suppress(IpCommandError):
            _ip(["netns", "delete", name])
    return None


class Lan:
    """A LAN segment of peers in their own network namespaces around a bridge (a context manager).

    ``peers`` is a list of labels (``["alice", "bob"]``) or a count (labels ``p1``, ``p2``, ...). The i-th peer
    (from 1) gets ``<subnet>.<10 + i>/24``.
    """

    def __init__(self, peers: int | list[str], *, prefix: str = "ptt", subnet: str = "10.77.0") -> None:
        labels = [f"p{index}" for index in range(1, peers + 1)] if isinstance(peers, int) else list(peers)
        if not labels:
            raise ValueError("a LAN needs at least one peer")
        for label in labels:
            if not _LABEL.match(label):
                raise ValueError(f"peer label {label!r}: use 1-32 letters, digits or _")
        if len(set(labels)) != len(labels):
            raise ValueError(f"peer labels must be unique: {labels}")
        if not _PREFIX.match(prefix):
            raise ValueError(f"prefix {prefix!r}: use a lower-case letter then up to 7 letters or digits")
        network = IPv4Network(f"{subnet}.0/24")
        if FIRST_HOST + len(labels) - 1 > 254:
            raise ValueError(f"at most {255 - FIRST_HOST} peers fit in {network}")
        with _run_counter_lock:
            run = next(_run_counter)
        pid = os.getpid()
        self.name = f"{prefix}-{pid}-{run}"
        tag = f"{prefix}{_base36(pid)}.{_base36(run)}"
        if len(tag) + 2 + len(str(len(labels))) > IFNAME_MAX:
            raise ValueError(f"prefix {prefix!r} is too long for interface names of at most {IFNAME_MAX} characters")
        self.switch = self.name
        self.tag = tag  # every interface name of the run starts with it
        self.bridge = f"{tag}br"
        self.peers: dict[str, Peer] = {}
        self._ports: dict[str, str] = {}
        for index, label in enumerate(labels, start=1):
            address = str(IPv4Address(int(network.network_address) + FIRST_HOST + index - 1))
            self.peers[label] = Peer(f"{self.name}-{label}", address, f"{tag}p{index}")
            self._ports[label] = f"{tag}s{index}"
        self._created: list[str] = []
        self._processes: list[subprocess.Popen[Any]] = []

    def __enter__(self) -> Lan:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _create(self) -> None:
        # Every interface is created directly inside its namespace (ip -n), never in the root namespace.
        if os.geteuid() != 0:
            raise NetnsUnavailable("network namespaces need root")
        names = [self.switch, *(peer.name for peer in self.peers.values())]
        self._created = names  # before trying: close() deletes whichever of them exist
        try:
            _ip([], batch="".join(f"netns add {name}\n" for name in names))
        except IpCommandError as error:
            raise NetnsUnavailable(f"cannot create network namespaces: {error}") from error
        switch_batch = [f"link add {self.bridge} type bridge mcast_snooping 0", f"link set {self.bridge} up"]
        for label, peer in self.peers.items():
            port = self._ports[label]
            switch_batch += [
                f"link add {port} type veth peer name {peer.interface} netns {peer.name}",
                f"link set {port} master {self.bridge} group {PORT_GROUP} up",
            ]
        _ip([], netns=self.switch, batch="\n".join(switch_batch) + "\n")
        for peer in self.peers.values():
            peer_batch = [
                "link set lo up",
                f"address add {peer.address}/24 dev {peer.interface}",
                f"link set {peer.interface} up",
                f"route add {MULTICAST_NETWORK} dev {peer.interface}",
            ]
            _ip([], netns=peer.name, batch="\n".join(peer_batch) + "\n")
        self._wait_until_up(list(self.peers))

    def _wait_until_up(self, labels: list[str]) -> None:
        # The kernel's link watcher turns a veth on (its queueing discipline, operstate UP) up to a second or more
        # after "link set up" on a busy host; a packet sent before that is dropped without a trace.
        pending = {self.switch: {self._ports[label] for label in labels}}
        pending |= {self.peers[label].name: {self.peers[label].interface} for label in labels}
        deadline = time.monotonic() + LINK_UP_TIMEOUT
        while pending:
            for netns in list(pending):
                listing = _ip(["-o", "link", "show", "up"], netns=netns)
                up = {m.group(1) for m in re.finditer(r"^\d+: ([^:@]+)[@:].*\bstate UP\b", listing, re.MULTILINE)}
                pending[netns] -= up
                if not pending[netns]:
                    del pending[netns]
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"links still down after {LINK_UP_TIMEOUT:.0f} s: {sorted(pending.items())}")
            if pending:
                time.sleep(0.01)

    def close(self) -> None:
        """Stop what ``popen`` started, kill whatever else still runs in the LAN's namespaces, delete the veths,
        every namespace this LAN created and their files in ``/etc/netns``; idempotent.

        The veths are deleted explicitly first: a namespace outlives ``ip netns delete`` while anything still holds
        it (a socket made under ``enter``, a process started some other way), and its veth would live on with it.
        """
        running = [process for process in self._processes if process.poll() is None]
        self._processes.clear()
        for process in running:
            process.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        existing = [name for name in self._created if (NETNS_DIR / name).exists()]
        remove_etc_files(self._created)
        self._created = []
        if not existing:
            return
        kill_processes_in(existing)  # what popen did not start: daemons that forked away, their children
        if self.switch in existing:
            # One request for all ports (deleting them one by one costs ~20 ms each); a port's peer end goes with it.
            with contextlib.suppress(IpCommandError):
                _ip(["link", "delete", "group", str(PORT_GROUP)], netns=self.switch)
        failure = ""
        try:
            _ip(["-force"], batch="".join(f"netns delete {name}\n" for name in reversed(existing)))
        except IpCommandError as error:
            failure = str(error)
        left = [name for name in existing if (NETNS_DIR / name).exists()]
        if left:
            raise RuntimeError(f"could not delete the network namespaces {left}: {failure}")

    def command(self, label: str, argv: list[str]) -> list[str]:
        """The command line that runs ``argv`` inside the peer's namespace (``ip netns exec`` execs it: same PID)."""
        return ["ip", "netns", "exec", self.peers[label].name, *argv]

    def popen(self, label: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside the peer's namespace (keywords go to ``subprocess.Popen``); stopped on exit."""
        process: subprocess.Popen[Any] = subprocess.Popen(self.command(label, argv), **kwargs)
        self._processes.append(process)
        return process

    def run(self, label: str, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the peer's namespace in text mode (keywords go to ``subprocess.run``)."""
        return subprocess.run(self.command(label, argv), text=True, **kwargs)

    def disconnect(self, label: str, *, how: Literal["unplug", "down"] = "unplug") -> None:
        """Take the peer off the LAN; its processes keep running.

        ``unplug``: the switch's port goes down and the peer sees carrier loss, as when a cable is pulled or a radio
        goes out of range: address, routes and memberships stay, sends succeed and go nowhere. ``down``: the peer's
        own veth is set administratively down: the kernel flushes its routes and sends fail with ENETUNREACH.
        """
        if how == "unplug":
            _ip(["link", "set", self._ports[label], "down"], netns=self.switch)
        elif how == "down":
            _ip(["link", "set", self.peers[label].interface, "down"], netns=self.peers[label].name)
        else:
            raise ValueError(f"disconnect how={how!r}: use 'unplug' or 'down'")

    def reconnect(self, label: str) -> None:
        """Put the peer back on the LAN (either way it was taken off) with its address and multicast route."""
        peer = self.peers[label]
        _ip(["link", "set", self._ports[label], "up"], netns=self.switch)
        _ip(["link", "set", peer.interface, "up"], netns=peer.name)
        if f" {peer.address}/24 " not in _ip(["-o", "-4", "address", "show", "dev", peer.interface], netns=peer.name):
            _ip(["address", "add", f"{peer.address}/24", "dev", peer.interface], netns=peer.name)
        # Setting the link down flushed the routes through it; the kernel restores only the subnet's own route.
        if not _ip(["route", "show", MULTICAST_NETWORK, "dev", peer.interface], netns=peer.name).strip():
            _ip(["route", "add", MULTICAST_NETWORK, "dev", peer.interface], netns=peer.name)
        # Peers that tried to reach it while it was off hold a neighbour entry still resolving (INCOMPLETE, its last
        # probes spent) or FAILED: the next packet would fail at once with EHOSTUNREACH. Start every resolution afresh.
        for other in self.peers.values():
            _ip(["neigh", "flush", "dev", other.interface], netns=other.name)
        self._wait_until_up([label])

    def enter(self, label: str) -> contextlib.AbstractContextManager[None]:
        """Move the *calling thread* (only) into the peer's namespace for the block, then back.

        Sockets made on this thread inside the block belong to the peer's namespace for their whole life, so a test
        can act as a peer in-process; close them before the LAN closes. Other threads (thread pools, a reactor
        thread, getaddrinfo helpers) stay where they are.
        """
        return thread_in_netns(NETNS_DIR / self.peers[label].name)


@contextlib.contextmanager
def thread_in_netns(path: str | Path) -> Iterator[None]:
    """Move the calling thread into the network namespace at ``path`` (setns(2)) for the block, then back."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net", "rb") as original, open(path, "rb") as target:
        if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {path}: {os.strerror(errno)}")
        try:
            yield
        finally:
            if libc.setns(original.fileno(), CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"setns back to the original network namespace: {os.strerror(errno)}")


def cleanup_stale(prefix: str = "ptt") -> None:
    """Delete namespaces left by runs of this harness whose process has died (the PID is in the name), after killing
    the processes still running in them, and their files in ``/etc/netns``."""
    pattern = re.compile(rf"{re.escape(prefix)}-(\d+)-\d+(-[A-Za-z0-9_]+)?\Z")

    def stale(name: str) -> bool:
        match = pattern.match(name)
        return match is not None and not _process_alive(int(match.group(1)))

    names = [line.split(" ", 1)[0] for line in _ip(["netns", "list"]).splitlines()]
    dead = [name for name in names if stale(name)]
    if dead:
        kill_processes_in(dead)
    for name in dead:
        with contextlib.suppress(IpCommandError):
            _ip(["netns", "delete", name])
    if ETC_NETNS.is_dir():
        remove_etc_files([entry.name for entry in ETC_NETNS.iterdir() if stale(entry.name)])


def kill_processes_in(names: list[str]) -> None:
    """SIGKILL every process whose network namespace is one of ``names`` (one pass over /proc), and wait until they
    are gone, so that deleting the namespaces frees them."""
    inodes = set()
    for name in names:
        with contextlib.suppress(OSError):
            inodes.add(os.stat(NETNS_DIR / name).st_ino)
    victims = [pid for pid in _pids_in(inodes) if pid != os.getpid()]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + STOP_GRACE
    while victims and time.monotonic() < deadline:
        victims = [pid for pid in victims if _pid_in(pid, inodes)]
        if victims:
            time.sleep(0.01)


def _pids_in(inodes: set[int]) -> list[int]:
    if not inodes:
        return []
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and _pid_in(int(entry), inodes)]


def _pid_in(pid: int, inodes: set[int]) -> bool:
    """Whether the live (not zombie) process ``pid`` is in a namespace of ``inodes``."""
    try:
        if os.stat(f"/proc/{pid}/ns/net").st_ino not in inodes:
            return False
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False


def remove_etc_files(names: list[str]) -> None:
    """Remove ``/etc/netns/NAME`` of each namespace name. ``/etc/netns`` itself stays (iproute2's own directory):
    removing it once empty would race with another test process creating its namespace's directory in it."""
    for name in names:
        shutil.rmtree(ETC_NETNS / name, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
