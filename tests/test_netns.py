"""The network-namespace LAN of tests/netns.py: unicast and multicast between peers, link loss, clean-up.

Each peer runs a small agent process inside its namespace (``AGENT``): one UDP socket bound to 0.0.0.0:PORT that
joined GROUP on the peer's address, with IP_MULTICAST_IF set to that address and TTL 1, as the ad-hoc client will
use. The test drives it with lines on stdin and reads what it received on stdout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Literal

import pytest

import tests.netns as harness
from tests.netns import (
    ETC_NETNS,
    MULTICAST_NETWORK,
    NETNS_DIR,
    IpCommandError,
    Lan,
    cleanup_stale,
    netns_available,
    remove_etc_files,
)

GROUP = "239.255.77.1"
PORT = 47701
TIMEOUT = 5.0  # for what should arrive
QUIET = 0.3  # how long to wait before concluding that something did not arrive (the LAN delivers in microseconds)

AGENT = r"""
import socket, sys, threading
address, group, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", port))
sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group) + socket.inet_aton(address))
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # no IP_MULTICAST_IF: relies on the 224.0.0.0/4 route
lock = threading.Lock()

def say(line):
    with lock:
        print(line, flush=True)

def receive():
    while True:
        data, (source, _) = sock.recvfrom(2048)
        say(f"got {source} {data.decode()}")

threading.Thread(target=receive, daemon=True).start()
say("ready")
for line in sys.stdin:
    verb, *args = line.split()
    try:
        if verb == "unicast":
            sock.sendto(args[1].encode(), (args[0], port))
        elif verb == "multicast":
            sock.sendto(args[0].encode(), (group, port))
        elif verb == "multicast-plain":
            plain.sendto(args[0].encode(), (group, port))
        elif verb == "loop":
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, int(args[0]))
        say(f"done {verb}")
    except OSError as error:
        say(f"error {verb} {error.errno}")
"""


class Agent:
    """The test's handle on one peer's agent process."""

    def __init__(self, lan: Lan, label: str) -> None:
        self.label = label
        self.address = lan.peers[label].address
        argv = [sys.executable, "-I", "-c", AGENT, self.address, GROUP, str(PORT)]
        self.process: subprocess.Popen[str] = lan.popen(
            label, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.received: set[tuple[str, str]] = set()
        self._replies: list[str] = []
        self._ready = False
        self._condition = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            kind, _, rest = line.rstrip("\n").partition(" ")
            with self._condition:
                if kind == "got":
                    source, _, payload = rest.partition(" ")
                    self.received.add((source, payload))
                elif kind == "ready":
                    self._ready = True
                else:
                    self._replies.append(line.strip())
                self._condition.notify_all()

    def _wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self._condition:
            return self._condition.wait_for(predicate, timeout)

    def wait_ready(self) -> None:
        assert self._wait(lambda: self._ready, TIMEOUT), f"{self.label}'s agent did not start"

    def do(self, command: str) -> str:
        """Send a command; return the agent's reply (``done <verb>`` or ``error <verb> <errno>``)."""
        assert self.process.stdin is not None
        with self._condition:
            count = len(self._replies)
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        assert self._wait(lambda: len(self._replies) > count, TIMEOUT), f"{self.label}: no reply to {command!r}"
        return self._replies[count]

    def wait_for(self, expected: set[tuple[str, str]], timeout: float = TIMEOUT) -> bool:
        """Whether every (source address, payload) in ``expected`` arrives within ``timeout``."""
        return self._wait(lambda: expected <= self.received, timeout)

    def close(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        self.process.wait(TIMEOUT)
        self._reader.join(TIMEOUT)
        self.process.stdout.close()


@contextlib.contextmanager
def agents(lan: Lan) -> Iterator[dict[str, Agent]]:
    started: dict[str, Agent] = {}
    try:
        for label in lan.peers:
            started[label] = Agent(lan, label)
        for agent in started.values():
            agent.wait_ready()
        yield started
    finally:
        for agent in started.values():
            agent.close()


def namespaces() -> list[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split(" ", 1)[0] for line in listing.splitlines()]


def root_interfaces() -> list[str]:
    return [name for _, name in socket.if_nameindex()]


def assert_gone(lan: Lan) -> None:
    """No namespace of the run is listed and none of its interfaces is in the root namespace."""
    left = [name for name in namespaces() if name == lan.name or name.startswith(lan.name + "-")]
    assert left == [], f"namespaces left behind: {left}"
    assert [name for name in root_interfaces() if name.startswith(lan.tag)] == []


@pytest.fixture(scope="module", autouse=True)
def _netns_usable() -> None:
    reason = netns_available()
    if reason is not None:
        pytest.skip(reason)
    cleanup_stale()


def test_unicast_and_multicast_between_every_pair() -> None:
    with Lan(["alice", "bob", "carol"]) as lan, agents(lan) as peers:
        assert [peer.address for peer in lan.peers.values()] == ["10.77.0.11", "10.77.0.12", "10.77.0.13"]
        for sender in peers.values():
            for receiver in peers.values():
                if receiver is not sender:
                    assert sender.do(f"unicast {receiver.address} u-{sender.label}-{receiver.label}") == "done unicast"
            assert sender.do(f"multicast m-{sender.label}") == "done multicast"
            assert sender.do(f"multicast-plain p-{sender.label}") == "done multicast-plain"
        for receiver in peers.values():
            others = [sender for sender in peers.values() if sender is not receiver]
            expected = {(sender.address, f"u-{sender.label}-{receiver.label}") for sender in others}
            # IP_MULTICAST_LOOP is on by default: a sender that joined the group hears itself too.
            expected |= {(sender.address, f"m-{sender.label}") for sender in peers.values()}
            # A socket without IP_MULTICAST_IF reaches the group through the 224.0.0.0/4 route (and loops back too).
            expected |= {(sender.address, f"p-{sender.label}") for sender in peers.values()}
            assert receiver.wait_for(expected), f"{receiver.label} missed {expected - receiver.received}"


def test_a_sender_hears_its_own_multicast_only_with_ip_multicast_loop() -> None:
    with Lan(["alice", "bob", "carol"]) as lan, agents(lan) as peers:
        alice, bob, carol = peers["alice"], peers["bob"], peers["carol"]
        assert alice.do("loop 0") == "done loop"
        assert alice.do("multicast quiet") == "done multicast"
        assert bob.wait_for({(alice.address, "quiet")}) and carol.wait_for({(alice.address, "quiet")})
        assert not alice.wait_for({(alice.address, "quiet")}, QUIET)
        assert alice.do("loop 1") == "done loop"
        assert alice.do("multicast loud") == "done multicast"
        assert alice.wait_for({(alice.address, "loud")}) and bob.wait_for({(alice.address, "loud")})


@pytest.mark.parametrize("how", ["unplug", "down"])
def test_disconnect_and_reconnect(how: Literal["unplug", "down"]) -> None:
    with Lan(["alice", "bob", "carol"]) as lan, agents(lan) as peers:
        alice, bob, carol = peers["alice"], peers["bob"], peers["carol"]
        assert alice.do("multicast before") == "done multicast"
        assert bob.wait_for({(alice.address, "before")})

        lan.disconnect("bob", how=how)
        assert alice.do("multicast away") == "done multicast"
        assert carol.wait_for({(alice.address, "away")})
        assert not bob.wait_for({(alice.address, "away")}, QUIET)
        # Unplugged, bob's sends vanish silently; with its link down the kernel has no route left and says so.
        assert bob.do("multicast lost") == ("done multicast" if how == "unplug" else "error multicast 101")
        assert not alice.wait_for({(bob.address, "lost")}, QUIET)
        assert bob.process.poll() is None

        lan.reconnect("bob")
        route = lan.run("bob", ["ip", "route", "show", MULTICAST_NETWORK], capture_output=True, check=True).stdout
        assert lan.peers["bob"].interface in route
        assert alice.do("multicast back") == "done multicast"
        assert bob.do("multicast bob-back") == "done multicast"
        assert bob.do("multicast-plain bob-plain") == "done multicast-plain"
        assert alice.do(f"unicast {bob.address} u-back") == "done unicast"
        assert bob.wait_for({(alice.address, "back"), (alice.address, "u-back")})
        assert alice.wait_for({(bob.address, "bob-back"), (bob.address, "bob-plain")})
        assert carol.wait_for({(bob.address, "bob-back")})


@pytest.mark.parametrize("body_raises", [False, True])
def test_nothing_remains_after_the_lan_closes(body_raises: bool) -> None:
    lan = Lan(3)
    with contextlib.ExitStack() as stack:
        with contextlib.ExitStack() as body:
            if body_raises:
                body.enter_context(pytest.raises(RuntimeError, match="the body failed"))
            with lan:
                assert {lan.name, *(peer.name for peer in lan.peers.values())} <= set(namespaces())
                assert [name for name in root_interfaces() if name.startswith(lan.tag)] == []
                # Hold p1's namespace open past the end, as a forgotten socket would: its veth must go all the same.
                pinned = stack.enter_context(open(NETNS_DIR / lan.peers["p1"].name, "rb"))
                if body_raises:
                    raise RuntimeError("the body failed")
        assert_gone(lan)
        with harness.thread_in_netns(f"/proc/self/fd/{pinned.fileno()}"):
            assert [name for _, name in socket.if_nameindex()] == ["lo"]


def test_a_failed_set_up_removes_what_it_made(monkeypatch: pytest.MonkeyPatch) -> None:
    real_ip = harness._ip
    lan = Lan(["alice", "bob", "carol"])

    def failing_ip(args: list[str], *, netns: str | None = None, batch: str | None = None) -> str:
        if netns == lan.peers["bob"].name and batch is not None:
            raise IpCommandError(2, ["ip", "-n", netns, "-batch", "-"], "", "RTNETLINK answers: injected", batch)
        return real_ip(args, netns=netns, batch=batch)

    monkeypatch.setattr(harness, "_ip", failing_ip)
    with pytest.raises(IpCommandError, match="injected"), lan:
        pass
    assert_gone(lan)


def test_close_kills_processes_that_left_popen_behind() -> None:
    with Lan(["alice"]) as lan:
        daemon = lan.run("alice", ["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], capture_output=True, check=True)
        pid = int(daemon.stdout)
        namespace = {os.stat(NETNS_DIR / lan.peers["alice"].name).st_ino}
        assert harness._pid_in(pid, namespace)
    assert not harness._pid_in(pid, namespace)


def test_an_ip_failure_names_the_command_and_its_error() -> None:
    with Lan(1) as lan, pytest.raises(IpCommandError) as caught:
        harness._ip(["link", "set", "nosuchlink", "up"], netns=lan.switch)
    message = str(caught.value)
    assert f"ip -n {lan.switch} link set nosuchlink up failed" in message and "nosuchlink" in caught.value.stderr


def test_cleanup_stale_deletes_only_namespaces_of_dead_processes() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale, live, other = f"pttst-{dead.pid}-1", f"pttst-{os.getpid()}-1-alice", f"pttstx-{dead.pid}-1"
    for name in (stale, f"{stale}-bob", live, other):
        subprocess.run(["ip", "netns", "add", name], check=True)
    # what a dead run leaves behind besides its namespaces: a daemon still running in one, its /etc/netns files
    orphan = subprocess.Popen(["ip", "netns", "exec", f"{stale}-bob", "sleep", "60"])
    (ETC_NETNS / f"{stale}-bob").mkdir(parents=True, exist_ok=True)
    (ETC_NETNS / f"{stale}-bob" / "hosts").write_text("10.77.0.11 bob\n")
    (ETC_NETNS / live).mkdir(exist_ok=True)
    try:
        cleanup_stale("pttst")
        left = set(namespaces())
        assert stale not in left and f"{stale}-bob" not in left
        assert live in left and other in left
        assert orphan.wait(TIMEOUT) == -signal.SIGKILL
        assert not (ETC_NETNS / f"{stale}-bob").exists() and (ETC_NETNS / live).is_dir()
    finally:
        orphan.kill()
        orphan.wait()
        remove_etc_files([live])
        for name in (stale, f"{stale}-bob", live, other):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


def test_twenty_peers_and_in_process_sockets() -> None:
    for count in (3, 20):
        started = time.perf_counter()
        with Lan(count):
            set_up = time.perf_counter() - started
            closing = time.perf_counter()
        tear_down = time.perf_counter() - closing
        print(f"{count}-peer LAN: set-up {set_up * 1000:.0f} ms, tear-down {tear_down * 1000:.0f} ms")
    with Lan(20) as lan:
        assert lan.peers["p20"].address == "10.77.0.30"
        before = os.readlink("/proc/thread-self/ns/net")
        sockets: dict[str, socket.socket] = {}
        try:
            for label, peer in lan.peers.items():
                with lan.enter(label):
                    assert os.readlink("/proc/thread-self/ns/net") != before
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    sockets[label] = sock
                    sock.bind(("0.0.0.0", PORT))  # the same port in every namespace: no clash
                    membership = socket.inet_aton(GROUP) + socket.inet_aton(peer.address)
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(peer.address))
                    sock.settimeout(TIMEOUT)
                assert os.readlink("/proc/thread-self/ns/net") == before
            sockets["p1"].sendto(b"roll call", (GROUP, PORT))
            for label, sock in sockets.items():
                assert sock.recvfrom(64) == (b"roll call", (lan.peers["p1"].address, PORT)), label
        finally:
            for sock in sockets.values():
                sock.close()
