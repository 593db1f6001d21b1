"""How a client reaches a group server: ``ptt-server client-info``'s file, with every node of a cluster."""

from __future__ import annotations

import json
from dataclasses import dataclass

from client.tls import trust_from_info

__all__ = ["ServerInfo"]


@dataclass(frozen=True)
class ServerInfo:
    """How to reach a group server (from ``ptt-server client-info``): its public name or address, the control
    port, what to trust for TLS (the pinned certificate, the operator's CA bundle, or None: the system's CAs;
    the certificate must name ``host`` in every case) and the server's URI."""

    host: str
    control_port: int
    cert_pem: bytes | None
    server_uri: str
    others: tuple[tuple[str, int, bytes | None], ...] = ()
    """The other server nodes sharing the same groups (host, control port, trust), tried in turn when the
    connected one is lost."""

    @classmethod
    def from_json(cls, text: str | bytes) -> ServerInfo:
        """Parse a client-info file; ``ValueError`` (or ``KeyError``) if a field is missing or malformed."""
        info = json.loads(text)
        trust = trust_from_info(str(info["cert_pem"]).encode("ascii"), info.get("tls_ca"))
        host, port = str(info["host"]), int(info["control_port"])
        others = []
        for node in info.get("nodes") or []:
            entry = (str(node["host"]), int(node["control_port"]))
            if entry != (host, port):
                node_trust = trust_from_info(
                    str(node.get("cert_pem") or info["cert_pem"]).encode("ascii"), info.get("tls_ca")
                )
                others.append((*entry, node_trust))
        return cls(host, port, trust, str(info["server_uri"]), tuple(others))

    def endpoints(self) -> list[tuple[str, int, bytes | None]]:
        return [(self.host, self.control_port, self.cert_pem), *self.others]
