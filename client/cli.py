"""``ptt-client``: the field user's command line.

  ptt-client [--config client.toml] [--keystore PATH] [--passphrase-file F] COMMAND
  ptt-client ... enrol ENROLMENT.json
  ptt-client ... provision --user NAME --uri sip:alice@example.org [--uri GROUP-URI ...] [--password-file F]
                 [--enrolment ENROLMENT.json] [--watch]
  ptt-client ... keys
  ptt-client ... talk [--group G] [--server-info F] [--plain] [--ptt-key DEVICE:KEY]
  ptt-client ... call URI | buttons [DEVICE]
  ptt-client ... history GROUP [--play ID] [--wav-dir D]   replay recorded bursts
  ptt-client ... message URI [--wav F | --seconds N] [--wait delivered|played]   leave a voice message
  ptt-client ... messages [--play ID] [--wav-dir D]          play the voice messages left for you
  ptt-client ... adhoc create NAME --member URI ... | join [NAME] | add|remove GROUP URI |
                 leave GROUP | list | press|release [GROUP]

Secrets come from files or the environment (PTT_PASSWORD, PTT_KEYSTORE_PASSPHRASE), else a prompt. Settings come
from the command line, else ``client.toml`` (``client.config``); the identity from the keystore when it holds one.
Every mistake is one line on stderr and an exit code of ``client.errors.Exit``.
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

from client import config, launch
from client.cli_adhoc import add_adhoc
from client.errors import EXIT_CODES_HELP, Exit, UserError
from client.keystore import Keystore, KeystoreError
from ptt.kmsformat.enrolment import Enrolment
from ptt.kmsformat.model import KmsFormatError
from ptt.kmsformat.trust import user_domains

DEFAULT_KEYSTORE = Path(os.environ.get("PTT_KEYSTORE", Path.home() / ".local/share/ptt/keystore"))

log = logging.getLogger("ptt.client.cli")


def CliError(message: str) -> UserError:
    return UserError(message, Exit.USAGE)


def _secret(file: str | None, env: str, prompt: str, *, confirm: bool = False) -> bytes:
    if file:
        try:
            return Path(file).expanduser().read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise CliError(f"cannot read {file}: {exc.strerror}") from None
    if os.environ.get(env):
        return os.environ[env].encode()
    if not sys.stdin.isatty():
        raise CliError(f"no {prompt.lower()} given (use a file option or {env})")
    secret = getpass.getpass(f"{prompt}: ").encode()
    if confirm and getpass.getpass(f"{prompt} again: ").encode() != secret:
        raise CliError(f"the two {prompt.lower()}s differ: nothing was changed")
    return secret


def _passphrase(args: argparse.Namespace, *, new_keystore: bool = False) -> bytes:
    """The keystore passphrase; a keystore about to be created asks for a new one twice (a typo would lock it)."""
    prompt = "New keystore passphrase" if new_keystore else "Keystore passphrase"
    return _secret(args.passphrase_file, "PTT_KEYSTORE_PASSPHRASE", prompt, confirm=new_keystore)


def _open_keystore(args: argparse.Namespace, *, may_create: bool = False) -> Keystore:
    """The keystore (``may_create``: a new, empty one when the file is absent, for enrol and provision)."""
    path = Path(args.keystore).expanduser()
    if not may_create:
        return launch.open_keystore(path, _passphrase(args))
    passphrase = _passphrase(args, new_keystore=not path.exists())
    try:
        return Keystore.open(path, passphrase)
    except KeystoreError as exc:
        text = str(exc)
        if "wrong passphrase" in text:
            text = f"wrong passphrase for the keystore {path} (or the file was altered)"
        raise UserError(text, Exit.KEYSTORE) from None


def _load_enrolment(path: str) -> Enrolment:
    try:
        return Enrolment.from_json(Path(path).expanduser().read_bytes())
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    except (KmsFormatError, ValueError, KeyError, TypeError) as exc:
        raise CliError(f"{path} is not a KMS enrolment: {exc}") from None


def _enrol(keystore: Keystore, enrolment: Enrolment) -> None:
    current = keystore.enrolment
    if current is not None and (current.kms_uri != enrolment.kms_uri or current.certificate != enrolment.certificate):
        raise UserError(
            f"the keystore already trusts KMS {current.kms_uri}; use another keystore for {enrolment.kms_uri}",
            Exit.KEYSTORE,
        )
    keystore.enrolment = enrolment


def cmd_enrol(args: argparse.Namespace) -> int:
    enrolment = _load_enrolment(args.enrolment)
    keystore = _open_keystore(args, may_create=True)
    _enrol(keystore, enrolment)
    _save(keystore)
    print(f"enrolled with KMS {enrolment.kms_uri} at {enrolment.base_url}")
    return 0


def _save(keystore: Keystore) -> None:
    try:
        keystore.save()
    except KeystoreError as exc:
        raise UserError(str(exc), Exit.KEYSTORE) from None


def cmd_keys(args: argparse.Namespace) -> int:
    keystore = _open_keystore(args)
    assert keystore.enrolment is not None  # launch.open_keystore refuses one without
    domain = keystore.enrolment.certificate.domain()
    now = time.time()
    print(f"KMS {domain.kms_uri}, key period {domain.key_period} s, current period {domain.period_number(now)}")
    for uri in keystore.identities():
        for period in keystore.periods(uri):
            stored = keystore.key_sets[(uri, period)]
            until = datetime.fromtimestamp(stored.valid_to, UTC).isoformat() if stored.valid_to else "?"
            current = domain.period_number(now)
            state = "current" if period == current else ("next" if period > current else "past")
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

    enrolment = _load_enrolment(args.enrolment) if args.enrolment else None
    keystore = _open_keystore(args, may_create=True)
    if enrolment is not None:
        _enrol(keystore, enrolment)
    if keystore.enrolment is None:
        raise CliError("not enrolled: pass --enrolment FILE (from the KMS operator's 'ptt-kms export-enrolment')")
    identities = args.uri or keystore.identities()
    if not identities:
        raise CliError("name the identity to provision with --uri (e.g. --uri sip:alice@example.org)")
    password = _secret(args.password_file, "PTT_PASSWORD", f"Password for {args.user}").decode()
    outcome: dict[str, Any] = {"code": Exit.OK}

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
            text = str(error) if isinstance(error, ProvisioningError | KmsFormatError) else failure.getErrorMessage()
            print(f"ptt-client: provisioning failed: {text}", file=sys.stderr)
            unreachable = text.startswith(("cannot reach the KMS", "KMS at "))
            outcome["code"] = Exit.UNREACHABLE if unreachable else Exit.REFUSED

        return d.addCallback(report).addErrback(failed)

    with contextlib.suppress(SystemExit):  # react() always exits; the outcome is ours to return
        task.react(lambda reactor: run(reactor), [])
    return int(outcome["code"])


def _identity(args: argparse.Namespace) -> Keystore:
    """The keystore opened and checked, ``args.uri`` the identity (the keystore's own when not given)."""
    keystore = _open_keystore(args)
    args.uri = launch.identity(keystore, args.uri)
    launch.require_current_keys(keystore, args.uri)
    return keystore


def cmd_talk(args: argparse.Namespace) -> int:
    from client import app

    if args.ptt_key is not None and args.ptt_key.lower() not in ("space", "terminal"):
        from client.buttons import parse_key_spec

        parse_key_spec(args.ptt_key)  # a mistake in it is told before the passphrase is asked
    keystore = _identity(args)
    server = launch.server_info(args.server_info)
    return app.main(args, keystore, server)


def cmd_adhoc_run(args: argparse.Namespace) -> int:
    from client import adhoc_app

    args.control_socket = args.control_socket or adhoc_app.default_socket(args.keystore)
    try:
        adhoc_app.parse_hostport(args.discovery, "--discovery")
        if getattr(args, "media", None):
            adhoc_app.parse_hostport(args.media, "--media")
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return adhoc_app.main(args, _identity(args))


def cmd_call(args: argparse.Namespace) -> int:
    from client import call_app

    keystore = _identity(args)
    server = launch.server_info(args.server_info)
    return call_app.main(args, keystore, server)


def cmd_buttons(args: argparse.Namespace) -> int:
    from client import buttons

    return buttons.main(args)


def _audio_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--uri", help="your identity (default: the keystore's, or uri in client.toml)")
    parser.add_argument("--server-info", help="the server's client-info file (or server_info in client.toml)")
    parser.add_argument("--input-device", help="microphone (name or part of it; default: the system's)")
    parser.add_argument("--output-device", help="speaker (name or part of it; default: the system's)")
    parser.add_argument("--report", help="write what was sent and heard to this JSON file at exit")
    parser.add_argument("--quiet", action="store_true", help="no status line")


def _add_call(sub: Any) -> None:
    call = sub.add_parser("call", help="a private call to one user (keyed end to end with a PCK)")
    call.add_argument("callee", help="whom to call, e.g. sip:bob@example.org")
    call.add_argument("--manual", action="store_true", help="the callee accepts or rejects (manual commencement)")
    call.add_argument(
        "--script", help="steps instead of keys: wait S; wait-connected S; talk S; hangup; echo TEXT; quit"
    )
    call.add_argument("--message-wav", help="if the callee is not connected, leave this WAV as a voice message")
    _audio_options(call)
    call.set_defaults(func=cmd_call)


def _add_talk(sub: Any) -> None:
    talk = sub.add_parser(
        "talk",
        help="join groups and talk with the microphone and speaker",
        description="Without --group: every group the server lists for you. Keys: ? in the screen.",
    )
    talk.add_argument("--group", help="the group to talk in (default: group in client.toml, else all of yours)")
    talk.add_argument("--monitor", action="append", help="also listen to this group (lower priority)")
    talk.add_argument(
        "--ptt-key",
        help="the PTT button: 'space' (the terminal's, default) or DEVICE:KEY, a Linux input device and key "
        "(e.g. /dev/input/event5:KEY_F13; 'ptt-client buttons' finds them)",
    )
    talk.add_argument("--plain", action="store_true", help="line-oriented output (scripts, screen readers)")
    talk.add_argument("--log-file", help="where logs go while the screen is up (default: ~/.cache/ptt/client.log)")
    talk.add_argument("--script", help="run these steps instead of reading keys (wait S; talk S; select G; quit)")
    _audio_options(talk)
    talk.set_defaults(func=cmd_talk)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptt-client",
        description="Secure push-to-talk client",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help=f"settings file (default {config.default_path()}, if present)")
    parser.add_argument("--keystore", help=f"keystore file (default {DEFAULT_KEYSTORE})")
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
    _add_talk(sub)
    _add_call(sub)
    from client import history_app

    history_app.add_command(sub, _secret)  # ptt-client history GROUP (issue 17)
    from client import message_app

    # ptt-client message URI / messages (issue 17, deferred delivery)
    message_app.add_commands(sub, lambda args: (_identity(args), launch.server_info(args.server_info)))
    keys = sub.add_parser("keys", help="list the keys held (no secrets shown)")
    keys.set_defaults(func=cmd_keys)
    buttons = sub.add_parser("buttons", help="list input devices (PTT buttons); with a DEVICE: show its presses")
    buttons.add_argument("device", nargs="?", help="an input device (/dev/input/eventN) to watch")
    buttons.set_defaults(func=cmd_buttons)
    add_adhoc(sub, cmd_adhoc_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        settings = config.load(args.config)
        if args.command == "provision":
            settings.values.pop("uri", None)  # provision's --uri is a list, and names what to fetch
        settings.apply(args)
        args.keystore = args.keystore or str(DEFAULT_KEYSTORE)
        return int(args.func(args))
    except UserError as exc:
        print(f"ptt-client: {exc}", file=sys.stderr)
        return int(exc.code)
    except KeyboardInterrupt:
        return int(Exit.INTERRUPTED)
    except Exception as exc:  # a bug: one line, the details with -v
        if args.verbose:
            raise
        print(f"ptt-client: unexpected error: {exc!r} (run with -v for the details)", file=sys.stderr)
        return int(Exit.FAILED)


if __name__ == "__main__":
    sys.exit(main())
