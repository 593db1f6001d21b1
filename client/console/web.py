"""The console's local web server (twisted.web on 127.0.0.1): the page, the dispatcher API proxied with the
dispatcher's login, and the WebSocket of ``client.console.bridge``.

Who may use it: the browser of the person who started ``ptt-console``. It prints a URL with a per-start secret
token; ``GET /?token=T`` sets it as a cookie (HttpOnly, SameSite=Strict) and redirects to ``/``. Every other
request needs that cookie, so other local users (who can reach the port but not read the terminal) and other
sites in the same browser (SameSite) get 403. Also refused: a Host header other than 127.0.0.1/localhost at this
port (DNS rebinding), an API call without the ``X-PTT-Console`` header (a cross-site form cannot set one: CSRF),
and a WebSocket whose Origin is not this page's.
"""

from __future__ import annotations

import hmac
import json
import logging
import urllib.parse
from importlib import resources as package_files
from typing import Any

from twisted.internet import defer
from twisted.web import resource, server
from twisted.web.server import NOT_DONE_YET
from twisted.web.websocket import WebSocketResource

__all__ = ["COOKIE", "ConsoleRoot"]

log = logging.getLogger("ptt.console")

COOKIE = b"ptt_console"
MAX_BODY = 64 * 1024
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console.css": ("console.css", "text/css; charset=utf-8"),
    "/capture.js": ("capture.js", "text/javascript; charset=utf-8"),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws://127.0.0.1:* ws://localhost:*; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _static(name: str) -> bytes:
    return (package_files.files("client.console") / "static" / name).read_bytes()


class ConsoleRoot(resource.Resource):
    isLeaf = True

    def __init__(self, token: str, port: int, upstream: Any, bridge_factory: Any) -> None:
        super().__init__()
        self.token = token.encode("ascii")
        self.port = port
        self.upstream = upstream
        self.websocket = WebSocketResource(bridge_factory)

    # --- checks -----------------------------------------------------------------------------------------------

    def _host_ok(self, request: server.Request) -> bool:
        host = (request.getHeader("host") or "").lower()
        return host in (f"127.0.0.1:{self.port}", f"localhost:{self.port}")

    def _cookie_ok(self, request: server.Request) -> bool:
        return hmac.compare_digest(request.getCookie(COOKIE) or b"", self.token)

    def _origin_ok(self, request: server.Request) -> bool:
        origin = request.getHeader("origin") or ""
        return origin in (f"http://127.0.0.1:{self.port}", f"http://localhost:{self.port}")

    @staticmethod
    def _refuse(request: server.Request, status: int, text: str) -> bytes:
        request.setResponseCode(status)
        request.setHeader("Content-Type", "application/json; charset=utf-8")
        request.setHeader("Cache-Control", "no-store")
        return json.dumps({"error": text}).encode() + b"\n"

    # --- requests ---------------------------------------------------------------------------------------------

    def render(self, request: server.Request) -> Any:
        path = request.path.decode("utf-8", "replace")
        if not self._host_ok(request):
            return self._refuse(request, 403, "use the address ptt-console printed (127.0.0.1)")
        if path == "/" and request.args.get(b"token"):
            return self._login(request)
        if not self._cookie_ok(request):
            return self._refuse(request, 403, "open the URL with the token that ptt-console printed")
        if path == "/ws":
            if not self._origin_ok(request):
                return self._refuse(request, 403, "WebSocket from another origin")
            return self.websocket.render(request)
        if path.startswith("/api/"):
            return self._proxy(request, path)
        if path in STATIC and request.method in (b"GET", b"HEAD"):
            name, kind = STATIC[path]
            request.setHeader("Content-Type", kind)
            for header, value in SECURITY_HEADERS.items():
                request.setHeader(header, value)
            return _static(name)
        return self._refuse(request, 404, "not found")

    def _login(self, request: server.Request) -> bytes:
        given = request.args.get(b"token", [b""])[0]
        if not hmac.compare_digest(given, self.token):
            return self._refuse(request, 403, "wrong token")
        request.addCookie(COOKIE, self.token, path=b"/", httpOnly=True, sameSite="strict")
        request.setResponseCode(303)
        request.setHeader("Location", "/")
        request.setHeader("Cache-Control", "no-store")
        return b""

    def _proxy(self, request: server.Request, path: str) -> Any:
        if request.getHeader("x-ptt-console") != "1":
            return self._refuse(request, 403, "API calls come from the console page only")
        if path.rstrip("/") == "/api/events":
            return self._refuse(request, 404, "the page gets events over its WebSocket")
        assert request.content is not None
        body = request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            return self._refuse(request, 413, "request body too large")
        query = urllib.parse.urlsplit(request.uri.decode("utf-8", "replace")).query
        upstream_path = path + (f"?{query}" if query else "")
        d: defer.Deferred[Any] = self.upstream.request(request.method.decode("ascii"), upstream_path, body or None)

        def answer(result: tuple[int, str, bytes]) -> None:
            status, kind, content = result
            if request._disconnected:
                return
            request.setResponseCode(status)
            request.setHeader("Content-Type", kind)
            request.setHeader("Cache-Control", "no-store")
            request.write(content)
            request.finish()

        def failed(failure: Any) -> None:
            log.warning("dispatcher API unreachable: %s", failure.getErrorMessage())
            if not request._disconnected:
                request.write(self._refuse(request, 502, f"dispatcher API unreachable: {failure.getErrorMessage()}"))
                request.finish()

        d.addCallbacks(answer, failed)
        return NOT_DONE_YET
