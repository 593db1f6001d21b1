"""The simulated site of tests/site.py: every host resolves every other by name (and only inside the site), names
added later reach new processes, a host can die or lose its cable, and closing the site — after a failure too —
leaves no process, namespace or /etc/netns file behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.netns import ETC_NETNS, NETNS_DIR, _pid_in
from tests.site import Site, finish, site_available

pytestmark = pytest.mark.skipif(site_available() is not None, reason=f"network namespaces: {site_available()}")

RESOLVE = "import socket, sys; print(socket.gethostbyname(sys.argv[1]))"
SERVE = (
    "import socket, time; server = socket.create_server(('0.0.0.0', 8000)); print('listening', flush=True); "
    "time.sleep(60)"
)
ESCAPE = (  # a process that leaves its parent behind, as pg_ctl's server does
    "import subprocess; quiet = subprocess.DEVNULL; "
    "print(subprocess.Popen(['sleep', '60'], stdout=quiet, stderr=quiet).pid)"
)


def test_hosts_reach_each_other_by_name(tmp_path: Path) -> None:
    with Site(["web", "alice-pc"], tmp_path) as site:
        web, alice = site.hosts["web"], site.hosts["alice-pc"]
        assert (web.fqdn, alice.fqdn) == ("web.site.test", "alice-pc.site.test")
        assert site.check("alice-pc", "-c", RESOLVE, "web.site.test").strip() == web.address
        site.start("web", ["-c", SERVE], ready="listening")
        fetch = "import socket, sys; socket.create_connection((sys.argv[1], 8000), timeout=5).close(); print('ok')"
        assert site.check("alice-pc", "-c", fetch, "web.site.test").strip() == "ok"
        site.add_name("www.site.test", "web")
        assert site.check("alice-pc", "-c", RESOLVE, "www.site.test").strip() == web.address
        code, output = finish(site.spawn("web", "-c", RESOLVE, "alice-pc.site.test"), 30)
        assert (code, output.strip()) == (0, alice.address)
        assert site.run("alice-pc", "-c", RESOLVE, "example.com").returncode != 0  # no DNS beyond the site
    assert "web.site.test" not in Path("/etc/hosts").read_text()


def test_closing_after_a_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="the test failed"), Site(["node1"], tmp_path) as site:
        daemon = site.start("node1", ["-c", SERVE], ready="listening")
        assert daemon.process is not None
        pid = daemon.process.pid
        escaped = site.check("node1", "-c", ESCAPE)
        namespace = site.hosts["node1"].netns
        inode = {os.stat(NETNS_DIR / namespace).st_ino}
        raise RuntimeError("the test failed")
    assert not _pid_in(pid, inode) and not _pid_in(int(escaped), inode)
    assert not (NETNS_DIR / namespace).exists() and not (ETC_NETNS / namespace).exists()
    assert not [name for name in os.listdir(NETNS_DIR) if name.startswith(site.lan.name)]


def test_a_host_dies_or_loses_its_cable(tmp_path: Path) -> None:
    connect = "import socket, sys; socket.create_connection((sys.argv[1], 8000), timeout=2).close(); print('ok')"
    with Site(["node1", "node2", "alice-pc"], tmp_path) as site:
        first = site.start("node1", ["-c", SERVE], ready="listening")
        site.start("node2", ["-c", SERVE], ready="listening")
        site.disconnect("node2")
        assert site.run("alice-pc", "-c", connect, "node2.site.test").returncode != 0
        site.reconnect("node2")
        assert site.check("alice-pc", "-c", connect, "node2.site.test").strip() == "ok"
        site.kill_host("node1")
        assert first.process is not None and first.process.wait(5) == -9
        assert site.run("alice-pc", "-c", connect, "node1.site.test").returncode != 0
