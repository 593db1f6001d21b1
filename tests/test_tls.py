"""server.tls and client.tls over real loopback sockets: TLS 1.2+ only, and a client trusts only its pinned
certificate.

The TLS 1.1 tests make sure that what refuses TLS 1.1 is the minimum version our contexts set, not the platform's
default policy (OpenSSL 3 refuses TLS 1.1 below security level 0 anyway): the peer and our server context run at
security level 0, and the refusal must be about the protocol version. The last test is the control: at security
level 0 this OpenSSL does agree on TLS 1.1 when nothing raises the minimum."""

from __future__ import annotations

import socket
import ssl
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from OpenSSL import SSL

from client.tls import TLS12_CIPHERS, PinnedCertificatePolicy, pinned_client_options, stdlib_client_context
from server.kms.material import MaterialError, make_self_signed, write_key_and_certificate
from server.tls import server_tls_options

LOW_SECURITY = b"DEFAULT:@SECLEVEL=0"


def _make_pair(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = make_self_signed("127.0.0.1", san_dns=["localhost"], san_ips=["127.0.0.1"], days=1)
    key_path, cert_path = directory / f"{name}-key.pem", directory / f"{name}-cert.pem"
    write_key_and_certificate(key, cert, key_path, cert_path)
    return key_path, cert_path


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    directory = tmp_path_factory.mktemp("tls")
    return {name: _make_pair(directory, name) for name in ("server", "impostor")}


class _Server:
    """Accepts one connection on 127.0.0.1 in a thread and runs ``handshake(socket)``; ``result`` is the protocol
    version it agreed or the exception it raised."""

    def __init__(self, handshake: Callable[[socket.socket], str]) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(10)
        self.port = self._listener.getsockname()[1]
        self.result: str | BaseException | None = None
        self._handshake = handshake
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            connection, _ = self._listener.accept()
            with connection:
                connection.settimeout(10)
                self.result = self._handshake(connection)
        except BaseException as exc:
            self.result = exc
        finally:
            self._listener.close()

    def join(self) -> str | BaseException | None:
        self._thread.join(10)
        return self.result


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[socket.socket], str]], _Server]]:
    servers: list[_Server] = []

    def start(handshake: Callable[[socket.socket], str]) -> _Server:
        servers.append(_Server(handshake))
        return servers[-1]

    yield start
    for server in servers:
        server.join()


def _openssl_server(context: SSL.Context) -> Callable[[socket.socket], str]:
    def handshake(sock: socket.socket) -> str:
        sock.setblocking(True)
        connection = SSL.Connection(context, sock)
        connection.set_accept_state()
        connection.do_handshake()
        version: str = connection.get_protocol_version_name()
        return version

    return handshake


def _stdlib_server(context: ssl.SSLContext) -> Callable[[socket.socket], str]:
    def handshake(sock: socket.socket) -> str:
        with context.wrap_socket(sock, server_side=True) as tls:
            return str(tls.version())

    return handshake


class _Protocol:
    """What Twisted's pinned-certificate check reports a host name mismatch to (a TLS protocol, here a stub)."""

    def __init__(self) -> None:
        self.factory = SimpleNamespace(wrappedFactory=object())  # no ALPN
        self.failures: list[Any] = []

    def failVerification(self, reason: Any) -> None:
        self.failures.append(reason)


def _twisted_client_handshake(options: Any, port: int) -> str:
    """Run the client side of Twisted connection ``options`` over a real socket (memory BIO ↔ socket)."""
    connection = options.clientConnectionForTLS(_Protocol())
    connection.set_connect_state()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:

        def flush() -> None:
            while True:
                try:
                    data = connection.bio_read(65536)
                except SSL.WantReadError:
                    return
                sock.sendall(data)

        while True:
            try:
                connection.do_handshake()
                flush()
                version: str = connection.get_protocol_version_name()
                return version
            except SSL.WantReadError:
                flush()
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("the server closed the connection during the handshake") from None
                connection.bio_write(data)


def _tls11_only_client(cafile: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile)
    context.set_ciphers(LOW_SECURITY.decode())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context


def _tls11_only_server(key: Path, cert: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_ciphers(LOW_SECURITY.decode())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context


# --- server side ---


def test_server_context_speaks_tls_1_2_and_later(pems: dict[str, tuple[Path, Path]], serve: Any) -> None:
    key, cert = pems["server"]
    server = serve(_openssl_server(server_tls_options(key, cert).getContext()))
    client = stdlib_client_context(str(cert))
    with client.wrap_socket(
        socket.create_connection(("127.0.0.1", server.port), timeout=10), server_hostname="127.0.0.1"
    ) as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    assert server.join() in ("TLSv1.2", "TLSv1.3")


def test_server_context_refuses_tls_1_1(pems: dict[str, tuple[Path, Path]], serve: Any) -> None:
    key, cert = pems["server"]
    context = server_tls_options(key, cert).getContext()
    context.set_cipher_list(LOW_SECURITY)
    server = serve(_openssl_server(context))
    with (
        pytest.raises((ssl.SSLError, ConnectionError)),
        _tls11_only_client(cert).wrap_socket(
            socket.create_connection(("127.0.0.1", server.port), timeout=10), server_hostname="127.0.0.1"
        ),
    ):
        pass
    refusal = server.join()
    assert isinstance(refusal, SSL.Error) and "unsupported protocol" in str(refusal)


def test_server_context_refuses_a_key_readable_by_others_or_of_another_certificate(
    pems: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    key, cert = pems["server"]
    other_key, _ = pems["impostor"]
    with pytest.raises(MaterialError, match="does not belong"):
        server_tls_options(other_key, cert)
    loose = tmp_path / "loose-key.pem"
    loose.write_bytes(key.read_bytes())
    loose.chmod(0o644)
    with pytest.raises(MaterialError, match="mode 0644"):
        server_tls_options(loose, cert)


# --- client side ---


@pytest.mark.parametrize("hostname", ["127.0.0.1", "localhost"])
def test_pinned_client_accepts_the_pinned_certificate(
    pems: dict[str, tuple[Path, Path]], serve: Any, hostname: str
) -> None:
    key, cert = pems["server"]
    server = serve(_openssl_server(server_tls_options(key, cert).getContext()))
    options = pinned_client_options(hostname, cert.read_bytes())
    assert _twisted_client_handshake(options, server.port) in ("TLSv1.2", "TLSv1.3")
    # the Agent policy of the KMS provisioning client builds the same options
    server = serve(_openssl_server(server_tls_options(key, cert).getContext()))
    policy_options = PinnedCertificatePolicy(cert.read_bytes()).creatorForNetloc(hostname.encode(), server.port)
    assert _twisted_client_handshake(policy_options, server.port) in ("TLSv1.2", "TLSv1.3")


def test_pinned_client_rejects_another_certificate(pems: dict[str, tuple[Path, Path]], serve: Any) -> None:
    _, pinned = pems["server"]
    impostor_key, impostor_cert = pems["impostor"]  # valid for the same names, but not the pinned one
    server = serve(_openssl_server(server_tls_options(impostor_key, impostor_cert).getContext()))
    with pytest.raises(SSL.Error, match="certificate verify failed"):
        _twisted_client_handshake(pinned_client_options("127.0.0.1", pinned.read_bytes()), server.port)
    server.join()
    # the same for the standard-library client of ptt-dispatch
    server = serve(_openssl_server(server_tls_options(impostor_key, impostor_cert).getContext()))
    client = stdlib_client_context(str(pinned))
    with (
        pytest.raises(ssl.SSLCertVerificationError),
        client.wrap_socket(
            socket.create_connection(("127.0.0.1", server.port), timeout=10), server_hostname="127.0.0.1"
        ),
    ):
        pass


def test_pinned_client_rejects_a_wrong_host_name(pems: dict[str, tuple[Path, Path]], serve: Any) -> None:
    key, cert = pems["server"]
    server = serve(_openssl_server(server_tls_options(key, cert).getContext()))
    with pytest.raises(SSL.Error):
        _twisted_client_handshake(pinned_client_options("kms.example.org", cert.read_bytes()), server.port)


def test_pinned_client_refuses_tls_1_1(pems: dict[str, tuple[Path, Path]], serve: Any) -> None:
    key, cert = pems["server"]
    server = serve(_stdlib_server(_tls11_only_server(key, cert)))
    options = pinned_client_options("127.0.0.1", cert.read_bytes())
    with pytest.raises(SSL.Error, match="protocol version"):  # the versions do not meet (not: no cipher)
        _twisted_client_handshake(options, server.port)
    assert isinstance(server.join(), ssl.SSLError)
    # the standard-library client too
    server = serve(_stdlib_server(_tls11_only_server(key, cert)))
    client = stdlib_client_context(str(cert))
    client.set_ciphers(LOW_SECURITY.decode())
    with (
        pytest.raises((ssl.SSLError, ConnectionError)),
        client.wrap_socket(
            socket.create_connection(("127.0.0.1", server.port), timeout=10), server_hostname="127.0.0.1"
        ),
    ):
        pass


def test_the_platform_can_speak_tls_1_1_at_security_level_0(pems: dict[str, tuple[Path, Path]], serve: Any) -> None:
    """The control for the TLS 1.1 tests: without our minimum version the same two sides agree on TLS 1.1, so the
    refusals above are our contexts' doing. Skipped where the platform's OpenSSL cannot do TLS 1.1 at all."""
    key, cert = pems["server"]
    server = serve(_stdlib_server(_tls11_only_server(key, cert)))
    try:
        with _tls11_only_client(cert).wrap_socket(
            socket.create_connection(("127.0.0.1", server.port), timeout=10), server_hostname="127.0.0.1"
        ) as tls:
            assert tls.version() == "TLSv1.1"
    except ssl.SSLError as exc:
        server.join()
        pytest.skip(f"this OpenSSL does not speak TLS 1.1 at all ({exc}): the TLS 1.1 refusals prove less here")


# --- cipher suites: TLS 1.3, or TLS 1.2 with ECDHE and AEAD only ---

CBC_SHA1 = "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:AES128-SHA"
"""What an old client offers: CBC with a SHA-1 MAC (and static RSA), no AEAD."""


def _tls12_client(cafile: Path, ciphers: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers)
    return context


def _tls12_server(key: Path, cert: Path, ciphers: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers)
    return context


def test_tls12_ciphers_are_ecdhe_with_aead_only() -> None:
    names = TLS12_CIPHERS.split(":")
    assert names and all(n.startswith("ECDHE-") and ("-GCM-" in n or n.endswith("CHACHA20-POLY1305")) for n in names)
    # what the contexts end up with (OpenSSL's expansion), TLS 1.3 suites aside
    context = stdlib_client_context(None)
    offered = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert offered == set(names)


def test_server_refuses_a_client_offering_only_cbc_sha1(pems: dict[str, tuple[Path, Path]], serve: Any) -> None:
    key, cert = pems["server"]
    server = serve(_openssl_server(server_tls_options(key, cert).getContext()))
    with (
        pytest.raises((ssl.SSLError, ConnectionError)),
        _tls12_client(cert, CBC_SHA1).wrap_socket(
            socket.create_connection(("127.0.0.1", server.port), timeout=10), server_hostname="127.0.0.1"
        ),
    ):
        pass
    refusal = server.join()
    assert isinstance(refusal, SSL.Error) and "no shared cipher" in str(refusal)


def test_the_platform_would_agree_on_cbc_sha1(pems: dict[str, tuple[Path, Path]], serve: Any) -> None:
    """The control: the same client and a server that allows CBC-SHA1 do agree, so the refusal above is ours."""
    key, cert = pems["server"]
    server = serve(_stdlib_server(_tls12_server(key, cert, CBC_SHA1)))
    with _tls12_client(cert, CBC_SHA1).wrap_socket(
        socket.create_connection(("127.0.0.1", server.port), timeout=10), server_hostname="127.0.0.1"
    ) as tls:
        assert tls.version() == "TLSv1.2" and (tls.cipher() or ("",))[0] == "ECDHE-ECDSA-AES128-SHA"
    server.join()


@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"])
def test_server_speaks_tls_1_2_with_aead(pems: dict[str, tuple[Path, Path]], serve: Any, cipher: str) -> None:
    key, cert = pems["server"]
    server = serve(_openssl_server(server_tls_options(key, cert).getContext()))
    with _tls12_client(cert, cipher).wrap_socket(
        socket.create_connection(("127.0.0.1", server.port), timeout=10), server_hostname="127.0.0.1"
    ) as tls:
        assert tls.version() == "TLSv1.2" and (tls.cipher() or ("",))[0] == cipher
    assert server.join() == "TLSv1.2"


def test_server_and_clients_speak_tls_1_3(pems: dict[str, tuple[Path, Path]], serve: Any) -> None:
    key, cert = pems["server"]
    server = serve(_openssl_server(server_tls_options(key, cert).getContext()))
    client = stdlib_client_context(str(cert))
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    with client.wrap_socket(
        socket.create_connection(("127.0.0.1", server.port), timeout=10), server_hostname="127.0.0.1"
    ) as tls:
        assert tls.version() == "TLSv1.3"
    assert server.join() == "TLSv1.3"
    server = serve(_openssl_server(server_tls_options(key, cert).getContext()))
    assert _twisted_client_handshake(pinned_client_options("127.0.0.1", cert.read_bytes()), server.port) == "TLSv1.3"


def test_clients_refuse_a_server_offering_only_cbc_sha1(pems: dict[str, tuple[Path, Path]], serve: Any) -> None:
    key, cert = pems["server"]
    server = serve(_stdlib_server(_tls12_server(key, cert, CBC_SHA1)))
    with pytest.raises(SSL.Error):
        _twisted_client_handshake(pinned_client_options("127.0.0.1", cert.read_bytes()), server.port)
    refusal = server.join()
    assert isinstance(refusal, ssl.SSLError) and "NO_SHARED_CIPHER" in str(refusal).upper().replace(" ", "_")
    server = serve(_stdlib_server(_tls12_server(key, cert, CBC_SHA1)))
    with (
        pytest.raises((ssl.SSLError, ConnectionError)),
        stdlib_client_context(str(cert)).wrap_socket(
            socket.create_connection(("127.0.0.1", server.port), timeout=10), server_hostname="127.0.0.1"
        ),
    ):
        pass
    assert isinstance(server.join(), ssl.SSLError)
