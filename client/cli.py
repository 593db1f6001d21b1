"""``ptt-client``: the field user's command line. For now: enrolment with a KMS, provisioning, key status.

  ptt-client [--keystore PATH] [--passphrase-file F] enrol ENROLMENT.json
  ptt-client ... provision --user NAME --uri sip:alice@example.org [--uri GROUP-URI ...] [--password-file F]
                 [--enrolment ENROLMENT.json] [--watch]
  ptt-client ... keys

Secrets come from files or the environment (PTT_PASSWORD, PTT_KEYSTORE_PASSPHRASE), else a prompt.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
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
    keys = sub.add_parser("keys", help="list the keys held (no secrets shown)")
    keys.set_defaults(func=cmd_keys)
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
