"""``ptt-client adhoc``: off-network groups from the command line.

``adhoc create NAME --member URI …`` and ``adhoc join [NAME]`` run the client (microphone, speaker, the same
terminal UI as ``ptt-client talk``) with an ``AdhocSession``; while it runs, ``adhoc add|remove|leave|list|press|
release`` talk to it over a local control socket (a Unix socket next to the keystore, mode 0600: only its owner may
drive it). One JSON object per line each way: ``{"cmd": "add", "group": "rescue", "member": "sip:dave@…"}`` →
``{"ok": true, …}`` or ``{"ok": false, "error": "…"}``.

Script steps (``--script``, ';'-separated) for automation: ``wait S``, ``wait-keyed S`` (until a group is keyed —
the creator: until every member acknowledged — at most S seconds), ``talk S``, ``press``, ``release``,
``leave``, ``quit``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import termios
import tty
from pathlib import Path
from typing import Any

from twisted.internet import defer, endpoints, stdio, task
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver

from client.adhoc import AdhocSession, NetworkConfig
from client.app import Client
from client.app_keys import Keys
from client.errors import Exit, UserError, explain
from client.keystore import Keystore
from client.keystore_watch import watch_adhoc
from ptt import boundedjson
from ptt.adhoc.engine import AdhocError
from ptt.adhoc.messages import GroupInfo

log = logging.getLogger("ptt.client.adhoc")

MAX_REQUEST = 64 * 1024


def default_socket(keystore: str) -> str:
    return f"{keystore}.adhoc.sock"


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        value = int(port)
    except ValueError:
        raise ValueError(f"{what} must be ADDRESS:PORT, not {text!r}") from None
    if not host or not 0 < value < 65536:
        raise ValueError(f"{what} must be ADDRESS:PORT, not {text!r}")
    return host, value


class Agent:
    """The running ad-hoc client: session, optional voice and UI, and the control socket's commands."""

    def __init__(self, reactor: Any, session: AdhocSession, client: Client | None) -> None:
        self.reactor = reactor
        self.session = session
        self.client = client
        self.done: defer.Deferred[None] = defer.Deferred()

    def group_keyed(self, uri: str) -> None:
        if self.client is not None and uri not in self.client.groups:
            self.client.groups.append(uri)
            if not self.client.selected or self.client.selected not in self.session.groups:
                self.client.selected = uri

    def group_gone(self, uri: str) -> None:
        if self.client is not None and uri in self.client.groups:
            self.client.groups.remove(uri)
            if self.client.selected == uri:
                self.client.selected = self.client.groups[0] if self.client.groups else ""

    def _group(self, request: dict[str, Any]) -> str:
        name = request.get("group")
        if not name:
            if self.client is not None and self.client.selected:
                return self.client.selected
            if len(self.session.groups) == 1:
                return next(iter(self.session.groups))
            raise AdhocError("name the group")
        return self.session.find(str(name))

    def command(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "list":
            return {"ok": True, "uri": self.session.uri, "groups": self.session.listing()}
        if cmd == "stats":
            return {"ok": True, "stats": self.session.stats, "access_ms": self.session.access_ms}
        if cmd == "create":
            members = [str(m) for m in request.get("members", [])]
            media = parse_hostport(str(request["media"]), "media") if request.get("media") else None
            return {"ok": True, "group": _info(self.session.create(str(request.get("name", "")), members, media))}
        if cmd == "add":
            return {"ok": True, "group": _info(self.session.add_member(self._group(request), str(request["member"])))}
        if cmd == "remove":
            info = self.session.remove_member(self._group(request), str(request["member"]))
            return {"ok": True, "group": _info(info)}
        if cmd == "leave":
            self.session.leave_group(self._group(request))
            return {"ok": True}
        if cmd in ("press", "release"):
            group = self._group(request)
            if self.client is not None:
                self.client.selected = group
                if cmd == "press" and not self.client.want_talk:
                    self.client.press()
                elif cmd == "release" and self.client.want_talk:
                    self.client.release()
            elif cmd == "press":
                self.session.request_floor(group)
            else:
                self.session.release_floor(group)
            return {"ok": True}
        if cmd == "quit":
            self.reactor.callLater(0.1, self.stop)  # after this reply has gone out
            return {"ok": True}
        raise AdhocError(f"unknown command {cmd!r}")

    def stop(self) -> None:
        if not self.done.called:
            self.done.callback(None)


def _info(info: GroupInfo) -> dict[str, Any]:
    return {"uri": info.uri, "name": info.name, "manager": info.manager, "revision": info.revision,
            "members": list(info.members), "media": f"{info.media_host}:{info.media_port}"}  # fmt: skip


class ControlProtocol(LineOnlyReceiver):
    MAX_LENGTH = MAX_REQUEST
    delimiter = b"\n"

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def lineReceived(self, line: bytes) -> None:
        try:
            request = boundedjson.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
            reply = self.agent.command(request)
        except (AdhocError, KeyError, ValueError, RuntimeError) as exc:
            reply = {"ok": False, "error": str(exc) if not isinstance(exc, KeyError) else f"missing {exc}"}
        self.sendLine(json.dumps(reply).encode())

    def lineLengthExceeded(self, line: bytes) -> None:
        self.sendLine(b'{"ok": false, "error": "request too long"}')
        transport: Any = self.transport
        transport.loseConnection()


def control_request(path: str, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """One request to a running ad-hoc client (blocking; used by the CLI's short commands and by tests)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        try:
            conn.connect(path)
        except OSError as exc:
            raise ConnectionError(
                f"no ad-hoc client running with control socket {path} ({exc.strerror}); "
                "start one with 'ptt-client adhoc create' or 'adhoc join'"
            ) from None
        conn.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        raise ConnectionError(f"the ad-hoc client at {path} closed the connection without a reply")
    reply = boundedjson.loads(data)
    if not isinstance(reply, dict):
        raise ValueError("malformed reply")
    return reply


def _listen_control(reactor: Any, agent: Agent, path: str) -> Any:
    with contextlib.suppress(FileNotFoundError):
        if Path(path).is_socket():
            try:
                control_request(path, {"cmd": "list"}, timeout=1)
            except (OSError, ValueError):
                os.unlink(path)  # a stale socket of a client that died
            else:
                raise RuntimeError(f"another ad-hoc client is running with control socket {path}")
    old_umask = os.umask(0o177)
    try:
        return endpoints.UNIXServerEndpoint(reactor, path).listen(Factory.forProtocol(lambda: ControlProtocol(agent)))
    finally:
        os.umask(old_umask)


@defer.inlineCallbacks
def run_script(reactor: Any, agent: Agent, script: str) -> Any:
    session = agent.session

    def sleep(seconds: float) -> Any:
        return task.deferLater(reactor, seconds, lambda: None)

    for step in [s.strip() for s in script.split(";") if s.strip()]:
        word, _, arg = step.partition(" ")
        if word == "wait":
            yield sleep(float(arg))
        elif word == "wait-keyed":
            deadline = reactor.seconds() + float(arg or 30)
            while reactor.seconds() < deadline and not _all_keyed(session):
                yield sleep(0.05)
            if not _all_keyed(session):
                raise UserError(f"not keyed after {arg} s (wait-keyed)", Exit.FAILED)
        elif word == "talk":
            agent.command({"cmd": "press"})
            yield sleep(float(arg))
            agent.command({"cmd": "release"})
        elif word in ("press", "release", "leave"):
            agent.command({"cmd": word})
        elif word == "quit":
            break
        else:
            raise ValueError(f"unknown script step {step!r}")


def _all_keyed(session: AdhocSession) -> bool:
    listing = session.listing()
    return (
        bool(listing)
        and all(m["keyed"] for g in listing if g["role"] == "manager" for m in g["members"])
        and all(g["uri"] in session.groups for g in listing)
    )


def describe_event(message: dict[str, Any]) -> str:
    """A group event as a line for people (``--json`` prints the message itself)."""
    kind, group = message.get("kind"), message.get("name") or message.get("group")
    if kind == "keyed":
        return f"keyed for {group} ({message.get('group')})"
    if kind == "updated":
        return f"{group}: members now {', '.join(message.get('members', []))}"
    if kind == "removed":
        return f"no longer in {group}: {message.get('reason')}"
    if kind == "member-keyed":
        return f"{message.get('uri')} keyed for {group}"
    if kind == "refused":
        return f"refused from {message.get('uri') or 'unknown sender'}: {message.get('reason')}"
    return " ".join(f"{k}={v}" for k, v in message.items())


def main(args: Any, keystore: Keystore) -> int:
    """Entry from ``ptt-client adhoc create|join`` (args from ``client.cli``; the keystore opened and checked)."""
    network = NetworkConfig(
        interface=args.interface or "",
        discovery=parse_hostport(args.discovery, "--discovery"),
        unicast_port=args.port,
    )
    wanted_name = getattr(args, "name", None) if args.adhoc_command == "join" else None
    accept_from = set(getattr(args, "accept_from", None) or [])

    def accept(sender: str, info: GroupInfo) -> bool:
        return (not accept_from or sender in accept_from) and (wanted_name is None or info.name == wanted_name)

    outcome: dict[str, Any] = {"code": 0}
    interactive = not args.script and sys.stdin.isatty() and not args.no_audio

    def run(reactor: Any) -> Any:
        session = AdhocSession(reactor, keystore, args.uri, network=network, accept=accept, priority=args.priority)
        engine = voice = client = None
        if not args.no_audio:
            from client.audio import AudioEngine
            from client.voice import Voice

            engine = AudioEngine(input_device=args.input_device, output_device=args.output_device)
            voice = Voice(reactor, session, engine)
            client = Client(reactor, session, voice, [], quiet=args.quiet or not interactive)
        agent = Agent(reactor, session, client)
        base_events = session.event_listener

        def on_event(message: dict[str, Any]) -> None:
            base_events(message)
            kind = message.get("kind")
            if kind == "keyed":
                agent.group_keyed(message["group"])
                if voice is not None:
                    voice.monitor(message["group"])
            elif kind == "removed":
                agent.group_gone(message["group"])
                if voice is not None:
                    voice.unmonitor(message["group"])
            if args.json:
                print(json.dumps(message), flush=True)
            elif not interactive or kind in ("removed", "refused"):
                print(f"adhoc: {describe_event(message)}", flush=True)

        session.event_listener = on_event
        reactor.addSystemEventTrigger("before", "shutdown", agent.stop)  # SIGTERM/SIGINT: still write the report

        @defer.inlineCallbacks
        def go() -> Any:
            old_tty = None
            control = None
            watch = None
            try:
                session.start()
                watch = watch_adhoc(session)  # renewed keys are picked up (issue 18)
                control = yield _listen_control(reactor, agent, args.control_socket)
                if engine is not None:
                    engine.start()
                if args.adhoc_command == "create":
                    media = parse_hostport(args.media, "--media") if args.media else None
                    info = session.create(args.name, args.member, media)
                    print(f"created {info.name} ({info.uri}) with {', '.join(info.members)}", flush=True)
                else:
                    print(f"{args.uri} waiting for ad-hoc groups{' named ' + wanted_name if wanted_name else ''}",
                          flush=True)  # fmt: skip
                print(f"control socket {args.control_socket}", flush=True)
                if client is not None:
                    if interactive:
                        print("SPACE hold to talk (or tap to start/stop) · 1-9 select group · q quit", flush=True)
                    client.start_display()
                if args.script:
                    yield run_script(reactor, agent, args.script)
                elif interactive and client is not None:
                    old_tty = termios.tcgetattr(sys.stdin.fileno())
                    tty.setcbreak(sys.stdin.fileno())
                    stdio.StandardIO(Keys(client, agent.stop))
                    yield agent.done
                else:
                    yield agent.done  # until killed or told to quit
            except Exception as exc:
                error = explain(exc)
                print(f"ptt-client: {error}", file=sys.stderr, flush=True)
                outcome["code"] = int(error.code)
            finally:
                if old_tty is not None:
                    termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, old_tty)
                if args.report:
                    report = client.report() if client is not None else {"uri": args.uri, "stats": session.stats}
                    report.update(session.key_use.report())
                    report["adhoc"] = session.listing() if session.engine is not None else []
                    Path(args.report).write_text(json.dumps(report, indent=1))
                if engine is not None:
                    engine.stop()
                if watch is not None:
                    watch.stop()
                session.stop()
                if control is not None:
                    control.stopListening()  # removes the socket file
                print(flush=True)

        return go()

    with contextlib.suppress(SystemExit):
        task.react(run, [])
    return int(outcome["code"])
