"""A stand-in for the Hugging Face Hub on 127.0.0.1, with switches that break it on purpose.

It serves what huggingface_hub and engine.models.hub call:
- GET  /api/models/{repo}[/revision/{rev}][?blobs=true]  model info: commit sha, siblings (with blobs: size, blobId
  and, for LFS files, lfs.sha256/size/pointerSize)
- HEAD/GET /{repo}/resolve/{rev}/{file}  regular files: 200 with ETag (git blob sha1), X-Repo-Commit, Content-Length;
  LFS files: 302 to a second port (the "CDN", another origin as on the real hub) with X-Linked-Etag (sha256),
  X-Linked-Size, X-Repo-Commit
- HEAD/GET /cdn/{sha256}  the LFS content, with Range (206 + Content-Range)
- GET /api/agent-harnesses  the AI-agent registry huggingface_hub fetches (and caches in HF_HOME) for its user agent
Unknown repo / revision / file: 404 with X-Error-Code RepoNotFound / RevisionNotFound / EntryNotFound, as the hub.

Faults (consumed one per request, in order):
- drop[file] = [n, ...]    send the headers of the whole answer, then n bytes of body, then close the connection
- corrupt[file] = k        the next k answers for that file have one byte changed (same length)
- status[key] = [code, ...] answer with this HTTP status; key is "info" or a file name
- ignore_range = True      answer Range requests with the whole file (200), as some CDNs do
- blobs = False            model info without sizes and checksums (clients must HEAD)
- gone_after_drop = True   after the first drop the server is gone
- info_bomb = MiB          model info as a gzip stream (a few KB on the wire) that decodes to that many MiB
- hold[file] = [n, ...]    send the headers of the whole answer and n bytes of body, then keep the connection open
                           without sending more until release() or stop(), then close it
- long_length[file] = n    that file's answers claim n bytes more Content-Length than they send, then the server
                           keeps the connection open without sending more (until release() or stop())
- overflow[file] = n       that file's answers send n bytes more than it has, without a Content-Length
- undecodable = {key, ...} answers for these ("info" or a file name) say Content-Encoding: gzip but are not gzip
- stop()                   the server is gone: both ports and every open connection closed
Every request is recorded in `requests` (method, path, Range header, status, body bytes sent), before its
answer is sent.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import sys
import threading
import traceback
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_FILES = ("model.safetensors", "tokenizer.json")
# the shape of what the real hub serves at /api/agent-harnesses
AGENT_HARNESSES = {"standardEnvVars": ["AI_AGENT", "AGENT"],
                   "harnesses": {"claude-code": {"envVars": {"CLAUDECODE": "1"}}, "codex": {"envVars": {}}}}


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    status: int
    sent: int = 0  # body bytes written

    @property
    def filename(self) -> str:
        url = urlsplit(self.path)
        return parse_qs(url.query).get("file", [unquote(url.path.rsplit("/", 1)[-1])])[0]

    @property
    def range_start(self) -> int | None:
        m = re.match(r"bytes=(\d+)-", self.range or "")
        return int(m.group(1)) if m else None


@dataclass
class Repo:
    repo_id: str
    commit: str
    files: dict[str, bytes]

    def is_lfs(self, name: str) -> bool:
        return name in LFS_FILES or name.endswith(".gguf")  # the hub keeps GGUF files in LFS too

    @staticmethod
    def git_sha1(data: bytes) -> str:
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def sibling(self, name: str, blobs: bool) -> dict:
        data = self.files[name]
        if not blobs:
            return {"rfilename": name}
        if self.is_lfs(name):
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n" \
                      f"size {len(data)}\n".encode()
            return {"rfilename": name, "size": len(data), "blobId": self.git_sha1(pointer),
                    "lfs": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                            "pointerSize": len(pointer)}}
        return {"rfilename": name, "size": len(data), "blobId": self.git_sha1(data)}


class QuietServer(ThreadingHTTPServer):
    """A client that hangs up mid-response (as huggingface_hub does once it has its answer) is the client's business:
    socketserver prints its traceback to sys.stderr, which a test running the CLI in-process captures as the CLI's own
    stderr, so a one-line error then looked like two. Other errors still go to the real stderr."""

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        print(f"hub_server: error serving {client_address}:", file=sys.__stderr__)
        traceback.print_exc(file=sys.__stderr__)


class HubServer:
    def __init__(self, ssl_context=None):
        self.ssl_context = ssl_context  # an ssl.SSLContext serves HTTPS, as the real hub does
        self.repos: dict[str, Repo] = {}
        self.blobs_by_sha: dict[str, tuple[Repo, str]] = {}
        self.requests: list[Request] = []
        self.drop: dict[str, list[int]] = {}
        self.corrupt: dict[str, int] = {}
        self.status: dict[str, list[int]] = {}
        self.ignore_range = False
        self.gone_after_drop = False
        self.info_bomb = 0
        self.long_length: dict[str, int] = {}
        self.overflow: dict[str, int] = {}
        self.undecodable: set[str] = set()
        self.hold: dict[str, list[int]] = {}
        self.released = threading.Event()  # ends the waits of hold and long_length
        self.connections: set = set()
        self.blobs = True
        self.lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []

    # -- content -------------------------------------------------------------------------------------------------

    def add_repo(self, repo_id: str, folder: Path | None = None, files: dict[str, bytes] | None = None,
                 commit: str | None = None, extra: dict[str, bytes] | None = None) -> Repo:
        """Serve a folder's files (plus `extra`, e.g. a README the client must not download) as a repository."""
        content = dict(files or {})
        if folder is not None:
            content.update({p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()})
        content.update(extra or {})
        commit = commit or hashlib.sha1(repo_id.encode() + b"".join(sorted(content.values()))).hexdigest()
        repo = Repo(repo_id, commit, content)
        self.repos[repo_id] = repo
        for name, data in content.items():
            if repo.is_lfs(name):
                self.blobs_by_sha[hashlib.sha256(data).hexdigest()] = (repo, name)
        return repo

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> "HubServer":
        for _ in range(2):  # the hub, and the CDN on another port (another origin)
            srv = QuietServer(("127.0.0.1", 0), _handler(self))
            if self.ssl_context is not None:
                srv.socket = self.ssl_context.wrap_socket(srv.socket, server_side=True)
            srv.daemon_threads = True
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            t.start()
            self._servers.append(srv)
            self._threads.append(t)
        return self

    @property
    def url(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self._servers[1].server_address[1]}"

    @property
    def _scheme(self) -> str:
        return "http" if self.ssl_context is None else "https"

    def release(self) -> None:
        self.released.set()

    def stop(self) -> None:
        self.released.set()
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        with self.lock:
            connections, self.connections = list(self.connections), set()
        for conn in connections:  # keep-alive connections would otherwise go on being served
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    # -- what happened -------------------------------------------------------------------------------------------

    def gets(self, filename: str) -> list[Request]:
        """The GET requests answered with (some of) that file's content."""
        return [r for r in self.requests if r.method == "GET" and r.filename == filename and r.status in (200, 206)]

    def bytes_sent(self, filename: str) -> int:
        return sum(r.sent for r in self.gets(filename))

    def take(self, table: dict, key: str):
        with self.lock:
            queue = table.get(key)
            if isinstance(queue, list):
                return queue.pop(0) if queue else None
            if isinstance(queue, int) and queue > 0:
                table[key] = queue - 1
                return True
            return None


def _handler(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def setup(self):
            super().setup()
            with hub.lock:
                hub.connections.add(self.connection)

        def finish(self):
            with hub.lock:
                hub.connections.discard(self.connection)
            super().finish()

        def do_HEAD(self):
            self.route(body=False)

        def do_GET(self):
            self.route(body=True)

        # -- helpers ---------------------------------------------------------------------------------------------

        def record(self, status: int, sent: int = 0) -> Request:
            """Log the request with the status and the body bytes about to be sent."""
            r = Request(self.command, self.path, self.headers.get("Range"), status, sent)
            with hub.lock:
                hub.requests.append(r)
            return r

        def reply(self, status: int, body: bytes = b"", headers: dict | None = None, send_body: bool = True):
            # recorded before the answer leaves, so a client that has the answer always finds the record
            self.record(status, len(body) if send_body else 0)
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body and body:
                self.wfile.write(body)

        def error(self, status: int, code: str | None, message: str, send_body: bool):
            body = json.dumps({"error": message}).encode()
            self.reply(status, body, {"Content-Type": "application/json", **({"X-Error-Code": code} if code else {}),
                                      "X-Error-Message": message}, send_body)

        # -- routes ----------------------------------------------------------------------------------------------

        def route(self, body: bool):
            url = urlsplit(self.path)
            path = unquote(url.path)
            if path == "/api/agent-harnesses":
                return self.reply(200, json.dumps(AGENT_HARNESSES).encode(), {"Content-Type": "application/json"},
                                  body)
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path)
            if m:
                return self.model_info(m.group(1), m.group(2) or "main", parse_qs(url.query), body)
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m:
                return self.resolve(m.group(1), m.group(2), m.group(3), body)
            m = re.fullmatch(r"/cdn/([0-9a-f]{64})", path)
            if m and m.group(1) in hub.blobs_by_sha:
                repo, name = hub.blobs_by_sha[m.group(1)]
                return self.content(repo, name, {"ETag": f'"{m.group(1)}"'}, body)
            self.error(404, None, "Not Found", body)

        def model_info(self, repo_id: str, rev: str, query: dict, body: bool):
            code = hub.take(hub.status, "info")
            if code:
                return self.error(code, None, f"injected {code}", body)
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self.error(404, "RepoNotFound", "Repository not found", body)
            if rev not in ("main", repo.commit):
                return self.error(404, "RevisionNotFound", f"Invalid rev id: {rev}", body)
            blobs = hub.blobs and query.get("blobs", ["false"])[0].lower() == "true"
            info = {"id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False, "tags": ["bitnet"],
                    "siblings": [repo.sibling(n, blobs) for n in sorted(repo.files)]}
            if "info" in hub.undecodable:
                return self.reply(200, json.dumps(info).encode(), {"Content-Type": "application/json",
                                                                   "Content-Encoding": "gzip"}, body)
            if hub.info_bomb:
                return self.reply(200, gzip_bomb(json.dumps(info)[:-1].encode() + b', "card": "', hub.info_bomb),
                                  {"Content-Type": "application/json", "Content-Encoding": "gzip"}, body)
            self.reply(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)

        def resolve(self, repo_id: str, rev: str, name: str, body: bool):
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self.error(404, "RepoNotFound", "Repository not found", body)
            if rev not in ("main", repo.commit):
                return self.error(404, "RevisionNotFound", f"Invalid rev id: {rev}", body)
            if name not in repo.files:
                return self.error(404, "EntryNotFound", f"{name} does not exist", body)
            code = hub.take(hub.status, name)
            if code:
                return self.error(code, None, f"injected {code}", body)
            data = repo.files[name]
            common = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes"}
            if repo.is_lfs(name):
                sha = hashlib.sha256(data).hexdigest()
                location = f"{hub.cdn_url}/cdn/{sha}?file={name}"
                return self.reply(302, b"", {**common, "Location": location, "X-Linked-Etag": f'"{sha}"',
                                             "X-Linked-Size": str(len(data)), "ETag": f'"{Repo.git_sha1(data)}"'},
                                  body)
            self.content(repo, name, {**common, "ETag": f'"{Repo.git_sha1(data)}"'}, body)

        def content(self, repo: Repo, name: str, headers: dict, body: bool):
            data = repo.files[name]
            if body and hub.take(hub.corrupt, name):
                data = bytes([data[0] ^ 0xFF]) + data[1:] if len(data) < 2 else \
                    data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1:]
            start, status = 0, 200
            rng = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "") or "")
            if rng and not hub.ignore_range:
                start = int(rng.group(1))
                if start >= len(data):
                    return self.reply(416, b"", {"Content-Range": f"bytes */{len(data)}"}, body)
                status = 206
                headers = {**headers, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
            part = data[start:]
            if name in hub.undecodable:
                headers = {**headers, "Content-Encoding": "gzip"}
            if body and (hub.long_length.get(name) or hub.overflow.get(name)):
                return self.misstate_length(status, headers, part, hub.long_length.get(name, 0),
                                            hub.overflow.get(name, 0))
            drop = hub.take(hub.drop, name) if body else None
            hold = hub.take(hub.hold, name) if body and drop is None else None
            if hold is not None:
                drop = hold
            dropping = drop is not None and drop < len(part)
            self.record(status, 0 if not body else drop if dropping else len(part))
            self.send_response(status)
            for k, v in {**headers, "Accept-Ranges": "bytes"}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(part)))
            self.end_headers()
            if not body:
                return
            if dropping:
                self.wfile.write(part[:drop])
                self.wfile.flush()
                self.close_connection = True
                if hold is not None:
                    hub.released.wait(300)
                if hub.gone_after_drop:
                    hub.stop()
                return
            self.wfile.write(part)

        def misstate_length(self, status: int, headers: dict, part: bytes, longer: int, extra: int):
            self.record(status, len(part) + extra)
            self.send_response(status)
            for k, v in {**headers, "Accept-Ranges": "bytes"}.items():
                self.send_header(k, v)
            if extra:  # no length: the body ends when the connection closes
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(len(part) + longer))
            self.end_headers()
            self.wfile.write(part + b"\0" * extra)
            self.wfile.flush()
            if longer:  # a client that trusts the length waits here for bytes that never come
                hub.released.wait(300)
                self.close_connection = True

    return Handler


_bombs: dict[tuple[bytes, int], bytes] = {}


def gzip_bomb(prefix: bytes, mib: int) -> bytes:
    """A gzip stream of `prefix` and then `mib` MiB of spaces: about 1 KB on the wire per MiB. Each MiB is compressed
    on its own (a full flush), so its compressed form is the same every time and is compressed only once."""
    if (prefix, mib) not in _bombs:
        c = zlib.compressobj(9, zlib.DEFLATED, 31)
        head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
        block = c.compress(b" " * (1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
        _bombs[prefix, mib] = head + block * mib  # no end: a client must stop reading long before one
    return _bombs[prefix, mib]
