"""The HTTPS client of ``ptt-dispatch`` (``server.dispatch.cli``): one connection per request to the dispatcher API
with the standard library's http.client, TLS from ``client.tls`` (the server's certificate checked against a CA
file), Basic login, JSON in and out; where the password comes from; bare names made URIs in the server's domain.
Every failure is a ``CliError`` of one line, saying what went wrong in the user's terms."""

from __future__ import annotations

import base64
import getpass
import http.client
import json
import os
import re
import socket
import ssl
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client.tls import stdlib_client_context

PASSWORD_ENV = "PTT_DISPATCH_PASSWORD"
_BARE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


class ApiClient:
    """One HTTPS connection per request to the dispatcher API, Basic login, JSON in and out."""

    def __init__(
        self,
        server: str,
        *,
        cacert: str | None,
        user: str,
        password: Callable[[], str],
        timeout: float = 30.0,
    ) -> None:
        parts = urllib.parse.urlsplit(server)
        if parts.scheme != "https" or not parts.hostname:
            raise CliError(f"--server must be an https:// URL, not {server!r}")
        try:
            self.port = parts.port or 443
        except ValueError:
            raise CliError(f"bad port in --server {server!r}") from None
        self.host = parts.hostname
        self.prefix = parts.path.rstrip("/")
        self.user = user
        self._password = password
        self._credentials: str | None = None
        self.timeout = timeout
        try:
            self.context = stdlib_client_context(cacert)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise CliError(f"cannot use the CA certificate file {cacert}: {reason}") from None

    def _authorization(self) -> str:
        if self._credentials is None:
            token = base64.b64encode(f"{self.user}:{self._password()}".encode()).decode("ascii")
            self._credentials = f"Basic {token}"
        return self._credentials

    def request(self, method: str, path: str, body: Any = None, *, login: bool = True) -> Any:
        headers = {"Accept": "application/json"}
        if login:
            headers["Authorization"] = self._authorization()
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        where = f"{self.host}:{self.port}"
        connection = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.context)
        try:
            connection.request(method, self.prefix + path, body=data, headers=headers)
            response = connection.getresponse()
            status = response.status
            raw = response.read(4 * 1024 * 1024)
        except ssl.SSLCertVerificationError as exc:
            raise CliError(
                f"the certificate of {where} is not trusted ({exc.verify_message}); is --cacert the server's?"
            ) from None
        except ssl.SSLError as exc:
            raise CliError(f"TLS with {where} failed: {exc.reason or exc}") from None
        except ConnectionRefusedError:
            raise CliError(f"cannot connect to {where}: connection refused (is the server running?)") from None
        except TimeoutError:
            raise CliError(f"{where} did not answer within {self.timeout:.0f} s") from None
        except socket.gaierror as exc:
            raise CliError(f"cannot resolve {self.host}: {exc.strerror}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise CliError(f"talking to {where} failed: {getattr(exc, 'strerror', None) or exc!r}") from None
        finally:
            connection.close()
        try:
            document = json.loads(raw)
        except ValueError:
            raise CliError(f"{where} answered HTTP {status} without JSON; is --server the dispatcher API?") from None
        if status >= 400:
            message = document.get("error") if isinstance(document, dict) else None
            raise CliError(f"{message or 'request refused'} (HTTP {status})")
        return document


def group_path(uri: str, *rest: str) -> str:
    """The API path of a group (and of what is under it), each part percent-encoded."""
    return "/api/groups/" + "/".join(urllib.parse.quote(p, safe="") for p in (uri, *rest))


def password_reader(password_file: str | None) -> Callable[[], str]:
    """Reads the password when first needed: the first line of ``password_file``, else $PTT_DISPATCH_PASSWORD,
    else a prompt on the terminal."""

    def read() -> str:
        if password_file:
            try:
                data = Path(password_file).read_bytes()
            except OSError as exc:
                raise CliError(f"cannot read the password file {password_file}: {exc.strerror}") from None
            line = data.split(b"\n", 1)[0].rstrip(b"\r")
            if not line:
                raise CliError(f"the password file {password_file} is empty")
            try:
                return line.decode("utf-8")
            except UnicodeDecodeError:
                raise CliError(f"the password in {password_file} is not UTF-8") from None
        env = os.environ.get(PASSWORD_ENV)
        if env:
            return env
        if not sys.stdin.isatty():
            raise CliError(f"no password: give --password-file, set {PASSWORD_ENV}, or run on a terminal")
        return getpass.getpass("password: ")

    return read


class Session:
    """The client plus the domain bare names belong to (asked of the server once, when first needed)."""

    def __init__(self, client: ApiClient, domain: str | None) -> None:
        self.client = client
        self._domain = domain

    def domain(self) -> str:
        if self._domain is None:
            health = self.client.request("GET", "/api/health", login=False)
            domain = health.get("domain") if isinstance(health, dict) else None
            if not isinstance(domain, str) or not domain:
                raise CliError("the server reports no domain for bare names: give --domain or a full URI")
            self._domain = domain
        return self._domain

    def uri(self, name_or_uri: str) -> str:
        if ":" in name_or_uri:
            return name_or_uri
        if not _BARE_NAME.fullmatch(name_or_uri):
            raise CliError(f"{name_or_uri!r} is neither a URI (sip:...) nor a bare name (letters, digits, . _ + -)")
        return f"sip:{name_or_uri}@{self.domain()}"
