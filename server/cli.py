"""``ptt-server``: the group server's command line (the server itself is ``server.service.makeService``).

  ptt-server --data DIR init --kms-enrolment E.json --kms-user NAME [--kms-secret-file F]
             --server-uri sip:ptt-server@example.org [--domain example.org]
             [--listen 127.0.0.1] [--public-name NAME] [--relay-public HOST[:PORT]]
             [--dispatch-port 8444] [--control-port 8445] [--relay-port 8446]
             [--tls-cert PEM --tls-key PEM [--tls-ca PEM]] [--tls-name NAME]
             [--database postgresql://… [--node NAME] [--data-key FIRST_NODE/data.key]]
  ptt-server --data DIR dispatcher add NAME [--role admin] [--org ORG] [--password-file F]
                                   (the default role is 'dispatcher', the least privileged)
  ptt-server --data DIR dispatcher list | role NAME ROLE | remove NAME
  ptt-server --data DIR dispatcher assign|unassign NAME GROUP      let NAME manage GROUP's members
  ptt-server --data DIR dispatcher ceiling [N]        the highest priority a non-admin may give (default 100)
  ptt-server --data DIR audit verify [--anchor ID:HASH] | audit show [--limit N] [--org ORG]
  ptt-server --data DIR recording export GROUP --member URI [--since T] [--until T] --out DIR
  ptt-server --data DIR client-info [--out FILE]      what clients need: public name, ports, server URI, TLS trust
  ptt-server --data DIR serve [--workers N]

The server is a KMS client: its account is keyed for the server's own URI (clients encrypt their CSK to it) and
for every group URI it manages (it signs each GMK as the group). The account is a KMS service account
(``ptt-kms user add NAME --service --secret-out F``): its credential is a generated token that cannot be guessed,
and wrong guesses by others cannot lock it; ``init`` refuses anything shorter than a 128-bit token.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from pathlib import Path
from typing import Any

from client.tls import SYSTEM_TRUST
from ptt.control import b64
from server.cli_options import add_init_arguments, cmd_client_info
from server.service import ConfigError, DataDir, ServerConfig

CliError = ConfigError
MIN_KMS_SECRET = 22  # characters: a token of 128 bits in URL-safe base64 (ptt-kms makes 256-bit ones, 43 characters)


# --- command line --------------------------------------------------------------------------------------------------


def _secret(file: str | None, env: str, prompt: str) -> str:
    if file:
        return Path(file).read_text().rstrip("\r\n")
    if os.environ.get(env):
        return os.environ[env]
    if not sys.stdin.isatty():
        raise CliError(f"no {prompt.lower()} given (use a file option or {env})")
    return getpass.getpass(f"{prompt}: ")


def _write_private(path: Path, data: bytes) -> None:
    from server.kms.secrets import write_private_file

    write_private_file(path, data)


def _addresses_and_tls(args: argparse.Namespace) -> tuple[ServerConfig, Any]:
    """The configuration and TLS material ``init`` writes, checked before anything is written."""
    from server.kms.material import WILDCARD_ADDRESSES, MaterialError, tls_material

    public = args.public_name or ""
    if not public:
        if args.listen in WILDCARD_ADDRESSES:
            raise CliError(f"--listen {args.listen} is no address clients can use: give --public-name NAME")
        public = args.listen
    if args.node:
        from ptt.cluster import ClusterError, check_node_name

        try:
            check_node_name(args.node)
        except ClusterError as exc:
            raise CliError(f"--node: {exc}") from None
    if any(c.isspace() for c in public) or public.startswith("["):
        raise CliError(f"--public-name must be a DNS name or an address, not {public!r}")
    domain = args.domain or args.server_uri.partition("@")[2] or "example.org"
    config = ServerConfig(
        server_uri=args.server_uri,
        domain=domain,
        listen=args.listen,
        dispatch_port=args.dispatch_port,
        control_port=args.control_port,
        relay_port=args.relay_port,
        kms_user=args.kms_user,
        public_name=public,
        relay_public=args.relay_public or "",
        tls_trust="pinned" if not args.tls_cert else "ca" if args.tls_ca else "system",
        database=args.database or "",
        node=args.node or "",
    )
    try:
        tls = tls_material(
            list(dict.fromkeys([public, *(args.tls_name or [])])),
            args.listen,
            cert_path=args.tls_cert,
            key_path=args.tls_key,
            ca_path=args.tls_ca,
        )
    except MaterialError as exc:
        raise CliError(str(exc)) from None
    return config, tls


def cmd_init(args: argparse.Namespace) -> int:
    from client.keystore import Keystore
    from ptt.kmsformat.enrolment import Enrolment
    from server.groups.store import GroupStore, make_data_key

    data = DataDir(Path(args.data))
    if data.config.exists() and not args.force:
        raise CliError(f"{data.root} already holds a server (use --force to start over)")
    config, tls = _addresses_and_tls(args)
    domain = config.domain
    enrolment = Enrolment.from_json(Path(args.kms_enrolment).read_bytes())
    password = _secret(args.kms_password_file, "PTT_KMS_PASSWORD", f"KMS service token for {args.kms_user}")
    if len(password) < MIN_KMS_SECRET:
        raise CliError(
            f"the KMS credential of {args.kms_user} has {len(password)} characters: the group server needs a service "
            f"account's generated token (ptt-kms user add {args.kms_user} --service --secret-out FILE), not a "
            "password a person chose"
        )
    data.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data.root, 0o700)
    _write_private(data.kms_password, password.encode() + b"\n")
    _write_private(data.keystore_pass, b64(os.urandom(32)).encode())
    keystore = Keystore(data.keystore, data.keystore_pass.read_bytes())
    keystore.enrolment = enrolment
    keystore.save()
    if args.data_key:  # another node of the same cluster: the shared store's secrets open under the same key
        from server.groups.store import read_data_key as _read

        try:
            shared = _read(Path(args.data_key))
        except (OSError, ValueError) as exc:
            raise CliError(f"--data-key {args.data_key}: {exc}") from None
        _write_private(data.data_key, shared)
    elif not data.data_key.exists():
        make_data_key(data.data_key)
    tls.write(data.tls_key, data.tls_cert)
    if tls.ca not in (None, SYSTEM_TRUST):
        assert tls.ca is not None
        data.tls_ca.write_text(tls.ca)
    else:
        data.tls_ca.unlink(missing_ok=True)
    from server.groups.store import StoreError, read_data_key

    try:
        GroupStore(config.database or data.db, read_data_key(data.data_key)).close()
    except StoreError as exc:
        raise CliError(f"the group store: {exc}") from None
    config.save(data.config)
    print(f"ptt-server {args.server_uri} initialised in {data.root} (KMS {enrolment.kms_uri}, account {args.kms_user})")
    print(f"  the KMS account must be keyed for {args.server_uri} and for every group URI it manages:")
    print(f"  ptt-kms grant {args.kms_user} sip:GROUP@{domain}")
    return 0


def _open_store(args: argparse.Namespace) -> Any:
    from server.groups.store import GroupStore, read_data_key

    data = DataDir(Path(args.data))
    if not data.config.exists():
        raise CliError(f"{data.root} holds no server (run init)")
    return GroupStore(data.database(), read_data_key(data.data_key))


def cmd_recording(args: argparse.Namespace) -> int:
    """``recording export``: a group's bursts and a member's archived key messages, ciphertext (issue 17)."""
    from server.compliance.export import cmd_recording_export

    store = _open_store(args)
    try:
        return cmd_recording_export(args, store, DataDir(Path(args.data)).recordings)
    finally:
        store.close()


def cmd_dispatcher(args: argparse.Namespace) -> int:
    """``dispatcher add|list|role|remove|assign|unassign|ceiling``: accounts, what they may manage, the ceiling."""
    import time

    from server.groups.store import GroupError

    store = _open_store(args)
    now, by = time.time(), "ptt-server"
    try:
        if args.action == "add":
            password = _secret(args.password_file, "PTT_DISPATCH_PASSWORD", f"Password for {args.name}")
            store.add_dispatcher(args.name, password, args.role, now=now, org=args.org)
            print(f"dispatcher {args.name} added ({args.role} of {args.org})")
        elif args.action == "list":
            assigned = {a.username: sorted(store.assigned_groups(a.username)) for a in store.dispatchers()}
            for a in store.dispatchers():
                state = " (disabled)" if a.disabled else ""
                groups = ", ".join(assigned[a.username]) or "-"
                print(f"{a.username}  {a.role}  {a.org}{state}  assigned: {groups}")
        elif args.action == "role":
            store.set_dispatcher_role(args.name, args.role, now=now, by=by)
            print(f"{args.name} is now {args.role}")
        elif args.action == "remove":
            store.remove_dispatcher(args.name, now=now)
            print(f"dispatcher {args.name} removed; the groups it owned are its organisation's admins' now")
        elif args.action == "assign":
            store.assign_dispatcher(args.group, args.name, now=now, by=by)
            print(f"{args.name} may now manage the members of {args.group}")
        elif args.action == "unassign":
            store.unassign_dispatcher(args.group, args.name, now=now, by=by)
            print(f"{args.name} no longer manages {args.group}")
        elif args.action == "ceiling":
            if args.value is not None:
                store.set_priority_ceiling(args.value, now=now, by=by)
            print(f"non-admin dispatchers may give priorities up to {store.priority_ceiling()}")
    except GroupError as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """``audit verify``: walk the hash chain (exit 1 if broken); ``audit show``: the last records."""
    store = _open_store(args)
    try:
        if args.action == "show":
            for r in store.audit_log(args.limit, org=args.org):
                print(f"{r.id}  {r.at:.3f}  {r.actor or '-'}  {r.org or '-'}  {r.event}  {r.detail}")
            return 0
        anchor = None
        if args.anchor:
            ident, _, digest = args.anchor.partition(":")
            try:
                anchor = (int(ident), bytes.fromhex(digest))
            except ValueError:
                raise CliError(f"--anchor must be ID:HEX (as audit verify printed it), not {args.anchor!r}") from None
        check = store.verify_audit(anchor=anchor)
    finally:
        store.close()
    if not check.ok:
        print(f"audit chain BROKEN at record {check.broken_at}: {check.reason} ({check.records} records verified)")
        return 1
    print(f"audit chain verified: {check.records} records; head {check.head_id}:{check.head.hex()}")
    print("  (write the head down; `audit verify --anchor ID:HASH` later also proves nothing up to it was removed)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from twisted.internet import reactor
    from twisted.python import log as twisted_log

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    twisted_log.PythonLoggingObserver("twisted").start()
    data = DataDir(Path(args.data))
    if not data.config.exists():
        raise CliError(f"{data.root} holds no server (run init)")
    from server.service import makeService

    react: Any = reactor
    server = makeService(ServerConfig.load(data.config), react, data, workers=args.workers)

    start_failed = False

    def failed(failure: Any) -> None:
        nonlocal start_failed
        start_failed = True
        print(f"ptt-server: cannot start: {failure.getErrorMessage()}", file=sys.stderr, flush=True)
        react.stop()

    def start() -> None:
        server.startService()
        server.ready.addErrback(failed)

    react.callWhenRunning(start)
    react.addSystemEventTrigger("before", "shutdown", server.stopService)
    react.run()
    return 1 if start_failed else 0  # a failed start is a failure (systemd's Restart=on-failure restarts it)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptt-server", description="PTT group server")
    parser.add_argument("--data", default="var/server", help="data directory (default var/server)")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser(
        "init",
        help="create a server data directory",
        description="Create a server data directory: its KMS account, keystore, data key, TLS key and certificate, "
        "and server.json.",
    )
    add_init_arguments(init)
    init.set_defaults(func=cmd_init)
    dispatcher = sub.add_parser("dispatcher", help="dispatcher accounts")
    dsub = dispatcher.add_subparsers(dest="action", required=True)
    add = dsub.add_parser("add", help="a new account (default: role dispatcher, the least privileged)")
    add.add_argument("name")
    add.add_argument("--role", choices=["dispatcher", "admin"], default="dispatcher")
    add.add_argument("--org", default="default", help="its organisation (default 'default')")
    add.add_argument("--password-file")
    dsub.add_parser("list", help="accounts, roles, organisations, assigned groups")
    role = dsub.add_parser("role", help="change an account's role")
    role.add_argument("name")
    role.add_argument("role", choices=["dispatcher", "admin"])
    dsub.add_parser("remove", help="remove an account").add_argument("name")
    for action in ("assign", "unassign"):
        assign = dsub.add_parser(action, help=f"{action} a dispatcher account to a group")
        assign.add_argument("name")
        assign.add_argument("group")
    ceiling = dsub.add_parser("ceiling", help="show or set the highest priority a non-admin may give")
    ceiling.add_argument("value", type=int, nargs="?")
    dispatcher.set_defaults(func=cmd_dispatcher)
    audit = sub.add_parser("audit", help="the group store's audit log (a hash chain)")
    asub = audit.add_subparsers(dest="action", required=True)
    verify = asub.add_parser("verify", help="check every record's hash; exit 1 if the chain is broken")
    verify.add_argument("--anchor", metavar="ID:HASH", help="a head printed earlier that must still be there")
    show = asub.add_parser("show", help="the last records")
    show.add_argument("--limit", type=int, default=50)
    show.add_argument("--org")
    audit.set_defaults(func=cmd_audit)
    from server.compliance import export

    export.add_commands(sub)  # recording export (issue 17)
    sub.choices["recording"].set_defaults(func=cmd_recording)
    info = sub.add_parser("client-info", help="what clients need to connect")
    info.add_argument("--out")
    info.set_defaults(func=cmd_client_info)
    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--workers", type=int, help="crypto worker processes (default: one per core)")
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"ptt-server: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"ptt-server: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
