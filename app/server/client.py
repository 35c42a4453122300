"""`trit ask --server URL` (or TRIT_SERVER): one question to a running `trit serve`, whose model is already warm,
instead of loading one here. The standard library's http.client only: the URL is the one the person gave, and
nothing else is ever contacted. The answer streams as the server sends it; Ctrl-C closes the connection, which
cancels the reply on the server.

    for text in ServerReply(url, messages, overrides, api_key).stream(): print(text, end="")
"""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

from trit.engine import EngineError
from trit.engine.errors import one_line


class ServerError(EngineError):
    """The server could not be reached, or refused the request: said in one line."""


class ServerReply:
    def __init__(self, url: str, messages: list[dict], overrides: dict, api_key: str | None = None,
                 model: str | None = None, timeout: float = 600):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServerError(f"--server {url}: expected a URL like http://127.0.0.1:8080/v1")
        self.url, self.parts, self.timeout = url, parts, timeout
        self.base = parts.path.rstrip("/") or "/v1"
        self.messages, self.overrides, self.api_key, self.model = messages, overrides, api_key, model
        self.finish_reason, self.usage, self.served = "", {}, ""

    def _connection(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self.parts.scheme == "https" else http.client.HTTPConnection
        return kind(self.parts.hostname, self.parts.port, timeout=self.timeout)

    def _request(self, conn, method: str, path: str, body: dict | None = None) -> http.client.HTTPResponse:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            conn.request(method, self.base + path, json.dumps(body) if body is not None else None, headers)
            response = conn.getresponse()
        except OSError as e:
            raise ServerError(f"cannot reach the server at {self.url}: {one_line(e)} — is `trit serve` running "
                              "there?") from None
        if response.status != 200:
            raw = response.read()
            try:
                message = json.loads(raw)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode("utf-8", "replace").strip()[:200] or response.reason
            raise ServerError(f"the server at {self.url} answered {response.status}: {message}")
        return response

    def _served_model(self, conn) -> str:
        try:
            return json.loads(self._request(conn, "GET", "/models").read())["data"][0]["id"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ServerError(f"the server at {self.url} did not list its model (GET /models)") from None

    def stream(self):
        """Yields the answer's text as it comes; then finish_reason, usage and served are set."""
        conn = self._connection()
        try:
            self.served = self.model or self._served_model(conn)
            body = {"model": self.served, "messages": self.messages, "stream": True,
                    "stream_options": {"include_usage": True}, **self.overrides}
            response = self._request(conn, "POST", "/chat/completions", body)
            for line in response:
                line = line.strip()
                if not line.startswith(b"data: "):
                    continue
                data = line[6:]
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise ServerError(f"the server at {self.url} stopped the answer: {chunk['error']['message']}")
                if chunk.get("usage"):
                    self.usage = chunk["usage"]
                for choice in chunk.get("choices", []):
                    if choice.get("delta", {}).get("content"):
                        yield choice["delta"]["content"]
                    if choice.get("finish_reason"):
                        self.finish_reason = choice["finish_reason"]
        except (OSError, ValueError) as e:
            raise ServerError(f"the answer from {self.url} broke off: {one_line(e)}") from None
        finally:
            conn.close()
