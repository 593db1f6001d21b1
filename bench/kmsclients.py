"""The clients of ``bench.kms``: processes of threads, each thread one keep-alive TLS connection to the KMS, driven
by the parent a run at a time.

A process's connections come from its own loopback address (127.0.1.N, N = process + 1): the KMS steers
connections to workers by source address (address mod workers), so the processes spread evenly over 2 workers.
Users are dealt round-robin to processes and threads. The parent sends ``prepare MODE`` (users whose access token
is older than half its life, or who have none, get one by the password grant: not timed) and then ``go`` to every
process at once; each process answers with its latencies (ms), errors, start and end times (wall clock, shared by
the processes), its CPU seconds and one keyprov body for the parent to verify.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ptt.kmsformat.enrolment import Enrolment
from ptt.kmsformat.model import KmsRequest
from ptt.kmsformat.xml import request_to_xml

__all__ = ["ClientPool", "RunResult"]

TOKEN = "/idms/token"
KEYPROV = "/keymanagement/identity/v1/keyprov"
TOKEN_REUSE = 250.0  # seconds an access token is reused across runs (the KMS issues them for 600 s)


@dataclass
class RunResult:
    users: int
    seconds: float
    latencies_ms: list[float]
    client_cpu: float
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.users / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@dataclass
class _User:
    name: str
    secret: str
    identity: str
    access: str = ""
    refresh: str = ""
    obtained: float = 0.0


class _Connection:
    """One keep-alive HTTPS connection from ``source``, reopened when the server closes it."""

    def __init__(self, port: int, source: str, context: ssl.SSLContext) -> None:
        self.port, self.source, self.context = port, source, context
        self.connection: http.client.HTTPSConnection | None = None

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self.connection is None:
                self.connection = http.client.HTTPSConnection(
                    "127.0.0.1", self.port, context=self.context, timeout=120, source_address=(self.source, 0)
                )
            try:
                self.connection.request("POST", path, body=body, headers=headers)
                reply = self.connection.getresponse()
                data = reply.read()
                if reply.getheader("Connection", "").lower() == "close":
                    self.close()
                return reply.status, data
            except (ConnectionError, http.client.HTTPException, ssl.SSLError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


class _Client:
    """One client process's users and connections."""

    def __init__(
        self, port: int, source: str, cafile: str, enrolment: Enrolment, users: list[_User], threads: int
    ) -> None:
        context = ssl.create_default_context(cafile=cafile)
        self.enrolment = enrolment
        self.connections = [_Connection(port, source, context) for _ in range(threads)]
        self.slices = [users[i::threads] for i in range(threads)]

    def _each_thread(self, work: Any) -> list[Any]:
        results: list[Any] = [None] * len(self.connections)

        def target(i: int) -> None:
            try:
                results[i] = work(self.connections[i], self.slices[i])
            except Exception as exc:  # a bench: reported, not hidden
                results[i] = exc

        threads = [threading.Thread(target=target, args=(i,)) for i in range(len(self.connections))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    def _grant(self, connection: _Connection, user: _User, fields: dict[str, str]) -> str | None:
        form = urllib.parse.urlencode(fields).encode()
        status, body = connection.post(TOKEN, form, {"Content-Type": "application/x-www-form-urlencoded"})
        if status != 200:
            return f"{user.name}: token {status} {body[:200]!r}"
        document = json.loads(body)
        user.access, user.refresh, user.obtained = document["access_token"], document["refresh_token"], time.time()
        return None

    def prepare(self) -> list[str]:
        def work(connection: _Connection, users: list[_User]) -> list[str]:
            errors = []
            for user in users:
                if time.time() - user.obtained > TOKEN_REUSE:
                    fields = {"grant_type": "password", "username": user.name, "password": user.secret}
                    error = self._grant(connection, user, fields)
                    if error:
                        errors.append(error)
            return errors

        return [e for r in self._each_thread(work) for e in (r if isinstance(r, list) else [repr(r)])]

    def go(self, mode: str) -> dict[str, Any]:
        sample: list[bytes] = []

        def kms(connection: _Connection, user: _User, path: str) -> tuple[int, bytes]:
            now = datetime.now(UTC)
            body = request_to_xml(
                KmsRequest(user.identity, self.enrolment.kms_uri, now, self.enrolment.base_url + path)
            )
            headers = {"Authorization": f"Bearer {user.access}", "Content-Type": "application/xml"}
            return connection.post(path, body, headers)

        def work(connection: _Connection, users: list[_User]) -> tuple[list[float], list[str]]:
            latencies, errors = [], []
            for user in users:
                start = time.perf_counter()
                if mode == "renewal":
                    error = self._grant(
                        connection, user, {"grant_type": "refresh_token", "refresh_token": user.refresh}
                    )
                    if error:
                        errors.append(error)
                        continue
                status, body = kms(connection, user, KEYPROV)
                latencies.append((time.perf_counter() - start) * 1e3)
                if status != 200 or b"KeyProv" not in body:
                    errors.append(f"{user.name}: keyprov {status} {body[:200]!r}")
                elif not sample:
                    sample.append(body)
            return latencies, errors

        cpu = os.times()
        started = time.time()
        results = self._each_thread(work)
        ended = time.time()
        after = os.times()
        latencies: list[float] = []
        errors: list[str] = []
        for r in results:
            if isinstance(r, tuple):
                latencies += r[0]
                errors += r[1]
            else:
                errors.append(repr(r))
        return {
            "latencies": latencies,
            "errors": errors,
            "started": started,
            "ended": ended,
            "cpu": (after.user + after.system) - (cpu.user + cpu.system),
            "sample": sample[0].decode("utf-8", "replace") if sample else "",
        }


def _client_main(
    pipe: Any, port: int, source: str, cafile: str, enrolment_json: bytes, users: list[_User], threads: int
) -> None:
    client = _Client(port, source, cafile, Enrolment.from_json(enrolment_json), users, threads)
    while True:
        command, argument = pipe.recv()
        if command == "quit":
            break
        if command == "prepare":
            pipe.send(client.prepare())
        elif command == "go":
            pipe.send(client.go(argument))


class ClientPool:
    """``processes`` client processes over ``secrets`` (account name -> service token; its identity is
    sip:NAME@example.org)."""

    def __init__(
        self,
        *,
        port: int,
        cafile: Path,
        enrolment: dict[str, Any],
        secrets: dict[str, str],
        processes: int,
        threads: int,
    ) -> None:
        self.enrolment = Enrolment.from_json(json.dumps(enrolment).encode())
        self.users = [_User(name, secret, f"sip:{name}@example.org") for name, secret in sorted(secrets.items())]
        context = multiprocessing.get_context("fork")
        self.pipes = []
        self.processes = []
        for p in range(processes):
            parent, child = context.Pipe()
            users = self.users[p::processes]
            args = (child, port, f"127.0.1.{p + 1}", str(cafile), json.dumps(enrolment).encode(), users, threads)
            process = context.Process(target=_client_main, args=args, daemon=True)
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(self, *exc: object) -> None:
        for pipe in self.pipes:
            pipe.send(("quit", None))
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()

    def prepare(self, mode: str) -> None:
        for pipe in self.pipes:
            pipe.send(("prepare", None))
        errors = [e for pipe in self.pipes for e in pipe.recv()]
        if errors:
            raise SystemExit(f"{len(errors)} token requests failed, e.g. {errors[:3]}")
        self.mode = mode

    def go(self) -> RunResult:
        for pipe in self.pipes:  # as close together as the pipes allow
            pipe.send(("go", self.mode))
        answers = [pipe.recv() for pipe in self.pipes]
        errors = [e for a in answers for e in a["errors"]]
        if errors:
            raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[:3]}")
        self._verify(answers[0]["sample"].encode())
        seconds = max(a["ended"] for a in answers) - min(a["started"] for a in answers)
        latencies = [x for a in answers for x in a["latencies"]]
        return RunResult(len(latencies), seconds, latencies, sum(a["cpu"] for a in answers))

    def _verify(self, body: bytes) -> None:
        from client.provisioning import accept_key_prov

        identity = body.split(b"<UserUri>", 1)[1].split(b"<", 1)[0].decode()
        key_sets, _ = accept_key_prov(body, self.enrolment, identity, time.time(), None)
        if len(key_sets) != 2:
            raise SystemExit(f"keyprov gave {len(key_sets)} key sets, not the current and the next period's")
