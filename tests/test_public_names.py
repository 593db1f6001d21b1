"""Issue 13, addresses and names: listen address and public name apart, certificates naming the public name (the
operator's own from a CA, or a generated self-signed one), clients verifying the name with a pinned certificate or
a CA bundle, old ``server.json`` files still loading, and ``client-info`` handing out the public name."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from OpenSSL import SSL

from client.session import ServerInfo
from client.tls import SYSTEM_TRUST, pinned_client_options, trust_from_info
from server import cli as server_cli
from server.kms.material import (
    MaterialError,
    certificate_names,
    certificate_pem,
    names_host,
    tls_material,
)
from server.service import ConfigError, DataDir, ServerConfig
from server.tls import server_tls_options
from tests.test_tls import _openssl_server, _Server, _twisted_client_handshake
from tests.testca import CertificateAuthority

PUBLIC = "ptt.example.test"


@pytest.fixture
def tls_server() -> Iterator[Callable[[Any], _Server]]:
    """Servers of one handshake each on loopback (as ``tests.test_tls``), joined at the end."""
    servers: list[_Server] = []

    def start(context: Any) -> _Server:
        servers.append(_Server(_openssl_server(context)))
        return servers[-1]

    yield start
    for server in servers:
        server.join()


# --- an operator's certificate: root → intermediate → leaf ----------------------------------------------------------


@pytest.fixture(scope="module")
def operator_ca(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An operator's certificate from a (test) CA: ``chain`` = leaf + intermediate, ``key``, ``ca`` = the root."""
    d = tmp_path_factory.mktemp("ca")
    intermediate = CertificateAuthority("Test Root CA").intermediate("Test Intermediate")
    chain, key = intermediate.issue([PUBLIC, "*.nodes.example.test"]).write(d, "operator")
    return {"chain": chain, "key": key, "ca": intermediate.write_root(d / "ca.pem")}


# --- names and certificates -----------------------------------------------------------------------------------------


def test_names_host_matches_dns_names_wildcards_and_addresses(operator_ca: dict[str, Path]) -> None:
    leaf = x509.load_pem_x509_certificates(operator_ca["chain"].read_bytes())[0]
    assert names_host(leaf, PUBLIC) and names_host(leaf, "PTT.Example.Test.")
    assert names_host(leaf, "a.nodes.example.test")
    assert not names_host(leaf, "a.b.nodes.example.test")  # a wildcard covers one label
    assert not names_host(leaf, "nodes.example.test") and not names_host(leaf, "other.example.test")
    assert not names_host(leaf, "127.0.0.1")
    own = tls_material(["192.0.2.7"], "192.0.2.7").chain[0]
    assert names_host(own, "192.0.2.7") and not names_host(own, "192.0.2.8")


@pytest.mark.parametrize(
    ("public", "listen", "dns", "ips"),
    [
        ([PUBLIC], "0.0.0.0", {PUBLIC, "localhost"}, {"127.0.0.1"}),  # a wildcard also listens on loopback
        ([PUBLIC], "192.0.2.5", {PUBLIC}, set()),  # not listening on loopback: no localhost names
        (["192.0.2.5"], "192.0.2.5", set(), {"192.0.2.5"}),
        ([PUBLIC, "ptt2.example.test"], "::", {PUBLIC, "ptt2.example.test", "localhost"}, {"127.0.0.1"}),
        (["127.0.0.1"], "127.0.0.1", {"localhost"}, {"127.0.0.1"}),  # what scripts/run does
    ],
)
def test_generated_certificate_names_the_public_names(
    public: list[str], listen: str, dns: set[str], ips: set[str]
) -> None:
    material = tls_material(public, listen)
    assert material.ca is None and len(material.chain) == 1  # self-signed: clients pin it
    names, addresses = certificate_names(material.chain[0])
    assert (set(names), set(addresses)) == (dns, ips)


def test_operator_certificate_keeps_its_chain_and_must_name_the_public_name(
    operator_ca: dict[str, Path], tmp_path: Path
) -> None:
    chain, key, ca = str(operator_ca["chain"]), str(operator_ca["key"]), str(operator_ca["ca"])
    material = tls_material([PUBLIC], "0.0.0.0", cert_path=chain, key_path=key, ca_path=ca)
    assert len(material.chain) == 2 and material.ca == operator_ca["ca"].read_text()
    material.write(tmp_path / "k.pem", tmp_path / "c.pem")
    assert (tmp_path / "c.pem").read_bytes() == operator_ca["chain"].read_bytes()
    assert tls_material([PUBLIC], "0.0.0.0", cert_path=chain, key_path=key).ca == SYSTEM_TRUST
    with pytest.raises(MaterialError, match=r"does not name other\.example\.test"):
        tls_material(["other.example.test"], "0.0.0.0", cert_path=chain, key_path=key)
    with pytest.raises(MaterialError, match="go together"):
        tls_material([PUBLIC], "0.0.0.0", cert_path=chain)
    with pytest.raises(MaterialError, match="--tls-ca needs --tls-cert"):
        tls_material([PUBLIC], "0.0.0.0", ca_path=ca)


# --- clients verify the public name -------------------------------------------------------------------------------


def test_client_trusting_the_operator_ca_connects_by_the_public_name_only(
    operator_ca: dict[str, Path], tls_server: Any
) -> None:
    context = server_tls_options(operator_ca["key"], operator_ca["chain"]).getContext()  # sends the intermediate
    trust = operator_ca["ca"].read_bytes()
    server = tls_server(context)
    assert _twisted_client_handshake(pinned_client_options(PUBLIC, trust), server.port) in ("TLSv1.2", "TLSv1.3")
    server = tls_server(context)
    with pytest.raises(SSL.Error):
        _twisted_client_handshake(pinned_client_options("other.example.test", trust), server.port)


def test_client_pinning_a_generated_certificate_connects_by_the_public_name_only(
    tmp_path: Path, tls_server: Any
) -> None:
    material = tls_material([PUBLIC], "0.0.0.0")
    material.write(tmp_path / "k.pem", tmp_path / "c.pem")
    context = server_tls_options(tmp_path / "k.pem", tmp_path / "c.pem").getContext()
    pinned = (tmp_path / "c.pem").read_bytes()
    server = tls_server(context)
    assert _twisted_client_handshake(pinned_client_options(PUBLIC, pinned), server.port) in ("TLSv1.2", "TLSv1.3")
    server = tls_server(context)
    with pytest.raises(SSL.Error):
        _twisted_client_handshake(pinned_client_options("other.example.test", pinned), server.port)


def test_trust_from_info() -> None:
    pem = tls_material(["127.0.0.1"], "127.0.0.1").chain[0]
    cert = certificate_pem(pem)
    assert trust_from_info(cert, None) == cert
    assert trust_from_info(cert, SYSTEM_TRUST) is None
    assert trust_from_info(b"x", cert.decode()) == cert
    with pytest.raises(ValueError, match="tls_ca"):
        trust_from_info(cert, "something else")


# --- server.json ----------------------------------------------------------------------------------------------------


def test_an_old_server_json_loads_with_its_old_meaning(tmp_path: Path) -> None:
    example = Path(__file__).parents[1] / "deploy" / "server.json.example"
    path = tmp_path / "server.json"
    document = {"server_uri": "sip:ptt-server@example.org", "domain": "groups.example.org", "host": "192.0.2.9",
                "dispatch_port": 8444, "control_port": 8445, "relay_port": 8446, "kms_user": "ptt-server"}  # fmt: skip
    path.write_text(json.dumps(document))
    config = ServerConfig.load(path)
    assert (config.listen, config.public_name, config.tls_trust) == ("192.0.2.9", "192.0.2.9", "pinned")
    assert (config.relay_address().host, config.relay_address().port) == ("192.0.2.9", 8446)
    config.save(path)
    assert ServerConfig.load(path) == config
    assert ServerConfig.load(example).public_name == "ptt.example.org"  # the example of deploy/ loads
    path.write_text(json.dumps({**document, "surprise": 1}))
    with pytest.raises(ConfigError):
        ServerConfig.load(path)


@pytest.mark.parametrize(
    ("relay_public", "expected"),
    [("", (PUBLIC, 8446)), ("198.51.100.1", ("198.51.100.1", 8446)),
     ("relay.example.test:4000", ("relay.example.test", 4000)), ("[2001:db8::1]:4000", ("2001:db8::1", 4000)),
     ("2001:db8::1", ("2001:db8::1", 8446))],
)  # fmt: skip
def test_relay_address_clients_are_told(relay_public: str, expected: tuple[str, int]) -> None:
    config = ServerConfig("sip:s@example.org", "example.org", "0.0.0.0", 8444, 8445, 8446, "s", PUBLIC, relay_public)
    address = config.relay_address()
    assert (address.host, address.port) == expected


def test_a_bad_relay_address_is_refused() -> None:
    with pytest.raises(ConfigError):
        ServerConfig("sip:s@example.org", "example.org", "0.0.0.0", 8444, 8445, 8446, "s", PUBLIC, "host:99999")


# --- ptt-server init and client-info ---------------------------------------------------------------------------------


def _init_args(data: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "init", "--kms-enrolment", "/nonexistent", "--kms-user", "ptt-server",
            "--server-uri", "sip:ptt-server@example.org", *extra]  # fmt: skip


def test_init_on_a_wildcard_address_needs_a_public_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert server_cli.main(_init_args(tmp_path / "s", "--listen", "0.0.0.0")) == 2
    assert "give --public-name" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # refused before anything is written


def test_init_refuses_an_operator_certificate_without_the_public_name(
    tmp_path: Path, operator_ca: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args = _init_args(tmp_path / "s", "--listen", "0.0.0.0", "--public-name", "other.example.test", "--tls-cert",
                      str(operator_ca["chain"]), "--tls-key", str(operator_ca["key"]))  # fmt: skip
    assert server_cli.main(args) == 2
    assert "does not name other.example.test" in capsys.readouterr().err


def _client_info(data: DataDir, config: ServerConfig, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    config.save(data.config)
    capsys.readouterr()
    assert server_cli.main(["--data", str(data.root), "client-info"]) == 0
    info: dict[str, Any] = json.loads(capsys.readouterr().out)
    return info


def test_client_info_hands_out_the_public_name_and_what_to_trust(
    tmp_path: Path, operator_ca: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data = DataDir(tmp_path)
    material = tls_material([PUBLIC], "0.0.0.0")
    material.write(data.tls_key, data.tls_cert)
    config = ServerConfig("sip:s@example.org", "example.org", "0.0.0.0", 8444, 8445, 8446, "s", PUBLIC)
    info = _client_info(data, config, capsys)
    assert info["host"] == PUBLIC and "tls_ca" not in info
    assert info["cert_pem"] == data.tls_cert.read_text()
    server = ServerInfo.from_json(json.dumps(info))
    assert (server.host, server.control_port, server.cert_pem) == (PUBLIC, 8445, data.tls_cert.read_bytes())

    # the operator's certificate from a CA: the leaf, and the CA bundle clients trust (or the system's CAs)
    tls_material([PUBLIC], "0.0.0.0", cert_path=str(operator_ca["chain"]), key_path=str(operator_ca["key"])).write(
        data.tls_key, data.tls_cert
    )
    data.tls_ca.write_bytes(operator_ca["ca"].read_bytes())
    info = _client_info(data, ServerConfig(**{**config.__dict__, "tls_trust": "ca"}), capsys)
    assert info["tls_ca"] == operator_ca["ca"].read_text()
    assert info["cert_pem"] == operator_ca["chain"].read_text().split("-----END CERTIFICATE-----")[0] + (
        "-----END CERTIFICATE-----\n"
    )
    assert ServerInfo.from_json(json.dumps(info)).cert_pem == operator_ca["ca"].read_bytes()
    info = _client_info(data, ServerConfig(**{**config.__dict__, "tls_trust": "system"}), capsys)
    assert info["tls_ca"] == SYSTEM_TRUST and ServerInfo.from_json(json.dumps(info)).cert_pem is None


# --- ptt-kms init and the enrolment ------------------------------------------------------------------------------


def test_kms_enrolment_carries_the_public_name_and_the_operator_ca(
    tmp_path: Path, operator_ca: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from ptt.kmsformat.enrolment import Enrolment
    from server.kms import cli as kms_cli

    base = ["--data", str(tmp_path / "kms"), "init", "--domain", "example.test", "--kms-uri", "kms.example.test"]
    assert kms_cli.main([*base, "--listen", "0.0.0.0"]) == 2
    assert "give --public-name" in capsys.readouterr().err
    tls = ["--tls-cert", str(operator_ca["chain"]), "--tls-key", str(operator_ca["key"])]
    assert (
        kms_cli.main([*base, "--listen", "0.0.0.0", "--public-name", PUBLIC, *tls, "--tls-ca", str(operator_ca["ca"])])
        == 0
    )
    assert (tmp_path / "kms" / "tls-cert.pem").read_bytes() == operator_ca["chain"].read_bytes()  # chain kept
    capsys.readouterr()
    assert kms_cli.main(["--data", str(tmp_path / "kms"), "export-enrolment"]) == 0
    enrolment = Enrolment.from_json(capsys.readouterr().out.encode())
    assert enrolment.base_url == f"https://{PUBLIC}:8443"
    assert enrolment.tls_ca == operator_ca["ca"].read_text()
    assert enrolment.tls_trust_pem == operator_ca["ca"].read_bytes()
    assert Enrolment.from_json(enrolment.to_json()) == enrolment

    # re-initialised with a generated certificate: pinned again, no tls_ca in the file
    assert kms_cli.main([*base, "--listen", "0.0.0.0", "--public-name", PUBLIC, "--force"]) == 0
    capsys.readouterr()
    assert kms_cli.main(["--data", str(tmp_path / "kms"), "export-enrolment"]) == 0
    out = capsys.readouterr().out
    assert "tls_ca" not in out
    enrolment = Enrolment.from_json(out.encode())
    assert enrolment.tls_trust_pem == enrolment.tls_cert_pem
    assert names_host(enrolment.tls_cert, PUBLIC) and names_host(enrolment.tls_cert, "127.0.0.1")
