"""The checks every request passes before any work, as ASGI middleware: a server on localhost is reachable from every
web page its user opens, so a page must not be able to make it generate, read its answers or fill its history.

In order: the Host header must name this server (DNS rebinding: a page's own domain resolved to 127.0.0.1 sends its
own name); a request with an Origin header must come from an origin given with --cors (a cross-site POST with a
"simple" content type reaches a server without a preflight, so it is refused here, not merely left unreadable);
the API key, when there is one, compared in constant time; POSTs must say Content-Type: application/json; the body
is read whole here up to a limit (chunked bodies too, which carry no Content-Length).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
MAX_BODY = 1 << 20  # bytes: a long conversation is a few hundred KB of JSON
CORS_METHODS = "GET, POST, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type"


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> bytes:
    """OpenAI's error shape, which every client of the API parses."""
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


async def send_error(send, status: int, message: str, type_: str, code: str | None = None, param: str | None = None,
                     headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = error_body(message, type_, code, param)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host.strip("[]") in ("0.0.0.0", "::", "")


def host_names(host: str) -> set[str]:
    """The names a client may put in the Host header to reach a server bound to `host`: the loopback names, the host
    given, and for a wildcard bind the machine's own name and addresses."""
    names = set(LOOPBACK_NAMES)
    names.add(f"[{host}]" if ":" in host and not host.startswith("[") else host)
    if is_wildcard(host):
        import psutil

        names.add(socket.gethostname())
        for addresses in psutil.net_if_addrs().values():
            for a in addresses:
                if a.family in (socket.AF_INET, socket.AF_INET6):
                    address = a.address.split("%")[0]
                    names.add(f"[{address}]" if ":" in address else address)
    return {n.lower() for n in names}


class Guard:
    """ASGI middleware: refuses, before the app runs, what the module docstring lists."""

    def __init__(self, app, *, host: str, port: int, api_key: str | None = None, cors: tuple[str, ...] = (),
                 max_body: int = MAX_BODY):
        self.app, self.port, self.max_body = app, port, max_body
        names = host_names(host)
        self.hosts = {f"{n}:{port}" for n in names} | (names if port == 80 else set())
        self.api_key = api_key.encode() if api_key else None
        self.cors = {o.rstrip("/").lower() for o in cors}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {}
        for k, v in scope["headers"]:
            headers.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
        if headers.get("host", "").lower() not in self.hosts:
            return await send_error(send, 403, "this server answers only requests addressed to it by its own name "
                                    "(the Host header names another host)", "invalid_request_error", "forbidden_host")
        origin = headers.get("origin")
        cors_headers = []
        if origin is not None:
            if origin.rstrip("/").lower() not in self.cors:
                return await send_error(send, 403, f"requests from the web origin {origin} are not allowed: start "
                                        "`trit serve --cors ORIGIN` to allow one", "invalid_request_error",
                                        "forbidden_origin")
            cors_headers = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
            if scope["method"] == "OPTIONS":  # the preflight: what the page may send next
                await send({"type": "http.response.start", "status": 204, "headers": cors_headers + [
                    (b"access-control-allow-methods", CORS_METHODS.encode()),
                    (b"access-control-allow-headers", CORS_HEADERS.encode()),
                    (b"access-control-max-age", b"600")]})
                return await send({"type": "http.response.body", "body": b""})
            send = _with_headers(send, cors_headers)
        if self.api_key is not None and scope["path"] != "/health":
            given = headers.get("authorization", "")
            token = given[7:].strip().encode("latin-1") if given[:7].lower() == "bearer " else b""
            if not hmac.compare_digest(token, self.api_key):
                return await send_error(send, 401, "Incorrect API key provided: give the key the server was started "
                                        "with (Authorization: Bearer KEY)", "invalid_request_error", "invalid_api_key",
                                        headers=[(b"www-authenticate", b"Bearer")])
        if scope["method"] != "POST":
            return await self.app(scope, receive, send)
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            return await send_error(send, 415, "the body must be JSON, sent with Content-Type: application/json",
                                    "invalid_request_error", "unsupported_media_type")
        too_large = (f"the request body is larger than {self.max_body} bytes", "invalid_request_error",
                     "request_too_large")
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await send_error(send, 413, *too_large)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body:
                return await send_error(send, 413, *too_large, headers=[(b"connection", b"close")])
            if not message.get("more_body"):
                break
        return await self.app(scope, _replay(bytes(body), receive), send)


def _replay(body: bytes, receive):
    """The body read once, then the client's own messages (a disconnect)."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _with_headers(send, extra: list[tuple[bytes, bytes]]):
    async def sending(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sending
