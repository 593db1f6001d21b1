"""``ptt-server``: the options of ``init`` (each with its help) and ``client-info`` (what clients are given: the
public name, ports, server URI, TLS trust, and with several nodes every node)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from client.tls import SYSTEM_TRUST
from server.service import ConfigError, DataDir, ServerConfig

CliError = ConfigError


def add_init_arguments(init: argparse.ArgumentParser) -> None:
    init.add_argument("--kms-enrolment", required=True, metavar="FILE", help="the KMS's enrolment file (ptt-kms "
                      "export-enrolment)")  # fmt: skip
    init.add_argument("--kms-user", required=True, metavar="NAME", help="the server's KMS service account")
    init.add_argument(
        "--kms-secret-file",
        "--kms-password-file",
        dest="kms_password_file",
        metavar="F",
        help="the KMS service account's token (from ptt-kms user add NAME --service --secret-out F)",
    )
    init.add_argument("--server-uri", required=True, metavar="URI", help="the server's identity, e.g. "
                      "sip:ptt-server@example.org (its KMS account must be keyed for it)")  # fmt: skip
    init.add_argument("--domain", help="the domain of group URIs (default: the server URI's domain)")
    init.add_argument(
        "--listen",
        "--host",
        dest="listen",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="address the dispatcher API, control channel and relay listen on (default 127.0.0.1; 0.0.0.0 or :: "
        "for every interface)",
    )
    init.add_argument(
        "--public-name",
        metavar="NAME",
        help="DNS name or address clients connect to, handed out by client-info and named by the TLS certificate "
        "(default: the listen address; required when listening on a wildcard address)",
    )
    init.add_argument(
        "--relay-public",
        metavar="HOST[:PORT]",
        help="where clients send media if not the public name and the relay port (e.g. behind a NAT)",
    )
    init.add_argument("--dispatch-port", type=int, default=8444, metavar="PORT", help="dispatcher API, HTTPS "
                      "(default 8444)")  # fmt: skip
    init.add_argument("--control-port", type=int, default=8445, metavar="PORT", help="clients' control channel, TLS "
                      "(default 8445)")  # fmt: skip
    init.add_argument("--relay-port", type=int, default=8446, metavar="PORT", help="relay, UDP (default 8446)")
    init.add_argument(
        "--tls-cert",
        metavar="PEM",
        help="the operator's own TLS certificate (from a CA; leaf first, then intermediates), which must name the "
        "public name; default: a generated self-signed one, which clients pin",
    )
    init.add_argument("--tls-key", metavar="PEM", help="the private key (EC) of --tls-cert")
    init.add_argument(
        "--tls-ca",
        metavar="PEM",
        help="the CA bundle clients trust for --tls-cert (default: the system's trusted CAs)",
    )
    init.add_argument(
        "--tls-name",
        action="append",
        metavar="NAME",
        help="another name the certificate must name (repeatable), e.g. a second DNS name of the server",
    )
    init.add_argument(
        "--database",
        metavar="URL",
        help="the group store: postgresql://USER@HOST/DB (a pool of connections; several servers may share it) or "
        "sqlite:///PATH (default: server.sqlite3 in the data directory)",
    )
    init.add_argument(
        "--node",
        metavar="NAME",
        help="this node's name among the server nodes sharing a PostgreSQL --database (default: the public name "
        "and the control port)",
    )
    init.add_argument(
        "--data-key",
        metavar="FILE",
        help="the data key (data.key) of the first node, for another node of the same cluster: the store's secrets "
        "are sealed under it (default: a new key)",
    )
    init.add_argument("--force", action="store_true", help="start over in a directory that holds a server")


def cmd_client_info(args: argparse.Namespace) -> int:
    data = DataDir(Path(args.data))
    config = ServerConfig.load(data.config)
    from server.kms.material import certificate_pem, load_certificate

    info: dict[str, Any] = {
        "host": config.public_name,
        "control_port": config.control_port,
        "dispatch_port": config.dispatch_port,
        "server_uri": config.server_uri,
        "cert_pem": certificate_pem(load_certificate(data.tls_cert)).decode("ascii"),
    }
    if config.tls_trust == "ca":
        info["tls_ca"] = data.tls_ca.read_text()
    elif config.tls_trust == "system":
        info["tls_ca"] = SYSTEM_TRUST
    nodes = _cluster_nodes(data, config)
    if nodes:  # several nodes share the store: clients may connect to any (the first one that answers)
        info["nodes"] = nodes
    text = json.dumps(info, indent=1) + "\n"
    if args.out:
        Path(args.out).write_text(text)
        print(f"client info written to {args.out}")
    else:
        print(text, end="")
    return 0


def _cluster_nodes(data: DataDir, config: ServerConfig) -> list[dict[str, Any]]:
    """Every node registered in a PostgreSQL store (this one first), as client-info lists them."""
    from server.sqldb import is_postgres_url

    url = str(data.database())
    if not is_postgres_url(url):
        return []
    from server.cluster.database import registered_nodes
    from server.cluster.setup import node_info

    try:
        nodes = registered_nodes(url)
    except Exception as exc:
        raise CliError(f"cannot read the server nodes from the database: {exc}") from None
    me = node_info(config, data)
    nodes = [me, *[n for n in nodes if n.name != me.name]]
    return [
        {"name": n.name, "host": n.control_host, "control_port": n.control_port, "cert_pem": n.cert_pem} for n in nodes
    ]
