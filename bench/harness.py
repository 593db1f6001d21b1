"""A whole system on 127.0.0.1 as real processes (KMS, group server, headless clients), for end-to-end tests and
benchmarks: ``start_system(root)`` initialises and starts everything and creates one group of three members."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
USERS = ("alice", "bob", "carol")
GROUP = "sip:fire@example.org"


# Ports for the daemons are taken below the kernel's ephemeral range (32768 and up by default): a port chosen there
# could be taken by another test's outgoing connection before the daemon binds it ("Address already in use").
# Each process starts at its own place in 20000-31999 and checks TCP and UDP on every address.
_PORT_BASE, _PORT_SPAN = 20000, 12000
_port_counter = itertools.count((os.getpid() * 7919) % _PORT_SPAN)
_port_lock = threading.Lock()


def _bindable(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            if kind == socket.SOCK_STREAM:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemons listen
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                return False
    return True


def free_ports(n: int) -> list[int]:
    ports: list[int] = []
    with _port_lock:
        while len(ports) < n:
            port = _PORT_BASE + next(_port_counter) % _PORT_SPAN
            if _bindable(port):
                ports.append(port)
    return ports


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of every process started here: no PTT_ settings, and this tree's code first on the path
    (the venv's editable install may point at another checkout, e.g. when a git worktree of an older commit is
    measured with the same venv)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(extra)
    return env


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in this tree with ``clean_env()``, through ``prefix`` if given (``ip netns exec NS``)."""
    return subprocess.run(
        [*prefix, sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or clean_env(),
    )


@dataclass
class Daemon:
    args: list[str]
    ready: str
    log: list[str] = field(default_factory=list)
    process: subprocess.Popen[str] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 60.0
    prefix: tuple[str, ...] = ()  # a wrapper the command runs through, e.g. ("ip", "netns", "exec", NS)
    _drainer: threading.Thread | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*self.prefix, sys.executable, *self.args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=clean_env(**self.extra_env),
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.log.append(line)
            if self.ready in line:
                # Drain the rest on a thread: a daemon logging into a full pipe would block (the server logs every
                # login and CSK; a load test of hundreds of them filled the 64 KiB pipe and froze the server).
                self._drainer = threading.Thread(target=self._drain, args=(self.process.stdout,), daemon=True)
                self._drainer.start()
                return
        self.stop()
        raise AssertionError(f"{self.args} did not start:\n" + "".join(self.log))

    def _drain(self, stream: Any) -> None:
        for line in stream:
            self.log.append(line)

    def output(self) -> str:
        if self._drainer is not None and self._drainer.is_alive():
            time.sleep(0.2)  # lines already written reach the log (the drainer reads them as they come)
        return "".join(self.log)

    def kill(self) -> None:
        """SIGKILL, as when the host dies: no clean shutdown."""
        if self.process is not None:
            self.process.kill()
        self.stop()

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            if self._drainer is not None:
                self._drainer.join(5)  # the last lines, up to the pipe's end
            self.process = None


@dataclass
class System:
    root: Path
    kms: Daemon
    server: Daemon
    dispatch_port: int

    def dispatch(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``ptt-dispatch`` as the admin; global options (``--timeout S``) go before the command."""
        return run(
            "-m",
            "server.dispatch.cli",
            "--server",
            f"https://127.0.0.1:{self.dispatch_port}",
            "--cacert",
            str(self.root / "server" / "tls-cert.pem"),
            "--user",
            "admin",
            *args,
            env=clean_env(PTT_DISPATCH_PASSWORD="admin-password-x"),
            timeout=timeout,
        )

    def client(self, user: str, script: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "client.headless",
                "--keystore",
                str(self.root / f"{user}.ks"),
                "--passphrase-file",
                str(self.root / "ks.pw"),
                "--server-info",
                str(self.root / "server.json"),
                "--uri",
                f"sip:{user}@example.org",
                "--script",
                script,
                "--report",
                str(self.root / f"{user}.json"),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=clean_env(),
        )

    def report(self, user: str) -> dict[str, Any]:
        return dict(json.loads((self.root / f"{user}.json").read_text()))


def wait_all(processes: list[subprocess.Popen[str]], timeout: float = 90) -> None:
    for p in processes:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, out


def start_system(
    root: Path,
    *,
    outsiders: tuple[str, ...] = (),
    server_env: dict[str, str] | None = None,
    group_grants: tuple[str, ...] = (),
    kms_init: tuple[str, ...] = (),
    server_init: tuple[str, ...] = (),
) -> System:
    """Initialise and start a KMS and a group server under ``root``, provision USERS (and ``outsiders``: domain
    users who are not in the group) and create GROUP. ``server_env`` adds environment for the server process;
    ``group_grants`` are more group URIs the server's KMS account may be keyed for (groups a bench creates);
    ``kms_init``/``server_init`` more options of ``ptt-kms init``/``ptt-server init`` (addresses and names)."""
    kms_port, dispatch_port, control_port, relay_port = free_ports(4)
    root.mkdir(parents=True, exist_ok=True)
    everyone = (*USERS, *outsiders)
    for name in (*everyone, "admin"):
        (root / f"{name}.pw").write_text(f"{name}-password-x\n")
    (root / "ks.pw").write_text("keystore-passphrase\n")
    kms = ["-m", "server.kms.cli", "--data", str(root / "kms")]
    assert (
        run(*kms, "init", "--domain", "example.org", "--kms-uri", "kms.example.org", "--port", str(kms_port),
            *kms_init).returncode
        == 0
    )  # fmt: skip
    for user in everyone:
        assert (
            run(
                *kms,
                "user",
                "add",
                user,
                "--uri",
                f"sip:{user}@example.org",
                "--password-file",
                str(root / f"{user}.pw"),
            ).returncode
            == 0
        )
    # the group server's account is a service account: a generated token, which wrong guesses cannot lock
    out = run(*kms, "user", "add", "ptt-server", "--uri", "sip:ptt-server@example.org", "--service",
              "--secret-out", str(root / "server.token"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    for group in (GROUP, *group_grants):
        assert run(*kms, "grant", "ptt-server", group).returncode == 0
    assert run(*kms, "export-enrolment", "--out", str(root / "enrol.json")).returncode == 0
    kms_daemon = Daemon([*kms, "serve"], "listening on")
    kms_daemon.start()
    server = ["-m", "server.main", "--data", str(root / "server")]
    out = run(
        *server,
        "init",
        "--kms-enrolment",
        str(root / "enrol.json"),
        "--kms-user",
        "ptt-server",
        "--kms-secret-file",
        str(root / "server.token"),
        "--server-uri",
        "sip:ptt-server@example.org",
        "--dispatch-port",
        str(dispatch_port),
        "--control-port",
        str(control_port),
        "--relay-port",
        str(relay_port),
        *server_init,
    )
    assert out.returncode == 0, out.stderr
    assert run(*server, "dispatcher", "add", "admin", "--password-file", str(root / "admin.pw")).returncode == 0
    assert run(*server, "client-info", "--out", str(root / "server.json")).returncode == 0
    server_daemon = Daemon([*server, "serve"], "listening:", extra_env=dict(server_env or {}))
    server_daemon.start()
    for user in everyone:
        out = run(
            "-m",
            "client.cli",
            "--keystore",
            str(root / f"{user}.ks"),
            "--passphrase-file",
            str(root / "ks.pw"),
            "provision",
            "--enrolment",
            str(root / "enrol.json"),
            "--user",
            user,
            "--password-file",
            str(root / f"{user}.pw"),
            "--uri",
            f"sip:{user}@example.org",
        )
        assert out.returncode == 0, out.stderr
    system = System(root, kms_daemon, server_daemon, dispatch_port)
    created = system.dispatch(
        "group", "create", "fire", *[a for u in USERS for a in ("--member", f"sip:{u}@example.org")]
    )
    assert created.returncode == 0, created.stderr
    return system


def stop_system(system: System) -> None:
    system.server.stop()
    system.kms.stop()


def provision_offline(root: Path, users: list[str]) -> Path:
    """Set up a KMS under ``root``, provision ``users`` (keystores ``root/USER.ks``, passphrase ``root/ks.pw``),
    then stop the KMS: what a team does before going off-network. Provisioning runs a few clients at a time."""
    (kms_port,) = free_ports(1)
    root.mkdir(parents=True, exist_ok=True)
    (root / "ks.pw").write_text("keystore-passphrase\n")
    kms = ["-m", "server.kms.cli", "--data", str(root / "kms")]
    out = run(*kms, "init", "--domain", "example.org", "--kms-uri", "kms.example.org", "--port", str(kms_port))
    assert out.returncode == 0, out.stderr
    for user in users:
        (root / f"{user}.pw").write_text(f"{user}-password-x\n")
        out = run(*kms, "user", "add", user, "--uri", f"sip:{user}@example.org", "--password-file",
                  str(root / f"{user}.pw"))  # fmt: skip
        assert out.returncode == 0, out.stderr
    assert run(*kms, "export-enrolment", "--out", str(root / "enrol.json")).returncode == 0
    kms_daemon = Daemon([*kms, "serve"], "listening on", start_timeout=30)
    kms_daemon.start()
    try:
        pending = list(users)
        while pending:
            batch, pending = pending[:4], pending[4:]
            clients = {user: _provision_client(root, user) for user in batch}
            for user, client in clients.items():
                output, _ = client.communicate(timeout=120)
                assert client.returncode == 0, f"provisioning {user} failed: {output}"
    finally:
        kms_daemon.stop()
    return root


def _provision_client(root: Path, user: str) -> subprocess.Popen[str]:
    args = ["--keystore", str(root / f"{user}.ks"), "--passphrase-file", str(root / "ks.pw"), "provision",
            "--enrolment", str(root / "enrol.json"), "--user", user, "--password-file", str(root / f"{user}.pw"),
            "--uri", f"sip:{user}@example.org"]  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "client.cli", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=clean_env(),
    )
