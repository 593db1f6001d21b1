"""``ptt-client``: the field user's command line. For now: enrolment with a KMS, provisioning, key status.

  ptt-client [--keystore PATH] [--passphrase-file F] enrol ENROLMENT.json
  ptt-client ... provision --user NAME --uri sip:alice@example.org [--uri GROUP-URI ...] [--password-file F]
                 [--enrolment ENROLMENT.json] [--watch]
  ptt-client ... keys
  ptt-client ... history GROUP --uri ME --server-info F [--play ID] [--wav-dir D]   replay recorded bursts
  ptt-client ... adhoc create NAME --uri ME --member URI ... | join [NAME] --uri ME | add|remove GROUP URI |
                 leave GROUP | list | press|release [GROUP]

Secrets come from files or the environment (PTT_PASSWORD, PTT_KEYSTORE_PASSPHRASE), else a prompt.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from client.keystore import Keystore, KeystoreError
from ptt.kmsformat.enrolment import Enrolment
from ptt.kmsformat.model import KmsFormatError
from ptt.kmsformat.trust import user_domains

DEFAULT_KEYSTORE = Path(os.environ.get("PTT_KEYSTORE", Path.home() / ".local/share/ptt/keystore"))


class CliError(Exception):
    pass


def _secret(file: str | None, env: str, prompt: str) -> bytes:
    if file:
        try:
            return Path(file).read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise CliError(f"cannot read {file}: {exc.strerror}") from None
    if os.environ.get(env):
        return os.environ[env].encode()
    if not sys.stdin.isatty():
        raise CliError(f"no {prompt.lower()} given (use a file option or {env})")
    return getpass.getpass(f"{prompt}: ").encode()


def _open_keystore(args: argparse.Namespace) -> Keystore:
    passphrase = _secret(args.passphrase_file, "PTT_KEYSTORE_PASSPHRASE", "Keystore passphrase")
    try:
        return Keystore.open(Path(args.keystore), passphrase)
    except KeystoreError as exc:
        raise CliError(str(exc)) from None


def _load_enrolment(path: str) -> Enrolment:
    try:
        return Enrolment.from_json(Path(path).read_bytes())
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    except (KmsFormatError, ValueError) as exc:
        raise CliError(f"{path} is not a KMS enrolment: {exc}") from None


def _enrol(keystore: Keystore, enrolment: Enrolment) -> None:
    current = keystore.enrolment
    if current is not None and (current.kms_uri != enrolment.kms_uri or current.certificate != enrolment.certificate):
        raise CliError(
            f"the keystore already trusts KMS {current.kms_uri}; use another keystore for {enrolment.kms_uri}"
        )
    keystore.enrolment = enrolment


def cmd_enrol(args: argparse.Namespace) -> int:
    keystore = _open_keystore(args)
    enrolment = _load_enrolment(args.enrolment)
    _enrol(keystore, enrolment)
    keystore.save()
    print(f"enrolled with KMS {enrolment.kms_uri} at {enrolment.base_url}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    keystore = _open_keystore(args)
    if keystore.enrolment is None:
        print("not enrolled with any KMS")
        return 0
    domain = keystore.enrolment.certificate.domain()
    now = time.time()
    print(f"KMS {domain.kms_uri}, key period {domain.key_period} s, current period {domain.period_number(now)}")
    for uri in keystore.identities():
        for period in keystore.periods(uri):
            stored = keystore.key_sets[(uri, period)]
            until = datetime.fromtimestamp(stored.valid_to, UTC).isoformat() if stored.valid_to else "?"
            state = (
                "current"
                if period == domain.period_number(now)
                else ("next" if period > domain.period_number(now) else "past")
            )
            print(f"  {uri}  period {period} ({state}), valid until {until}")
    if not keystore.external:
        print("no external KMS trusted (none in the KMS's certificate cache at the last provisioning)")
    for kms_uri, certificate in sorted(keystore.external.items()):
        until = certificate.valid_to.isoformat() if certificate.valid_to else "?"
        print(f"external KMS {kms_uri} for users in {', '.join(user_domains(certificate))}, valid until {until}")
    return 0


def cmd_provision(args: argparse.Namespace) -> int:
    from twisted.internet import task

    from client.provisioning import ProvisioningAgent, ProvisioningError

    keystore = _open_keystore(args)
    if args.enrolment:
        _enrol(keystore, _load_enrolment(args.enrolment))
    if keystore.enrolment is None:
        raise CliError("not enrolled: pass --enrolment FILE (from the KMS operator's 'ptt-kms export-enrolment')")
    identities = args.uri or keystore.identities()
    if not identities:
        raise CliError("name the identity to provision with --uri (e.g. --uri sip:alice@example.org)")
    password = _secret(args.password_file, "PTT_PASSWORD", f"Password for {args.user}").decode()
    outcome: dict[str, Any] = {"code": 0}

    def run(reactor: Any) -> Any:
        agent = ProvisioningAgent(reactor, keystore, args.user, password, identities)
        d = agent.provision()

        def report(result: dict[str, list[Any]]) -> Any:
            for identity, key_sets in result.items():
                periods = ", ".join(str(k.key_period_no) for k in key_sets)
                print(f"provisioned {identity}: key periods {periods} (keys validated, stored in {args.keystore})")
            if args.watch:
                print("watching: keys are renewed automatically (Ctrl-C to stop)", flush=True)
                agent.start()
                return task.deferLater(reactor, 10**9, lambda: None)
            return None

        def failed(failure: Any) -> None:
            error = failure.value
            if isinstance(error, ProvisioningError | KmsFormatError):
                print(f"ptt-client: provisioning failed: {error}", file=sys.stderr)
            else:
                print(f"ptt-client: provisioning failed: {failure.getErrorMessage()}", file=sys.stderr)
            outcome["code"] = 2

        return d.addCallback(report).addErrback(failed)

    with contextlib.suppress(SystemExit):  # react() always exits; the outcome is ours to return
        task.react(lambda reactor: run(reactor), [])
    return int(outcome["code"])


def cmd_talk(args: argparse.Namespace) -> int:
    from client import app

    args.passphrase = _secret(args.passphrase_file, "PTT_KEYSTORE_PASSPHRASE", "Keystore passphrase")
    return app.main(args)


def cmd_adhoc_run(args: argparse.Namespace) -> int:
    from client import adhoc_app

    args.passphrase = _secret(args.passphrase_file, "PTT_KEYSTORE_PASSPHRASE", "Keystore passphrase")
    args.control_socket = args.control_socket or adhoc_app.default_socket(args.keystore)
    try:
        adhoc_app.parse_hostport(args.discovery, "--discovery")
        if getattr(args, "media", None):
            adhoc_app.parse_hostport(args.media, "--media")
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return adhoc_app.main(args)


def cmd_adhoc_control(args: argparse.Namespace) -> int:
    from client import adhoc_app

    path = args.control_socket or adhoc_app.default_socket(args.keystore)
    request: dict[str, Any] = {"cmd": args.adhoc_command}
    for name in ("group", "member"):
        if getattr(args, name, None):
            request[name] = getattr(args, name)
    try:
        reply = adhoc_app.control_request(path, request)
    except (ConnectionError, OSError, ValueError) as exc:
        raise CliError(str(exc)) from None
    if not reply.get("ok"):
        raise CliError(str(reply.get("error", "refused")))
    if args.adhoc_command != "list":
        print(json.dumps(reply.get("group", {"ok": True})))
    elif getattr(args, "json", False):
        print(json.dumps(reply, indent=1))
    else:
        _print_listing(reply)
    return 0


def _print_listing(reply: dict[str, Any]) -> None:
    groups = reply.get("groups", [])
    if not groups:
        print(f"{reply.get('uri')}: no ad-hoc groups")
    for group in groups:
        print(f"{group['name'] or '-'}  {group['uri']}  ({group['role']}; manager {group['manager']}; "
              f"revision {group['revision']}; media {group['media']}; floor {group['floor']}; "
              f"talking {group['talker'] or '-'})")  # fmt: skip
        for member in group["members"]:
            state = ("online" if member["online"] else "away") + (", keyed" if member["keyed"] else ", NOT keyed")
            print(f"    {member['uri']}  {state}")


def _add_adhoc(sub: Any) -> None:
    adhoc = sub.add_parser("adhoc", help="off-network groups: no server, no KMS; keyed and run by the clients")
    adhoc.add_argument("--control-socket", help="the running client's control socket (default: KEYSTORE.adhoc.sock)")
    commands = adhoc.add_subparsers(dest="adhoc_command", required=True)

    def agent_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--uri", required=True, help="your identity, e.g. sip:alice@example.org")
        parser.add_argument("--interface", help="local IPv4 address of the LAN to use (default: the routing table's)")
        parser.add_argument("--discovery", default="239.255.80.84:8450", help="discovery multicast group ADDR:PORT")
        parser.add_argument("--port", type=int, default=0, help="unicast UDP port for key delivery (default: any)")
        parser.add_argument("--priority", type=int, default=0, help="floor priority (0-255; higher pre-empts)")
        parser.add_argument("--input-device", help="microphone (name or part of it; default: the system's)")
        parser.add_argument("--output-device", help="speaker (name or part of it; default: the system's)")
        parser.add_argument("--no-audio", action="store_true", help="no microphone or speaker (keying only)")
        parser.add_argument(
            "--script", help="steps instead of keys: wait S; wait-keyed S; talk S; press; release; quit"
        )
        parser.add_argument("--report", help="write what was sent and heard to this JSON file at exit")
        parser.add_argument("--quiet", action="store_true", help="no status line")
        parser.set_defaults(func=cmd_adhoc_run)

    create = commands.add_parser("create", help="create a group, key its members and talk in it")
    create.add_argument("name")
    create.add_argument("--member", action="append", required=True, help="member identity URI (repeat)")
    create.add_argument("--media", help="media multicast ADDR:PORT (default: random in 239.255.0.0/16)")
    agent_options(create)
    join = commands.add_parser("join", help="wait for ad-hoc groups to be keyed by a nearby manager, and talk")
    join.add_argument("name", nargs="?", help="accept only a group of this name")
    join.add_argument("--accept-from", action="append", help="accept groups only from this manager URI (repeat)")
    agent_options(join)
    for name, text in (("add", "add a member (it gets the current key)"),
                       ("remove", "remove a member (the others are rekeyed)")):  # fmt: skip
        parser = commands.add_parser(name, help=text)
        parser.add_argument("group", help="group name or URI")
        parser.add_argument("member", help="member identity URI")
        parser.set_defaults(func=cmd_adhoc_control)
    leave = commands.add_parser(
        "leave", help="leave a group (its manager rekeys; if you manage it, a member takes over)"
    )
    leave.add_argument("group", help="group name or URI")
    leave.set_defaults(func=cmd_adhoc_control)
    listing = commands.add_parser("list", help="the running client's ad-hoc groups, members and key status")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_adhoc_control)
    for name in ("press", "release"):
        parser = commands.add_parser(name, help=f"PTT {name} in a group (for a hardware button or a script)")
        parser.add_argument("group", nargs="?", help="group name or URI (default: the selected one)")
        parser.set_defaults(func=cmd_adhoc_control)


def cmd_call(args: argparse.Namespace) -> int:
    from client import call_app

    args.passphrase = _secret(args.passphrase_file, "PTT_KEYSTORE_PASSPHRASE", "Keystore passphrase")
    return call_app.main(args)


def _add_call(sub: Any) -> None:
    call = sub.add_parser("call", help="a private call to one user (keyed end to end with a PCK)")
    call.add_argument("callee", help="whom to call, e.g. sip:bob@example.org")
    call.add_argument("--uri", required=True, help="your identity, e.g. sip:alice@example.org")
    call.add_argument("--server-info", required=True, help="the server's client-info file")
    call.add_argument("--manual", action="store_true", help="the callee accepts or rejects (manual commencement)")
    call.add_argument("--input-device", help="microphone (name or part of it; default: the system's)")
    call.add_argument("--output-device", help="speaker (name or part of it; default: the system's)")
    call.add_argument("--script", help="steps instead of keys: wait S; wait-connected S; talk S; hangup; quit")
    call.add_argument("--report", help="write what was sent and heard to this JSON file at exit")
    call.add_argument("--quiet", action="store_true", help="no status line")
    call.set_defaults(func=cmd_call)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptt-client", description="Secure push-to-talk client")
    parser.add_argument("--keystore", default=str(DEFAULT_KEYSTORE), help=f"keystore file (default {DEFAULT_KEYSTORE})")
    parser.add_argument("--passphrase-file", help="file holding the keystore passphrase (else PTT_KEYSTORE_PASSPHRASE)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    enrol = sub.add_parser("enrol", help="trust a KMS (its enrolment file from the operator)")
    enrol.add_argument("enrolment")
    enrol.set_defaults(func=cmd_enrol)
    provision = sub.add_parser("provision", help="log in to the KMS and fetch this period's and the next's keys")
    provision.add_argument("--user", required=True, help="KMS account name")
    provision.add_argument("--uri", action="append", help="identity to provision (repeat for a group you manage)")
    provision.add_argument("--password-file", help="file holding the password (else PTT_PASSWORD or a prompt)")
    provision.add_argument("--enrolment", help="enrol with this KMS first")
    provision.add_argument("--watch", action="store_true", help="stay running and renew keys automatically")
    provision.set_defaults(func=cmd_provision)
    talk = sub.add_parser("talk", help="join groups and talk with the microphone and speaker")
    talk.add_argument("--uri", required=True, help="your identity, e.g. sip:alice@example.org")
    talk.add_argument("--server-info", required=True, help="the server's client-info file")
    talk.add_argument("--group", required=True, help="the group to talk in")
    talk.add_argument("--monitor", action="append", help="also listen to this group (lower priority)")
    talk.add_argument("--input-device", help="microphone (name or part of it; default: the system's)")
    talk.add_argument("--output-device", help="speaker (name or part of it; default: the system's)")
    talk.add_argument("--script", help="run these steps instead of reading keys (wait S; talk S; select G; quit)")
    talk.add_argument("--report", help="write what was sent and heard to this JSON file at exit")
    talk.add_argument("--quiet", action="store_true", help="no status line")
    talk.set_defaults(func=cmd_talk)
    _add_call(sub)
    from client import history_app

    history_app.add_command(sub, _secret)  # ptt-client history GROUP (issue 17)
    keys = sub.add_parser("keys", help="list the keys held (no secrets shown)")
    keys.set_defaults(func=cmd_keys)
    _add_adhoc(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"ptt-client: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
