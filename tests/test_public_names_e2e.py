"""Issue 13 against real processes: the KMS and the group server listen on every address (0.0.0.0) and tell clients
a public name (here 127.0.0.1, the only address this test can reach); the enrolment and ``client-info`` hand out
that name, never 0.0.0.0, the certificates name it, and headless clients provision, log in and talk through it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from bench.harness import GROUP, System, start_system, stop_system, wait_all
from ptt.kmsformat.enrolment import Enrolment
from server.kms.material import load_certificate, names_host

PUBLIC_EVERYWHERE = ("--listen", "0.0.0.0", "--public-name", "127.0.0.1")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    running = start_system(tmp_path_factory.mktemp("names"), kms_init=PUBLIC_EVERYWHERE, server_init=PUBLIC_EVERYWHERE)
    yield running
    stop_system(running)


def test_clients_are_told_the_public_name_and_talk_through_it(system: System) -> None:
    info = json.loads((system.root / "server.json").read_text())
    assert info["host"] == "127.0.0.1" and "tls_ca" not in info  # not the listen address 0.0.0.0
    config = json.loads((system.root / "server" / "server.json").read_text())
    assert (config["listen"], config["public_name"]) == ("0.0.0.0", "127.0.0.1")
    assert names_host(load_certificate(system.root / "server" / "tls-cert.pem"), "127.0.0.1")
    enrolment = Enrolment.from_json((system.root / "enrol.json").read_bytes())
    assert enrolment.base_url.startswith("https://127.0.0.1:")  # the KMS's public name (clients provisioned by it)

    alice = system.client("alice", f"join {GROUP}; wait 1; talk 2; wait 1.5")
    bob = system.client("bob", f"join {GROUP}; wait 4.5")
    wait_all([alice, bob])
    a, b = system.report("alice"), system.report("bob")
    assert a["sent"] >= 90
    assert b["received"].get("alice", 0) >= 0.9 * a["sent"]
