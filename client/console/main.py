"""ptt-console: the dispatcher console in the browser (issue 15).

  ptt-console --keystore disp.ks --uri sip:dispatch1@example.org --server-info server.json --user dana

Logs in to the group server as the keystore's identity (a KMS identity, like any client: control channel, group
keys, relay, floor), follows the dispatcher API's event stream with the dispatcher's login, and serves the console
page on http://127.0.0.1:PORT (loopback only). It prints the URL to open, with a secret token for this start.

Why plain HTTP on 127.0.0.1 and not HTTPS: the page and ptt-console talk over the loopback interface only, which
other users of the machine cannot sniff; browsers treat http://127.0.0.1 as a secure context (microphone,
AudioWorklet allowed); and a generated certificate would be one the browser does not trust, teaching dispatchers
to click through certificate warnings. The token (cookie, SameSite=Strict), the Host and Origin checks keep other
local users and other sites out (``client.console.web``). Everything beyond this machine is TLS as before: the
control channel, the dispatcher API, SRTP media.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer, endpoints, task
from twisted.web import server

from client.console.bridge import BridgeFactory, ConsoleState
from client.console.upstream import DispatchUpstream
from client.console.web import ConsoleRoot
from client.keystore import Keystore
from client.keystore_watch import KeystoreWatch, watch_session
from client.serverinfo import ServerInfo
from client.session import PttSession
from client.tls import trust_from_info

__all__ = ["main"]

log = logging.getLogger("ptt.console")

PASSWORD_ENV = "PTT_DISPATCH_PASSWORD"


def _read_secret(path: str | None, env: str, prompt: str) -> str:
    if path:
        lines = Path(path).read_text().splitlines()
        return lines[0] if lines else ""
    if os.environ.get(env):
        return os.environ[env]
    return getpass.getpass(prompt)


def _dispatch_url(info: dict[str, Any], override: str | None) -> str:
    if override:
        return override
    if "dispatch_port" not in info:
        raise SystemExit("ptt-console: the server-info file names no dispatch_port: give --dispatch URL")
    return f"https://{info['host']}:{int(info['dispatch_port'])}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ptt-console", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keystore", required=True, help="the dispatcher's keystore (ptt-client provision)")
    parser.add_argument("--passphrase-file", help="keystore passphrase file (else PTT_KEYSTORE_PASSPHRASE or asked)")
    parser.add_argument("--uri", required=True, help="the dispatcher's identity, e.g. sip:dispatch1@example.org")
    parser.add_argument("--server-info", required=True, help="the group server's client-info file")
    parser.add_argument("--user", required=True, help="the dispatcher API account")
    parser.add_argument("--password-file", help=f"its password (else ${PASSWORD_ENV} or asked)")
    parser.add_argument("--dispatch", help="the dispatcher API's URL (default: from the server-info file)")
    parser.add_argument("--port", type=int, default=8480, help="the console page's port on 127.0.0.1 (8480; 0: any)")
    parser.add_argument("--url-file", help="also write the console's URL (with its token) to this file (0600)")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    passphrase = _read_secret(args.passphrase_file, "PTT_KEYSTORE_PASSPHRASE", "keystore passphrase: ")
    password = _read_secret(args.password_file, PASSWORD_ENV, f"password of {args.user}: ")
    keystore = Keystore.open(Path(args.keystore), passphrase.encode())
    info_text = Path(args.server_info).read_text()
    info = json.loads(info_text)
    server_info = ServerInfo.from_json(info_text)
    trust = trust_from_info(str(info["cert_pem"]).encode("ascii"), info.get("tls_ca"))
    outcome = {"code": 0}

    async def run(reactor: Any) -> None:
        session = PttSession(reactor, keystore, args.uri, server_info)
        upstream = DispatchUpstream(reactor, _dispatch_url(info, args.dispatch), trust, args.user, password)
        try:
            code, _, body = await upstream.request("GET", "/api/groups")
            if code != 200:
                raise RuntimeError(f"the dispatcher API refused {args.user}: {body.decode(errors='replace')[:200]}")
            await session.start()
        except Exception as exc:
            print(f"ptt-console: {exc}", file=sys.stderr, flush=True)
            outcome["code"] = 2
            session.stop()
            return
        watch = watch_session(session)  # a console runs for weeks: renewed keys are picked up (issue 18)
        state = ConsoleState(reactor, session, upstream)
        session.event_listener = lambda message: state.changed()
        token = secrets.token_urlsafe(32)
        root = ConsoleRoot(token, args.port, upstream, BridgeFactory(state))
        site = server.Site(root)
        site.displayTracebacks = False
        endpoint = endpoints.TCP4ServerEndpoint(reactor, args.port, interface="127.0.0.1")
        port = await endpoint.listen(site)
        root.port = port.getHost().port
        url = f"http://127.0.0.1:{root.port}/?token={token}"
        if args.url_file:
            descriptor = os.open(args.url_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(url + "\n")
        state.media.start()
        upstream.follow_events(state.event, state.upstream_state)
        print(f"ptt-console {args.uri} ready: open {url}", flush=True)
        stopped: defer.Deferred[None] = defer.Deferred()
        reactor.addSystemEventTrigger("before", "shutdown", lambda: _stop(session, upstream, state, watch))
        await stopped

    with contextlib.suppress(SystemExit, KeyboardInterrupt):
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)), [])
    return int(outcome["code"])


def _stop(session: Any, upstream: Any, state: ConsoleState, watch: KeystoreWatch) -> None:
    watch.stop()
    state.media.set_patch(None, None)
    state.media.stop()
    upstream.stop()
    session.stop()


if __name__ == "__main__":
    sys.exit(main())
